"""StoreSpanExporter: real OpenTelemetry spans into the store, and never an exception out of it."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExportResult
from opentelemetry.trace import Status, StatusCode, Tracer

from tether import semconv as sc
from tether.store import TraceStore, open_store
from tether.store.migrations import MIGRATIONS
from tether.trace.exporter import StoreSpanExporter, span_to_record

RUN_ID = "5eed0000c0ffee01"


@pytest.fixture(params=["simple", "batch"])
def provider(request: pytest.FixtureRequest, store: TraceStore) -> Iterator[TracerProvider]:
    """A tracer provider exporting to the store through the given span processor."""
    tracer_provider = TracerProvider()
    exporter = StoreSpanExporter(store)
    processor = SimpleSpanProcessor(exporter) if request.param == "simple" else BatchSpanProcessor(exporter)
    tracer_provider.add_span_processor(processor)
    yield tracer_provider
    tracer_provider.shutdown()


@pytest.fixture
def finished_spans() -> Iterator[list[ReadableSpan]]:
    """A few ended SDK spans, exported by nothing, to hand to an exporter directly."""
    tracer_provider = TracerProvider()
    tracer = tracer_provider.get_tracer("test")
    spans = []
    for i in range(3):
        span = tracer.start_span(f"chat model-{i}", attributes={sc.GEN_AI_OPERATION_NAME: sc.OP_CHAT})
        span.end()
        spans.append(span)
    yield spans
    tracer_provider.shutdown()


def run_agent(tracer: Tracer, run_id: str) -> None:
    """What the runtime does for a run with one tool call that fails and is retried by the model."""
    run = {sc.TETHER_RUN_ID: run_id}
    with tracer.start_as_current_span(
        "invoke_agent oncall",
        attributes={**run, sc.GEN_AI_OPERATION_NAME: sc.OP_INVOKE_AGENT, sc.GEN_AI_AGENT_NAME: "oncall"},
    ) as root:
        with tracer.start_as_current_span(
            "chat sim-model", attributes={**run, sc.GEN_AI_OPERATION_NAME: sc.OP_CHAT}
        ) as chat:
            chat.set_attribute(sc.GEN_AI_RESPONSE_FINISH_REASONS, ("tool_use",))
            chat.set_attribute(sc.GEN_AI_USAGE_INPUT_TOKENS, 120)
        with tracer.start_as_current_span(
            "execute_tool grep_logs",
            attributes={**run, sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL, sc.GEN_AI_TOOL_NAME: "grep_logs"},
            record_exception=False,
            set_status_on_exception=False,
        ) as tool:
            tool.add_event("retry", {"attempt": 2, "delays_s": (0.1, 0.2)})
            tool.set_status(Status(StatusCode.ERROR, "log file rotated"))
        with tracer.start_as_current_span("chat sim-model", attributes={**run, sc.GEN_AI_OPERATION_NAME: sc.OP_CHAT}):
            pass
        root.set_attributes(
            {
                sc.TETHER_STOP_REASON: "completed",
                sc.TETHER_TURNS: 2,
                sc.TETHER_TOOL_CALLS: 1,
                sc.GEN_AI_USAGE_INPUT_TOKENS: 240,
                sc.GEN_AI_USAGE_OUTPUT_TOKENS: 30,
                sc.TETHER_COST_USD: 0.002,
                sc.TETHER_COST_KNOWN: True,
                sc.TETHER_SIMULATED: True,
                sc.TETHER_TASK: "why is checkout slow?",
            }
        )
        root.set_status(Status(StatusCode.OK))


def test_a_traced_run_comes_back_as_a_tree(provider: TracerProvider, store: TraceStore) -> None:
    run_agent(provider.get_tracer("tether"), RUN_ID)
    assert provider.force_flush()

    trace = store.get_run(RUN_ID[:6])

    root, chat, tool, last_chat = trace.spans
    assert [s.operation for s in trace.spans] == ["invoke_agent", "chat", "execute_tool", "chat"]
    assert root.parent_span_id is None
    assert {chat.parent_span_id, tool.parent_span_id, last_chat.parent_span_id} == {root.span_id}
    assert {s.trace_id for s in trace.spans} == {root.trace_id}
    assert chat.attributes[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ["tool_use"]
    assert (tool.status, tool.status_message) == ("error", "log file rotated")
    assert tool.events[0]["name"] == "retry"
    assert tool.events[0]["attributes"] == {"attempt": 2, "delays_s": [0.1, 0.2]}
    summary = trace.summary
    assert (summary.run_id, summary.agent, summary.stop_reason, summary.status) == (RUN_ID, "oncall", "completed", "ok")
    assert (summary.turns, summary.tool_calls, summary.input_tokens, summary.output_tokens) == (2, 1, 240, 30)
    assert summary.cost_usd == pytest.approx(0.002)
    assert [r.run_id for r in store.list_runs()] == [RUN_ID]


def test_span_to_record_uses_otlp_hex_ids_and_plain_values(finished_spans: list[ReadableSpan]) -> None:
    span = finished_spans[0]
    context = span.get_span_context()
    assert context is not None

    record = span_to_record(span)

    assert record.trace_id == f"{context.trace_id:032x}"
    assert record.span_id == f"{context.span_id:016x}"
    assert len(record.trace_id) == 32 and len(record.span_id) == 16
    assert record.parent_span_id is None
    assert record.run_id is None
    assert (record.operation, record.status, record.status_message) == ("chat", "unset", None)
    assert record.start_ns == span.start_time and record.end_ns == span.end_time
    assert type(record.attributes) is dict


def test_export_fails_quietly_when_the_database_is_gone(
    store: TraceStore, raw_engine: sa.Engine, finished_spans: list[ReadableSpan], caplog: pytest.LogCaptureFixture
) -> None:
    exporter = StoreSpanExporter(store)
    with raw_engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE spans"))

    with caplog.at_level(logging.DEBUG, logger="tether.trace.exporter"):
        first = exporter.export(finished_spans)
        second = exporter.export(finished_spans)

    assert (first, second) == (SpanExportResult.FAILURE, SpanExportResult.FAILURE)
    warnings = [r for r in caplog.records if r.name == "tether.trace.exporter" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, "one warning per outage, not one per batch"
    message = warnings[0].getMessage()
    assert "\n" not in message
    assert message.startswith(f"tether: 3 spans not stored: trace store at {store.url}: writing spans failed:")
    assert "INSERT" not in message and "chat model-0" not in message


def test_export_logs_when_the_store_is_back(
    store: TraceStore, raw_engine: sa.Engine, finished_spans: list[ReadableSpan], caplog: pytest.LogCaptureFixture
) -> None:
    exporter = StoreSpanExporter(store)
    with raw_engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE spans"))
    assert exporter.export(finished_spans) == SpanExportResult.FAILURE
    with raw_engine.begin() as connection:
        MIGRATIONS[0].apply(connection)
    caplog.clear()

    with caplog.at_level(logging.INFO, logger="tether.trace.exporter"):
        assert exporter.export(finished_spans) == SpanExportResult.SUCCESS

    assert [r.getMessage() for r in caplog.records if r.name == "tether.trace.exporter"] == [
        f"tether: trace store at {store.url} is accepting spans again"
    ]


def test_a_dead_database_never_reaches_the_traced_code(store: TraceStore, raw_engine: sa.Engine) -> None:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(StoreSpanExporter(store)))
    with raw_engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE spans"))

    run_agent(tracer_provider.get_tracer("tether"), RUN_ID)  # must not raise

    tracer_provider.shutdown()


def test_shutdown_refuses_later_exports_and_closes_an_owned_store(
    store_url: str, finished_spans: list[ReadableSpan]
) -> None:
    owned = open_store(store_url)
    exporter = StoreSpanExporter(owned, owns_store=True)
    assert exporter.force_flush() is True

    exporter.shutdown()

    assert exporter.export(finished_spans) == SpanExportResult.FAILURE
    with pytest.raises(Exception, match="is closed"):
        owned.list_runs()
