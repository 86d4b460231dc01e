"""Writing spans: append-only, idempotent, lossless."""

from __future__ import annotations

from dataclasses import replace

import sqlalchemy as sa

from tether import semconv as sc
from tether.store import SpanRecord, TraceStore

from .conftest import RunFactory


def _stored_count(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.text("SELECT count(*) FROM spans")).scalar_one())


def test_writing_a_span_again_does_not_change_it(
    store: TraceStore, record_run: RunFactory, raw_engine: sa.Engine
) -> None:
    run = record_run()
    root = run.spans[0]
    tampered = replace(root, name="rewritten", status="error", attributes={**root.attributes, sc.TETHER_TURNS: 99})

    store.write_spans([tampered])

    stored_root = store.get_run(run.run_id).spans[0]
    assert stored_root == root
    assert _stored_count(raw_engine) == len(run.spans)


def test_a_resent_batch_is_a_no_op(store: TraceStore, record_run: RunFactory, raw_engine: sa.Engine) -> None:
    run = record_run(tools=3)

    store.write_spans(run.spans)
    store.write_spans([*run.spans, *run.spans])  # duplicates inside one batch too

    assert _stored_count(raw_engine) == len(run.spans)
    assert len(store.get_run(run.run_id).spans) == len(run.spans)


def test_an_empty_batch_writes_nothing(store: TraceStore, raw_engine: sa.Engine) -> None:
    store.write_spans([])

    assert _stored_count(raw_engine) == 0


def test_attributes_and_events_come_back_exactly(store: TraceStore, record_run: RunFactory) -> None:
    run = record_run(tools=0)
    root = run.spans[0]
    detailed = SpanRecord(
        trace_id=root.trace_id,
        span_id="00000000000000aa",
        parent_span_id=root.span_id,
        run_id=run.run_id,
        name="execute_tool read_file",
        operation=sc.OP_EXECUTE_TOOL,
        start_ns=root.start_ns + 1,
        end_ns=root.start_ns + 2,
        status="error",
        status_message="file not found: ünïcødé ✓",
        attributes={
            sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
            sc.TETHER_RUN_ID: run.run_id,
            sc.GEN_AI_TOOL_NAME: "read_file",
            sc.GEN_AI_TOOL_CALL_RESULT: "line\x00with NUL, quotes \" and 'emoji' 🚀" * 100,
            "tether.big": 2**62,
            "tether.ratio": 0.1 + 0.2,
            "tether.flags": [True, False],
            "tether.tags": ["a", "b"],
        },
        events=[{"name": "exception", "time_ns": root.start_ns + 2, "attributes": {"exception.type": "OSError"}}],
    )

    store.write_spans([detailed])

    (stored,) = [s for s in store.get_run(run.run_id).spans if s.span_id == detailed.span_id]
    assert stored == detailed


def test_spans_outside_any_run_are_stored_but_list_no_run(store: TraceStore, raw_engine: sa.Engine) -> None:
    loose = SpanRecord(
        trace_id="0" * 31 + "1",
        span_id="0" * 15 + "1",
        parent_span_id=None,
        run_id=None,
        name="GET /health",
        operation=None,
        start_ns=1,
        end_ns=2,
        status="unset",
        status_message=None,
        attributes={"http.method": "GET"},
        events=[],
    )

    store.write_spans([loose])

    assert _stored_count(raw_engine) == 1
    assert store.list_runs() == []


def test_query_columns_are_filled_from_attributes(
    store: TraceStore, record_run: RunFactory, raw_engine: sa.Engine
) -> None:
    run = record_run(agent="oncall", cost_usd=0.25, stop_reason="max_turns", tools=1)

    with raw_engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT operation, agent_name, request_model, tool_name, input_tokens, cost_usd, stop_reason,"
                " simulated, duration_ns FROM spans WHERE run_id = :run_id ORDER BY start_ns"
            ),
            {"run_id": run.run_id},
        ).all()

    root, chat, tool, _ = rows
    assert (root.operation, root.agent_name, root.stop_reason, root.input_tokens) == (
        "invoke_agent",
        "oncall",
        "max_turns",
        200,
    )
    assert root.cost_usd == 0.25
    assert bool(root.simulated) is True
    assert (chat.request_model, chat.input_tokens) == ("sim-model", 100)
    assert tool.tool_name == "grep_logs"
    assert root.duration_ns == run.spans[0].end_ns - run.spans[0].start_ns


def test_unknown_cost_is_null_in_the_cost_column(
    store: TraceStore, record_run: RunFactory, raw_engine: sa.Engine
) -> None:
    run = record_run(cost_usd=0.5, cost_known=False)

    with raw_engine.connect() as connection:
        cost = connection.execute(
            sa.text("SELECT cost_usd FROM spans WHERE span_id = :span_id"), {"span_id": run.root_span_id}
        ).scalar_one()

    assert cost is None
