"""One budget tree for a run and every sub-run it starts, on any worker.

Every run has a node: its run id, agent and limits (``Limits.max_tokens``,
``max_cost_usd``, ``max_turns``, ``max_tool_calls``). A run's *chain* is its
ancestors' nodes, root first, then its own. With a ``BudgetTree`` each model
call and each batch of tool calls is **reserved before it is made** on every
node of the chain, through the gateway's ``BudgetLedger`` (all nodes or none),
and settled with the real usage after: a child's tokens, dollars, model calls
and tool calls count against each ancestor's limits. Ten children running in
parallel therefore cannot together overshoot their parent — each of their calls
waits for room that the ledger grants atomically — and a limit is never checked
only at launch. The chain travels in ``ParentLink.budget``, so a child on
another worker reserves against the same scopes; give the workers a shared
ledger (``SqlBudgetLedger`` on the store, or the Redis one).

**Scopes** (``BudgetScope`` kind ``run``, lifetime period), per node:

* ``<run id>``: tokens (input + output) and dollars, limits ``max_tokens`` and
  ``max_cost_usd`` (none when both are unset);
* ``<run id>/turns``: model calls, counted in the ledger's **tokens** column
  (one "token" per call), limit ``max_turns``;
* ``<run id>/tools``: tool calls, likewise counted as tokens, limit ``max_tool_calls``.

**A model call's reservation** is an upper bound of what it can be billed, as
the gateway bounds a call (``tether.gateway.bound``): one token per UTF-8 byte
of the request (messages, system prompt, tool definitions, plus framing), capped
at the model's context window when known, plus the call's ``max_tokens`` of
output; dollars are that worst case priced at the model's ``price_ref``. A model
with no known price reserves (and settles) $0: the dollar limits cannot be
checked for it, while its tokens are still bounded. The turn and money scopes
are reserved one after the other; a refusal of the second gives the first back,
so a call is charged to all of them or to none (a concurrent call may see the
first briefly held and be refused: fail closed, never an overshoot).

**Tool calls** are reserved per batch (the batch's allowed calls at once), and
given back when the run parks (the batch runs again on resume).

**Which tree a run uses**: its agent's ``Agent(budget_tree=...)``; else, for an
in-process sub-run, its caller's; else ``current_budget_tree`` (a worker sets it
around the runs it executes, so a sub-run on a worker counts against its
ancestors whatever its agent was built with); else none — only the run's own
limits, checked locally. Reservations left by a process that died mid-call are
ended by the ledger's ``sweep_stale`` (as spent: fail closed).
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tether.config import BudgetLimit
from tether.errors import BudgetExceeded
from tether.gateway.bound import bound_of_request, context_window_of
from tether.gateway.budget import BudgetLedger, BudgetScope, Reservation
from tether.messages import ModelRequest
from tether.pricing import Pricer, PriceRef

__all__ = ["BudgetNode", "BudgetRefused", "BudgetTree", "CallBudget", "current_budget_tree"]


@dataclass(frozen=True, slots=True)
class BudgetNode:
    """One run of a budget chain: its id, agent and the limits its whole subtree must stay within.

    Attributes:
        run_id: the run.
        agent: its agent (named in refusals: "the parent run 3f… (supervisor)").
        max_tokens: ``Limits.max_tokens`` of the run; None for no limit.
        max_cost_usd: ``Limits.max_cost_usd``; None for no limit.
        max_turns: ``Limits.max_turns`` (model calls).
        max_tool_calls: ``Limits.max_tool_calls``.
    """

    run_id: str
    agent: str
    max_tokens: int | None = None
    max_cost_usd: Decimal | None = None
    max_turns: int | None = None
    max_tool_calls: int | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (money as a string, never a float)."""
        return {
            "run_id": self.run_id,
            "agent": self.agent,
            "max_tokens": self.max_tokens,
            "max_cost_usd": str(self.max_cost_usd) if self.max_cost_usd is not None else None,
            "max_turns": self.max_turns,
            "max_tool_calls": self.max_tool_calls,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BudgetNode:
        """The node ``to_json`` gave."""
        cost = data.get("max_cost_usd")
        return cls(
            run_id=str(data["run_id"]),
            agent=str(data["agent"]),
            max_tokens=data.get("max_tokens"),
            max_cost_usd=Decimal(cost) if cost is not None else None,
            max_turns=data.get("max_turns"),
            max_tool_calls=data.get("max_tool_calls"),
        )

    def money_scope(self) -> BudgetScope | None:
        if self.max_tokens is None and self.max_cost_usd is None:
            return None
        return BudgetScope("run", self.run_id, BudgetLimit(usd=self.max_cost_usd, tokens=self.max_tokens))

    def turns_scope(self) -> BudgetScope | None:
        if self.max_turns is None:
            return None
        return BudgetScope("run", f"{self.run_id}/turns", BudgetLimit(tokens=self.max_turns))

    def tools_scope(self) -> BudgetScope | None:
        if self.max_tool_calls is None:
            return None
        return BudgetScope("run", f"{self.run_id}/tools", BudgetLimit(tokens=self.max_tool_calls))


class BudgetRefused(Exception):
    """A reservation a node of the chain had no room for; ``str()`` names the run whose limit it is.

    Attributes:
        node: the run whose limit refused the call.
        limit: which limit: ``max_tokens``, ``max_cost_usd``, ``max_turns`` or ``max_tool_calls``.
    """

    def __init__(self, message: str, *, node: BudgetNode, limit: str) -> None:
        super().__init__(message)
        self.node = node
        self.limit = limit


@dataclass(frozen=True, slots=True)
class CallBudget:
    """What one model call holds until it is settled: its money reservation and its turn reservation."""

    money: Reservation | None
    turns: Reservation | None


def _who(chain: Sequence[BudgetNode], node: BudgetNode) -> str:
    position = next(i for i, n in enumerate(chain) if n.run_id == node.run_id)
    up = len(chain) - 1 - position
    if up == 0:
        kind = "this run"
    elif up == 1:
        kind = "the parent run"
    elif position == 0:
        kind = "the root run"
    else:
        kind = f"the ancestor run ({up} levels up)"
    return f"{kind} {node.run_id} ({node.agent})"


class BudgetTree:
    """Reserves every model and tool call of a run against its own limits and each ancestor's.

    Args:
        ledger: where the counters live: ``MemoryBudgetLedger`` for one process, ``SqlBudgetLedger``
            (the store) or ``RedisBudgetLedger`` for runs spread over workers — the same for every run
            of a tree.
        pricer: prices a call's worst case (configured prices first, genai-prices otherwise).
    """

    def __init__(self, ledger: BudgetLedger, *, pricer: Pricer | None = None) -> None:
        self.ledger = ledger
        self.pricer = pricer or Pricer()

    def bound(self, request: ModelRequest, *, price_ref: PriceRef | None, model: str) -> tuple[int, Decimal | None]:
        """The most tokens and dollars ``request`` can be billed; dollars None when the price is unknown."""
        call = bound_of_request(request)
        window = context_window_of(price_ref)
        input_tokens = call.text_tokens if window is None else min(call.text_tokens, window)
        output = request.max_tokens if window is None else min(request.max_tokens, window)
        worst = self.pricer.max_cost(price_ref, model, input_tokens=input_tokens, max_output_tokens=output)
        return input_tokens + output, worst.usd

    async def reserve_call(
        self, chain: Sequence[BudgetNode], request: ModelRequest, *, price_ref: PriceRef | None, model: str
    ) -> CallBudget:
        """Reserve one model call (its worst case, and one turn) on every node of ``chain``, or on none.

        Raises:
            BudgetRefused: a node has no room; nothing stays reserved.
        """
        tokens, usd = self.bound(request, price_ref=price_ref, model=model)
        money_scopes = [s for n in chain if (s := n.money_scope()) is not None]
        turn_scopes = [s for n in chain if (s := n.turns_scope()) is not None]
        money = await self._reserve(chain, money_scopes, usd=usd or Decimal(0), tokens=tokens)
        try:
            turns = await self._reserve(chain, turn_scopes, usd=Decimal(0), tokens=1)
        except BaseException:
            if money is not None:
                await self.ledger.release(money)
            raise
        return CallBudget(money, turns)

    async def settle_call(self, held: CallBudget, *, usd: Decimal | None, tokens: int) -> None:
        """The call was made: replace its reservations by what it used (unknown dollars settle as $0)."""
        if held.money is not None:
            await self.ledger.settle(held.money, usd=usd or Decimal(0), tokens=tokens)
        if held.turns is not None:
            await self.ledger.settle(held.turns, usd=Decimal(0), tokens=1)

    async def release_call(self, held: CallBudget) -> None:
        """The call was not made (it failed before the provider billed it): give everything back."""
        for reservation in (held.money, held.turns):
            if reservation is not None:
                await self.ledger.release(reservation)

    async def reserve_tools(self, chain: Sequence[BudgetNode], calls: int) -> Reservation | None:
        """Reserve ``calls`` tool calls on every node of ``chain``, or on none.

        Raises:
            BudgetRefused: a node has no room for the batch; nothing stays reserved.
        """
        scopes = [s for n in chain if (s := n.tools_scope()) is not None]
        return await self._reserve(chain, scopes, usd=Decimal(0), tokens=calls) if calls > 0 else None

    async def settle_tools(self, reservation: Reservation | None, calls: int) -> None:
        if reservation is not None:
            await self.ledger.settle(reservation, usd=Decimal(0), tokens=calls)

    async def release_tools(self, reservation: Reservation | None) -> None:
        if reservation is not None:
            await self.ledger.release(reservation)

    async def _reserve(
        self, chain: Sequence[BudgetNode], scopes: list[BudgetScope], *, usd: Decimal, tokens: int
    ) -> Reservation | None:
        if not scopes:
            return None
        try:
            return await self.ledger.reserve(scopes, usd=usd, tokens=tokens)
        except BudgetExceeded as exc:
            raise self._refusal(chain, exc) from None

    @staticmethod
    def _refusal(chain: Sequence[BudgetNode], exc: BudgetExceeded) -> BudgetRefused:
        """Which run's limit refused, in words: "the parent run 3f… (supervisor) has used 9,800 of …"."""
        name = exc.scope.removeprefix("run:")
        run_id, _, what = name.partition("/")
        node = next((n for n in chain if n.run_id == run_id), None)
        if node is None:  # not one of ours: say what the ledger said
            return BudgetRefused(str(exc), node=chain[-1], limit="unknown")
        who = _who(chain, node)
        if what == "turns":
            limit, text = "max_turns", f"{exc.used:,.0f} model calls of its max_turns={exc.limit:,.0f}"
        elif what == "tools":
            limit = "max_tool_calls"
            text = f"{exc.used:,.0f} tool calls of its max_tool_calls={exc.limit:,.0f}"
            text += f" (this batch needs {exc.requested:,.0f})"
        elif exc.unit == "usd":
            limit = "max_cost_usd"
            text = f"${exc.used:.4f} of its max_cost_usd=${exc.limit:g} (this call may cost up to ${exc.requested:.4f})"
        else:
            limit = "max_tokens"
            text = f"{exc.used:,.0f} tokens of its max_tokens={exc.limit:,.0f}"
            text += f" (this call may use up to {exc.requested:,.0f})"
        counted = "" if chain[-1] is node else "; its sub-runs' calls count against it"
        return BudgetRefused(f"{who} has used {text}{counted}", node=node, limit=limit)


#: The budget tree for runs whose agent has none (and no in-process caller with one): set by a worker.
current_budget_tree: contextvars.ContextVar[BudgetTree | None] = contextvars.ContextVar(
    "tether_budget_tree", default=None
)
