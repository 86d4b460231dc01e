"""The agent loop.

One run: ask the model, run the tools it asks for, feed the results back, until
the model answers without tools or a limit ends the run. Every run ends with
exactly one ``StopReason``; every model call and tool call is a span under the
run's ``invoke_agent`` span.

A model call that fails (a provider error, the gateway refusing) ends the run
with ``error`` (or ``budget_exceeded``) and returns its result. Any other
exception out of the loop (a missing API key, a model or done-condition that
raises) ends the run too, with stop reason ``error``, ``error.type`` and the
scrubbed message on the root span, status ERROR, and then propagates to the
caller: no run that started is left without an end.

The loop never lets a tool failure or malformed model output escape: an unknown
tool, arguments that fail the schema, or arguments that are not JSON are
answered with a structured error the model can read, and counted as
hallucinated tool calls.

A call waiting for a person's approval through a parking approver
(``ApprovalStore.parking_approver()``, which raises ``RunParked``) *parks* the run
instead of holding its process: the rest of the batch finishes, the batch's
results are not kept, the checkpoint is saved ``parked`` and the run returns with
StopReason ``parked`` (``RunResult.parked_on`` names the approval). ``resume``
runs the batch again once it is decided: done calls are replayed from the
ledger, the decision is found, the approved call runs once.

With ``budget_tree=`` every model call and tool-call batch is reserved, before it
is made, against this run's limits and every ancestor's
(``tether.runtime.budget_tree``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
from opentelemetry import trace as otel_trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

from tether import semconv as sc
from tether.errors import (
    BudgetExceeded,
    ConfigError,
    GatewayError,
    ModelError,
    StoreError,
    StreamInterrupted,
    UnknownPriceError,
    UserError,
)
from tether.gateway.budget import Reservation
from tether.guard.approvals import RunParked
from tether.guard.durable import DurableRuns
from tether.guard.guard import Guard, RunGuard
from tether.guard.kill import KillSwitch, RunWatch
from tether.guard.types import Decision, Finding, Risk, Verdict
from tether.messages import (
    Message,
    ModelRequest,
    ModelResponse,
    ResponseDone,
    StopReason,
    ToolCall,
    ToolResult,
    Usage,
)
from tether.models import resolve_model
from tether.models.base import Model
from tether.pricing import PRICE_DATA_VERSION, Cost, price_usage
from tether.redaction import default_scrubber
from tether.runtime import delegation
from tether.runtime.budget_tree import BudgetNode, BudgetRefused, BudgetTree, CallBudget
from tether.runtime.delegation import DispatchResult, HandoffLoop, Hop, ParentLink, RunTree
from tether.runtime.limits import Limits
from tether.runtime.tools import Tool, ToolArgumentsError, ToolContext, render_output

__all__ = ["Agent", "RunResult", "RunState", "ToolCallRecord"]


@dataclass
class RunState:
    """What a run has done so far; passed to done-conditions."""

    run_id: str
    agent: str
    task: str
    messages: list[Message] = field(default_factory=list)
    turns: int = 0
    tool_calls: int = 0
    hallucinated_tool_calls: int = 0
    tool_errors: int = 0
    usage: Usage = field(default_factory=Usage)
    cost_usd: Decimal = Decimal(0)
    cost_known: bool = True
    last_call: tuple[str, bytes] | None = None
    repeats: int = 0
    last_batch: tuple[tuple[str, bytes], ...] | None = None
    batch_repeats: int = 0
    guard_denials: int = 0
    guard: RunGuard | None = None
    turn_spend: list[tuple[int, Decimal]] = field(default_factory=list)  # (tokens, USD) per model call
    tree: RunTree | None = None
    handoff_loop: HandoffLoop | None = None
    tool_log: list[ToolCallRecord] = field(default_factory=list)
    response_models: dict[str, None] = field(default_factory=dict)  # in order of first answer
    #: The first approval a call of the current batch waits for (``RunParked``): the run parks after the batch.
    parked: Exception | None = None
    #: The budget chain (ancestors first, this run last) and where it is reserved; None: no budget tree.
    budget: tuple[BudgetNode, ...] = ()
    budget_tree: BudgetTree | None = None


@dataclass(frozen=True, slots=True)
class ToolCallRecord:
    """One tool call the model asked for, and what became of it (what evals score trajectories on).

    Attributes:
        turn: the model call that asked for it.
        name: the tool the model named (perhaps one that does not exist).
        arguments: the arguments as the model sent them (empty when they were not JSON).
        risk: the tool's risk class; None for an unknown tool.
        decision: the guard's final verdict (``allowed``, ``approved``, ``denied``, ``rejected``…);
            None when the call never reached the guard (unknown tool, bad arguments, replayed).
        executed: the tool function ran (or its done outcome was replayed from the ledger).
        is_error: the model was answered with an error.
        hallucinated: an unknown tool or arguments that do not fit its schema.
        findings: the kinds of detector findings on its output (``prompt_injection``…).
        output: what the model was told (scrubbed).
    """

    turn: int
    call_id: str
    name: str
    arguments: dict[str, Any]
    risk: str | None = None
    decision: str | None = None
    executed: bool = False
    is_error: bool = False
    hallucinated: bool = False
    findings: tuple[str, ...] = ()
    output: str = ""


@dataclass
class _CallNote:
    risk: str | None = None
    decision: str | None = None
    executed: bool = False
    findings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RunResult:
    """The outcome of one run."""

    run_id: str
    trace_id: str
    agent: str
    stop_reason: StopReason
    output: str
    turns: int
    tool_calls: int
    hallucinated_tool_calls: int
    usage: Usage
    cost_usd: Decimal | None
    duration_s: float
    messages: tuple[Message, ...]
    error: str | None = None
    #: Every tool call of the run, in the order the model asked for them.
    tool_log: tuple[ToolCallRecord, ...] = ()
    #: The models that answered (as the providers named them, e.g. a dated version), in order.
    response_models: tuple[str, ...] = ()
    #: For a ``parked`` run: the approval it waits for (``resume`` it once that is decided).
    parked_on: str | None = None
    #: The run tree's handoffs when the run ended (those it joined with included).
    hops: tuple[Hop, ...] = ()
    #: What this run and the sub-runs under it spent, tokens and dollars (exact for a run at the top of its
    #: process's tree: a top-level run, or one a worker started with a ``ParentLink``).
    tree_tokens: int = 0
    tree_cost_usd: Decimal = Decimal(0)

    @property
    def ok(self) -> bool:
        return self.stop_reason in (StopReason.COMPLETED, StopReason.DONE_CONDITION)

    def dispatched(self, worker: str | None = None) -> DispatchResult:
        """This result as a ``Dispatcher`` hands it back to the calling run."""
        return DispatchResult(
            run_id=self.run_id,
            ok=self.ok,
            stop_reason=self.stop_reason.value,
            output=self.output,
            error=self.error,
            worker=worker,
            cost_usd=self.tree_cost_usd if self.cost_usd is not None else None,
            tokens=self.tree_tokens,
            hops=self.hops,
        )


def _parked(exc: BaseException) -> str | None:
    """The approval id of a ``RunParked`` (the guard's parking approver, or a dispatcher's), else None."""
    return exc.approval_id if isinstance(exc, RunParked) else None


def _record_decision(span: Span, decision: Decision, risk: str) -> None:
    """The guard's decision on the tool's span (a later decision, e.g. an approval, overwrites it)."""
    attributes: dict[str, AttributeValue] = {
        sc.TETHER_TOOL_RISK: risk,
        sc.TETHER_GUARD_DECISION: decision.verdict.value,
        sc.TETHER_GUARD_REASON: decision.reason,
    }
    if decision.rule is not None:
        attributes[sc.TETHER_GUARD_RULE] = decision.rule
    span.set_attributes(attributes)
    if decision.verdict is Verdict.NEEDS_APPROVAL:
        span.add_event("tether.guard.approval_requested", {"reason": decision.reason})


class _Stop(Exception):
    def __init__(self, reason: StopReason, error: str | None = None, error_type: str | None = None) -> None:
        self.reason = reason
        self.error = error
        self.error_type = error_type  # the exception class that ended the run, for ``error.type``


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"…[{len(text) - limit} more chars]"


def _describe(exc: BaseException) -> str:
    """``Type: message`` of an exception that ended a run (scrubbed where it is recorded)."""
    message = str(exc)
    return f"{type(exc).__qualname__}: {message}" if message else type(exc).__qualname__


def _error_payload(kind: str, message: str, **extra: Any) -> str:
    return orjson.dumps({"error": kind, "message": message, **extra}).decode()


class Agent:
    """An LLM agent: a model, instructions, tools and limits.

    Args:
        name: the agent's name (``gen_ai.agent.name`` on its spans).
        model: a ``Model`` or a reference such as ``"sim:claude-sonnet-4-5"``
            or ``"anthropic:claude-sonnet-4-5"``.
        instructions: the system prompt.
        tools: ``Tool`` objects (from ``@tool``).
        limits: run limits; defaults are on.
        done_condition: ends the run with ``done_condition`` as soon as it
            returns True (checked after every turn).
        max_tokens: output tokens per model call.
        temperature: sampling temperature, or None for the provider default.
        stream: call the model with streaming (a cut stream is an error, never success).
        tracer: OpenTelemetry tracer; the global one by default (a no-op until a provider is
            installed, e.g. ``configure_tracing(store, set_global=True)``). ``tether.open()``'s
            agents get its tracer.
        payload_chars: cap on tool input/output and task text kept on spans.
        guard: authorizes every tool call before it runs (policy, risk, taint) and scans untrusted
            tool output; by default ``Guard()``: the agent's own tools, irreversible ones refused
            unless an approver is configured.
        kill_switch: ends a run with StopReason ``killed`` when a kill targets it, its agent or all runs
            (``tether kill``, the HTTP endpoint, a kill file), even while it waits on a model call.
        durable: checkpoints each step and keeps write/irreversible tool calls in an exactly-once
            ledger, so ``resume(run_id)`` continues the run in any process without repeating a done call.
        budget_tree: reserves each model call and tool-call batch, before it is made, against this run's
            limits and those of every run above it (``tether.runtime.budget_tree``): sub-runs count against
            their callers. Without one, an in-process sub-run uses its caller's, and any run
            ``budget_tree.current_budget_tree`` (a worker sets it); with none at all, only the run's own
            limits count, checked locally, as before.
    """

    def __init__(
        self,
        name: str,
        model: Model | str,
        *,
        instructions: str = "",
        tools: Iterable[Tool] = (),
        limits: Limits | None = None,
        done_condition: Callable[[RunState], bool] | None = None,
        max_tokens: int = 4096,
        temperature: float | None = None,
        stream: bool = False,
        tracer: Tracer | None = None,
        payload_chars: int = sc.MAX_PAYLOAD_CHARS,
        guard: Guard | None = None,
        kill_switch: KillSwitch | None = None,
        durable: DurableRuns | None = None,
        budget_tree: BudgetTree | None = None,
    ) -> None:
        self.name = name
        self.model = resolve_model(model) if isinstance(model, str) else model
        self.instructions = instructions
        self.tools: dict[str, Tool] = {}
        for t in tools:
            if not isinstance(t, Tool):
                raise TypeError(f"{t!r} is not a Tool: decorate the function with @tool")
            if t.name in self.tools:
                raise ValueError(f"two tools are named {t.name!r}: tool names must be unique per agent")
            self.tools[t.name] = t
        self.limits = limits or Limits()
        self.done_condition = done_condition
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.stream = stream
        self._tracer = tracer
        self.payload_chars = payload_chars
        self._specs = tuple(t.spec for t in self.tools.values())
        self.guard = guard or Guard()
        self.kill_switch = kill_switch
        self.durable = durable
        self.budget_tree = budget_tree
        #: Extra metadata sent with every model request (e.g. ``{"cache": "bypass"}`` from the eval runner).
        self.request_metadata: dict[str, str] = {}
        self.guard.bind(name, self.tools)

    def add_tool(self, tool: Tool) -> None:
        """Give the agent one more tool — e.g. a peer's ``as_tool()`` in a mesh of agents that call each other.

        Raises:
            ValueError: the agent has a tool of that name already.
            PolicyError: the guard's policy does not fit the new set of tools.
        """
        if not isinstance(tool, Tool):
            raise TypeError(f"{tool!r} is not a Tool: decorate the function with @tool")
        if tool.name in self.tools:
            raise ValueError(f"agent {self.name} has a tool named {tool.name!r} already")
        tools = {**self.tools, tool.name: tool}
        self.guard.bind(self.name, tools)
        self.tools = tools
        self._specs = tuple(t.spec for t in tools.values())

    def as_tool(self, *, name: str | None = None, description: str | None = None, risk: Risk = "read") -> Tool:
        """This agent as a tool another agent can call: each call is a sub-run of this agent.

        The sub-run has its own run id, limits and guard, and its trace hangs under the caller's
        tool span. It answers with its output; a sub-run that does not complete is a failed tool
        call the caller's model is told about. Handoffs are watched across the whole run tree: two
        agents bouncing the work back and forth ``Limits.max_handoff_bounces`` times end every run
        on the chain with ``loop_detected``.

        With a ``delegation.Dispatcher`` in ``delegation.current_dispatcher`` (a worker sets one), the
        sub-run is sent through it — to run on any worker, joined to this run's tree by a ``ParentLink``
        — under a run id derived from this run, turn and tool call; otherwise it runs in this task.

        Args:
            name: the tool's name (default: ``ask_<agent name>``).
            description: what the calling model is told (default: from the agent's name and instructions).
            risk: the guard's risk class for the handoff itself (the sub-agent's own tools are guarded
                by its own guard).
        """
        agent = self

        async def delegate(task: str, context: ToolContext) -> str:
            """Hand a task to the agent.

            Args:
                task: what the agent should do, with everything it needs to know.
            """
            frame = delegation.current_frame()
            if frame is not None:
                frame.tree.handoff(context.agent, agent.name, max_bounces=frame.max_bounces, run_id=context.run_id)
                dispatcher = delegation.current_dispatcher.get()
                if dispatcher is not None:
                    # Run elsewhere (a worker): the sub-run joins this tree through its ParentLink.
                    return await delegation.dispatch(
                        dispatcher, frame, agent.name, task, turn=context.turn, call_id=context.call_id
                    )
            result = await agent.run(task)
            tree = delegation.current_tree()
            if tree is not None and tree.loop is not None:
                raise tree.loop
            if not result.ok:
                raise RuntimeError(
                    f"agent {agent.name} stopped with {result.stop_reason.value}"
                    + (f": {result.error}" if result.error else "")
                )
            return result.output

        tool_name = name or "ask_" + re.sub(r"[^a-zA-Z0-9_-]", "_", agent.name)[:60]
        if description is None:
            summary = agent.instructions.strip().split("\n", 1)[0][:300]
            description = f"Hand a task to the {agent.name} agent; it answers with its result." + (
                f" It is instructed: {summary}" if summary else ""
            )
        handoff = Tool(delegate, name=tool_name, description=description, risk=risk)
        handoff.delegates_to = agent
        return handoff

    @property
    def tracer(self) -> Tracer:
        return self._tracer or otel_trace.get_tracer("tether")

    @tracer.setter
    def tracer(self, tracer: Tracer | None) -> None:
        self._tracer = tracer

    def run_sync(self, task: str, *, run_id: str | None = None, parent: ParentLink | None = None) -> RunResult:
        """``run`` for code that has no event loop."""
        return asyncio.run(self.run(task, run_id=run_id, parent=parent))

    async def run(self, task: str, *, run_id: str | None = None, parent: ParentLink | None = None) -> RunResult:
        """Run the agent on ``task`` until it answers, a limit stops it, or it parks.

        Args:
            task: what to do.
            run_id: the run's id (default: a new 16-hex id).
            parent: for a sub-run started by another process (a worker running a sub-agent call): the
                caller's tree to join — depth, parent id, the handoffs so far (bounces are detected
                across processes) and the budget chain.
        """
        state = RunState(run_id=run_id or uuid.uuid4().hex[:16], agent=self.name, task=task)
        state.guard = RunGuard(state.run_id, self.name)
        state.messages.append(Message.user(task))
        return await self._run(state, resumed=False, link=parent)

    async def resume(self, run_id: str, *, parent: ParentLink | None = None) -> RunResult:
        """Continue a run from its checkpoint — in this process or another one after a restart.

        A tool call the ledger has as done is not run again (its output is replayed); one whose
        outcome is unknown (the process died while it ran) goes to the guard's approver, never a
        blind retry. A ``parked`` run continues with the batch it parked in: the call whose approval
        is decided now gets its decision, the batch's done calls are replayed. Needs ``durable=``.
        ``parent``: as for ``run``, the link the run was started with.

        Raises:
            ConfigError: the agent has no ``durable`` store.
            UnknownRun: no checkpoint has this run id.
            UserError: the run finished already, or belongs to another agent.
        """
        if self.durable is None:
            raise ConfigError("resume needs a durable store: Agent(..., durable=DurableRuns(store))")
        checkpoint = await asyncio.to_thread(self.durable.load, run_id)
        if checkpoint.agent != self.name:
            raise UserError(f"run {run_id} belongs to agent {checkpoint.agent!r}, not {self.name!r}")
        if checkpoint.status == "finished":
            raise UserError(f"run {run_id} finished already; nothing to resume")
        saved = checkpoint.state
        state = RunState(run_id=run_id, agent=self.name, task=saved["task"])
        state.messages = [Message.model_validate(m) for m in saved["messages"]]
        state.turns = saved["turns"]
        state.tool_calls = saved["tool_calls"]
        state.hallucinated_tool_calls = saved["hallucinated_tool_calls"]
        state.tool_errors = saved["tool_errors"]
        state.usage = Usage.model_validate(saved["usage"])
        state.cost_usd = Decimal(saved["cost_usd"])
        state.cost_known = saved["cost_known"]
        state.guard = RunGuard(run_id, self.name, tainted_by=saved.get("tainted_by"))
        return await self._run(state, resumed=True, link=parent)

    async def _checkpoint(self, state: RunState, status: str) -> None:
        if self.durable is None:
            return
        snapshot = {
            "task": state.task,
            "messages": [m.model_dump(mode="json") for m in state.messages],
            "turns": state.turns,
            "tool_calls": state.tool_calls,
            "hallucinated_tool_calls": state.hallucinated_tool_calls,
            "tool_errors": state.tool_errors,
            "usage": state.usage.model_dump(mode="json"),
            "cost_usd": str(state.cost_usd),
            "cost_known": state.cost_known,
            "tainted_by": state.guard.tainted_by if state.guard is not None else None,
        }
        # Scrubbed like everything else that is stored: tool outputs reach it scrubbed already.
        await asyncio.to_thread(self.durable.save, state.run_id, self.name, status, snapshot)

    def _budget_node(self, run_id: str) -> BudgetNode:
        limits = self.limits
        return BudgetNode(
            run_id=run_id,
            agent=self.name,
            max_tokens=limits.max_tokens,
            max_cost_usd=limits.max_cost_usd,
            max_turns=limits.max_turns,
            max_tool_calls=limits.max_tool_calls,
        )

    async def _run(self, state: RunState, *, resumed: bool, link: ParentLink | None = None) -> RunResult:
        frame, token = delegation.enter(
            state.run_id,
            self.name,
            self.limits.max_handoff_bounces,
            link=link,
            node=self._budget_node(state.run_id),
            budget_tree=self.budget_tree,
        )
        state.tree = frame.tree
        state.budget, state.budget_tree = frame.budget, frame.budget_tree
        try:
            return await self._traced_run(state, frame, resumed=resumed)
        finally:
            delegation.leave(token)

    async def _traced_run(self, state: RunState, frame: delegation.Frame, *, resumed: bool) -> RunResult:
        started = time.perf_counter()
        tracer = self.tracer
        attributes: dict[str, AttributeValue] = {}
        if frame.parent_run_id is not None:
            attributes = {
                sc.TETHER_PARENT_RUN_ID: frame.parent_run_id,
                sc.TETHER_RUN_DEPTH: frame.depth,
                sc.TETHER_ROOT_RUN_ID: frame.tree.root_run_id,
            }
        tree_tokens, tree_cost = frame.tree.tokens, frame.tree.cost_usd
        with tracer.start_as_current_span(
            sc.span_name(sc.OP_INVOKE_AGENT, self.name),
            kind=otel_trace.SpanKind.INTERNAL,
            attributes={
                sc.GEN_AI_OPERATION_NAME: sc.OP_INVOKE_AGENT,
                sc.GEN_AI_AGENT_NAME: self.name,
                sc.GEN_AI_AGENT_ID: self.name,
                sc.GEN_AI_CONVERSATION_ID: state.run_id,
                sc.TETHER_RUN_ID: state.run_id,
                sc.GEN_AI_PROVIDER_NAME: self.model.provider,
                sc.GEN_AI_REQUEST_MODEL: self.model.model_name,
                sc.TETHER_SIMULATED: self.model.simulated,
                sc.TETHER_TASK: _cap(state.task, self.payload_chars),
                sc.TETHER_RESUMED: resumed,
                **attributes,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            output = ""
            error: str | None = None
            error_type: str | None = None
            try:
                finished = False
                watch: RunWatch | None = None
                async with contextlib.AsyncExitStack() as stack:
                    if self.kill_switch is not None:
                        # A kill cancels this task wherever it waits (a model call, a tool); the watch takes
                        # its own cancellation back, so the run ends here as killed, its trace kept.
                        watch = await stack.enter_async_context(
                            self.kill_switch.watch(run_id=state.run_id, agent=self.name)
                        )
                    async with asyncio.timeout(self.limits.timeout_s):
                        output = await self._loop(state, tracer)
                        finished = True
                if watch is not None and watch.killed and not finished:
                    reason, error = StopReason.KILLED, watch.reason or "killed"
                else:
                    reason = StopReason.COMPLETED
            except _Stop as stop:
                reason, error, error_type = stop.reason, stop.error, stop.error_type
            except TimeoutError:
                reason, error = StopReason.TIMEOUT, f"run exceeded its {self.limits.timeout_s:g} s wall-clock limit"
            except asyncio.CancelledError:
                self._finish(span, state, StopReason.KILLED, "", "run was cancelled", started)
                raise
            except Exception as exc:
                # Anything else (a model that raises what it should not, a missing API key, a bug in a
                # done-condition): the run still ends, as an error with the exception on its root span,
                # and the caller still gets the exception.
                self._finish(span, state, StopReason.ERROR, "", _describe(exc), started, type(exc).__qualname__)
                with contextlib.suppress(Exception):  # the exception matters more than a failed checkpoint
                    await self._checkpoint(state, "finished")
                raise
            if reason in (StopReason.COMPLETED, StopReason.DONE_CONDITION) and not output:
                output = state.messages[-1].text if state.messages[-1].role == "assistant" else ""
            parked_on = _parked(state.parked) if reason is StopReason.PARKED and state.parked else None
            if parked_on is not None:
                span.set_attribute(sc.TETHER_PARKED_ON, parked_on)
            self._finish(span, state, reason, output, error, started, error_type)
            trace_id = format(span.get_span_context().trace_id, "032x")
        if reason is not StopReason.PARKED:
            # A parked run keeps the checkpoint "parked" that the loop saved: it is not over.
            await self._checkpoint(state, "finished")
        return RunResult(
            run_id=state.run_id,
            trace_id=trace_id,
            agent=self.name,
            stop_reason=reason,
            output=output,
            turns=state.turns,
            tool_calls=state.tool_calls,
            hallucinated_tool_calls=state.hallucinated_tool_calls,
            usage=state.usage,
            cost_usd=state.cost_usd if state.cost_known else None,
            duration_s=time.perf_counter() - started,
            messages=tuple(state.messages),
            error=error,
            tool_log=tuple(state.tool_log),
            response_models=tuple(state.response_models),
            parked_on=parked_on,
            hops=tuple(frame.tree.hops),
            tree_tokens=frame.tree.tokens - tree_tokens,
            tree_cost_usd=frame.tree.cost_usd - tree_cost,
        )

    def _finish(
        self,
        span: Span,
        state: RunState,
        reason: StopReason,
        output: str,
        error: str | None,
        started: float,
        error_type: str | None = None,
    ) -> None:
        span.set_attributes(
            {
                sc.TETHER_STOP_REASON: reason.value,
                sc.TETHER_TURNS: state.turns,
                sc.TETHER_TOOL_CALLS: state.tool_calls,
                sc.TETHER_HALLUCINATED_TOOL_CALLS: state.hallucinated_tool_calls,
                sc.GEN_AI_USAGE_INPUT_TOKENS: state.usage.input_tokens,
                sc.GEN_AI_USAGE_OUTPUT_TOKENS: state.usage.output_tokens,
                sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: state.usage.cache_read_tokens,
                sc.GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS: state.usage.cache_write_tokens,
                sc.TETHER_COST_USD: float(state.cost_usd),
                sc.TETHER_COST_KNOWN: state.cost_known,
                sc.TETHER_PRICE_VERSION: PRICE_DATA_VERSION,
                sc.TETHER_OUTPUT: _cap(output, self.payload_chars),
            }
        )
        if error:
            span.set_attribute(sc.TETHER_ERROR_MESSAGE, _cap(default_scrubber().scrub(error), self.payload_chars))
        if error_type is not None:
            span.set_attribute(sc.ERROR_TYPE, error_type)
        if reason in (StopReason.ERROR, StopReason.TIMEOUT, StopReason.KILLED):
            span.set_status(Status(StatusCode.ERROR, _cap(default_scrubber().scrub(error or reason.value), 1024)))
        else:
            span.set_status(Status(StatusCode.OK))

    async def _loop(self, state: RunState, tracer: Tracer) -> str:
        limits = self.limits
        while True:
            last = state.messages[-1]
            # A resumed run whose checkpoint ends with the model's tool calls runs that batch first.
            calls = last.tool_calls if last.role == "assistant" else []
            if not calls:
                if state.turns >= limits.max_turns:
                    raise _Stop(StopReason.MAX_TURNS, f"reached max_turns={limits.max_turns}")
                self._check_spend(state)
                state.turns += 1
                request = ModelRequest(
                    model=self.model.model_name,
                    messages=tuple(state.messages),
                    system=self.instructions or None,
                    tools=self._specs,
                    max_tokens=self.max_tokens,
                    temperature=self.temperature,
                    metadata=self._metadata(state),
                )
                response = await self._chat(request, state, tracer)
                state.messages.append(response.to_message())
                calls = response.tool_calls
                if not calls:
                    return response.text
                await self._checkpoint(state, "running")

            remaining = limits.max_tool_calls - state.tool_calls
            allowed, refused = calls[:remaining], calls[remaining:]
            counts = (state.tool_calls, state.hallucinated_tool_calls, state.tool_errors)
            held = await self._reserve_tools(state, len(allowed)) if state.budget_tree is not None else None
            if isinstance(held, BudgetRefused):
                # Not one call of the batch is made: a run above (or this one) has used its tool calls.
                state.messages.append(
                    Message(
                        role="user",
                        content=tuple(
                            ToolResult(
                                call_id=c.id, name=c.name, output=_error_payload("budget", str(held)), is_error=True
                            ).to_block()
                            for c in calls
                        ),
                    )
                )
                await self._checkpoint(state, "running")
                raise _Stop(StopReason.BUDGET_EXCEEDED, str(held), type(held).__qualname__)
            try:
                results = await asyncio.gather(*(self._execute(call, state, tracer) for call in allowed))
            except BaseException:
                if state.budget_tree is not None:
                    await state.budget_tree.release_tools(held)
                raise
            if state.budget_tree is not None:
                if state.parked is not None and state.handoff_loop is None:
                    await state.budget_tree.release_tools(held)  # the batch runs (and is counted) again on resume
                else:
                    await state.budget_tree.settle_tools(held, len(allowed))
            if state.parked is not None and state.handoff_loop is None:
                # A call waits for a person: the batch's results are not kept, so the checkpoint stays at the
                # model's tool calls and ``resume`` runs the batch again (done calls replayed from the ledger,
                # the decided approval found). Its counts are taken back: they are counted again then.
                state.tool_calls, state.hallucinated_tool_calls, state.tool_errors = counts
                await self._checkpoint(state, "parked")
                approval = _parked(state.parked)
                raise _Stop(
                    StopReason.PARKED,
                    f"parked: waiting for a decision on approval {approval}; the run resumes once it is decided",
                )
            results.extend(
                ToolResult(
                    call_id=c.id,
                    name=c.name,
                    output=_error_payload("limit", f"not run: the run's tool-call limit ({limits.max_tool_calls})"),
                    is_error=True,
                )
                for c in refused
            )
            state.messages.append(Message(role="user", content=tuple(r.to_block() for r in results)))
            await self._checkpoint(state, "running")
            if state.handoff_loop is not None:
                loop = state.handoff_loop
                if loop.run_id == state.run_id:
                    otel_trace.get_current_span().set_attributes(
                        {
                            sc.TETHER_LOOP_WASTED_TOKENS: loop.wasted_tokens,
                            sc.TETHER_LOOP_WASTED_COST_USD: float(loop.wasted_cost_usd),
                        }
                    )
                raise _Stop(StopReason.LOOP_DETECTED, str(loop))
            if refused:
                raise _Stop(StopReason.MAX_TOOL_CALLS, f"reached max_tool_calls={limits.max_tool_calls}")
            self._check_loop(state, allowed)
            if self.done_condition is not None and self.done_condition(state):
                raise _Stop(StopReason.DONE_CONDITION)

    def _metadata(self, state: RunState) -> dict[str, str]:
        metadata = {**self.request_metadata, "run_id": state.run_id, "agent": self.name}
        if self.limits.max_cost_usd is not None:
            metadata["run_budget_usd"] = str(self.limits.max_cost_usd)
        if self.limits.max_tokens is not None:
            metadata["run_budget_tokens"] = str(self.limits.max_tokens)
        return metadata

    def _check_spend(self, state: RunState) -> None:
        """Stop before a model call once the run has used its tokens or dollars."""
        limits = self.limits
        if limits.max_tokens is not None and state.usage.total_tokens >= limits.max_tokens:
            raise _Stop(
                StopReason.BUDGET_EXCEEDED,
                f"the run used {state.usage.total_tokens:,} tokens of its max_tokens={limits.max_tokens:,}",
            )
        if limits.max_cost_usd is not None and state.cost_usd >= limits.max_cost_usd:
            raise _Stop(
                StopReason.BUDGET_EXCEEDED,
                f"the run spent ${state.cost_usd:.4f} of its max_cost_usd=${limits.max_cost_usd}",
            )

    def _check_loop(self, state: RunState, calls: Sequence[ToolCall]) -> None:
        if len(calls) > 1:
            # The same batch of parallel calls, turn after turn: its calls alternate, so the per-call check
            # below never sees a repeat.
            batch = tuple(sorted((c.name, orjson.dumps(c.arguments, option=orjson.OPT_SORT_KEYS)) for c in calls))
            state.batch_repeats = state.batch_repeats + 1 if batch == state.last_batch else 1
            state.last_batch = batch
            if state.batch_repeats >= self.limits.max_repeated_tool_calls:
                self._stop_loop(state, state.batch_repeats, f"the same {len(calls)} parallel calls were made")
        else:
            state.last_batch, state.batch_repeats = None, 0
        for call in calls:
            key = (call.name, orjson.dumps(call.arguments, option=orjson.OPT_SORT_KEYS))
            if key == state.last_call:
                state.repeats += 1
            else:
                state.last_call, state.repeats = key, 1
            if state.repeats >= self.limits.max_repeated_tool_calls:
                self._stop_loop(state, state.repeats, f"{call.name} called", " with the same arguments")

    def _stop_loop(self, state: RunState, repeats: int, what: str, how: str = "") -> None:
        # The turns after the first of the repeated calls bought nothing: what they cost is waste.
        wasted = state.turn_spend[-(repeats - 1) :]
        tokens = sum(t for t, _ in wasted)
        cost = sum((c for _, c in wasted), Decimal(0))
        otel_trace.get_current_span().set_attributes(
            {sc.TETHER_LOOP_WASTED_TOKENS: tokens, sc.TETHER_LOOP_WASTED_COST_USD: float(cost)}
        )
        raise _Stop(
            StopReason.LOOP_DETECTED,
            f"{what} {repeats} times in a row{how} ({tokens:,} tokens, ${cost:.4f} wasted on the repeats)",
        )

    async def _chat(self, request: ModelRequest, state: RunState, tracer: Tracer) -> ModelResponse:
        budget = state.budget_tree
        if budget is None:
            return await self._call_model(request, state, tracer)
        held = await self._reserve_call(budget, request, state)
        try:
            response = await self._call_model(request, state, tracer)
        except BaseException:
            await budget.release_call(held)
            raise
        await budget.settle_call(held, usd=state.turn_spend[-1][1], tokens=response.usage.total_tokens)
        return response

    async def _reserve_call(self, budget: BudgetTree, request: ModelRequest, state: RunState) -> CallBudget:
        """Reserve the call's worst case on every run of the chain, or end the run ``budget_exceeded``."""
        try:
            return await budget.reserve_call(
                state.budget, request, price_ref=self.model.price_ref, model=self.model.model_name
            )
        except BudgetRefused as exc:
            otel_trace.get_current_span().set_attribute(sc.TETHER_BUDGET_REFUSED_BY, exc.node.run_id)
            raise _Stop(StopReason.BUDGET_EXCEEDED, str(exc), type(exc).__qualname__) from None
        except (StoreError, GatewayError) as exc:
            # Fail closed: a call the ledger cannot vouch for is not made.
            message = f"the budget ledger could not reserve the model call, so it was not made: {exc}"
            raise _Stop(StopReason.ERROR, message, type(exc).__qualname__) from None

    async def _reserve_tools(self, state: RunState, calls: int) -> Reservation | BudgetRefused | None:
        """Reserve a batch of tool calls on every run of the chain; a ``BudgetRefused`` when one has no room."""
        assert state.budget_tree is not None
        try:
            return await state.budget_tree.reserve_tools(state.budget, calls)
        except BudgetRefused as exc:
            otel_trace.get_current_span().set_attribute(sc.TETHER_BUDGET_REFUSED_BY, exc.node.run_id)
            return exc
        except (StoreError, GatewayError) as exc:
            message = f"the budget ledger could not reserve the tool calls, so none was made: {exc}"
            raise _Stop(StopReason.ERROR, message, type(exc).__qualname__) from None

    async def _call_model(self, request: ModelRequest, state: RunState, tracer: Tracer) -> ModelResponse:
        model = self.model
        attributes: dict[str, AttributeValue] = {
            sc.GEN_AI_OPERATION_NAME: sc.OP_CHAT,
            sc.GEN_AI_PROVIDER_NAME: model.provider,
            sc.GEN_AI_REQUEST_MODEL: model.model_name,
            sc.GEN_AI_REQUEST_MAX_TOKENS: request.max_tokens,
            sc.TETHER_RUN_ID: state.run_id,
            sc.TETHER_TURN: state.turns,
        }
        if model.simulated:
            attributes[sc.TETHER_SIMULATED] = True
        span = tracer.start_span(
            sc.span_name(sc.OP_CHAT, model.model_name), kind=SpanKind.CLIENT, attributes=attributes
        )
        try:
            try:
                # Current while the call runs, so the gateway's routing decisions land on it.
                with otel_trace.use_span(
                    span, end_on_exit=False, record_exception=False, set_status_on_exception=False
                ):
                    response = await (self._stream(request) if self.stream else model.complete(request))
            except (ModelError, GatewayError, UnknownPriceError) as exc:
                span.set_attribute(sc.ERROR_TYPE, type(exc).__name__)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                if isinstance(exc, BudgetExceeded):
                    raise _Stop(StopReason.BUDGET_EXCEEDED, str(exc), type(exc).__qualname__) from None
                raise _Stop(StopReason.ERROR, f"model call failed: {exc}", type(exc).__qualname__) from None
            except Exception as exc:
                # Not a provider failure the run can report and return from (a missing API key, a bug):
                # the chat span says what happened, and the run ends as an error (see ``_traced_run``).
                span.set_attribute(sc.ERROR_TYPE, type(exc).__qualname__)
                span.set_status(Status(StatusCode.ERROR, _cap(default_scrubber().scrub(_describe(exc)), 1024)))
                raise
            usage = response.usage
            # The gateway prices at the deployment that answered; a bare model is priced here.
            cost = Cost(usd=response.cost_usd) if response.priced else price_usage(model.price_ref, usage)
            state.usage = state.usage + usage
            state.response_models[response.model] = None
            state.turn_spend.append((usage.total_tokens, cost.usd or Decimal(0)))
            if state.tree is not None:
                state.tree.spend(usage.total_tokens, cost.usd or Decimal(0))
            result: dict[str, AttributeValue] = {
                sc.GEN_AI_RESPONSE_MODEL: response.model,
                sc.GEN_AI_RESPONSE_ID: response.id,
                sc.GEN_AI_RESPONSE_FINISH_REASONS: (response.raw_finish_reason or response.finish_reason.value,),
                sc.GEN_AI_USAGE_INPUT_TOKENS: usage.input_tokens,
                sc.GEN_AI_USAGE_OUTPUT_TOKENS: usage.output_tokens,
                sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: usage.cache_read_tokens,
                sc.GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS: usage.cache_write_tokens,
            }
            # An unknown price is recorded as unknown, never as $0; the price-data
            # version is on the run's root span (one version per process).
            if cost.usd is None:
                state.cost_known = False
                result[sc.TETHER_COST_KNOWN] = False
            else:
                state.cost_usd += cost.usd
                result[sc.TETHER_COST_USD] = float(cost.usd)
            span.set_attributes(result)
            return response
        finally:
            span.end()

    async def _stream(self, request: ModelRequest) -> ModelResponse:
        async for event in self.model.stream(request):
            if isinstance(event, ResponseDone):
                return event.response
        # A stream that ends without its final event is an interruption, never a success.
        raise StreamInterrupted("stream ended without a final response", provider=self.model.provider)

    async def _execute(self, call: ToolCall, state: RunState, tracer: Tracer) -> ToolResult:
        state.tool_calls += 1
        cap = self.payload_chars
        with tracer.start_as_current_span(
            sc.span_name(sc.OP_EXECUTE_TOOL, call.name),
            kind=otel_trace.SpanKind.INTERNAL,
            attributes={
                sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
                sc.GEN_AI_TOOL_NAME: call.name,
                sc.GEN_AI_TOOL_CALL_ID: call.id,
                sc.GEN_AI_TOOL_CALL_ARGUMENTS: _cap(
                    call.raw_arguments
                    if call.raw_arguments is not None
                    else orjson.dumps(call.arguments, option=orjson.OPT_SORT_KEYS).decode(),
                    cap,
                ),
                sc.TETHER_RUN_ID: state.run_id,
                sc.TETHER_TURN: state.turns,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            note = _CallNote()
            result, hallucinated = await self._invoke(call, state, note)
            state.tool_log.append(
                ToolCallRecord(
                    turn=state.turns,
                    call_id=call.id,
                    name=call.name,
                    arguments=dict(call.arguments) if call.raw_arguments is None else {},
                    risk=note.risk,
                    decision=note.decision,
                    executed=note.executed,
                    is_error=result.is_error,
                    hallucinated=hallucinated,
                    findings=tuple(note.findings),
                    output=result.output,
                )
            )
            span.set_attribute(sc.GEN_AI_TOOL_CALL_RESULT, _cap(result.output, cap))
            if result.is_error:
                span.set_attribute(sc.TETHER_TOOL_ERROR, True)
                span.set_status(Status(StatusCode.ERROR, _cap(result.output, 256)))
            if hallucinated:
                state.hallucinated_tool_calls += 1
                span.set_attribute(sc.TETHER_TOOL_HALLUCINATED, True)
                if state.guard is not None:
                    kind = "hallucinated_tool" if call.name not in self.tools else "invalid_arguments"
                    finding = Finding("loop", kind, "medium", f"{call.name}: {_cap(result.output, 300)}")
                    self.guard.report(state.guard, call.name, finding, span)
            return result

    async def _invoke(self, call: ToolCall, state: RunState, note: _CallNote) -> tuple[ToolResult, bool]:
        """Run one call; the flag says whether the call was hallucinated (unknown tool, bad arguments)."""

        def error(kind: str, message: str, **extra: Any) -> ToolResult:
            return ToolResult(
                call_id=call.id, name=call.name, output=_error_payload(kind, message, **extra), is_error=True
            )

        tool = self.tools.get(call.name)
        if tool is None:
            message = f"there is no tool named {call.name!r}"
            return error("unknown_tool", message, available_tools=sorted(self.tools)), True
        if call.raw_arguments is not None:
            message = "arguments are not a JSON object; send the arguments again as valid JSON"
            return error("invalid_arguments", message, received=_cap(call.raw_arguments, 512)), True
        try:
            kwargs = tool.validate(call.arguments)
        except ToolArgumentsError as exc:
            return error("invalid_arguments", str(exc), problems=exc.problems, schema=tool.spec.input_schema), True
        # The guard decides before anything runs; a call it does not allow never reaches the tool.
        note.risk = tool.risk
        span = otel_trace.get_current_span()
        assert state.guard is not None
        # Calls with effects go through the ledger: one it has as done is replayed, never run twice.
        effects = self.durable if self.durable is not None and tool.risk != "read" else None
        key = f"{state.run_id}:{state.turns}:{call.id}"
        prior = await asyncio.to_thread(effects.effect, key) if effects is not None else None
        if prior is not None and prior.state in ("done", "failed"):
            span.set_attribute(sc.TETHER_TOOL_REPLAYED, True)
            note.executed = True
            return ToolResult(
                call_id=call.id, name=call.name, output=prior.output or "", is_error=bool(prior.is_error)
            ), False
        decision = self.guard.authorize(state.guard, tool.name, tool.risk, call.arguments)
        # The ledger attempt whose unknown outcome a person must review before the call runs again; 0: none.
        review = 0
        if prior is not None and decision.verdict in (Verdict.ALLOWED, Verdict.NEEDS_APPROVAL):
            # Left "intent" or "started" by a run that stopped: it may or may not have happened. This is a
            # new decision (keyed by the attempt), never answered by the call's first approval.
            review = prior.attempt
            decision = Decision(
                Verdict.NEEDS_APPROVAL,
                f"an earlier attempt at this {tool.name} call may have run (the outcome is unknown: the process "
                f"stopped before attempt {review} was recorded as done): a person must check before it runs again",
                rule="ledger",
            )
        if decision.verdict is Verdict.NEEDS_APPROVAL:
            _record_decision(span, decision, tool.risk)
            self.guard.record(state.guard, tool.name, call.id, call.arguments, decision, span)
            about = {"task": _cap(state.task, 500), "turn": state.turns}
            try:
                decision = await self.guard.decide(
                    state.guard, tool.name, call.id, call.arguments, decision, about, turn=state.turns, attempt=review
                )
            except Exception as exc:
                approval = _parked(exc)
                if approval is None:
                    raise
                return self._park(state, exc, approval, note, span, call), False
        _record_decision(span, decision, tool.risk)
        self.guard.record(state.guard, tool.name, call.id, call.arguments, decision, span)
        note.decision = decision.verdict.value
        if not decision.allowed:
            state.guard_denials += 1
            kind = "approval_rejected" if decision.verdict is Verdict.REJECTED else "denied"
            return error(kind, decision.reason), False
        secrets, refused = self.guard.secrets_for(self.name, tool.name, tool.secrets)
        if refused is not None:
            state.guard_denials += 1
            span.set_attributes({sc.TETHER_GUARD_DECISION: Verdict.DENIED.value, sc.TETHER_GUARD_REASON: refused})
            note.decision = Verdict.DENIED.value
            return error("denied", refused), False
        context = ToolContext(run_id=state.run_id, agent=self.name, turn=state.turns, call_id=call.id, secrets=secrets)
        scrub = self.guard.scrubber.scrub
        attempt = review + 1
        if effects is not None:
            owned = await asyncio.to_thread(
                effects.intend,
                key,
                run_id=state.run_id,
                agent=self.name,
                tool=tool.name,
                arguments=call.arguments,
                attempt=attempt,
            )
            if not owned:
                # Another process resuming the same run made or claimed this attempt: running it here too
                # could make the effect twice.
                message = f"this {tool.name} call (attempt {attempt}) was taken by another process; not run here"
                return error("conflict", message), False
            await asyncio.to_thread(effects.mark, key, "started", attempt=attempt)
        note.executed = True
        try:
            value = await tool.run(kwargs, context)
        except Exception as exc:
            approval = _parked(exc) if effects is None else None
            if approval is None:
                return await self._failed(exc, call, state, effects, key, attempt, error)
            # A sub-agent call whose sub-run waits for a person (a dispatcher that does not hold this run).
            note.executed = False
            return self._park(state, exc, approval, note, span, call), False
        # Secrets never reach the model: a tool that echoes one gives back its name instead.
        output = scrub(render_output(value))
        if effects is not None:
            await asyncio.to_thread(effects.mark, key, "done", output=output, is_error=False, attempt=attempt)
        for finding in self.guard.inspect(state.guard, tool.name, output, untrusted=tool.untrusted_output):
            self.guard.report(state.guard, tool.name, finding, span)
            note.findings.append(finding.kind)
            span.add_event(
                sc.EVENT_GUARD_FINDING,
                {
                    "detector": finding.detector,
                    "kind": finding.kind,
                    "severity": finding.severity,
                    "message": finding.message,
                    "evidence": finding.evidence[:200],
                },
            )
        if state.guard.tainted_by is not None:
            span.set_attribute(sc.TETHER_GUARD_TAINTED, True)
        return ToolResult(call_id=call.id, name=call.name, output=output), False

    def _park(
        self, state: RunState, exc: Exception, approval: str, note: _CallNote, span: Span, call: ToolCall
    ) -> ToolResult:
        """A call that waits for a person: the run parks once the rest of its batch is done."""
        if state.parked is None:
            state.parked = exc
        note.decision = StopReason.PARKED.value
        span.set_attribute(sc.TETHER_PARKED_ON, approval)
        message = f"waiting for a decision on approval {approval}"
        return ToolResult(call_id=call.id, name=call.name, output=_error_payload("parked", message), is_error=True)

    async def _failed(
        self,
        exc: Exception,
        call: ToolCall,
        state: RunState,
        effects: DurableRuns | None,
        key: str,
        attempt: int,
        error: Callable[..., ToolResult],
    ) -> tuple[ToolResult, bool]:
        """A tool that raised: a bounce between agents ends the run; anything else the model is told."""
        if isinstance(exc, HandoffLoop):
            # Agents bouncing work between them: this run ends too, once the batch it is in is done.
            state.handoff_loop = exc
            if effects is not None:
                await asyncio.to_thread(effects.mark, key, "failed", output=str(exc), is_error=True, attempt=attempt)
            return error("loop_detected", str(exc)), False
        # A failing tool is the model's information, not the run's end: it can retry or change course.
        state.tool_errors += 1
        failed: ToolResult = error("tool_failed", self.guard.scrubber.scrub(f"{type(exc).__name__}: {exc}"))
        if effects is not None:
            await asyncio.to_thread(effects.mark, key, "failed", output=failed.output, is_error=True, attempt=attempt)
        return failed, False
