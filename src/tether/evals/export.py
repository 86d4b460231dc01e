"""Eval results in the formats other tools read: JSON for scripts, Markdown for PR comments, JUnit XML for CI.

- ``summary_json`` / ``comparison_json``: the ``to_dict()`` of a summary or a
  comparison (plus any extra keys the caller adds), indented, money as strings.
- ``summary_markdown`` / ``comparison_markdown``: GitHub-flavoured tables, short
  enough to post as a pull-request comment.
- ``junit_xml``: one ``<testcase>`` per trial, so GitHub Actions, GitLab and
  Jenkins show an eval like a test run: a failed trial is a ``<failure>`` naming
  its failing checks, an infrastructure failure an ``<error>``, a trial the eval
  planned but never ran (budget spent, interrupted) a ``<skipped>``.

The text helpers (``percent``, ``interval_text``, ``difference_text``) are the
ones the CLI prints with, so a terminal and a PR comment read the same.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from tether.evals.compare import CaseChange, Comparison, GateResult
from tether.evals.report import EvalSummary
from tether.evals.results import TrialRecord
from tether.evals.stats import Interval, PairedDifference

__all__ = [
    "comparison_json",
    "comparison_markdown",
    "difference_text",
    "failing_checks_text",
    "first_failure",
    "interval_text",
    "junit_xml",
    "p_text",
    "percent",
    "seconds_text",
    "summary_json",
    "summary_markdown",
    "to_json",
    "usd_text",
]

# Characters XML 1.0 cannot hold at all (control characters an agent's output may contain).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# A failure message attribute is one line a CI system shows in a list: keep it short.
_MESSAGE_CHARS = 500


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def to_json(data: Any) -> str:
    """Any of the eval reports' ``to_dict()`` values as indented JSON (money and times as strings)."""
    return orjson.dumps(data, default=_default, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()


def summary_json(summary: EvalSummary, extra: Mapping[str, Any] | None = None) -> str:
    """``summary.to_dict()`` (with ``extra`` keys merged in, e.g. ``not_run``, ``gate``) as indented JSON."""
    return to_json({**summary.to_dict(), **(extra or {})})


def comparison_json(comparison: Comparison, gate: GateResult | None = None) -> str:
    """``comparison.to_dict()`` (and the gate's verdict, when given) as indented JSON."""
    data = comparison.to_dict()
    if gate is not None:
        data["gate"] = gate.to_dict()
    return to_json(data)


# --- text --------------------------------------------------------------------------------------------------------


def percent(value: float | None) -> str:
    """``0.625`` as ``62.5%``; ``n/a`` for None."""
    return "n/a" if value is None else f"{value * 100:.1f}%"


def interval_text(value: Interval | None) -> str:
    """A rate with its 95% interval: ``62.5% (41.2-80.1%)``."""
    if value is None:
        return "n/a"
    return f"{value.estimate * 100:.1f}% ({value.low * 100:.1f}-{value.high * 100:.1f}%)"


def difference_text(value: PairedDifference) -> str:
    """A difference of rates in percentage points with its interval: ``-66.7 pts [-83.3, -50.0]``."""
    return f"{value.estimate * 100:+.1f} pts [{value.low * 100:+.1f}, {value.high * 100:+.1f}]"


def p_text(value: float | None) -> str:
    """A p-value to two significant digits (``<0.0001`` below that)."""
    if value is None:
        return "n/a"
    return "<0.0001" if value < 0.0001 else f"{value:.2g}"


def usd_text(value: Decimal | None) -> str:
    """Dollars; ``unknown`` when a price was missing (never shown as $0)."""
    if value is None:
        return "unknown"
    return f"${value:.4f}" if value < 1 else f"${value:,.2f}"


def seconds_text(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def failing_checks_text(failing: Mapping[str, int]) -> str:
    """``contains x4, required_tools x2``: each failing check and how many trials it failed in."""
    return ", ".join(f"{name} x{count}" for name, count in sorted(failing.items(), key=lambda kv: (-kv[1], kv[0])))


def first_failure(trial: TrialRecord) -> str:
    """Why a trial did not pass, in one line: its error, else its failing checks and their explanations."""
    if trial.error:
        return trial.error
    return "; ".join(f"{c.name}: {c.explanation}" if c.explanation else c.name for c in trial.checks if not c.passed)


# --- Markdown ----------------------------------------------------------------------------------------------------


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _cell(text: object) -> str:
    """Text safe inside a GitHub table cell: no pipes, no line breaks."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str) -> list[str]:
    """A GitHub table; ``align`` has one of ``l``/``r`` per column."""
    lines = ["| " + " | ".join(map(_cell, header)) + " |"]
    lines.append("|" + "|".join("---:" if a == "r" else "---" for a in align) + "|")
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]
    return lines


def summary_markdown(summary: EvalSummary) -> str:
    """An eval's figures and its cases as GitHub-flavoured Markdown."""
    record = summary.record
    lines = [
        f"### tether eval `{record.eval_id}`: suite `{record.suite}` on `{record.agent_version}`",
        "",
        f"{_plural(len(summary.cases), 'case')} x {_plural(record.trials, 'trial')}, status **{record.status}**; "
        f"{summary.trials} trials counted"
        + (
            f", **{_plural(summary.infra_errors, 'infrastructure error')}** (not counted)"
            if summary.infra_errors
            else ""
        )
        + ". Intervals are 95%.",
        "",
    ]
    rows: list[list[object]] = [["pass rate", interval_text(summary.pass_rate)]]
    for k in summary.ks:
        short = summary.short_cases.get(k, 0)
        note = f" ({short} cases with fewer than {k} counted trials left out)" if short else ""
        rows.append([f"pass@{k}", interval_text(summary.pass_at_k[k]) + note])
        rows.append([f"pass^{k}", interval_text(summary.pass_hat_k[k]) + note])
    rows.append(["mean score", interval_text(summary.mean_score)])
    rows.append(["flaky cases", ", ".join(c.case_id for c in summary.flaky) or "none"])
    rows.append(["cost", f"{usd_text(summary.cost_usd)} ({usd_text(summary.cost_per_trial_usd)} per trial)"])
    rows.append(["duration", f"p50 {seconds_text(summary.duration_p50_s)}, p95 {seconds_text(summary.duration_p95_s)}"])
    if summary.models:
        rows.append(["models", ", ".join(summary.models)])
    lines += _table(["metric", "value"], rows, "ll")
    lines += ["", "#### Cases", ""]
    top = max(summary.ks, default=1)
    case_rows = [
        [
            c.case_id + (" (flaky)" if c.flaky else ""),
            f"{c.passes}/{c.trials}",
            percent(c.pass_hat_k.get(top)),
            c.infra_errors or "",
            failing_checks_text(c.failing_checks),
            usd_text(c.cost_usd),
        ]
        for c in summary.cases
    ]
    lines += _table(["case", "pass", f"pass^{top}", "infra", "failing checks", "cost"], case_rows, "lrrrlr")
    return "\n".join(lines) + "\n"


def _case_rows(changes: Sequence[CaseChange]) -> list[list[object]]:
    return [
        [
            c.case_id,
            f"{percent(c.baseline_rate)} ({c.baseline_passes}/{c.baseline_trials})",
            f"{percent(c.candidate_rate)} ({c.candidate_passes}/{c.candidate_trials})",
            "n/a" if c.delta is None else f"{c.delta * 100:+.1f} pts",
            p_text(c.p_value),
        ]
        for c in changes
    ]


def comparison_markdown(comparison: Comparison, gate: GateResult | None = None) -> str:
    """A baseline-versus-candidate comparison as GitHub-flavoured Markdown."""
    base, cand = comparison.baseline, comparison.candidate
    if comparison.significant_regression:
        verdict = "**Significant regression**"
    elif comparison.significant_improvement:
        verdict = "**Significant improvement**"
    else:
        verdict = "No significant difference"
    lines = [
        f"### tether eval compare: suite `{base.record.suite}`",
        "",
        f"baseline `{base.record.agent_version}` (`{base.record.eval_id}`) -> "
        f"candidate `{cand.record.agent_version}` (`{cand.record.eval_id}`)",
        "",
        f"{verdict} (alpha {comparison.alpha:g}; McNemar exact p={p_text(comparison.mcnemar_p)})."
        + (f" {gate.message}." if gate is not None else ""),
        "",
    ]
    if comparison.suite_changed:
        lines += ["> [!WARNING]", "> The suite's cases or checks changed between the two evals.", ""]
    rows: list[list[object]] = [
        [
            "pass rate",
            interval_text(base.pass_rate),
            interval_text(cand.pass_rate),
            difference_text(comparison.pass_rate),
            f"{p_text(comparison.pass_rate.p_value)} ({comparison.pass_rate.method})",
        ]
    ]
    for k, diff in comparison.pass_hat_k.items():
        rows.append(
            [
                f"pass^{k}",
                interval_text(base.pass_hat_k.get(k)),
                interval_text(cand.pass_hat_k.get(k)),
                difference_text(diff),
                f"{p_text(diff.p_value)} ({diff.method})",
            ]
        )
    both, base_only, cand_only, neither = comparison.paired
    rows.append(
        [
            "paired trials",
            f"{base_only} passed only here",
            f"{cand_only} passed only here",
            f"both passed {both}, both failed {neither}",
            f"{p_text(comparison.mcnemar_p)} (McNemar exact)",
        ]
    )
    rows.append(["cost per trial", usd_text(base.cost_per_trial_usd), usd_text(cand.cost_per_trial_usd), "", ""])
    rows.append(["p95 duration", seconds_text(base.duration_p95_s), seconds_text(cand.duration_p95_s), "", ""])
    lines += _table(["metric", "baseline", "candidate", "difference", "p"], rows, "lrrrr")
    header = ["case", "baseline", "candidate", "change", "p (Fisher)"]
    for title, changes in (("Regressed cases", comparison.regressions), ("Improved cases", comparison.improvements)):
        if changes:
            lines += ["", f"#### {title}", ""]
            lines += _table(header, _case_rows(changes), "lrrrr")
    for label, ids in (
        ("only in baseline", comparison.only_in_baseline),
        ("only in candidate", comparison.only_in_candidate),
    ):
        if ids:
            lines += ["", f"Cases {label}: " + ", ".join(f"`{i}`" for i in ids)]
    return "\n".join(lines) + "\n"


# --- JUnit XML ---------------------------------------------------------------------------------------------------


def _xml(text: object) -> str:
    """Text XML 1.0 can hold (ElementTree escapes markup, but writes control characters that no parser reads)."""
    return _NOT_XML.sub("\ufffd", str(text))


def _seconds(value: float) -> str:
    return f"{value:.3f}"


def junit_xml(summary: EvalSummary, trials: Sequence[TrialRecord]) -> str:
    """JUnit XML of an eval: one ``<testcase>`` per trial, ``classname`` ``<suite>.<case>``, name ``trial <n>``.

    Trials the eval planned (``record.trials`` per case) but never ran are ``<skipped>``.
    """
    record = summary.record
    stored = {(t.case_id, t.trial) for t in trials}
    case_ids = sorted({c.case_id for c in summary.cases} | {t.case_id for t in trials})
    missing = [(case_id, i) for case_id in case_ids for i in range(record.trials) if (case_id, i) not in stored]
    failures = sum(1 for t in trials if t.status == "failed")
    errors = sum(1 for t in trials if t.status == "infra_error")
    total_time = sum(t.duration_s for t in trials)
    counts = {
        "tests": str(len(trials) + len(missing)),
        "failures": str(failures),
        "errors": str(errors),
        "skipped": str(len(missing)),
        "time": _seconds(total_time),
    }
    root = ET.Element("testsuites", {"name": "tether", **counts})
    suite = ET.SubElement(
        root,
        "testsuite",
        {"name": _xml(f"tether.eval.{record.suite}"), **counts, "timestamp": record.started_at.isoformat()},
    )
    properties = ET.SubElement(suite, "properties")
    values = {
        "eval_id": record.eval_id,
        "agent_version": record.agent_version,
        "suite_fingerprint": record.suite_fingerprint,
        "status": record.status,
        "seed": str(record.seed),
        "pass_rate": interval_text(summary.pass_rate),
        **{f"pass^{k}": interval_text(v) for k, v in summary.pass_hat_k.items()},
        **{f"pass@{k}": interval_text(v) for k, v in summary.pass_at_k.items()},
        "cost_usd": usd_text(summary.cost_usd),
    }
    for name, value in values.items():
        ET.SubElement(properties, "property", {"name": name, "value": _xml(value)})
    rows: list[tuple[str, int, TrialRecord | None]] = [(t.case_id, t.trial, t) for t in trials]
    rows += [(case_id, i, None) for case_id, i in missing]
    for case_id, index, trial in sorted(rows, key=lambda r: (r[0], r[1])):
        case = ET.SubElement(
            suite,
            "testcase",
            {
                "classname": _xml(f"{record.suite}.{case_id}"),
                "name": f"trial {index}",
                "time": _seconds(trial.duration_s if trial else 0.0),
            },
        )
        if trial is None:
            ET.SubElement(case, "skipped", {"message": "not run: the eval's budget was spent or it was interrupted"})
            continue
        if trial.status == "passed":
            continue
        why = first_failure(trial)
        detail = [why]
        if trial.status == "failed":
            detail = [f"{c.name} ({c.scorer}): {c.explanation}" for c in trial.checks if not c.passed] or [why]
        if trial.run_id:
            detail.append(f"trace: tether runs show {trial.run_id}")
        tag = "failure" if trial.status == "failed" else "error"
        kind = "check failed" if trial.status == "failed" else "infra_error"
        element = ET.SubElement(case, tag, {"message": _xml(why[:_MESSAGE_CHARS]), "type": kind})
        element.text = _xml("\n".join(detail))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
