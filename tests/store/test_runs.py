"""Listing runs and reading one back, by id or by prefix."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from tether import semconv as sc
from tether.errors import StoreError
from tether.store import AmbiguousRunId, RunNotFound, TraceStore

from .conftest import NS_PER_S, T0_NS, Run, RunFactory, new_span_id


def test_list_runs_is_newest_first(store: TraceStore, record_run: RunFactory) -> None:
    first, second, third = record_run(), record_run(), record_run()

    assert [r.run_id for r in store.list_runs()] == [third.run_id, second.run_id, first.run_id]


def test_list_runs_honours_limit(store: TraceStore, record_run: RunFactory) -> None:
    runs = [record_run() for _ in range(5)]

    assert [r.run_id for r in store.list_runs(limit=2)] == [runs[4].run_id, runs[3].run_id]
    assert store.list_runs(limit=0) == []


def test_list_runs_filters_by_agent(store: TraceStore, record_run: RunFactory) -> None:
    record_run(agent="oncall")
    billing = record_run(agent="billing")

    assert [r.run_id for r in store.list_runs(agent="billing")] == [billing.run_id]
    assert store.list_runs(agent="nobody") == []


def test_list_runs_filters_by_stop_reason(store: TraceStore, record_run: RunFactory) -> None:
    record_run(stop_reason="completed")
    over_budget = record_run(stop_reason="budget_exceeded")

    assert [r.run_id for r in store.list_runs(stop_reason="budget_exceeded")] == [over_budget.run_id]


def test_list_runs_filters_by_start_time(store: TraceStore, record_run: RunFactory) -> None:
    record_run(started_ns=T0_NS)
    later = record_run(started_ns=T0_NS + 3600 * NS_PER_S)
    cutoff = datetime.fromtimestamp(T0_NS / NS_PER_S, UTC) + timedelta(minutes=30)

    assert [r.run_id for r in store.list_runs(since=cutoff)] == [later.run_id]
    # A naive datetime is taken as UTC.
    assert [r.run_id for r in store.list_runs(since=cutoff.replace(tzinfo=None))] == [later.run_id]


def test_summary_carries_the_root_span_totals(store: TraceStore, record_run: RunFactory) -> None:
    run = record_run(agent="oncall", tools=2, cost_usd=0.5, task="restart the cache", started_ns=T0_NS)

    (summary,) = store.list_runs()

    assert summary.run_id == run.run_id
    assert summary.trace_id == run.trace_id
    assert summary.agent == "oncall"
    assert summary.stop_reason == "completed"
    assert (summary.turns, summary.tool_calls) == (3, 2)
    assert (summary.input_tokens, summary.output_tokens) == (300, 60)
    assert (summary.cache_read_tokens, summary.cache_write_tokens) == (7, 3)
    assert summary.cost_usd == pytest.approx(0.5)
    assert summary.started_at == datetime.fromtimestamp(T0_NS / NS_PER_S, UTC)
    assert summary.started_at.tzinfo is not None
    assert summary.duration_s > 0
    assert summary.simulated is True
    assert summary.task == "restart the cache"
    assert summary.status == "ok"


def test_unknown_price_gives_no_cost(store: TraceStore, record_run: RunFactory) -> None:
    run = record_run(cost_usd=0.01, cost_known=False)

    assert store.list_runs()[0].cost_usd is None
    assert store.get_run(run.run_id).summary.cost_usd is None


def test_get_run_by_full_id_returns_all_spans_in_start_order(store: TraceStore, record_run: RunFactory) -> None:
    run = record_run(tools=2)
    record_run()  # another run's spans stay out

    trace = store.get_run(run.run_id)

    assert trace.summary.run_id == run.run_id
    assert [s.span_id for s in trace.spans] == [s.span_id for s in sorted(run.spans, key=lambda s: s.start_ns)]
    assert [s.operation for s in trace.spans] == ["invoke_agent", *["chat", "execute_tool"] * 2, "chat"]
    assert all(s.parent_span_id == run.root_span_id for s in trace.spans[1:])


def test_spans_starting_together_are_ordered_by_span_id(store: TraceStore, record_run: RunFactory) -> None:
    run = record_run(tools=0)
    root = run.spans[0]
    twins = [
        replace(root, span_id=span_id, parent_span_id=root.span_id, operation=sc.OP_CHAT, start_ns=root.start_ns + 5)
        for span_id in ("ffff000000000000", "0000ffff00000000")
    ]
    store.write_spans(twins)

    spans = store.get_run(run.run_id).spans

    assert [s.span_id for s in spans if s.start_ns == root.start_ns + 5] == ["0000ffff00000000", "ffff000000000000"]


def test_get_run_accepts_a_unique_prefix(store: TraceStore, record_run: RunFactory) -> None:
    run = record_run("abc123def4567890")
    record_run("abd0000000000000")

    assert store.get_run("abc").summary.run_id == run.run_id


def test_get_run_prefers_an_exact_id_over_longer_ids_it_prefixes(store: TraceStore, record_run: RunFactory) -> None:
    record_run("run-1")
    record_run("run-10")

    assert store.get_run("run-1").summary.run_id == "run-1"


def test_prefix_wildcards_are_taken_literally(store: TraceStore, record_run: RunFactory) -> None:
    record_run("abc123")

    with pytest.raises(RunNotFound):
        store.get_run("a%")
    with pytest.raises(RunNotFound):
        store.get_run("a_c")


def test_unknown_run_is_not_found_with_a_hint(store: TraceStore, record_run: RunFactory) -> None:
    record_run("abc123")

    with pytest.raises(RunNotFound) as caught:
        store.get_run("zz")

    assert isinstance(caught.value, StoreError)
    assert str(caught.value) == "run 'zz' not found: list runs with `tether runs`"


def test_empty_run_id_is_not_found(store: TraceStore, record_run: RunFactory) -> None:
    record_run()

    with pytest.raises(RunNotFound):
        store.get_run("  ")


def test_ambiguous_prefix_names_the_candidates(store: TraceStore, record_run: RunFactory) -> None:
    record_run("ab11111111111111")
    record_run("ab22222222222222")

    with pytest.raises(AmbiguousRunId) as caught:
        store.get_run("ab")

    assert isinstance(caught.value, StoreError)
    assert caught.value.candidates == ["ab11111111111111", "ab22222222222222"]
    assert "ab11111111111111, ab22222222222222" in str(caught.value)
    assert "give more characters" in str(caught.value)


def test_sub_agent_spans_belong_to_the_run_but_do_not_make_it_a_new_one(
    store: TraceStore, record_run: RunFactory
) -> None:
    run = record_run(agent="oncall", tools=1)
    tool_span = run.spans[2]
    parent_tool = replace(tool_span, span_id=new_span_id())
    sub_agent = replace(
        run.spans[0],
        span_id=new_span_id(),
        parent_span_id=parent_tool.span_id,
        name="invoke_agent researcher",
        start_ns=parent_tool.start_ns + 10,
        attributes={**run.spans[0].attributes, sc.GEN_AI_AGENT_NAME: "researcher"},
    )
    store.write_spans([parent_tool, sub_agent])

    runs = store.list_runs()
    trace = store.get_run(run.run_id)

    assert [(r.run_id, r.agent) for r in runs] == [(run.run_id, "oncall")]
    assert trace.summary.agent == "oncall"
    assert sub_agent.span_id in {s.span_id for s in trace.spans}


def test_a_sub_agent_with_its_own_run_id_is_its_own_run(store: TraceStore, record_run: RunFactory) -> None:
    parent = record_run(agent="oncall", started_ns=T0_NS)
    parent_tool = parent.spans[2]
    child = Run(run_id="child-run", agent="researcher", trace_id=parent.trace_id, started_ns=T0_NS + 1_000_000)
    child_root, *child_rest = child.spans
    # The child run's root hangs under the parent run's tool call, in the parent's trace.
    store.write_spans([replace(child_root, parent_span_id=parent_tool.span_id), *child_rest])

    assert [r.run_id for r in store.list_runs()] == ["child-run", parent.run_id]
    assert store.get_run("child-run").summary.agent == "researcher"


def test_a_run_with_two_parentless_roots_is_listed_once_by_its_first(store: TraceStore, record_run: RunFactory) -> None:
    run = record_run(agent="oncall", started_ns=T0_NS)
    stray = replace(
        run.spans[0],
        span_id=new_span_id(),
        start_ns=T0_NS + 5,
        attributes={**run.spans[0].attributes, sc.GEN_AI_AGENT_NAME: "stray"},
    )
    store.write_spans([stray])

    assert [(r.run_id, r.agent) for r in store.list_runs()] == [(run.run_id, "oncall")]
    assert store.get_run(run.run_id).summary.agent == "oncall"
