"""Store ingest: spans per second through ``StoreSpanExporter.export`` into SQLite.

Spans are made by a real ``TracerProvider`` beforehand, shaped like the
runtime's: per run one ``invoke_agent`` root, then turns of ``chat`` and
``execute_tool``, 10-15 attributes each, every tool span carrying a 1-4 KB
result string. They are exported in batches of 512 (``BatchSpanProcessor``'s
default export size) to a fresh SQLite store in WAL mode; only the ``export``
calls are timed, after one warm-up batch.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Final

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer

from tether import semconv as sc
from tether.store import open_store
from tether.trace.exporter import StoreSpanExporter, span_to_row

BATCH: Final = 512
BATCHES: Final = 120  # ~61k timed spans: a few seconds, well inside the time budget
ROW_BATCH: Final = 2_048  # RowWriter's batch size
TURNS: Final = 10
SPANS_PER_RUN: Final = 1 + TURNS + (TURNS - 1)  # root, a chat per turn, a tool call between chats
TARGET: Final = 20_000
STRETCH: Final = 100_000

_WORDS = ("error", "timeout", "checkout", "latency", "p99", "cache", "miss", "upstream", "retry", "pod", "restart")


def _tool_output(rng: random.Random) -> str:
    size = rng.randint(1024, 4096)
    text = " ".join(rng.choice(_WORDS) for _ in range(size // 5))
    return text[:size]


def _trace_run(tracer: Tracer, rng: random.Random, run_number: int) -> None:
    run_id = f"{rng.getrandbits(64):016x}"
    common = {sc.TETHER_RUN_ID: run_id, sc.GEN_AI_PROVIDER_NAME: "anthropic", sc.GEN_AI_CONVERSATION_ID: run_id}
    with tracer.start_as_current_span(
        "invoke_agent oncall",
        attributes={
            **common,
            sc.GEN_AI_OPERATION_NAME: sc.OP_INVOKE_AGENT,
            sc.GEN_AI_AGENT_NAME: "oncall",
            sc.GEN_AI_AGENT_ID: "oncall-v3",
            sc.TETHER_TASK: f"incident #{run_number}: checkout p99 latency above 2 s since the last deploy",
        },
    ) as root:
        for turn in range(1, TURNS + 1):
            with tracer.start_as_current_span(
                "chat claude-sonnet-4",
                attributes={
                    **common,
                    sc.GEN_AI_OPERATION_NAME: sc.OP_CHAT,
                    sc.GEN_AI_REQUEST_MODEL: "claude-sonnet-4",
                    sc.GEN_AI_RESPONSE_MODEL: "claude-sonnet-4-20250514",
                    sc.GEN_AI_REQUEST_MAX_TOKENS: 4096,
                    sc.GEN_AI_REQUEST_TEMPERATURE: 0.2,
                    sc.GEN_AI_RESPONSE_ID: f"msg_{rng.getrandbits(96):024x}",
                    sc.GEN_AI_RESPONSE_FINISH_REASONS: ("tool_use",) if turn < TURNS else ("end_turn",),
                    sc.GEN_AI_USAGE_INPUT_TOKENS: 1200 * turn,
                    sc.GEN_AI_USAGE_OUTPUT_TOKENS: rng.randint(20, 400),
                    sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: 1000 * (turn - 1),
                    sc.TETHER_TURN: turn,
                    sc.TETHER_COST_USD: 0.0042,
                },
            ):
                pass
            if turn == TURNS:
                break
            with tracer.start_as_current_span(
                "execute_tool grep_logs",
                attributes={
                    **common,
                    sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
                    sc.GEN_AI_TOOL_NAME: "grep_logs",
                    sc.GEN_AI_TOOL_CALL_ID: f"toolu_{rng.getrandbits(64):016x}",
                    sc.GEN_AI_TOOL_CALL_ARGUMENTS: '{"service": "checkout", "pattern": "timeout", "since": "1h"}',
                    sc.GEN_AI_TOOL_CALL_RESULT: _tool_output(rng),
                    sc.TETHER_TURN: turn,
                    sc.TETHER_TOOL_ERROR: False,
                    sc.TETHER_TOOL_HALLUCINATED: False,
                },
            ):
                pass
        root.set_attributes(
            {
                sc.TETHER_STOP_REASON: "completed",
                sc.TETHER_TURNS: TURNS,
                sc.TETHER_TOOL_CALLS: TURNS - 1,
                sc.GEN_AI_USAGE_INPUT_TOKENS: 66_000,
                sc.GEN_AI_USAGE_OUTPUT_TOKENS: 2_100,
                sc.TETHER_COST_USD: 0.042,
                sc.TETHER_COST_KNOWN: True,
                sc.TETHER_SIMULATED: False,
            }
        )


def make_spans(count: int, seed: int = 7) -> list[ReadableSpan]:
    """At least ``count`` finished spans from traced runs, in the order they ended."""
    collected = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(collected))
    tracer = provider.get_tracer("tether.bench")
    rng = random.Random(seed)
    for run_number in range(-(-count // SPANS_PER_RUN)):
        _trace_run(tracer, rng, run_number)
    provider.shutdown()
    return list(collected.get_finished_spans())


def _measure(spans: list[ReadableSpan], db: Path) -> list[float]:
    batches = [spans[i : i + BATCH] for i in range(0, len(spans), BATCH)]
    seconds: list[float] = []
    with open_store(f"sqlite:///{db}") as store:
        exporter = StoreSpanExporter(store)
        for i, batch in enumerate(batches):
            started = time.perf_counter()
            result = exporter.export(batch)
            elapsed = time.perf_counter() - started
            if result is not SpanExportResult.SUCCESS:
                raise RuntimeError(f"export of batch {i} failed")
            if i > 0:  # the first batch warms caches and compiles statements
                seconds.append(elapsed)
        stored = len(store.get_run(store.list_runs(limit=1)[0].run_id).spans)
    if stored != SPANS_PER_RUN:
        raise RuntimeError(f"expected {SPANS_PER_RUN} spans in the last run, found {stored}")
    return seconds


def _measure_rows(spans: list[ReadableSpan], db: Path) -> tuple[float, float]:
    """The default path: span -> row on the app thread, rows inserted by ``write_rows`` in batches of 2,048.

    Returns (conversion seconds, insert seconds) for all spans after the first batch.
    """
    started = time.perf_counter()
    rows = [span_to_row(span) for span in spans]
    convert_s = time.perf_counter() - started
    batches = [rows[i : i + ROW_BATCH] for i in range(0, len(rows), ROW_BATCH)]
    insert_s = 0.0
    with open_store(f"sqlite:///{db}") as store:
        for i, batch in enumerate(batches):
            started = time.perf_counter()
            store.write_rows(batch)
            if i > 0:
                insert_s += time.perf_counter() - started
    return convert_s, insert_s


def run() -> list[dict[str, object]]:
    """Export ~61k spans in batches of 512 and report the rate; then the default row path."""
    spans = make_spans((BATCHES + 1) * BATCH)
    with tempfile.TemporaryDirectory() as tmp:
        seconds = _measure(spans, Path(tmp) / "ingest.db")
        convert_s, insert_s = _measure_rows(spans, Path(tmp) / "rows.db")
    row_rate = (len(spans) - ROW_BATCH) / insert_s
    convert_us = convert_s / len(spans) * 1e6
    timed = len(spans) - BATCH
    rate = timed / sum(seconds)
    median_ms = statistics.median(seconds) * 1000
    worst_ms = max(seconds) * 1000
    return [
        {
            "benchmark": "store_ingest",
            "metric": "spans written per second (SQLite)",
            "value": rate,
            "unit": "spans/s",
            "target": f">= {TARGET}",
            "ok": rate >= TARGET,
            "notes": (
                f"StoreSpanExporter.export, {timed:,} spans in batches of {BATCH}, WAL + synchronous=NORMAL; "
                f"median batch {median_ms:.1f} ms, worst {worst_ms:.1f} ms; "
                f"stretch >= {STRETCH:,} {'met' if rate >= STRETCH else 'not met'}"
            ),
        },
        {
            "benchmark": "store_ingest",
            "metric": "rows inserted per second (RowWriter path)",
            "value": row_rate,
            "unit": "rows/s",
            "target": f">= {TARGET}",
            "ok": row_rate >= TARGET,
            "notes": f"TraceStore.write_rows in batches of {ROW_BATCH} (the default set-up's background writer); "
            f"converting a span to its row costs {convert_us:.1f} µs on the application's thread",
        },
    ]


if __name__ == "__main__":
    for row in run():
        print(row)
