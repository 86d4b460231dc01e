"""Report formats: JSON for scripts, Markdown for pull requests, JUnit XML that CI systems parse."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest

from tether.evals.compare import compare, gate
from tether.evals.export import (
    comparison_json,
    comparison_markdown,
    interval_text,
    junit_xml,
    summary_json,
    summary_markdown,
)
from tether.evals.report import summarize
from tether.evals.results import EvalRecord, TrialRecord, TrialStatus
from tether.evals.scorers import CheckResult
from tether.evals.stats import Interval


def record(eval_id: str = "e1", version: str = "v1", trials: int = 3) -> EvalRecord:
    return EvalRecord(
        eval_id=eval_id,
        suite="faq",
        suite_fingerprint="f" * 16,
        agent_version=version,
        trials=trials,
        seed=0,
        status="finished",
        budget_usd=None,
        config={"k": [1, 2]},
        started_at=datetime(2026, 11, 21, 9, 0, tzinfo=UTC),
    )


def trial(
    case_id: str,
    index: int,
    status: TrialStatus,
    *,
    eval_id: str = "e1",
    explanation: str = "answer lacks ['30 days']",
    error: str | None = None,
) -> TrialRecord:
    checks = (
        CheckResult("contains", "contains", "answer", status == "passed", 1.0 if status == "passed" else 0.0,
                    "" if status == "passed" else explanation),
        CheckResult("required_tools", "required_tools", "trajectory", True, 1.0, "ran every required tool"),
    )  # fmt: skip
    return TrialRecord(
        eval_id=eval_id,
        case_id=case_id,
        trial=index,
        status=status,
        score=None if status == "infra_error" else (1.0 if status == "passed" else 0.5),
        checks=() if status == "infra_error" else checks,
        tags=(),
        run_id=f"{eval_id}-{case_id}-{index}",
        trace_id=None,
        stop_reason="completed",
        model="claude-haiku-4-5",
        cost_usd=Decimal("0.004"),
        judge_cost_usd=Decimal(0),
        duration_s=0.25,
        tokens=2400,
        error=error,
    )


MIXED = [
    trial("refund|window", 0, "passed"),
    trial("refund|window", 1, "failed"),
    trial("refund|window", 2, "passed"),
    trial("greeting", 0, "passed"),
    trial("greeting", 1, "infra_error", error="provider: model call failed: 529 overloaded"),
    # greeting trial 2 was never run (budget spent): a skipped test.
]


def test_junit_counts_failures_errors_and_trials_never_run() -> None:
    summary = summarize(record(), MIXED)

    root = ET.fromstring(junit_xml(summary, MIXED))

    (suite,) = root.findall("testsuite")
    assert suite.get("name") == "tether.eval.faq"
    counts = {key: suite.get(key) for key in ("tests", "failures", "errors", "skipped")}
    assert counts == {"tests": "6", "failures": "1", "errors": "1", "skipped": "1"}
    assert root.get("tests") == "6" and suite.get("time") == "1.250"
    cases = suite.findall("testcase")
    assert [(c.get("classname"), c.get("name")) for c in cases][:3] == [
        ("faq.greeting", "trial 0"),
        ("faq.greeting", "trial 1"),
        ("faq.greeting", "trial 2"),
    ]
    failure = suite.find("testcase/failure")
    assert failure is not None and failure.get("message") == "contains: answer lacks ['30 days']"
    assert "tether runs show e1-refund|window-1" in (failure.text or "")
    error = suite.find("testcase/error")
    assert error is not None and error.get("message") == "provider: model call failed: 529 overloaded"
    assert suite.find("testcase/skipped") is not None
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["eval_id"] == "e1" and props["agent_version"] == "v1"
    assert props["pass_rate"] == interval_text(summary.pass_rate) and "pass^2" in props and "pass@2" in props


def test_junit_escapes_markup_and_drops_characters_xml_cannot_hold() -> None:
    nasty = 'said <b>"hi"</b> & \x1b[31mred\x1b[0m \x00'
    trials = [trial("a", 0, "failed", explanation=nasty)]

    root = ET.fromstring(junit_xml(summarize(record(trials=1), trials), trials))

    failure = root.find("testsuite/testcase/failure")
    assert failure is not None
    message = failure.get("message") or ""
    assert '<b>"hi"</b> & ' in message and "\x1b" not in message and "\x00" not in message


def test_summary_markdown_is_a_table_per_case_with_pipes_escaped() -> None:
    text = summary_markdown(summarize(record(), MIXED))

    assert text.startswith("### tether eval `e1`: suite `faq` on `v1`")
    assert "**1 infrastructure error** (not counted)" in text
    assert "| refund\\|window (flaky) | 2/3 |" in text
    assert "| greeting | 1/1 |" in text
    assert "| flaky cases | refund\\|window |" in text


def test_summary_json_keeps_money_exact_and_adds_the_callers_keys() -> None:
    data = orjson.loads(summary_json(summarize(record(), MIXED), {"not_run": 1}))

    assert data["not_run"] == 1 and data["cost_usd"] == "0.020" and data["infra_errors"] == 1
    assert data["eval"]["eval_id"] == "e1" and data["pass_rate"]["method"] == "wilson"


def steady_and_worse() -> tuple[tuple[EvalRecord, list[TrialRecord]], tuple[EvalRecord, list[TrialRecord]]]:
    cases = [f"case-{n}" for n in range(4)]
    base = [trial(c, i, "passed", eval_id="base") for c in cases for i in range(3)]
    cand = [trial(c, i, "passed" if i == 0 else "failed", eval_id="cand") for c in cases for i in range(3)]
    return (record("base", "v1"), base), (record("cand", "v2"), cand)


def test_comparison_markdown_names_the_regressed_cases() -> None:
    baseline, candidate = steady_and_worse()
    comparison = compare(baseline, candidate)

    text = comparison_markdown(comparison, gate(comparison))

    assert "baseline `v1` (`base`) -> candidate `v2` (`cand`)" in text
    assert "**Significant regression**" in text and "gate failed:" in text
    assert "#### Regressed cases" in text and "| case-0 | 100.0% (3/3) | 33.3% (1/3) | -66.7 pts |" in text
    assert "#### Improved cases" not in text


def test_comparison_json_carries_the_gate() -> None:
    baseline, candidate = steady_and_worse()
    comparison = compare(baseline, candidate)

    data = orjson.loads(comparison_json(comparison, gate(comparison, floor=0.9)))

    assert data["significant_regression"] is True
    assert data["gate"]["passed"] is False and "below the floor 0.9" in data["gate"]["message"]


@pytest.mark.parametrize(
    ("interval", "text"),
    [(Interval(0.625, 0.412, 0.801, "wilson"), "62.5% (41.2-80.1%)"), (None, "n/a")],
)
def test_interval_text(interval: Interval | None, text: str) -> None:
    assert interval_text(interval) == text
