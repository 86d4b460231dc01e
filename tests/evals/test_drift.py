"""Drift flags what moved between the baseline window and the recent eval, and nothing else."""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal

import pytest

from tether.errors import UserError
from tether.evals.drift import DriftReport, drift
from tether.evals.results import TrialRecord

from ._factory import Eval, record, trial

SEARCH_RESTART = ["search", "restart"]


def run(
    eval_id: str,
    *,
    n: int = 100,
    pass_rate: float = 0.9,
    restart_share: float = 0.7,
    slowdown: float = 1.0,
    model: str = "model-a",
    cost: Decimal | None = Decimal("0.01"),
    version: str = "v1",
    suite: str = "ops",
    infra: int = 0,
) -> Eval:
    """An eval of ``n`` counted trials (plus ``infra`` infrastructure failures) with these properties, spread evenly."""
    passes = round(n * pass_rate)
    restarts = round(n * restart_share)
    trials: list[TrialRecord] = [
        trial(
            eval_id,
            f"case-{i % 10}",
            i // 10,
            passed=i < passes,
            model=model,
            cost=cost,
            duration=slowdown * (1.0 + (i % 7) * 0.25),
            tokens=800 + (i % 5) * 100,
            facts={"tool_sequence": SEARCH_RESTART if (i * 37) % n < restarts else ["search"]},
        )
        for i in range(n)
    ]
    trials += [trial(eval_id, "case-x", i, passed=None, model=model, duration=60.0) for i in range(infra)]
    return record(eval_id, version=version, suite=suite, trials=n // 10), trials


def steady(count: int = 3) -> list[Eval]:
    return [run(f"e{i}") for i in range(count)]


def metric_changes(report: DriftReport) -> dict[str, bool]:
    return {m.name: m.changed for m in report.metrics}


def test_identical_histories_show_no_drift() -> None:
    report = drift([*steady(4), run("recent")])

    assert not report.drifted
    assert not report.model_changed
    assert [m.name for m in report.metrics] == [
        "pass_rate",
        "tool_sequences",
        "cost_per_trial",
        "latency",
        "tokens_per_trial",
    ]
    assert all(m.p_value is not None and m.p_value > 0.5 for m in report.metrics)
    assert report.metrics[0].baseline == "0.90 (n=400)"
    assert report.metrics[0].recent == "0.90 (n=100)"


def test_a_pass_rate_drop_is_drift_of_the_pass_rate_alone() -> None:
    report = drift([*(run(f"e{i}", pass_rate=0.95) for i in range(3)), run("recent", pass_rate=0.5)])

    assert metric_changes(report) == {
        "pass_rate": True,
        "tool_sequences": False,
        "cost_per_trial": False,
        "latency": False,
        "tokens_per_trial": False,
    }
    pass_rate = report.metrics[0]
    assert pass_rate.method == "fisher exact"
    assert (pass_rate.baseline, pass_rate.recent) == ("0.95 (n=300)", "0.50 (n=100)")
    assert pass_rate.adjusted_p is not None
    assert pass_rate.adjusted_p < 1e-6
    assert report.drifted


def test_a_shift_of_tool_sequences_is_drift() -> None:
    report = drift([*steady(), run("recent", restart_share=0.2)])

    assert metric_changes(report)["tool_sequences"]
    assert not metric_changes(report)["pass_rate"]
    sequences = report.metrics[1]
    assert sequences.method == "chi-square"
    assert "search > restart (70%)" in sequences.baseline
    assert "top search (80%)" in sequences.recent


def test_doubled_latency_is_drift() -> None:
    report = drift([*steady(), run("recent", slowdown=2.0)])

    assert metric_changes(report)["latency"]
    assert sum(metric_changes(report).values()) == 1
    latency = next(m for m in report.metrics if m.name == "latency")
    assert latency.method == "mann-whitney"
    assert (latency.baseline, latency.recent) == ("p50 1.8 s", "p50 3.5 s")


def test_a_different_response_model_is_reported() -> None:
    report = drift([*steady(), run("recent", model="model-a,model-b")])

    assert report.models_baseline == ("model-a",)
    assert report.models_recent == ("model-a", "model-b")
    assert report.model_changed
    assert not report.drifted


@pytest.mark.parametrize("history", [[], [run("only")]])
def test_drift_needs_a_baseline(history: Sequence[Eval]) -> None:
    with pytest.raises(UserError, match=r"^drift needs a baseline: run the suite again \(tether eval run \.\.\.\)$"):
        drift(history)


def test_an_unknown_cost_is_not_tested_and_says_why() -> None:
    report = drift([*steady(), run("recent", cost=None, pass_rate=0.5)])

    cost = next(m for m in report.metrics if m.name == "cost_per_trial")
    assert cost.p_value is None
    assert cost.adjusted_p is None
    assert not cost.changed
    assert "cost unknown for 100 of 400 trials" in cost.note
    assert (cost.baseline, cost.recent) == ("mean $0.0100", "unknown")
    assert metric_changes(report)["pass_rate"]
    assert all(m.adjusted_p is not None for m in report.metrics if m.name != "cost_per_trial")


def test_the_baseline_is_the_window_just_before_the_recent_eval() -> None:
    history = [run("old-bad", pass_rate=0.2), *(run(f"e{i}") for i in range(3)), run("recent")]

    windowed = drift(history, window=3)
    assert windowed.baseline_evals == ("e0", "e1", "e2")
    assert windowed.recent_eval == "recent"
    assert not windowed.drifted

    assert drift(history, window=10).baseline_evals == ("old-bad", "e0", "e1", "e2")
    assert metric_changes(drift(history, window=10))["pass_rate"]


def test_infrastructure_failures_are_not_counted() -> None:
    report = drift([*steady(), run("recent", infra=40)])

    assert not report.drifted
    assert report.metrics[0].recent == "0.90 (n=100)"


def test_the_agent_version_is_none_when_the_history_mixes_versions() -> None:
    assert drift([*steady(), run("recent")]).agent_version == "v1"
    assert drift([*steady(), run("recent", version="v2")]).agent_version is None


def test_evals_of_several_suites_are_refused() -> None:
    with pytest.raises(UserError, match="one suite"):
        drift([*steady(), run("recent", suite="billing")])


@pytest.mark.parametrize(("window", "alpha"), [(0, 0.05), (5, 0.0), (5, 1.0)])
def test_a_bad_window_or_alpha_is_refused(window: int, alpha: float) -> None:
    with pytest.raises(UserError):
        drift([*steady(), run("recent")], window=window, alpha=alpha)


def test_p_values_are_adjusted_for_testing_several_metrics() -> None:
    report = drift([*steady(), run("recent", pass_rate=0.8, slowdown=1.1)])

    tested = [m for m in report.metrics if m.p_value is not None]
    assert tested
    for m in tested:
        assert m.adjusted_p is not None
        assert m.adjusted_p >= m.p_value
        assert m.changed == (m.adjusted_p < report.alpha)


def test_rare_tool_sequences_are_pooled() -> None:
    def varied(eval_id: str) -> Eval:
        rec, trials = run(eval_id)
        tail = [trial(eval_id, "rare", i, facts={"tool_sequence": [f"tool-{i}"]}) for i in range(15)]
        return rec, trials + tail

    report = drift([varied("e0"), varied("recent")])

    sequences = report.metrics[1]
    assert "rest pooled" in sequences.note
    assert sequences.p_value == pytest.approx(1.0)


def test_the_report_is_json_able() -> None:
    data = json.loads(json.dumps(drift([*steady(), run("recent", pass_rate=0.5)]).to_dict()))

    assert data["drifted"] is True
    assert data["baseline_evals"] == ["e0", "e1", "e2"]
    assert data["metrics"][0]["name"] == "pass_rate"
    assert data["metrics"][0]["changed"] is True
