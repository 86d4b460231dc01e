"""Agents that call agents, and the loop detector for handoffs between them.

``Agent.as_tool()`` makes an agent a tool another agent can call (a supervisor
with workers, a hierarchy, a mesh of peers that may ask each other). Each call
starts a *sub-run*: its own run id, limits and guard, its ``invoke_agent`` span
a child of the caller's ``execute_tool`` span, so one trace shows the whole tree.

Every run started inside a sub-run belongs to the same *run tree*, which counts
the tokens and dollars of all its runs and remembers each handoff (caller →
callee). Two agents that keep handing the work back and forth (A→B, B→A, A→B, …)
make no progress however different each request looks, and no single run sees
it: each run makes one call. The tree sees it, and once the same two agents have
bounced ``Limits.max_handoff_bounces`` times in a row the handoff is refused and
every run on the chain ends with StopReason ``loop_detected``, with the tokens
and dollars the bouncing cost recorded on the run that detected it.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from decimal import Decimal

__all__ = ["Frame", "HandoffLoop", "Hop", "RunTree", "current_frame", "current_tree", "enter", "leave"]


class HandoffLoop(Exception):
    """Raised on a handoff that would continue a bounce between two agents; ends every run on the chain."""

    def __init__(self, message: str, *, wasted_tokens: int, wasted_cost_usd: Decimal, run_id: str) -> None:
        super().__init__(message)
        #: The run whose handoff was refused; the waste is recorded on it (once, not on every run of the chain).
        self.run_id = run_id
        self.wasted_tokens = wasted_tokens
        self.wasted_cost_usd = wasted_cost_usd


@dataclass(frozen=True, slots=True)
class Hop:
    """One handoff: ``source`` called ``target``; the tree's spend when it happened."""

    source: str
    target: str
    tokens: int
    cost_usd: Decimal


@dataclass
class RunTree:
    """The runs one top-level run started, directly or through sub-agents.

    Only touched from the event loop its runs share, so it needs no lock.
    """

    root_run_id: str
    tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    hops: list[Hop] = field(default_factory=list)
    #: Set once a bounce is detected: every run on the chain ends ``loop_detected``.
    loop: HandoffLoop | None = None

    def spend(self, tokens: int, cost_usd: Decimal) -> None:
        self.tokens += tokens
        self.cost_usd += cost_usd

    def handoff(self, source: str, target: str, *, max_bounces: int, run_id: str) -> None:
        """Record ``source`` calling ``target``.

        Raises:
            HandoffLoop: the last ``max_bounces`` handoffs, this one included, went back and
                forth between the same two agents.
        """
        if self.loop is not None:
            raise self.loop
        self.hops.append(Hop(source, target, self.tokens, self.cost_usd))
        bounces = self._bounces()
        if bounces < max_bounces:
            return
        # Everything spent since the first handoff of the bounce bought nothing.
        first = self.hops[-bounces]
        tokens, cost = self.tokens - first.tokens, self.cost_usd - first.cost_usd
        self.loop = HandoffLoop(
            f"{source} and {target} handed the work back and forth {bounces} times "
            f"({tokens:,} tokens, ${cost:.4f} spent on the bouncing)",
            wasted_tokens=tokens,
            wasted_cost_usd=cost,
            run_id=run_id,
        )
        raise self.loop

    def _bounces(self) -> int:
        """How many of the latest handoffs alternate between the same two agents (A→B, B→A, A→B …)."""
        hops = self.hops
        last = hops[-1]
        if last.source == last.target:
            # An agent that calls itself bounces with itself.
            count = 0
            for hop in reversed(hops):
                if (hop.source, hop.target) != (last.source, last.target):
                    break
                count += 1
            return count
        count = 1
        expected = (last.target, last.source)
        for hop in reversed(hops[:-1]):
            if (hop.source, hop.target) != expected:
                break
            count += 1
            expected = (expected[1], expected[0])
        return count


@dataclass(frozen=True, slots=True)
class Frame:
    """The run this task is executing: its tree, id and agent."""

    tree: RunTree
    run_id: str
    agent: str
    depth: int
    parent_run_id: str | None
    #: The run's own ``Limits.max_handoff_bounces``: applied to the handoffs it makes.
    max_bounces: int


_frame: contextvars.ContextVar[Frame | None] = contextvars.ContextVar("tether_run_frame", default=None)


def current_frame() -> Frame | None:
    """The run the calling code runs inside (a tool, a sub-agent), if any."""
    return _frame.get()


def current_tree() -> RunTree | None:
    frame = _frame.get()
    return frame.tree if frame is not None else None


def enter(run_id: str, agent: str, max_bounces: int) -> tuple[Frame, contextvars.Token[Frame | None]]:
    """Make ``run_id`` the current run: a sub-run joins the caller's tree, a top-level run starts one."""
    parent = _frame.get()
    if parent is None:
        frame = Frame(RunTree(run_id), run_id, agent, 0, None, max_bounces)
    else:
        frame = Frame(parent.tree, run_id, agent, parent.depth + 1, parent.run_id, max_bounces)
    return frame, _frame.set(frame)


def leave(token: contextvars.Token[Frame | None]) -> None:
    _frame.reset(token)
