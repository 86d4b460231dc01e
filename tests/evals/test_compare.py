"""Two evals of a suite compared paired per case, and the CI gate on the comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tether.errors import UserError
from tether.evals.compare import CaseChange, compare, gate
from tether.evals.results import EvalStore
from tether.evals.stats import fisher_exact
from tether.store import open_store

from ._factory import Eval, eval_of

CASES = [f"case-{i:02d}" for i in range(10)]
PASS5 = (True,) * 5
FAIL5 = (False,) * 5


def regressed_pair() -> tuple[Eval, Eval]:
    """The baseline passes everything; the candidate fails every trial of the first seven cases."""
    baseline = eval_of("base", dict.fromkeys(CASES, PASS5), version="v1")
    candidate = eval_of("cand", {c: FAIL5 if i < 7 else PASS5 for i, c in enumerate(CASES)}, version="v2")
    return baseline, candidate


def test_a_candidate_failing_where_the_baseline_passed_is_a_significant_regression() -> None:
    result = compare(*regressed_pair())

    assert result.paired == (15, 35, 0, 0)
    assert result.mcnemar_p < 1e-9
    assert result.significant_regression
    assert not result.significant_improvement
    assert result.pass_rate.estimate == pytest.approx(-0.7)
    assert result.pass_rate.high < 0
    assert [c.case_id for c in result.regressions] == CASES[:7]
    assert result.improvements == []


def test_the_gate_fails_a_regression_with_one_line_naming_the_regressed_cases() -> None:
    verdict = gate(compare(*regressed_pair()))

    assert not verdict.passed
    assert "\n" not in verdict.message
    assert verdict.message.startswith("gate failed: pass rate fell 1.00 -> 0.30 (-0.70 [")
    assert "McNemar p=" in verdict.message
    assert "< 0.05" in verdict.message
    assert "7 cases regressed (case-00, case-01, case-02, case-03, case-04, ...)" in verdict.message


def test_identical_evals_show_no_difference_and_pass_the_gate() -> None:
    outcomes = {c: [True, False, True, True, i % 2 == 0] for i, c in enumerate(CASES)}
    result = compare(eval_of("base", outcomes), eval_of("cand", outcomes))

    assert result.mcnemar_p == 1.0
    assert result.paired[1] == result.paired[2] == 0
    assert result.pass_rate.estimate == 0.0
    assert result.pass_rate.p_value == 1.0
    assert all(c.p_value == 1.0 and c.status == "unchanged" for c in result.cases)
    assert not result.significant_regression
    assert not result.significant_improvement
    verdict = gate(result)
    assert verdict.passed
    assert verdict.message.startswith("gate passed: no significant regression (pass rate 0.")
    assert "McNemar p=1" in verdict.message


def test_an_improvement_is_significant_and_passes_the_gate() -> None:
    baseline = eval_of("base", {c: FAIL5 if i < 7 else PASS5 for i, c in enumerate(CASES)})
    candidate = eval_of("cand", dict.fromkeys(CASES, PASS5))

    result = compare(baseline, candidate)

    assert result.paired == (15, 0, 35, 0)
    assert result.significant_improvement
    assert not result.significant_regression
    assert len(result.improvements) == 7
    verdict = gate(result)
    assert verdict.passed
    assert verdict.message.startswith("gate passed: significant improvement (pass rate 0.30 -> 1.00")


def test_a_pass_rate_under_the_floor_fails_the_gate_without_a_significant_regression() -> None:
    four_of_five = (True, True, True, True, False)
    three_of_five = (True, True, True, False, False)
    baseline = eval_of("base", dict.fromkeys(CASES, four_of_five))
    candidate = eval_of("cand", {c: three_of_five if i < 2 else four_of_five for i, c in enumerate(CASES)})
    result = compare(baseline, candidate)
    assert not result.significant_regression  # 2 discordant pairs

    assert gate(result).passed
    verdict = gate(result, floor=0.9)
    assert not verdict.passed
    assert verdict.message == (
        "gate failed: candidate pass rate 0.76 is below the floor 0.9; "
        f"no significant regression (McNemar p={result.mcnemar_p:.2g})"
    )
    assert gate(result, floor=0.7).passed


@pytest.mark.parametrize("floor", [-0.1, 1.5])
def test_a_floor_outside_zero_to_one_is_refused(floor: float) -> None:
    outcomes = dict.fromkeys(CASES[:2], PASS5)
    with pytest.raises(UserError, match="floor"):
        gate(compare(eval_of("base", outcomes), eval_of("cand", outcomes)), floor=floor)


def test_evals_of_different_suites_are_not_compared() -> None:
    outcomes = dict.fromkeys(CASES[:2], PASS5)
    with pytest.raises(UserError, match=r"eval base ran suite 'ops', eval cand ran suite 'billing': compare evals of"):
        compare(eval_of("base", outcomes), eval_of("cand", outcomes, suite="billing"))


def test_evals_without_a_common_case_are_not_compared() -> None:
    with pytest.raises(UserError, match="no case in common"):
        compare(eval_of("base", {"a": PASS5}), eval_of("cand", {"b": PASS5}))


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.5])
def test_alpha_must_be_a_probability(alpha: float) -> None:
    outcomes = {"a": PASS5}
    with pytest.raises(UserError, match="alpha"):
        compare(eval_of("base", outcomes), eval_of("cand", outcomes), alpha=alpha)


def test_a_changed_suite_is_flagged_and_cases_on_one_side_are_listed() -> None:
    baseline = eval_of("base", {"a": PASS5, "b": PASS5, "gone": PASS5}, fingerprint="fp-1")
    candidate = eval_of("cand", {"a": PASS5, "b": PASS5, "new": PASS5}, fingerprint="fp-2")

    result = compare(baseline, candidate)

    assert result.suite_changed
    assert result.only_in_baseline == ("gone",)
    assert result.only_in_candidate == ("new",)
    assert sorted(c.case_id for c in result.cases) == ["a", "b"]
    same = compare(eval_of("base", {"a": PASS5}), eval_of("cand", {"a": PASS5}))
    assert not same.suite_changed


def test_per_case_fingerprints_compare_only_the_common_cases() -> None:
    base_prints = {"case_fingerprints": {"a": "x", "gone": "y"}}
    baseline = eval_of("base", {"a": PASS5, "gone": PASS5}, fingerprint="fp-1", config=base_prints)
    added = eval_of(
        "cand", {"a": PASS5, "new": PASS5}, fingerprint="fp-2", config={"case_fingerprints": {"a": "x", "new": "z"}}
    )
    edited = eval_of("cand", {"a": PASS5}, fingerprint="fp-3", config={"case_fingerprints": {"a": "x2"}})

    assert not compare(baseline, added).suite_changed
    assert compare(baseline, edited).suite_changed


def test_infrastructure_failures_are_left_out_before_trials_are_paired() -> None:
    # Counted trials in trial order: baseline [T, T, T], candidate [T, F, F].
    baseline = eval_of("base", {"a": [True, True, None, True]})
    candidate = eval_of("cand", {"a": [True, None, False, False]})

    result = compare(baseline, candidate)

    assert result.paired == (1, 2, 0, 0)
    (change,) = result.cases
    assert (change.baseline_passes, change.baseline_trials) == (3, 3)
    assert (change.candidate_passes, change.candidate_trials) == (1, 3)
    assert change.p_value == pytest.approx(fisher_exact(3, 3, 1, 3))
    assert result.baseline.infra_errors == result.candidate.infra_errors == 1


def test_trials_are_paired_by_trial_index_not_by_storage_order() -> None:
    base_record, base_trials = eval_of("base", {"a": [True, False, True, False]})
    cand_record, cand_trials = eval_of("cand", {"a": [True, False, True, False]})

    result = compare((base_record, base_trials), (cand_record, list(reversed(cand_trials))))

    assert result.paired == (2, 0, 0, 2)


def test_cases_are_ordered_regressions_first_then_improvements_then_unchanged() -> None:
    five = lambda passes: [True] * passes + [False] * (5 - passes)  # noqa: E731
    baseline = eval_of("base", {"a": five(4), "b": five(5), "c": five(1), "d": five(3), "e": five(2)})
    candidate = eval_of("cand", {"a": five(3), "b": five(1), "c": five(3), "d": five(3), "e": five(5)})

    result = compare(baseline, candidate)

    assert [c.case_id for c in result.cases] == ["b", "a", "e", "c", "d"]
    assert [c.status for c in result.cases] == ["regressed", "regressed", "improved", "improved", "unchanged"]
    assert result.cases[0].delta == pytest.approx(-0.8)


def test_a_case_without_counted_trials_on_one_side_is_unchanged_with_p_one() -> None:
    change = CaseChange("a", baseline_passes=0, baseline_trials=0, candidate_passes=2, candidate_trials=3, p_value=1.0)
    assert change.baseline_rate is None
    assert change.delta is None
    assert change.status == "unchanged"

    result = compare(eval_of("base", {"a": PASS5, "b": [None] * 5}), eval_of("cand", {"a": PASS5, "b": PASS5}))
    b = next(c for c in result.cases if c.case_id == "b")
    assert (b.baseline_trials, b.p_value, b.status) == (0, 1.0, "unchanged")


def test_pass_hat_k_is_compared_for_the_k_both_evals_ran_with() -> None:
    outcomes = {c: [True, True, True, i % 3 != 0, True] for i, c in enumerate(CASES)}
    worse = {c: [True, False, True, True, i % 2 != 0] for i, c in enumerate(CASES)}
    both = compare(eval_of("base", outcomes, k=(1, 3)), eval_of("cand", worse, k=(1, 3, 5)))
    assert set(both.pass_hat_k) == {1, 3}
    assert both.pass_hat_k[1].estimate == pytest.approx(both.pass_rate.estimate)
    assert both.pass_hat_k[3].estimate < both.pass_hat_k[1].estimate < 0

    too_many = compare(eval_of("base", outcomes, k=(1, 8)), eval_of("cand", worse, k=(1, 8)))
    assert set(too_many.pass_hat_k) == {1}

    chosen = compare(eval_of("base", outcomes), eval_of("cand", worse), ks=[2])
    assert set(chosen.pass_hat_k) == {2}
    assert set(chosen.baseline.pass_hat_k) == {2}


def test_the_comparison_is_json_able() -> None:
    data = json.loads(json.dumps(compare(*regressed_pair()).to_dict()))

    assert data["baseline"]["eval_id"] == "base"
    assert data["candidate"]["pass_rate"]["estimate"] == pytest.approx(0.3)
    assert data["paired"] == {"both_pass": 15, "baseline_only": 35, "candidate_only": 0, "both_fail": 0}
    assert data["significant_regression"] is True
    assert len(data["cases"]) == 10
    assert data["cases"][0]["status"] == "regressed"


def test_a_comparison_read_back_from_the_store_is_the_same(tmp_path: Path) -> None:
    baseline = eval_of("base", {c: [True, i % 2 == 0, True] for i, c in enumerate(CASES)})
    candidate = eval_of("cand", {c: [i % 3 == 0, None, True] for i, c in enumerate(CASES)}, version="v2")
    with open_store("sqlite:///" + str(tmp_path / "t.db")) as store:
        evals = EvalStore(store)
        for rec, trials in (baseline, candidate):
            evals.create(rec)
            for t in trials:
                evals.add_trial(t)
        stored = [(evals.get(e), evals.trials(e)) for e in ("base", "cand")]

    direct, read_back = compare(baseline, candidate), compare(stored[0], stored[1])

    assert read_back.paired == direct.paired
    assert read_back.mcnemar_p == direct.mcnemar_p
    assert read_back.cases == direct.cases
    assert gate(read_back).message == gate(direct).message


def test_a_regression_under_the_floor_gives_both_reasons_on_one_line() -> None:
    verdict = gate(compare(*regressed_pair()), floor=0.5)

    assert not verdict.passed
    assert "\n" not in verdict.message
    assert "7 cases regressed" in verdict.message
    assert verdict.message.endswith("; candidate pass rate 0.30 is below the floor 0.5")
