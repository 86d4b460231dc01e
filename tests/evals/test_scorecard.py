"""The safety scorecard counts exactly what its definitions say, on counted trials only."""

from __future__ import annotations

import json

import pytest

from tether.errors import UserError
from tether.evals.scorecard import scorecard
from tether.evals.stats import wilson

from ._factory import Eval, check, record, trial


def facts(tool_calls: int = 0, hallucinated: int = 0, unapproved: int = 0) -> dict[str, int]:
    return {"tool_calls": tool_calls, "hallucinated_tool_calls": hallucinated, "unapproved_irreversible": unapproved}


def version_one() -> Eval:
    """Four counted trials with known counts, and an infrastructure failure that must not count."""
    e = "eval-1"
    trials = [
        trial(
            e,
            "inject",
            0,
            checks=[check("no_injected_action", True), check("approval_respected", True)],
            facts=facts(tool_calls=4, hallucinated=1),
        ),
        trial(
            e,
            "inject",
            1,
            passed=False,
            checks=[check("no_injected_action", False)],
            stop_reason="loop_detected",
            facts=facts(tool_calls=3, unapproved=2),
        ),
        trial(
            e,
            "vague",
            0,
            passed=False,
            checks=[check("no_injected_action", True), check("asked_clarification", False)],
            stop_reason="budget_exceeded",
            facts=facts(tool_calls=2, hallucinated=1),
        ),
        trial(
            e,
            "vague",
            1,
            passed=False,
            checks=[check("asked_clarification", True), check("approval_respected", False)],
            facts=facts(tool_calls=1),
        ),
        trial(
            e,
            "vague",
            2,
            passed=None,
            checks=[check("no_injected_action", False), check("asked_clarification", False)],
            stop_reason="loop_detected",
            facts=facts(tool_calls=5, hallucinated=5, unapproved=1),
        ),
    ]
    return record(e, version="v1"), trials


def version_two() -> Eval:
    """No injection case and no tool call: nothing to count for those rows."""
    e = "eval-2"
    trials = [trial(e, "vague", i, checks=[check("asked_clarification", True)], facts=facts()) for i in range(3)]
    return record(e, version="v2"), trials


EXPECTED_V1 = {
    "injection_resistance": (2, 3),
    "hallucinated_tool_calls": (2, 10),
    "excessive_agency": (1, 4),
    "ambiguous_handling": (1, 2),
    "loop_stops": (1, 4),
    "budget_stops": (1, 4),
    "approval_respected": (1, 2),
}


def test_each_row_counts_its_definition_on_counted_trials() -> None:
    card = scorecard([version_one()])

    assert [row.metric for row in card.rows] == list(EXPECTED_V1)
    for metric, (numerator, denominator) in EXPECTED_V1.items():
        row = card.row(metric)
        assert row.counts == {"v1": (numerator, denominator)}, metric
        assert row.values["v1"] == wilson(numerator, denominator), metric


def test_versions_without_data_for_a_row_have_none_not_zero() -> None:
    card = scorecard([version_one(), version_two()])

    assert card.versions == ("v1", "v2")
    assert card.evals == {"v1": "eval-1", "v2": "eval-2"}
    assert card.row("injection_resistance").values["v2"] is None
    assert card.row("injection_resistance").counts["v2"] == (0, 0)
    assert card.row("hallucinated_tool_calls").values["v2"] is None
    assert card.row("ambiguous_handling").counts["v2"] == (3, 3)
    assert card.row("ambiguous_handling").values["v2"] == wilson(3, 3)
    assert card.row("loop_stops").values["v2"] == wilson(0, 3)


def test_which_way_is_better_is_stated_per_row() -> None:
    card = scorecard([version_two()])
    higher = {row.metric for row in card.rows if row.better == "higher"}
    assert higher == {"injection_resistance", "ambiguous_handling", "approval_respected"}


def test_two_evals_of_one_version_are_refused() -> None:
    rec, trials = version_two()
    again = (record("eval-3", version="v2"), trials)
    with pytest.raises(UserError, match=r"evals eval-2 and eval-3 both ran agent version 'v2': pick one eval per"):
        scorecard([(rec, trials), again])


def test_no_eval_is_refused() -> None:
    with pytest.raises(UserError, match="at least one eval"):
        scorecard([])


def test_an_unknown_metric_is_refused_with_the_known_ones() -> None:
    with pytest.raises(UserError, match="injection_resistance"):
        scorecard([version_two()]).row("vibes")


def test_the_scorecard_is_json_able() -> None:
    data = json.loads(json.dumps(scorecard([version_one(), version_two()]).to_dict()))

    injection = data["rows"][0]
    assert injection["metric"] == "injection_resistance"
    assert injection["counts"] == {"v1": [2, 3], "v2": [0, 0]}
    assert injection["values"]["v2"] is None
    assert injection["values"]["v1"]["estimate"] == pytest.approx(2 / 3)
