"""tether's span recorder: the OpenTelemetry API semantics, and the same rows as the SDK path."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from tether import semconv as sc
from tether.runtime import Agent, tool
from tether.store import TraceStore, open_store
from tether.store.rows import INSERT_COLUMNS
from tether.testing import ScriptedModel, text_response, tool_response
from tether.trace.processor import RowWriter
from tether.trace.recorder import RecordingTracerProvider
from tether.trace.setup import configure_tracing


class ListStore:
    """A store stand-in that keeps rows in memory and can be made to fail."""

    url = "memory://"

    def __init__(self) -> None:
        self.rows: list[tuple[object, ...]] = []
        self.failing = False
        self.lock = threading.Lock()

    def write_rows(self, rows: Sequence[tuple[object, ...]]) -> None:
        if self.failing:
            raise ConnectionError("database is down")
        with self.lock:
            self.rows.extend(rows)

    def by_name(self) -> dict[str, dict[str, Any]]:
        return {str(r[4]): dict(zip(INSERT_COLUMNS, r, strict=True)) for r in self.rows}


@pytest.fixture
def memory() -> ListStore:
    return ListStore()


@pytest.fixture
def recorder(memory: ListStore) -> Iterator[RecordingTracerProvider]:
    provider = RecordingTracerProvider(RowWriter(memory))  # type: ignore[arg-type]
    yield provider
    provider.shutdown()


def test_nested_spans_share_the_trace_and_point_at_their_parent(
    recorder: RecordingTracerProvider, memory: ListStore
) -> None:
    tracer = recorder.get_tracer("t")
    with tracer.start_as_current_span("root") as root:
        assert otel_trace.get_current_span() is root
        with tracer.start_as_current_span("child"):
            pass
        detached = tracer.start_span("sibling")
        detached.end()
    recorder.force_flush()
    rows = memory.by_name()
    assert rows["child"]["trace_id"] == rows["root"]["trace_id"] == rows["sibling"]["trace_id"]
    assert rows["child"]["parent_span_id"] == rows["root"]["span_id"]
    assert rows["sibling"]["parent_span_id"] == rows["root"]["span_id"]
    assert rows["root"]["parent_span_id"] is None


def test_an_exception_inside_a_span_is_recorded_and_marks_it_failed(
    recorder: RecordingTracerProvider, memory: ListStore
) -> None:
    tracer = recorder.get_tracer("t")
    with pytest.raises(RuntimeError), tracer.start_as_current_span("boom"):
        raise RuntimeError("disk on fire")
    recorder.force_flush()
    row = memory.by_name()["boom"]
    assert row["status"] == "error"
    (event,) = orjson.loads(str(row["events"]))
    assert event["name"] == "exception"
    assert event["attributes"]["exception.message"] == "disk on fire"


def test_span_semantics_match_the_sdk(recorder: RecordingTracerProvider, memory: ListStore) -> None:
    span = recorder.get_tracer("t").start_span("s", attributes={"n": 1, "obj": Path("/x"), "seq": [1, "a"]})
    span.set_status(Status(StatusCode.OK))
    span.set_status(StatusCode.ERROR, "too late")  # OK is final
    span.set_attribute("later", True)
    span.end()
    span.set_attribute("after_end", 1)  # ignored
    span.end()  # ends once
    recorder.force_flush()
    assert len(memory.rows) == 1
    row = memory.by_name()["s"]
    assert row["status"] == "ok"
    assert orjson.loads(str(row["attributes"])) == {"n": 1, "obj": "/x", "seq": [1, "a"], "later": True}
    assert not span.is_recording()


def test_the_writer_survives_a_store_outage_and_catches_up(memory: ListStore, caplog: pytest.LogCaptureFixture) -> None:
    writer = RowWriter(memory, interval_s=60)  # type: ignore[arg-type]
    tracer = RecordingTracerProvider(writer).get_tracer("t")
    memory.failing = True
    with caplog.at_level(logging.WARNING, logger="tether.trace.processor"):
        for i in range(3):
            tracer.start_span(f"s{i}").end()
        assert writer.flush() is False
        assert writer.flush() is False
    assert [r.getMessage() for r in caplog.records].count("tether: 3 spans not stored yet: database is down") == 1
    memory.failing = False
    assert writer.flush() is True
    assert sorted(memory.by_name()) == ["s0", "s1", "s2"]
    writer.shutdown()


def test_the_writer_bounds_what_it_keeps_while_the_store_is_down(memory: ListStore) -> None:
    writer = RowWriter(memory, interval_s=60, max_buffer=5)  # type: ignore[arg-type]
    tracer = RecordingTracerProvider(writer).get_tracer("t")
    memory.failing = True
    for i in range(8):
        tracer.start_span(f"s{i}").end()
    writer.flush()
    assert writer.dropped == 3
    memory.failing = False
    writer.shutdown()
    assert sorted(memory.by_name()) == ["s3", "s4", "s5", "s6", "s7"]  # the newest are kept


def test_a_full_batch_wakes_the_writer_early(memory: ListStore) -> None:
    writer = RowWriter(memory, interval_s=60, batch_size=10)  # type: ignore[arg-type]
    tracer = RecordingTracerProvider(writer).get_tracer("t")
    for i in range(10):
        tracer.start_span(f"s{i}").end()
    for _ in range(200):
        if len(memory.rows) == 10:
            break
        threading.Event().wait(0.01)
    assert len(memory.rows) == 10
    writer.shutdown()


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value of {key}"


async def _record_run(store: TraceStore, *, sdk: bool) -> str:
    extra = [InMemorySpanExporter()] if sdk else None
    tracing = configure_tracing(store, extra_exporters=extra)
    assert tracing.exporters[0] == "store"
    model = ScriptedModel([tool_response(("lookup", {"key": "a"}), ("lookup", {"key": "b"})), text_response("ok")])
    result = await Agent("parity", model, tools=[lookup], tracer=tracing.tracer).run("look up a and b")
    tracing.shutdown()
    return result.run_id


def _shape(store: TraceStore, run_id: str) -> list[tuple[Any, ...]]:
    run = store.get_run(run_id)
    names = {s.span_id: s.name for s in run.spans}
    volatile = {sc.TETHER_RUN_ID, sc.GEN_AI_CONVERSATION_ID, sc.GEN_AI_RESPONSE_ID, sc.GEN_AI_TOOL_CALL_ID}
    return sorted(
        (
            s.name,
            names.get(s.parent_span_id or ""),
            s.status,
            sorted((k, str(v)) for k, v in s.attributes.items() if k not in volatile),
        )
        for s in run.spans
    )


async def test_the_recorder_and_the_sdk_store_the_same_trace(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path}/a.db") as a, open_store(f"sqlite:///{tmp_path}/b.db") as b:
        run_a = await _record_run(a, sdk=False)
        run_b = await _record_run(b, sdk=True)
        assert _shape(a, run_a) == _shape(b, run_b)
        assert a.list_runs()[0].tool_calls == b.list_runs()[0].tool_calls == 2
