"""One budget tree: a child's tokens, dollars, turns and tool calls count against every ancestor.

Each call is reserved before it is made on every run of the chain at once, so ten children running in
parallel cannot together overshoot their parent. The simulated children here report exactly the worst
case of each call as their usage, so without the tree ten of them would spend ten times their bound.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal

import orjson
import pytest

from tests.conftest import postgres_schema
from tether import semconv as sc
from tether.config import BudgetLimit
from tether.gateway.budget import BudgetLedger, BudgetScope, MemoryBudgetLedger, SqlBudgetLedger
from tether.messages import Message, ModelRequest, ModelResponse, StopReason, ToolResultBlock, Usage
from tether.pricing import PriceRef, price_usage
from tether.runtime import Agent, Limits, delegation, tool
from tether.runtime.budget_tree import BudgetNode, BudgetRefused, BudgetTree, current_budget_tree
from tether.runtime.delegation import DispatchResult, ParentLink
from tether.store import open_store
from tether.testing import FunctionModel, SpanCapture, text_response, tool_response

PRICE = PriceRef("anthropic", "claude-sonnet-4-5")
CHILDREN = 10


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def ledger(request: pytest.FixtureRequest, tmp_path: object, postgres_url: str) -> AsyncIterator[BudgetLedger]:
    kind = str(request.param)
    if kind == "memory":
        yield MemoryBudgetLedger()
        return
    if kind == "sqlite":
        with open_store(f"sqlite:///{tmp_path}/budget.db") as store:
            sql = SqlBudgetLedger(store)
            yield sql
            await sql.aclose()
        return
    with postgres_schema(postgres_url) as url, open_store(url) as store:
        sql = SqlBudgetLedger(store)
        yield sql
        await sql.aclose()


@pytest.fixture
def capture() -> Iterator[SpanCapture]:
    cap = SpanCapture()
    yield cap
    cap.shutdown()


def results(request: ModelRequest) -> list[str]:
    last = request.messages[-1]
    return [b.content for b in last.content if isinstance(b, ToolResultBlock)] if last.role == "user" else []


def worst_usage(tree: BudgetTree, request: ModelRequest) -> Usage:
    """The most tokens the call can be billed, as its usage."""
    tokens, _ = tree.bound(request, price_ref=PRICE, model="claude-sonnet-4-5")
    return Usage(input_tokens=tokens - request.max_tokens, output_tokens=request.max_tokens)


def worst_case_child(tree: BudgetTree, *, delay_s: float = 0.05) -> FunctionModel:
    """A slow child model billed exactly the most its call can be billed."""

    async def answer(request: ModelRequest) -> ModelResponse:
        await asyncio.sleep(delay_s)
        return text_response("checked", usage=worst_usage(tree, request))

    return FunctionModel(answer, model_name="claude-sonnet-4-5", price_ref=PRICE)


def fanning_out(tool_name: str, tree: BudgetTree | None = None) -> FunctionModel:
    """A supervisor model that asks ten workers at once, then answers with what came back."""

    def answer(request: ModelRequest) -> ModelResponse:
        got = results(request)
        if got:
            return text_response(f"{sum(g == 'checked' for g in got)} checked")
        calls = [(tool_name, {"task": f"check shard {i}"}, f"c{i}") for i in range(CHILDREN)]
        return tool_response(*calls, usage=worst_usage(tree, request) if tree is not None else None)

    return FunctionModel(answer, model_name="claude-sonnet-4-5", price_ref=PRICE)


def child_bound(tree: BudgetTree, worker: Agent) -> tuple[int, Decimal]:
    """What one child's call reserves."""
    request = ModelRequest(
        model="claude-sonnet-4-5", messages=(Message.user("check shard 0"),), max_tokens=worker.max_tokens
    )
    tokens, usd = tree.bound(request, price_ref=PRICE, model="claude-sonnet-4-5")
    assert usd is not None
    return tokens, usd


def first_call_spend(tree: BudgetTree, supervisor: Agent) -> tuple[int, Decimal]:
    """What the supervisor's first call is billed (its worst case, priced as billed)."""
    request = ModelRequest(
        model="claude-sonnet-4-5",
        messages=(Message.user("check every shard"),),
        tools=tuple(t.spec for t in supervisor.tools.values()),
        max_tokens=supervisor.max_tokens,
    )
    usage = worst_usage(tree, request)
    usd = price_usage(PRICE, usage).usd
    assert usd is not None
    return usage.total_tokens, usd


