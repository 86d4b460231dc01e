"""The eval runner: independent trials, grading, infra failures apart, budget, resume, cassettes, stored results."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest

from tests.store import conftest as store_fixtures
from tether.errors import ModelHTTPError, UserError
from tether.evals import (
    AgentVersion,
    Case,
    EvalRunner,
    EvalStore,
    Suite,
    Trial,
    contains,
    judge,
    outcome,
    required_tools,
)
from tether.evals.report import summarize
from tether.messages import ModelRequest, ModelResponse, Usage
from tether.models.replay import Cassette
from tether.pricing import PriceRef
from tether.runtime import Agent, tool
from tether.store import TraceStore, open_store
from tether.testing import FunctionModel, SpanCapture, text_response, tool_response

backend = store_fixtures.backend
store_url = store_fixtures.store_url

SONNET = PriceRef("anthropic", "claude-sonnet-4-5")


@pytest.fixture
def store(store_url: str) -> Iterator[TraceStore]:
    with open_store(store_url) as opened:
        yield opened


@dataclass
class Estate:
    restarted: list[str] = field(default_factory=list)


def restart_agent(trial: Trial, *, right: float = 1.0, calls: list[ModelRequest] | None = None) -> Agent:
    """An agent that restarts a service: the right one (api) with probability ``right``, seeded per trial."""
    env: Estate = trial.env

    @tool(risk="write")
    def restart(service: str) -> str:
        """Restart a service."""
        env.restarted.append(service)
        return f"{service} restarted"

    rng = random.Random(trial.seed)
    choice = "api" if rng.random() < right else "db"

    def answer(request: ModelRequest) -> ModelResponse:
        if calls is not None:
            calls.append(request)
        usage = Usage(input_tokens=1000, output_tokens=100)
        if len(request.messages) == 1:
            return tool_response(("restart", {"service": choice}), usage=usage)
        return text_response(f"restarted {choice}", usage=usage)

    return Agent("restarter", FunctionModel(answer, price_ref=SONNET), tools=[restart])


def suite(cases: int = 4, **extra: object) -> Suite:
    return Suite(
        "restarts",
        [
            Case(
                f"case-{i}",
                f"api is down ({i})",
                [outcome(lambda e: e.restarted == ["api"], "restarted api only"), contains("restarted")],
                setup=Estate,
                tags=["irreversible"],
            )
            for i in range(cases)
        ],
    )


async def test_trials_are_graded_stored_and_linked_to_their_runs(store: TraceStore) -> None:
    results = EvalStore(store)
    outcome_ = await EvalRunner(results).run(
        suite(), AgentVersion("v1", lambda t: restart_agent(t, right=0.6)), trials=6, k=(1, 3), seed=7
    )

    assert outcome_.record.status == "finished"
    assert len(outcome_.trials) == 24
    stored = results.trials(outcome_.record.eval_id)
    assert [t.to_dict() for t in stored] == [t.to_dict() for t in outcome_.trials]
    for t in stored:
        assert t.run_id and t.trace_id and t.stop_reason == "completed"
        assert t.cost_usd is not None and t.cost_usd > 0
        assert t.facts["tool_sequence"] == ["restart"]
        # Graded on the final state: a restart of db fails the outcome check but not the answer check.
        by_name = {c.name: c for c in t.checks}
        assert by_name["restarted api only"].passed is t.passed
        assert by_name["contains"].passed
        assert t.score == (1.0 if t.passed else 0.5)
    summary = summarize(outcome_.record, stored)
    assert summary.trials == 24
    assert 0 < summary.passes < 24
    assert summary.pass_rate is not None and summary.pass_rate.contains(summary.passes / 24)


async def test_repeats_are_independent_each_trial_gets_its_own_seed_env_and_no_cache(store: TraceStore) -> None:
    seeds: list[int] = []
    envs: list[object] = []
    requests: list[ModelRequest] = []

    def build(trial: Trial) -> Agent:
        seeds.append(trial.seed)
        envs.append(trial.env)
        return restart_agent(trial, calls=requests)

    await EvalRunner(EvalStore(store)).run(suite(cases=2), AgentVersion("v", build), trials=5)

    assert len(set(seeds)) == 10
    assert len({id(e) for e in envs}) == 10
    assert all(r.metadata.get("cache") == "bypass" for r in requests)
    assert {r.metadata["eval_trial"] for r in requests} == {"0", "1", "2", "3", "4"}


async def test_the_same_seed_replays_the_same_outcomes(store: TraceStore) -> None:
    runner = EvalRunner(EvalStore(store))
    version = AgentVersion("v", lambda t: restart_agent(t, right=0.5))
    first = await runner.run(suite(), version, trials=5, seed=3)
    second = await runner.run(suite(), version, trials=5, seed=3)
    other = await runner.run(suite(), version, trials=5, seed=4)

    def statuses(trials: list) -> list[str]:  # type: ignore[type-arg]
        return [t.status for t in trials]

    assert statuses(first.trials) == statuses(second.trials)
    assert statuses(first.trials) != statuses(other.trials)


async def test_trials_run_concurrently_up_to_the_limit(store: TraceStore) -> None:
    running = 0
    peak = 0

    def build(trial: Trial) -> Agent:
        async def slow(request: ModelRequest) -> ModelResponse:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.02)
            running -= 1
            return text_response("restarted nothing")

        return Agent("slow", FunctionModel(slow))

    s = Suite("s", [Case(f"c{i}", "x", [contains("restarted")]) for i in range(6)])
    await EvalRunner(EvalStore(store)).run(s, AgentVersion("v", build), trials=4, max_concurrency=5)

    assert peak == 5


async def test_provider_failures_are_infrastructure_errors_excluded_from_pass_rates(store: TraceStore) -> None:
    def build(trial: Trial) -> Agent:
        if trial.index == 0:

            def down(request: ModelRequest) -> ModelResponse:
                raise ModelHTTPError(503, "overloaded", provider="test")

            return Agent("a", FunctionModel(down))
        return restart_agent(trial)

    out = await EvalRunner(EvalStore(store)).run(suite(cases=3), AgentVersion("v", build), trials=3)
    summary = summarize(out.record, out.trials)

    infra = [t for t in out.trials if t.status == "infra_error"]
    assert len(infra) == 3 and all(t.trial == 0 for t in infra)
    assert all((t.error or "").startswith("provider: model call failed") for t in infra)
    assert summary.infra_errors == 3
    assert summary.trials == 6 and summary.passes == 6
    assert summary.pass_rate is not None and summary.pass_rate.estimate == 1.0


async def test_a_crash_in_setup_and_a_harness_timeout_are_infrastructure_errors(store: TraceStore) -> None:
    def broken() -> Estate:
        raise RuntimeError("fixture database unavailable")

    def build(trial: Trial) -> Agent:
        async def hang(request: ModelRequest) -> ModelResponse:
            await asyncio.sleep(30)
            raise AssertionError("unreachable")

        return Agent("a", FunctionModel(hang))

    s = Suite(
        "s",
        [
            Case("broken", "x", [contains("x")], setup=broken),
            Case("hangs", "y", [contains("y")]),
        ],
    )
    out = await EvalRunner(EvalStore(store), trial_timeout_s=0.2).run(s, AgentVersion("v", build), trials=1)

    errors = {t.case_id: t.error or "" for t in out.trials}
    assert all(t.status == "infra_error" for t in out.trials)
    assert "setting up the trial failed: RuntimeError: fixture database unavailable" in errors["broken"]
    assert "past the harness's 0.2 s limit" in errors["hangs"]


async def test_an_agent_that_hits_its_own_limits_fails_it_is_not_infrastructure(store: TraceStore) -> None:
    def build(trial: Trial) -> Agent:
        return Agent("loop", FunctionModel(lambda r: tool_response(("nothing", {}))))

    s = Suite("s", [Case("c", "x", [contains("done")])])
    out = await EvalRunner(EvalStore(store)).run(s, AgentVersion("v", build), trials=2)

    assert [t.status for t in out.trials] == ["failed", "failed"]
    assert out.trials[0].facts["hallucinated_tool_calls"] >= 1


async def test_the_budget_stops_new_trials_and_resume_runs_only_what_is_missing(store: TraceStore) -> None:
    results = EvalStore(store)
    version = AgentVersion("v", lambda t: restart_agent(t))
    # Each trial costs 2 x (1000 x $3/M + 100 x $15/M) = $0.009.
    first = await EvalRunner(results).run(suite(), version, trials=5, budget_usd=Decimal("0.05"), max_concurrency=1)
    assert first.record.status == "over_budget"
    assert len(first.trials) == 6  # the 6th crossed $0.05; no trial starts after
    assert first.not_run == 14
    assert first.spent_usd == Decimal("0.054")

    built: list[tuple[str, int]] = []

    def counting(trial: Trial) -> Agent:
        built.append((trial.case.id, trial.index))
        return restart_agent(trial)

    resumed = await EvalRunner(results).run(
        suite(), AgentVersion("v", counting), trials=5, resume=first.record.eval_id[:6]
    )
    assert resumed.record.eval_id == first.record.eval_id
    assert resumed.record.status == "finished"
    assert len(resumed.trials) == 20
    assert len(built) == 14
    assert not set(built) & {(t.case_id, t.trial) for t in first.trials}


async def test_resume_refuses_another_suite_or_version(store: TraceStore) -> None:
    results = EvalStore(store)
    version = AgentVersion("v", lambda t: restart_agent(t))
    done = await EvalRunner(results).run(suite(), version, trials=1)

    with pytest.raises(UserError, match="cannot be resumed"):
        await EvalRunner(results).run(suite(), AgentVersion("other", version.build), resume=done.record.eval_id)
    with pytest.raises(UserError, match="changed since"):
        await EvalRunner(results).run(suite(cases=5), version, resume=done.record.eval_id)
    with pytest.raises(UserError, match="no eval"):
        await EvalRunner(results).run(suite(), version, resume="feedface")


@pytest.mark.parametrize(
    ("trials", "k", "message"),
    [
        (3, (1, 5), "pass\\^5 needs at least 5 trials per case but --trials is 3"),
        (0, (1,), "--trials must be at least 1"),
    ],
)
async def test_bad_requests_are_refused_before_anything_runs(
    store: TraceStore, trials: int, k: tuple[int, ...], message: str
) -> None:
    built: list[Trial] = []
    with pytest.raises(UserError, match=message):
        await EvalRunner(EvalStore(store)).run(
            suite(), AgentVersion("v", lambda t: built.append(t) or restart_agent(t)), trials=trials, k=k
        )
    assert built == []
    assert EvalStore(store).list() == []


async def test_a_judge_check_without_a_judge_model_is_refused_up_front(store: TraceStore) -> None:
    s = Suite("s", [Case("c", "x", [judge("says which service")])])
    with pytest.raises(UserError, match="--judge-model"):
        await EvalRunner(EvalStore(store)).run(s, AgentVersion("v", lambda t: restart_agent(t)), trials=1)


async def test_judge_grades_are_recorded_with_their_spread_and_a_failed_judge_is_infra(store: TraceStore) -> None:
    grades = iter(["SCORE: 8\nREASON: ok", "SCORE: 6\nREASON: meh", "SCORE: 10\nREASON: great"] * 10)
    judge_model = FunctionModel(lambda r: text_response(next(grades)), price_ref=SONNET)
    s = Suite("s", [Case("c", "restart api", [judge("restarted the right service", threshold=0.7)], setup=Estate)])
    out = await EvalRunner(EvalStore(store), judge_model=judge_model).run(
        s, AgentVersion("v", lambda t: restart_agent(t)), trials=1
    )
    (trial,) = out.trials
    (check,) = trial.checks
    assert check.passed and check.kind == "judge"
    assert check.details["grades"] == [0.8, 0.6, 1.0]
    assert check.details["sd"] == pytest.approx(0.1633, abs=1e-4)
    assert trial.judge_cost_usd > 0

    mute = FunctionModel(lambda r: text_response("I think it is fine."))
    out = await EvalRunner(EvalStore(store), judge_model=mute).run(
        s, AgentVersion("v", lambda t: restart_agent(t)), trials=1
    )
    assert out.trials[0].status == "infra_error"
    assert "without a 'SCORE: <0-10>' line" in (out.trials[0].error or "")


async def test_a_cassette_records_every_model_call_and_replays_them_without_the_model(
    store: TraceStore, tmp_path: Path
) -> None:
    path = tmp_path / "evals.cassette"
    version = AgentVersion("v", lambda t: restart_agent(t, right=0.5))
    with Cassette(path, "record") as cassette:
        recorded = await EvalRunner(EvalStore(store), cassette=cassette).run(suite(), version, trials=4, seed=1)

    def no_model(trial: Trial) -> Agent:
        agent = restart_agent(trial, right=0.5)

        def unreachable(request: ModelRequest) -> ModelResponse:
            raise AssertionError("a replayed eval called the model")

        # The same identity as the recorded model, but it never answers: every answer comes from the cassette.
        agent.model = FunctionModel(unreachable, price_ref=SONNET)
        return agent

    with Cassette(path, "replay") as cassette:
        replayed = await EvalRunner(EvalStore(store), cassette=cassette).run(
            suite(), AgentVersion("v", no_model), trials=4, seed=1
        )

    def outcomes(trials: list) -> list[tuple[str, int, str]]:  # type: ignore[type-arg]
        return [(t.case_id, t.trial, t.status) for t in trials]

    assert outcomes(replayed.trials) == outcomes(recorded.trials)
    assert {t.status for t in recorded.trials} == {"passed", "failed"}


async def test_spans_of_each_trial_go_to_the_runners_tracer(store: TraceStore) -> None:
    capture = SpanCapture()
    out = await EvalRunner(EvalStore(store), tracer=capture.tracer).run(
        suite(cases=1), AgentVersion("v", lambda t: restart_agent(t)), trials=2
    )
    traces = {format(s.context.trace_id, "032x") for s in capture.spans}
    assert {t.trace_id for t in out.trials} <= traces
    capture.shutdown()


async def test_required_tools_reads_what_ran(store: TraceStore) -> None:
    s = Suite("s", [Case("c", "x", [required_tools("restart")], setup=Estate)])
    out = await EvalRunner(EvalStore(store)).run(s, AgentVersion("v", lambda t: restart_agent(t)), trials=1)
    assert out.trials[0].passed


async def test_a_comparison_flags_a_changed_case_not_an_added_one(store: TraceStore) -> None:
    from tether.evals.compare import compare

    results = EvalStore(store)
    version = AgentVersion("v", lambda t: restart_agent(t))
    four = await EvalRunner(results).run(suite(cases=4), version, trials=2)
    five = await EvalRunner(results).run(suite(cases=5), version, trials=2)
    changed_suite = Suite(
        "restarts", [Case("case-0", "api is down (0)", [contains("restarted", label="says so")], setup=Estate)]
    )
    changed = await EvalRunner(results).run(changed_suite, version, trials=2)

    assert four.record.config["cases"] == 4
    assert not compare((four.record, four.trials), (five.record, five.trials)).suite_changed
    assert compare((four.record, four.trials), (changed.record, changed.trials)).suite_changed


def test_trials_round_trip_through_the_store_and_a_rerun_replaces_its_row(store: TraceStore) -> None:
    from datetime import UTC, datetime

    from tether.evals import CheckResult, EvalRecord, TrialRecord

    results = EvalStore(store)
    results.create(EvalRecord("e1", "s", "f", "v", 2, 0, "running", Decimal("1.5"), {"k": [1]}, datetime.now(UTC)))
    when = datetime(2026, 11, 21, 12, 30, 15, 123456, tzinfo=UTC)
    check = CheckResult("c", "contains", "answer", False, 0.0, "answer lacks 'x'", {"n": 1})

    def trial(index: int, status: str, cost: Decimal | None) -> TrialRecord:
        return TrialRecord(
            "e1", "case/1", index, status, 0.0, (check,), ("t",), "r", "a" * 32, "completed", "m",  # type: ignore[arg-type]
            cost, Decimal("0.000000001"), 0.25, 12, {"tool_sequence": ["a", "b"]}, None, when,
        )  # fmt: skip

    first = [trial(i, "infra_error" if i == 1 else "failed", Decimal("0.123456789")) for i in range(300)]
    results.add_trials(first)
    results.add_trials([trial(1, "passed", None)])  # the infra trial, run again

    stored = results.trials("e1")
    assert len(stored) == 300
    by_index = {t.trial: t for t in stored}
    assert by_index[0].to_dict() == first[0].to_dict()
    assert by_index[0].created_at == when
    assert by_index[1].status == "passed" and by_index[1].cost_usd is None


async def test_every_trial_is_in_the_outcome_even_when_the_last_write_is_slow(store: TraceStore) -> None:
    import time as clock

    class SlowStore(EvalStore):
        def add_trials(self, trials: list) -> None:  # type: ignore[override,type-arg]
            clock.sleep(0.3)  # a write still going when the last trial finishes
            super().add_trials(trials)

    out = await EvalRunner(SlowStore(store)).run(
        suite(cases=3), AgentVersion("v", lambda t: restart_agent(t)), trials=4
    )
    assert len(out.trials) == 12
