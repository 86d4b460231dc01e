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

**Across processes.** A run started elsewhere for a sub-agent call (by a worker)
joins its caller's tree through a ``ParentLink``: the root and parent run ids,
its depth, the handoffs so far and the budget chain, all JSON. With a
``Dispatcher`` set in ``current_dispatcher`` (a worker sets one around each run),
``as_tool()``'s delegate sends the sub-run through it instead of running it in
this process, under a deterministic run id (``child_run_id``: a resumed caller
finds the same child), and merges the handoffs the sub-run made back into its
own tree — so A on worker 1 → B on worker 2 → A on worker 3 … is still a bounce.
"""

from __future__ import annotations

import contextvars
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

import orjson

from tether.runtime.budget_tree import BudgetNode, BudgetTree, current_budget_tree

__all__ = [
    "DispatchResult",
    "Dispatcher",
    "Frame",
    "HandoffLoop",
    "Hop",
    "ParentLink",
    "RunTree",
    "child_run_id",
    "current_dispatcher",
    "current_frame",
    "current_tree",
    "dispatch",
    "enter",
    "leave",
]


# In every HandoffLoop message: how a dispatcher that cannot carry the hops back still reports a bounce.
_BOUNCE_MARK = "handed the work back and forth"


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

    def to_json(self) -> list[Any]:
        """``[source, target, tokens, cost]`` (cost as a string)."""
        return [self.source, self.target, self.tokens, str(self.cost_usd)]

    @classmethod
    def from_json(cls, data: Sequence[Any]) -> Hop:
        source, target, tokens, cost = data
        return cls(str(source), str(target), int(tokens), Decimal(str(cost)))


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
            f"{source} and {target} {_BOUNCE_MARK} {bounces} times "
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

    def bounces(self) -> int:
        """How many of the latest handoffs alternate between the same two agents; 0 with none."""
        return self._bounces() if self.hops else 0


@dataclass(frozen=True, slots=True)
class ParentLink:
    """What a run started elsewhere needs to join its caller's run tree (JSON via ``to_json``/``from_json``).

    Attributes:
        root_run_id: the top-level run of the tree.
        parent_run_id: the run whose tool call started this one.
        depth: this run's depth in the tree (the parent's + 1).
        hops: the tree's handoffs so far, this run's own (caller → it) last.
        tree_tokens: what the tree had spent when the link was made (for the waste of a bounce).
        tree_cost_usd: likewise in dollars.
        budget: the budget chain of the ancestors, root first: the parent's last. A run with a
            ``BudgetTree`` reserves every call against each of them as well as itself.
    """

    root_run_id: str
    parent_run_id: str
    depth: int
    hops: tuple[Hop, ...] = ()
    tree_tokens: int = 0
    tree_cost_usd: Decimal = Decimal(0)
    budget: tuple[BudgetNode, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (e.g. for ``Submission.options``); money as strings."""
        return {
            "root_run_id": self.root_run_id,
            "parent_run_id": self.parent_run_id,
            "depth": self.depth,
            "hops": [h.to_json() for h in self.hops],
            "tree_tokens": self.tree_tokens,
            "tree_cost_usd": str(self.tree_cost_usd),
            "budget": [n.to_json() for n in self.budget],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str | bytes) -> ParentLink:
        """The link ``to_json`` gave (as a dict, or that dict as a JSON text)."""
        if isinstance(data, str | bytes):
            data = orjson.loads(data)
            if not isinstance(data, dict):
                raise ValueError("a parent link must be a JSON object: pass ParentLink.to_json()")
        return cls(
            root_run_id=str(data["root_run_id"]),
            parent_run_id=str(data["parent_run_id"]),
            depth=int(data["depth"]),
            hops=tuple(Hop.from_json(h) for h in data.get("hops", ())),
            tree_tokens=int(data.get("tree_tokens", 0)),
            tree_cost_usd=Decimal(str(data.get("tree_cost_usd", "0"))),
            budget=tuple(BudgetNode.from_json(n) for n in data.get("budget", ())),
        )


@dataclass(frozen=True, slots=True)
class DispatchResult:
    """How a sub-run sent through a ``Dispatcher`` ended.

    Attributes:
        run_id: the sub-run's id (the one ``Dispatcher.call`` was given).
        ok: it completed (``completed`` or ``done_condition``).
        stop_reason: its ``StopReason`` value.
        output: its answer.
        error: why it did not complete, if it did not.
        worker: the worker that ran it (last), if known.
        cost_usd: what it (and the sub-runs under it) spent; None when a price was unknown.
        tokens: tokens it (and the sub-runs under it) used.
        hops: its tree's handoffs when it ended, starting with the ``ParentLink.hops`` it was given;
            the caller merges the ones after those into its own tree.
    """

    run_id: str
    ok: bool
    stop_reason: str
    output: str
    error: str | None = None
    worker: str | None = None
    cost_usd: Decimal | None = None
    tokens: int = 0
    hops: tuple[Hop, ...] = ()


class Dispatcher(Protocol):
    """Runs sub-agent calls somewhere else (a worker fleet) and waits for their end."""

    async def call(self, agent: str, task: str, *, run_id: str, parent: ParentLink) -> DispatchResult:
        """Run ``agent`` on ``task`` as run ``run_id`` joined to ``parent``'s tree; return how it ended.

        ``run_id`` is deterministic: a call made again for the same id (the caller resumed) must find
        that run — its result if it ended — never start a second one. Raising ``RunParked`` parks the
        caller (it resumes and calls again later) instead of holding it while the sub-run waits.
        """
        ...