class Fleet:
    """A fake dispatcher: each child runs as on another worker (fresh context, the link through JSON).

    Like a worker, it sets ``current_budget_tree`` (on the shared ledger) around the runs it executes.
    """

    def __init__(self, agent: Agent, tree: BudgetTree) -> None:
        self.agent = agent
        self.tree = BudgetTree(tree.ledger)  # another worker's tree object, on the same ledger

    async def call(self, agent: str, task: str, *, run_id: str, parent: ParentLink) -> DispatchResult:
        link = ParentLink.from_json(orjson.loads(orjson.dumps(parent.to_json())))
        context = contextvars.Context()
        context.run(current_budget_tree.set, self.tree)
        run = asyncio.create_task(self.agent.run(task, run_id=run_id, parent=link), context=context)
        return (await run).dispatched()


@pytest.mark.parametrize("limit", ["max_tokens", "max_cost_usd"])
@pytest.mark.parametrize("where", ["in-process", "dispatched"])
async def test_ten_parallel_children_cannot_overshoot_their_parent(
    ledger: BudgetLedger, capture: SpanCapture, limit: str, where: str
) -> None:
    tree = BudgetTree(ledger)
    # No budget tree of its own: in-process it uses its caller's, on a "worker" the worker's.
    worker = Agent("worker", worst_case_child(tree), max_tokens=100, tracer=capture.tracer)
    probe = Agent("supervisor", fanning_out("ask_worker"), tools=[worker.as_tool()], max_tokens=200)
    (child_tokens, child_usd), (first_tokens, first_usd) = child_bound(tree, worker), first_call_spend(tree, probe)
    # Room for the supervisor's first call and three and a half children's: not for ten.
    limits = (
        Limits(max_tokens=first_tokens + child_tokens * 7 // 2)
        if limit == "max_tokens"
        else Limits(max_cost_usd=first_usd + child_usd * 7 / 2)
    )
    supervisor = Agent(
        "supervisor",
        fanning_out("ask_worker", tree),
        tools=[worker.as_tool()],
        max_tokens=200,
        limits=limits,
        tracer=capture.tracer,
        budget_tree=tree,
    )

    token = delegation.current_dispatcher.set(Fleet(worker, tree) if where == "dispatched" else None)
    try:
        result = await supervisor.run("check every shard", run_id="sup-budget")
    finally:
        delegation.current_dispatcher.reset(token)

    usage = await ledger.usage(BudgetScope("run", "sup-budget", BudgetLimit(tokens=1)))
    assert usage.reserved_tokens == 0 and usage.reserved_usd == 0  # everything settled or given back
    if limit == "max_tokens":
        assert limits.max_tokens is not None and usage.spent_tokens <= limits.max_tokens
    else:
        assert limits.max_cost_usd is not None and usage.spent_usd <= limits.max_cost_usd
    children = [
        s for s in capture.by_operation(sc.OP_INVOKE_AGENT) if (s.attributes or {})[sc.GEN_AI_AGENT_NAME] == "worker"
    ]
    stops = [str((s.attributes or {})[sc.TETHER_STOP_REASON]) for s in children]
    assert len(stops) == CHILDREN
    assert stops.count("completed") == 3  # three fit; their calls ran side by side
    assert stops.count("budget_exceeded") == CHILDREN - 3
    refused = next(s for s in children if (s.attributes or {})[sc.TETHER_STOP_REASON] == "budget_exceeded")
    message = str((refused.attributes or {})[sc.TETHER_ERROR_MESSAGE])
    assert message.startswith("the parent run sup-budget (supervisor) has used"), message
    assert f"of its {limit}=" in message
    assert (refused.attributes or {})[sc.TETHER_BUDGET_REFUSED_BY] == "sup-budget"
    # The supervisor itself has no room left for its answer: its own limit ends it, named as its own.
    assert result.stop_reason is StopReason.BUDGET_EXCEEDED
    assert (result.error or "").startswith("this run sup-budget (supervisor) has used")


async def test_a_childs_turns_count_against_the_parents_max_turns(capture: SpanCapture) -> None:
    tree = BudgetTree(MemoryBudgetLedger())
    worker = Agent("worker", worst_case_child(tree, delay_s=0.01), max_tokens=100, tracer=capture.tracer)
    supervisor = Agent(
        "supervisor",
        fanning_out("ask_worker"),
        tools=[worker.as_tool()],
        limits=Limits(max_turns=4),
        tracer=capture.tracer,
        budget_tree=tree,  # the worker, with none of its own, uses its caller's
    )

    result = await supervisor.run("check every shard", run_id="sup-turns")

    # One turn of its own, then ten children of one turn each: three fit in max_turns=4, and no fifth call.
    assert result.stop_reason is StopReason.BUDGET_EXCEEDED
    assert "this run sup-turns (supervisor) has used 4 model calls of its max_turns=4" in (result.error or "")
    stops = [
        str((s.attributes or {})[sc.TETHER_STOP_REASON])
        for s in capture.by_operation(sc.OP_INVOKE_AGENT)
        if (s.attributes or {})[sc.GEN_AI_AGENT_NAME] == "worker"
    ]
    assert sorted(stops) == ["budget_exceeded"] * 7 + ["completed"] * 3


async def test_tool_calls_are_reserved_per_batch_against_every_ancestor() -> None:
    tree = BudgetTree(MemoryBudgetLedger())
    chain = (
        BudgetNode("root", "boss", max_tool_calls=5),
        BudgetNode("mid", "lead", max_tool_calls=50),
        BudgetNode("leaf", "worker", max_tool_calls=50),
    )
    held = await tree.reserve_tools(chain, 4)
    await tree.settle_tools(held, 4)
    with pytest.raises(
        BudgetRefused, match=r"the root run root \(boss\) has used 4 tool calls of its max_tool_calls=5"
    ):
        await tree.reserve_tools(chain, 2)
    # All or none: the refused batch left nothing on the other nodes.
    usage = await tree.ledger.usage(BudgetScope("run", "mid/tools", BudgetLimit(tokens=1)))
    assert (usage.spent_tokens, usage.reserved_tokens) == (4, 0)


async def test_an_unknown_price_still_bounds_tokens(capture: SpanCapture) -> None:
    tree = BudgetTree(MemoryBudgetLedger())
    agent = Agent(
        "unpriced",
        FunctionModel(lambda r: text_response("hi")),
        limits=Limits(max_tokens=50, max_cost_usd=Decimal("1")),
        tracer=capture.tracer,
        budget_tree=tree,
    )

    result = await agent.run("hello", run_id="unpriced-1")

    # The call's bound (its bytes + 4,096 output tokens) does not fit 50 tokens: refused before it is made.
    assert result.stop_reason is StopReason.BUDGET_EXCEEDED and result.turns == 1
    assert "max_tokens=50" in (result.error or "")
    assert result.usage.total_tokens == 0


async def test_without_a_budget_tree_nothing_changes(capture: SpanCapture) -> None:
    worker = Agent("worker", FunctionModel(lambda r: text_response("checked")), tracer=capture.tracer)
    supervisor = Agent("supervisor", fanning_out("ask_worker"), tools=[worker.as_tool()], limits=Limits(max_turns=2))

    result = await supervisor.run("check every shard")

    assert result.stop_reason is StopReason.COMPLETED and result.output == "10 checked"


async def test_a_childs_tool_batch_without_room_in_the_parent_is_not_made(capture: SpanCapture) -> None:
    made: list[str] = []

    @tool
    def probe(target: str) -> str:
        """Probe a target."""
        made.append(target)
        return "up"

    def prober(request: ModelRequest) -> ModelResponse:
        if results(request):
            return text_response("probed")
        return tool_response(("probe", {"target": "a"}), ("probe", {"target": "b"}))

    tree = BudgetTree(MemoryBudgetLedger())
    worker = Agent("worker", FunctionModel(prober), tools=[probe], tracer=capture.tracer)
    supervisor = Agent(
        "supervisor",
        FunctionModel(lambda r: text_response("done") if results(r) else tool_response(("ask_worker", {"task": "go"}))),
        tools=[worker.as_tool()],
        limits=Limits(max_tool_calls=2),
        tracer=capture.tracer,
        budget_tree=tree,
    )

    result = await supervisor.run("probe everything", run_id="sup-tools")

    assert result.stop_reason is StopReason.COMPLETED
    assert made == []  # the worker's batch of two did not fit the one call left: none of it ran
    assert "worker stopped with budget_exceeded" in result.messages[-2].content[0].content  # type: ignore[union-attr]
    assert "the parent run sup-tools (supervisor) has used 1 tool calls of its max_tool_calls=2" in str(
        result.messages[-2].content[0].content  # type: ignore[union-attr]
    )
