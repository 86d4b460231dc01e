"""The on-call example: a suite of 24 cases, and two versions the comparison and the gate tell apart."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from tether.demo import evals as oncall_evals
from tether.demo.infra import Infra
from tether.evals import AgentVersion, EvalRunner, EvalStore, load_agent, load_suite
from tether.evals.compare import compare, gate
from tether.evals.report import EvalSummary, summarize
from tether.evals.results import EvalRecord, TrialRecord
from tether.store import open_store

TRIALS = 5
K = (1, 3)
SEED = 0
OTHER_SEED = 1


@dataclass(frozen=True)
class Eval:
    record: EvalRecord
    trials: list[TrialRecord]

    @property
    def pair(self) -> tuple[EvalRecord, list[TrialRecord]]:
        return self.record, self.trials

    @property
    def summary(self) -> EvalSummary:
        return summarize(self.record, self.trials)


@dataclass(frozen=True)
class Evals:
    careful: Eval
    careful_again: Eval  # the same version, another seed
    sloppy: Eval


@pytest.fixture(scope="module")
def evals(tmp_path_factory: pytest.TempPathFactory) -> Evals:
    """Both versions over the whole suite, 5 trials a case, on a fresh SQLite store (run once for the module)."""
    path: Path = tmp_path_factory.mktemp("oncall") / "t.db"
    store = open_store("sqlite:///" + str(path))
    runner = EvalRunner(EvalStore(store))
    suite = oncall_evals.suite()

    async def run(version: AgentVersion, seed: int) -> Eval:
        outcome = await runner.run(suite, version, trials=TRIALS, k=K, max_concurrency=8, seed=seed)
        return Eval(outcome.record, outcome.trials)

    async def run_all() -> Evals:
        return Evals(
            careful=await run(oncall_evals.careful, SEED),
            careful_again=await run(oncall_evals.careful, OTHER_SEED),
            sloppy=await run(oncall_evals.sloppy, SEED),
        )

    try:
        return asyncio.run(run_all())
    finally:
        store.close()


def test_the_suite_has_at_least_20_cases_with_checks_and_tags_for_the_scorecard() -> None:
    suite = oncall_evals.suite()

    assert suite.name == "oncall"
    assert len(suite) >= 20
    assert all(case.checks for case in suite.cases)
    tags = Counter(tag for case in suite.cases for tag in case.tags)
    for tag in ("injection", "ambiguous", "irreversible", "escalation", "noise"):
        assert tags[tag] >= 3, tag
    assert len({case.input for case in suite.cases}) == len(suite), "the simulated model tells cases apart by task"


def test_every_case_sets_up_a_fresh_estate() -> None:
    for case in oncall_evals.suite().cases:
        assert case.setup is not None
        first, second = case.setup(), case.setup()
        assert isinstance(first, Infra)
        assert first is not second


def test_the_safety_cases_carry_the_safety_checks() -> None:
    for case in oncall_evals.suite().cases:
        scorers = {check.scorer for check in case.checks}
        if "injection" in case.tags:
            assert "no_injected_action" in scorers, case.id
        if "ambiguous" in case.tags:
            assert "asked_clarification" in scorers, case.id
        if "irreversible" in case.tags:
            assert "approval_respected" in scorers, case.id
        assert "outcome" in scorers, case.id  # every case is graded on the state it leaves


def test_the_cli_can_name_the_suite_and_both_versions() -> None:
    assert load_suite("tether.demo.evals:suite").name == "oncall"
    assert load_agent("tether.demo.evals:careful").name == "oncall-careful"
    assert load_agent("tether.demo.evals:sloppy").name == "oncall-sloppy"


def test_the_careful_version_passes_most_trials_and_the_sloppy_one_few(evals: Evals) -> None:
    careful, sloppy = evals.careful.summary, evals.sloppy.summary

    assert careful.trials == sloppy.trials == 24 * TRIALS  # no infrastructure failures on the simulated model
    assert careful.pass_rate is not None
    assert sloppy.pass_rate is not None
    assert careful.pass_rate.estimate >= 0.8
    assert sloppy.pass_rate.estimate <= 0.4
    assert sloppy.pass_rate.high < careful.pass_rate.low


def test_compare_finds_the_sloppy_version_a_significant_regression_and_the_gate_fails_it(evals: Evals) -> None:
    comparison = compare(evals.careful.pair, evals.sloppy.pair)

    assert comparison.mcnemar_p < 0.05
    assert comparison.significant_regression
    assert comparison.pass_rate.high < 0
    verdict = gate(comparison)
    assert not verdict.passed
    assert verdict.message.startswith("gate failed: pass rate fell")
    assert "McNemar p=" in verdict.message


def test_the_careful_version_against_itself_on_another_seed_passes_the_gate(evals: Evals) -> None:
    comparison = compare(evals.careful.pair, evals.careful_again.pair)

    assert not comparison.significant_regression
    assert comparison.mcnemar_p >= 0.05
    assert gate(comparison).passed


def test_trials_are_independent_so_some_cases_are_flaky(evals: Evals) -> None:
    sloppy = evals.sloppy.summary

    assert sloppy.flaky, "every case of the sloppy version played the same way in all its trials"
    run_ids = [t.run_id for e in (evals.careful, evals.sloppy) for t in e.trials]
    assert len(set(run_ids)) == len(run_ids)
    # The same case and repeat under another eval seed plays differently somewhere.
    first = {(t.case_id, t.trial): t.status for t in evals.careful.trials}
    again = {(t.case_id, t.trial): t.status for t in evals.careful_again.trials}
    assert first != again


def test_only_the_sloppy_version_restarts_without_a_persons_approval(evals: Evals) -> None:
    def unapproved(e: Eval) -> int:
        return sum(int(t.facts.get("unapproved_irreversible", 0)) for t in e.trials)

    assert unapproved(evals.careful) == 0
    assert unapproved(evals.sloppy) >= 10


def test_the_careful_version_asks_on_ambiguous_requests_and_the_sloppy_one_acts(evals: Evals) -> None:
    def asked(e: Eval) -> tuple[int, int]:
        checks = [c for t in e.trials if "ambiguous" in t.tags for c in t.checks if c.scorer == "asked_clarification"]
        return sum(c.passed for c in checks), len(checks)

    passed, total = asked(evals.careful)
    assert total == 3 * TRIALS
    assert passed >= 0.8 * total  # a rare slip (a repeated call, an invented tool) is part of the simulation
    assert asked(evals.sloppy)[0] == 0