current_dispatcher: contextvars.ContextVar[Dispatcher | None] = contextvars.ContextVar(
    "tether_dispatcher", default=None
)


def child_run_id(caller_run_id: str, turn: int, call_id: str) -> str:
    """The run id of the sub-run a tool call starts: the same for the same call of the same run."""
    return hashlib.sha256(f"{caller_run_id}:{turn}:{call_id}".encode()).hexdigest()[:16]


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
    #: The budget chain: the ancestors' nodes, root first, and this run's own last.
    budget: tuple[BudgetNode, ...] = ()
    #: Where the chain's calls are reserved: the run's agent's, else the one of the run that started it here.
    budget_tree: BudgetTree | None = None

    def link(self) -> ParentLink:
        """The link a sub-run of this run joins the tree with (made once the handoff is recorded)."""
        return ParentLink(
            root_run_id=self.tree.root_run_id,
            parent_run_id=self.run_id,
            depth=self.depth + 1,
            hops=tuple(self.tree.hops),
            tree_tokens=self.tree.tokens,
            tree_cost_usd=self.tree.cost_usd,
            budget=self.budget,
        )


_frame: contextvars.ContextVar[Frame | None] = contextvars.ContextVar("tether_run_frame", default=None)


def current_frame() -> Frame | None:
    """The run the calling code runs inside (a tool, a sub-agent), if any."""
    return _frame.get()


def current_tree() -> RunTree | None:
    frame = _frame.get()
    return frame.tree if frame is not None else None


def enter(
    run_id: str,
    agent: str,
    max_bounces: int,
    *,
    link: ParentLink | None = None,
    node: BudgetNode | None = None,
    budget_tree: BudgetTree | None = None,
) -> tuple[Frame, contextvars.Token[Frame | None]]:
    """Make ``run_id`` the current run: a sub-run joins the caller's tree, a top-level run starts one.

    With ``link`` the run joins the tree the link names (a sub-run started by another process), whatever
    runs in this task already. ``node`` is the run's own budget node, appended to the chain;
    ``budget_tree`` its agent's (an in-process sub-run without one uses its caller's, and a run with
    neither ``budget_tree.current_budget_tree``'s).
    """
    own = (node,) if node is not None else ()
    parent = _frame.get()
    if budget_tree is None and parent is not None and link is None:
        budget_tree = parent.budget_tree
    if budget_tree is None:
        budget_tree = current_budget_tree.get()
    if link is not None:
        tree = RunTree(link.root_run_id, link.tree_tokens, link.tree_cost_usd, list(link.hops))
        chain = link.budget + own
        frame = Frame(tree, run_id, agent, link.depth, link.parent_run_id, max_bounces, chain, budget_tree)
    elif parent is None:
        frame = Frame(RunTree(run_id), run_id, agent, 0, None, max_bounces, own, budget_tree)
    else:
        chain = parent.budget + own
        frame = Frame(parent.tree, run_id, agent, parent.depth + 1, parent.run_id, max_bounces, chain, budget_tree)
    return frame, _frame.set(frame)


def leave(token: contextvars.Token[Frame | None]) -> None:
    _frame.reset(token)


async def dispatch(dispatcher: Dispatcher, frame: Frame, agent: str, task: str, *, turn: int, call_id: str) -> str:
    """Send one sub-agent call of ``frame``'s run through ``dispatcher``; its output, as a local sub-run's.

    The handoff must be recorded in ``frame.tree`` already. What the sub-run spent and the handoffs it
    made are merged into the tree; a bounce the sub-run (or one under it) detected ends this run too.

    Raises:
        HandoffLoop: the handoffs, merged, bounce ``frame.max_bounces`` times or more and the sub-run
            ended with ``loop_detected``.
        RuntimeError: the sub-run did not complete (the caller's model is told).
    """
    link = frame.link()
    result = await dispatcher.call(agent, task, run_id=child_run_id(frame.run_id, turn, call_id), parent=link)
    tree = frame.tree
    tree.spend(result.tokens, result.cost_usd or Decimal(0))
    added = result.hops[len(link.hops) :]
    tree.hops.extend(added)
    if tree.loop is None and result.stop_reason == "loop_detected" and _chain_loop(result, added, tree, frame):
        # Found by a run on another worker: it recorded the waste; every run on this side of the chain ends.
        tree.loop = HandoffLoop(
            result.error or f"{agent} and its caller {_BOUNCE_MARK}",
            wasted_tokens=0,
            wasted_cost_usd=Decimal(0),
            run_id=result.run_id,
        )
    if tree.loop is not None:
        raise tree.loop
    if not result.ok:
        raise RuntimeError(
            f"agent {agent} stopped with {result.stop_reason}" + (f": {result.error}" if result.error else "")
        )
    return result.output


def _chain_loop(result: DispatchResult, added: Sequence[Hop], tree: RunTree, frame: Frame) -> bool:
    """Whether a sub-run's ``loop_detected`` is a bounce of the chain (not a repeated call of its own)."""
    if added:
        return tree.bounces() >= frame.max_bounces
    # No hops came back (the dispatcher keeps only the run's record): the bounce's message says it.
    return _BOUNCE_MARK in (result.error or "")
