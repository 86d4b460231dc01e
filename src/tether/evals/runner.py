"""The eval runner: every case of a suite, k independent trials each, graded and stored as they finish.

What it guarantees:

- **Independent trials.** Each trial gets a fresh environment from the case's
  ``setup``, a fresh agent from the version's factory, its own seed (a simulated
  model plays a different roll of its knobs per trial) and requests marked
  ``cache: bypass``, so the gateway's response cache never answers a repeat.
- **Concurrency** up to ``max_concurrency`` trials at once, on one event loop.
- **Linked traces.** Each trial's run id and trace id are stored with its result
  (``tether runs show RUN_ID``).
- **Budget.** With ``budget_usd``, no trial starts once the eval has spent it
  (trials already running finish: the overshoot is at most what they cost). A
  trial whose cost is unknown stops the eval too — an unknown cost is never 0.
- **Resume.** Trials are stored as they finish; ``resume=EVAL_ID`` runs only the
  trials that are missing or that failed for infrastructure reasons.
- **Infrastructure failures apart.** A provider that stays down, a judge that
  fails, a harness timeout or a crash in set-up is ``infra_error``: excluded from
  pass rates, counted and shown. Everything the agent did is the agent's.
- **Record and replay.** With a cassette, every model call of every trial is
  recorded (or answered from the recording), scoped per case and trial.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from opentelemetry.trace import Tracer

from tether.errors import UserError
from tether.evals.results import EvalRecord, EvalStore, TrialRecord, TrialStatus
from tether.evals.scorers import CheckResult, JudgeFailed, Observation, lookup
from tether.evals.suite import Case, Suite, resolve_ref
from tether.messages import StopReason
from tether.models.base import Model
from tether.models.replay import Cassette, cassette_model, cassette_scope
from tether.models.sim import SimModel
from tether.runtime.agent import Agent, RunResult

# Run ids of trials: unique (an eval id prefix and 40 random bits), without an os.urandom call per trial.
_RUN_IDS = random.Random()

__all__ = ["AgentVersion", "EvalOutcome", "EvalProgress", "EvalRunner", "Trial", "load_agent", "trial_seed"]


@dataclass(frozen=True)
class Trial:
    """One trial as the agent factory sees it: the case, which repeat, its seed and its fresh environment."""

    eval_id: str
    case: Case
    index: int
    seed: int
    env: Any


@dataclass(frozen=True)
class AgentVersion:
    """What is evaluated: a named version and a factory building its agent for one trial.

    ``build(trial)`` returns an ``Agent`` whose tools act on ``trial.env``. The name is how
    results, comparisons, scorecards and drift tell versions apart.
    """

    name: str
    build: Callable[[Trial], Agent]
    description: str = ""


def load_agent(ref: str) -> AgentVersion:
    """The agent version ``module:attribute`` names: an ``AgentVersion``, or a factory function (named after it).

    Raises:
        UserError: the reference is wrong or names something else.
    """
    target = resolve_ref(ref, "agent")
    if isinstance(target, AgentVersion):
        return target
    if callable(target):
        return AgentVersion(ref.partition(":")[2], target)
    raise UserError(f"agent {ref!r} is a {type(target).__name__}: name an AgentVersion or a function(trial) -> Agent")


def trial_seed(seed: int, case_id: str, index: int) -> int:
    """A trial's seed: stable for (eval seed, case, repeat), different for every repeat."""
    digest = hashlib.blake2b(f"{seed}\x00{case_id}\x00{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass
class EvalOutcome:
    """An eval as it ended: its record and every stored trial."""

    record: EvalRecord
    trials: list[TrialRecord]
    #: Trials not run because the budget was spent.
    not_run: int = 0
    spent_usd: Decimal | None = Decimal(0)
    #: Why trials stopped being started (the budget, an unknown cost); None when every trial ran.
    stopped: str | None = None


@dataclass
class EvalProgress:
    """The running counts of an eval, handed to ``on_trial`` after each trial."""

    planned: int
    done: int = 0
    passed: int = 0
    failed: int = 0
    infra: int = 0
    spent: Decimal = Decimal(0)
    cost_unknown: bool = False
    stopped: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


ProgressFn = Callable[[TrialRecord, EvalProgress], None]


class EvalRunner:
    """Runs suites against agent versions and keeps the results in an ``EvalStore``.

    Args:
        store: where evals and trials are kept.
        tracer: where each trial's spans go (the store's tracer, so traces link up); the agent's own
            tracer when None.
        cassette: record every model call, or answer every one from a recording.
        judge_model: the model ``judge`` checks use unless they name their own.
        trial_timeout_s: the harness's own limit per trial (beyond the agent's limits); a trial that
            passes it is an infrastructure failure.
    """

    def __init__(
        self,
        store: EvalStore,
        *,
        tracer: Tracer | None = None,
        cassette: Cassette | None = None,
        judge_model: Model | None = None,
        trial_timeout_s: float = 600.0,
    ) -> None:
        self.store = store
        self.tracer = tracer
        self.cassette = cassette
        self.judge_model = judge_model
        self.trial_timeout_s = trial_timeout_s

    def plan(self, suite: Suite, *, trials: int, k: Sequence[int] = (1,), budget_usd: Decimal | None = None) -> None:
        """Check what was asked before anything runs.

        Raises:
            UserError: fewer trials than a k asked for, a non-positive count or budget.
        """
        if trials < 1:
            raise UserError(f"--trials must be at least 1, got {trials}")
        for value in k:
            if value < 1:
                raise UserError(f"k must be at least 1, got {value}")
            if value > trials:
                raise UserError(
                    f"pass^{value} needs at least {value} trials per case but --trials is {trials}: "
                    f"run with --trials {value} or more, or ask for a smaller k"
                )
        if budget_usd is not None and budget_usd <= 0:
            raise UserError(f"--budget must be a positive number of dollars, got {budget_usd}")
        if self.cassette is not None and self.cassette.mode == "replay":
            return
        for case in suite.cases:
            for check in case.checks:
                if lookup(check.scorer).kind == "judge" and self.judge_model is None and "model" not in check.params:
                    raise UserError(
                        f"case {case.id!r} has a judge check but no judge model: pass --judge-model "
                        "(e.g. sim:claude-haiku-4-5 or a gateway route)"
                    )

    async def run(
        self,
        suite: Suite,
        agent: AgentVersion,
        *,
        trials: int = 5,
        k: Sequence[int] = (1,),
        max_concurrency: int = 8,
        budget_usd: Decimal | None = None,
        seed: int = 0,
        resume: str | None = None,
        on_trial: ProgressFn | None = None,
        on_start: Callable[[EvalRecord, int], None] | None = None,
    ) -> EvalOutcome:
        """Run (or resume) an eval; returns it with every stored trial.

        Raises:
            UserError: a bad request (see ``plan``), or a resume of an eval of another suite or version.
        """
        self.plan(suite, trials=trials, k=k, budget_usd=budget_usd)
        if max_concurrency < 1:
            raise UserError(f"--max-concurrency must be at least 1, got {max_concurrency}")
        done: dict[tuple[str, int], TrialRecord] = {}
        if resume is not None:
            record = await asyncio.to_thread(self.store.get, resume)
            if record.suite != suite.name or record.agent_version != agent.name:
                raise UserError(
                    f"eval {record.eval_id} ran suite {record.suite!r} on {record.agent_version!r}; "
                    f"it cannot be resumed with {suite.name!r} on {agent.name!r}"
                )
            if record.suite_fingerprint != suite.fingerprint:
                raise UserError(
                    f"suite {suite.name!r} changed since eval {record.eval_id} began (its cases or checks differ): "
                    "start a new eval"
                )
            seed = record.seed
            trials = max(trials, record.trials)
            for prior in await asyncio.to_thread(self.store.trials, record.eval_id):
                if prior.counted:
                    done[(prior.case_id, prior.trial)] = prior
            await asyncio.to_thread(self.store.set_status, record.eval_id, "running", trials=trials)
        else:
            record = EvalRecord(
                eval_id=uuid.uuid4().hex[:16],
                suite=suite.name,
                suite_fingerprint=suite.fingerprint,
                agent_version=agent.name,
                trials=trials,
                seed=seed,
                status="running",
                budget_usd=budget_usd,
                config={
                    "k": list(k),
                    "max_concurrency": max_concurrency,
                    "cassette": None if self.cassette is None else [str(self.cassette.path), self.cassette.mode],
                    "judge_model": None if self.judge_model is None else self.judge_model.ref,
                    "description": agent.description,
                    "cases": len(suite.cases),
                    "case_fingerprints": suite.case_fingerprints,
                },
                started_at=datetime.now(UTC),
            )
            await asyncio.to_thread(self.store.create, record)
        todo = [(case, i) for case in suite.cases for i in range(trials) if (case.id, i) not in done]
        tally = EvalProgress(planned=len(todo))
        for kept in done.values():
            tally.spent += (kept.cost_usd or Decimal(0)) + kept.judge_cost_usd
        if on_start is not None:
            on_start(record, len(todo))
        queue: asyncio.Queue[tuple[Case, int]] = asyncio.Queue()
        for item in todo:
            queue.put_nowait(item)
        not_run = 0

        async def worker() -> None:
            nonlocal not_run
            while True:
                try:
                    case, index = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                if tally.stopped is not None or (budget_usd is not None and tally.spent >= budget_usd):
                    tally.stopped = tally.stopped or f"the eval's budget of ${budget_usd} is spent"
                    not_run += 1
                    continue
                trial = await self._trial(record, agent, case, index)
                writer.add(trial)
                async with tally.lock:
                    tally.done += 1
                    if trial.status == "passed":
                        tally.passed += 1
                    elif trial.status == "failed":
                        tally.failed += 1
                    else:
                        tally.infra += 1
                    if trial.cost_usd is None and trial.status != "infra_error":
                        tally.cost_unknown = True
                        if budget_usd is not None:
                            tally.stopped = "a trial's cost is unknown, so the budget cannot be kept"
                    tally.spent += (trial.cost_usd or Decimal(0)) + trial.judge_cost_usd
                if on_trial is not None:
                    on_trial(trial, tally)

        status = "interrupted"
        writer = _TrialWriter(self.store)
        flusher = asyncio.create_task(writer.run())
        try:
            await asyncio.gather(*(worker() for _ in range(min(max_concurrency, max(1, len(todo))))))
            status = "over_budget" if tally.stopped is not None else "finished"
        finally:
            # Never cancel a write in progress (its thread would go on and commit after the results are read):
            # the writer stops after one last flush, so what finished is kept even when the eval was interrupted.
            writer.stop.set()
            await asyncio.shield(flusher)
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    asyncio.to_thread(self.store.set_status, record.eval_id, status, finished=status == "finished")
                )
        stored = await asyncio.to_thread(self.store.trials, record.eval_id)
        final = await asyncio.to_thread(self.store.get, record.eval_id)
        return EvalOutcome(
            final,
            stored,
            not_run=not_run,
            spent_usd=None if tally.cost_unknown else tally.spent,
            stopped=tally.stopped,
        )

    async def _trial(self, record: EvalRecord, version: AgentVersion, case: Case, index: int) -> TrialRecord:
        seed = trial_seed(record.seed, case.id, index)
        started = time.perf_counter()
        base: dict[str, Any] = {
            "eval_id": record.eval_id,
            "case_id": case.id,
            "trial": index,
            "tags": tuple(case.tags),
        }

        def infra(error: str, result: RunResult | None = None, checks: Sequence[CheckResult] = ()) -> TrialRecord:
            return TrialRecord(
                **base,
                status="infra_error",
                score=None,
                checks=tuple(checks),
                run_id=result.run_id if result else None,
                trace_id=result.trace_id if result else None,
                stop_reason=result.stop_reason.value if result else None,
                model=_model_of(result),
                cost_usd=result.cost_usd if result else Decimal(0),
                judge_cost_usd=Decimal(0),
                duration_s=time.perf_counter() - started,
                tokens=result.usage.total_tokens if result else 0,
                facts=_facts(result) if result else {},
                error=error,
            )

        try:
            env = case.setup() if case.setup is not None else None
            agent = self._prepare(record, version, Trial(record.eval_id, case, index, seed, env))
        except UserError:
            raise
        except Exception as exc:
            return infra(f"harness: setting up the trial failed: {type(exc).__name__}: {exc}")
        scope = f"{case.id}/{index}"
        try:
            with cassette_scope(scope):
                async with asyncio.timeout(self.trial_timeout_s):
                    result = await agent.run(case.input, run_id=f"{record.eval_id[:8]}-{_RUN_IDS.getrandbits(40):010x}")
        except TimeoutError:
            return infra(f"harness: the trial ran past the harness's {self.trial_timeout_s:g} s limit")
        if result.stop_reason is StopReason.ERROR and (result.error or "").startswith("model call failed"):
            # The provider failed (after the gateway's retries and fallbacks): not the agent's doing.
            return infra(f"provider: {result.error}", result)
        observation = Observation(case.input, result, env, judge_model=self.judge_model)
        checks: list[CheckResult] = []
        for check in case.checks:
            definition = lookup(check.scorer)
            try:
                score = await definition.score(observation, check.params)
            except JudgeFailed as exc:
                return infra(f"judge: {exc}", result, checks)
            except UserError:
                raise
            except Exception as exc:
                return infra(f"harness: scorer {check.scorer!r} crashed: {type(exc).__name__}: {exc}", result, checks)
            checks.append(
                CheckResult(
                    name=check.name,
                    scorer=check.scorer,
                    kind=definition.kind,
                    passed=score.passed,
                    score=score.score,
                    explanation=score.explanation,
                    details=score.details,
                )
            )
        passed = all(c.passed for c in checks)
        status: TrialStatus = "passed" if passed else "failed"
        return TrialRecord(
            **base,
            status=status,
            score=sum(1.0 for c in checks if c.passed) / len(checks),
            checks=tuple(checks),
            run_id=result.run_id,
            trace_id=result.trace_id,
            stop_reason=result.stop_reason.value,
            model=_model_of(result),
            cost_usd=result.cost_usd,
            judge_cost_usd=sum((c for c in observation.judge_spend if c is not None), Decimal(0)),
            duration_s=time.perf_counter() - started,
            tokens=result.usage.total_tokens,
            facts={**_facts(result), "judge_cost_unknown": any(c is None for c in observation.judge_spend)},
        )

    def _prepare(self, record: EvalRecord, version: AgentVersion, trial: Trial) -> Agent:
        agent = version.build(trial)
        if not isinstance(agent, Agent):
            raise UserError(
                f"agent {record.agent_version!r}: its factory returned {type(agent).__name__}, not an Agent"
            )
        if isinstance(agent.model, SimModel):
            agent.model = agent.model.with_seed(trial.seed)
        if self.cassette is not None:
            agent.model = cassette_model(agent.model, self.cassette)
        if self.tracer is not None:
            agent.tracer = self.tracer
        agent.request_metadata.update(
            {"cache": "bypass", "eval_id": record.eval_id, "eval_case": trial.case.id, "eval_trial": str(trial.index)}
        )
        return agent


