"""Store fixtures: every test runs on SQLite and on the machine's PostgreSQL.

Each PostgreSQL test gets a schema of its own, selected with ``search_path``
in the URL it is given, and dropped afterwards.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import postgres_schema
from tether import semconv as sc
from tether.store import SpanRecord, TraceStore, open_store

NS_PER_S = 1_000_000_000
T0_NS = int(datetime(2025, 6, 1, 12, 0, tzinfo=UTC).timestamp()) * NS_PER_S


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url(backend: str, tmp_path: Path, postgres_url: str) -> Iterator[str]:
    """A URL naming an empty database of the test's backend (``sqlite`` or ``postgresql``, maybe prefixed)."""
    if backend.endswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'data' / 'tether.db'}"
        return
    with postgres_schema(postgres_url) as url:
        yield url


@pytest.fixture
def store(store_url: str) -> Iterator[TraceStore]:
    with open_store(store_url) as opened:
        yield opened


@pytest.fixture
def raw_engine(store_url: str) -> Iterator[sa.Engine]:
    """A plain engine on the test database, to look at it from outside the store."""
    engine = sa.create_engine(store_url)
    yield engine
    engine.dispose()


def new_trace_id() -> str:
    return uuid.uuid4().hex


def new_span_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass
class Run:
    """A run's spans as the runtime writes them: invoke_agent → (chat, execute_tool)* → chat."""

    run_id: str
    agent: str = "oncall"
    stop_reason: str | None = "completed"
    started_ns: int = T0_NS
    tools: int = 1
    cost_usd: float = 0.0125
    cost_known: bool = True
    simulated: bool = True
    task: str = "why is checkout slow?"
    trace_id: str = field(default_factory=new_trace_id)
    root_span_id: str = field(default_factory=new_span_id)

    @cached_property
    def spans(self) -> list[SpanRecord]:
        """The run's spans, root first (built once, so ids are stable)."""
        common = {sc.TETHER_RUN_ID: self.run_id}
        children: list[SpanRecord] = []
        t = self.started_ns + 1_000
        for turn in range(1, self.tools + 2):
            children.append(
                self._span(
                    "chat sim-model",
                    sc.OP_CHAT,
                    t,
                    t + 2_000_000,
                    {
                        **common,
                        sc.GEN_AI_REQUEST_MODEL: "sim-model",
                        sc.TETHER_TURN: turn,
                        sc.GEN_AI_USAGE_INPUT_TOKENS: 100,
                        sc.GEN_AI_USAGE_OUTPUT_TOKENS: 20,
                        sc.GEN_AI_RESPONSE_FINISH_REASONS: ["tool_use" if turn <= self.tools else "stop"],
                    },
                )
            )
            t += 3_000_000
            if turn <= self.tools:
                children.append(
                    self._span(
                        "execute_tool grep_logs",
                        sc.OP_EXECUTE_TOOL,
                        t,
                        t + 1_000_000,
                        {**common, sc.GEN_AI_TOOL_NAME: "grep_logs", sc.GEN_AI_TOOL_CALL_RESULT: "ok " * 50},
                    )
                )
                t += 2_000_000
        turns = self.tools + 1
        root = SpanRecord(
            trace_id=self.trace_id,
            span_id=self.root_span_id,
            parent_span_id=None,
            run_id=self.run_id,
            name=f"invoke_agent {self.agent}",
            operation=sc.OP_INVOKE_AGENT,
            start_ns=self.started_ns,
            end_ns=t + 1_000,
            status="ok",
            status_message=None,
            attributes={
                **common,
                sc.GEN_AI_OPERATION_NAME: sc.OP_INVOKE_AGENT,
                sc.GEN_AI_AGENT_NAME: self.agent,
                sc.TETHER_TURNS: turns,
                sc.TETHER_TOOL_CALLS: self.tools,
                sc.GEN_AI_USAGE_INPUT_TOKENS: 100 * turns,
                sc.GEN_AI_USAGE_OUTPUT_TOKENS: 20 * turns,
                sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: 7,
                sc.GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS: 3,
                sc.TETHER_COST_USD: self.cost_usd,
                sc.TETHER_COST_KNOWN: self.cost_known,
                sc.TETHER_SIMULATED: self.simulated,
                sc.TETHER_TASK: self.task,
                **({sc.TETHER_STOP_REASON: self.stop_reason} if self.stop_reason else {}),
            },
            events=[],
        )
        return [root, *children]

    def _span(self, name: str, operation: str, start_ns: int, end_ns: int, attributes: dict[str, object]) -> SpanRecord:
        return SpanRecord(
            trace_id=self.trace_id,
            span_id=new_span_id(),
            parent_span_id=self.root_span_id,
            run_id=self.run_id,
            name=name,
            operation=operation,
            start_ns=start_ns,
            end_ns=end_ns,
            status="unset",
            status_message=None,
            attributes={sc.GEN_AI_OPERATION_NAME: operation, **attributes},
            events=[],
        )


RunFactory = Callable[..., Run]


@pytest.fixture
def record_run(store: TraceStore) -> RunFactory:
    """Write a run's spans to the store and return it; keyword arguments as for ``Run``.

    Without ``started_ns``, each run starts one minute after the previous one.
    """
    minute = itertools.count()

    def record(run_id: str | None = None, **fields: object) -> Run:
        fields.setdefault("started_ns", T0_NS + next(minute) * 60 * NS_PER_S)
        run = Run(run_id=run_id or uuid.uuid4().hex[:16], **fields)  # type: ignore[arg-type]
        store.write_spans(run.spans)
        return run

    return record