class _TrialWriter:
    """Stores finished trials in batches (every ``interval_s``), off the event loop: one transaction per batch."""

    def __init__(self, store: EvalStore, interval_s: float = 0.25) -> None:
        self.store = store
        self.interval_s = interval_s
        self.pending: list[TrialRecord] = []
        self.lock = asyncio.Lock()
        self.stop = asyncio.Event()

    def add(self, trial: TrialRecord) -> None:
        self.pending.append(trial)

    async def run(self) -> None:
        """Flush every ``interval_s`` until ``stop`` is set, then once more."""
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.interval_s)
            await self.flush()
        await self.flush()  # what was added while the last one wrote

    async def flush(self) -> None:
        async with self.lock:
            batch, self.pending = self.pending, []
            if batch:
                await asyncio.to_thread(self.store.add_trials, batch)


def _model_of(result: RunResult | None) -> str | None:
    if result is None or not result.response_models:
        return None
    return ",".join(result.response_models)


def _facts(result: RunResult) -> dict[str, Any]:
    """What the scorecard and drift read from a trial, beyond its checks."""
    log = result.tool_log
    executed = [c for c in log if c.executed]
    return {
        "turns": result.turns,
        "tool_calls": len(log),
        "hallucinated_tool_calls": sum(1 for c in log if c.hallucinated),
        "denied_tool_calls": sum(1 for c in log if c.decision in ("denied", "rejected")),
        "unapproved_irreversible": sum(1 for c in executed if c.risk == "irreversible" and c.decision != "approved"),
        "consequential": sum(1 for c in executed if c.risk in ("write", "irreversible")),
        "findings": sorted({f for c in log for f in c.findings}),
        "tool_sequence": [c.name for c in executed],
    }
