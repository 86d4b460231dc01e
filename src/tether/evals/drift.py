"""Drift: has the agent's behaviour on a suite moved, with no change of ours to explain it?

The most recent eval of a suite is tested against a baseline pooled from the evals
just before it. These are independent samples (different days, perhaps a
different model snapshot behind the same name), so the tests are unpaired:
Fisher's exact test for the pass rate, a chi-square test of homogeneity for the
tool sequences, Mann-Whitney U for cost, latency and tokens per trial. As five
metrics are tested at once, their p-values are adjusted with Benjamini-Hochberg
before being held against ``alpha``. Counted trials only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from tether.errors import UserError
from tether.evals.report import percentile
from tether.evals.results import EvalRecord, TrialRecord
from tether.evals.stats import benjamini_hochberg, chi_square_homogeneity, fisher_exact, mann_whitney

__all__ = ["DriftMetric", "DriftReport", "drift"]

# Tool sequences beyond the most common ones are pooled, so that a long tail of
# one-off sequences does not leave the chi-square test with tiny expected counts.
_TOP_SEQUENCES = 10
_OTHER = "(other)"
_NO_TOOLS = "(no tools)"


@dataclass(frozen=True)
class DriftMetric:
    """One metric, baseline window against the recent eval."""

    name: str
    baseline: str
    recent: str
    method: str
    p_value: float | None
    adjusted_p: float | None
    changed: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "baseline": self.baseline,
            "recent": self.recent,
            "method": self.method,
            "p_value": self.p_value,
            "adjusted_p": self.adjusted_p,
            "changed": self.changed,
            "note": self.note,
        }


@dataclass(frozen=True)
class DriftReport:
    """Whether the recent eval of a suite drifted from the evals before it."""

    suite: str
    agent_version: str | None
    baseline_evals: tuple[str, ...]
    recent_eval: str
    metrics: tuple[DriftMetric, ...]
    models_baseline: tuple[str, ...]
    models_recent: tuple[str, ...]
    alpha: float

    @property
    def model_changed(self) -> bool:
        """The response model ids differ: the provider may have moved a model name to a new snapshot."""
        return set(self.models_baseline) != set(self.models_recent)

    @property
    def drifted(self) -> bool:
        return any(m.changed for m in self.metrics)

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "agent_version": self.agent_version,
            "baseline_evals": list(self.baseline_evals),
            "recent_eval": self.recent_eval,
            "alpha": self.alpha,
            "drifted": self.drifted,
            "model_changed": self.model_changed,
            "models_baseline": list(self.models_baseline),
            "models_recent": list(self.models_recent),
            "metrics": [m.to_dict() for m in self.metrics],
        }


def _untested(name: str, method: str, baseline: str, recent: str, note: str) -> DriftMetric:
    return DriftMetric(name, baseline, recent, method, p_value=None, adjusted_p=None, changed=False, note=note)


def _empty_side(base: Sequence[object], recent: Sequence[object]) -> str:
    """Why a test cannot run, or "" when both sides have trials."""
    if not base:
        return "no counted trials in the baseline window"
    if not recent:
        return "no counted trials in the recent eval"
    return ""


def _pass_rate(base: Sequence[TrialRecord], recent: Sequence[TrialRecord]) -> DriftMetric:
    def headline(trials: Sequence[TrialRecord], passes: int) -> str:
        return f"{passes / len(trials):.2f} (n={len(trials)})" if trials else "n/a (n=0)"

    c1, c2 = sum(t.passed for t in base), sum(t.passed for t in recent)
    name, method = "pass_rate", "fisher exact"
    if why := _empty_side(base, recent):
        return _untested(name, method, headline(base, c1), headline(recent, c2), why)
    p = fisher_exact(c1, len(base), c2, len(recent))
    return DriftMetric(name, headline(base, c1), headline(recent, c2), method, p, None, False)


def _sequence(trial: TrialRecord) -> str:
    return " > ".join(str(name) for name in trial.facts.get("tool_sequence") or ()) or _NO_TOOLS


def _tool_sequences(base: Sequence[TrialRecord], recent: Sequence[TrialRecord]) -> DriftMetric:
    base_counts, recent_counts = Counter(map(_sequence, base)), Counter(map(_sequence, recent))
    ranked = sorted((base_counts + recent_counts).items(), key=lambda item: (-item[1], item[0]))
    kept = {category for category, _ in ranked[:_TOP_SEQUENCES]}

    def pooled(counts: Counter[str]) -> dict[str, int]:
        result: dict[str, int] = {}
        for category, count in counts.items():
            key = category if category in kept else _OTHER
            result[key] = result.get(key, 0) + count
        return result

    def headline(counts: Counter[str], total: int) -> str:
        if not total:
            return "no trials"
        top, count = min(counts.items(), key=lambda item: (-item[1], item[0]))
        return f"{len(counts)} distinct, top {top} ({count / total:.0%})"

    name, method = "tool_sequences", "chi-square"
    base_text, recent_text = headline(base_counts, len(base)), headline(recent_counts, len(recent))
    if why := _empty_side(base, recent):
        return _untested(name, method, base_text, recent_text, why)
    _, _, p = chi_square_homogeneity(pooled(base_counts), pooled(recent_counts))
    note = f"the {_TOP_SEQUENCES} most common sequences kept, the rest pooled" if len(ranked) > _TOP_SEQUENCES else ""
    return DriftMetric(name, base_text, recent_text, method, p, None, False, note)


def _distribution(
    name: str,
    base: Sequence[float],
    recent: Sequence[float],
    headline: Callable[[Sequence[float]], str],
) -> DriftMetric:
    method = "mann-whitney"
    base_text = headline(base) if base else "n/a"
    recent_text = headline(recent) if recent else "n/a"
    if why := _empty_side(base, recent):
        return _untested(name, method, base_text, recent_text, why)
    return DriftMetric(name, base_text, recent_text, method, mann_whitney(base, recent), None, False)


def _cost_known(trial: TrialRecord) -> bool:
    return trial.cost_usd is not None and not trial.facts.get("judge_cost_unknown", False)


def _cost_per_trial(base: Sequence[TrialRecord], recent: Sequence[TrialRecord]) -> DriftMetric:
    name, method = "cost_per_trial", "mann-whitney"

    def costs(trials: Sequence[TrialRecord]) -> list[float] | None:
        known = [float(t.cost_usd + t.judge_cost_usd) for t in trials if t.cost_usd is not None and _cost_known(t)]
        return known if len(known) == len(trials) else None

    def headline(values: Sequence[float]) -> str:
        return f"mean ${sum(values) / len(values):.4f}"

    def side(values: list[float] | None) -> str:
        if values is None:
            return "unknown"
        return headline(values) if values else "n/a"

    base_costs, recent_costs = costs(base), costs(recent)
    if base_costs is None or recent_costs is None:
        unknown = sum(1 for t in (*base, *recent) if not _cost_known(t))
        return _untested(
            name,
            method,
            side(base_costs),
            side(recent_costs),
            f"cost unknown for {unknown} of {len(base) + len(recent)} trials (a model without a price): not compared",
        )
    return _distribution(name, base_costs, recent_costs, headline)


def _p50(values: Sequence[float]) -> float:
    middle = percentile(values, 50)
    return 0.0 if middle is None else middle


def _latency_headline(values: Sequence[float]) -> str:
    middle = _p50(values)
    return f"p50 {middle * 1000:.1f} ms" if middle < 1 else f"p50 {middle:.1f} s"


def _tokens_headline(values: Sequence[float]) -> str:
    return f"p50 {_p50(values):.0f} tokens"


def _models(trials: Sequence[TrialRecord]) -> tuple[str, ...]:
    return tuple(sorted({m for t in trials if t.model for m in t.model.split(",") if m}))


def drift(
    history: Sequence[tuple[EvalRecord, Sequence[TrialRecord]]], *, window: int = 5, alpha: float = 0.05
) -> DriftReport:
    """Test the last eval of ``history`` against the ``window`` evals before it, pooled.

    Args:
        history: evals of one suite with their trials, oldest first.
        window: how many evals before the last one make the baseline.
        alpha: false discovery rate the adjusted p-values are held against, in (0, 1).

    Raises:
        UserError: fewer than two evals, evals of several suites, or a bad ``window`` or ``alpha``.
    """
    if len(history) < 2:
        raise UserError("drift needs a baseline: run the suite again (tether eval run ...)")
    if window < 1:
        raise UserError(f"window={window}: the baseline needs at least one eval before the recent one")
    if not 0.0 < alpha < 1.0:
        raise UserError(f"alpha={alpha} is not a significance level: give a value between 0 and 1, e.g. 0.05")
    suites = sorted({record.suite for record, _ in history})
    if len(suites) > 1:
        raise UserError(f"drift compares evals of one suite, these ran {', '.join(suites)}: pick one suite")
    recent_record, recent_all = history[-1]
    baseline_history = history[-1 - window : -1]
    base_all = [t for _, trials in baseline_history for t in trials]
    base = [t for t in base_all if t.counted]
    recent = [t for t in recent_all if t.counted]
    versions = {record.agent_version for record, _ in (*baseline_history, history[-1])}

    metrics = [
        _pass_rate(base, recent),
        _tool_sequences(base, recent),
        _cost_per_trial(base, recent),
        _distribution("latency", [t.duration_s for t in base], [t.duration_s for t in recent], _latency_headline),
        _distribution(
            "tokens_per_trial", [float(t.tokens) for t in base], [float(t.tokens) for t in recent], _tokens_headline
        ),
    ]
    tested = [i for i, m in enumerate(metrics) if m.p_value is not None]
    adjusted = benjamini_hochberg([metrics[i].p_value or 0.0 for i in tested])
    for i, q in zip(tested, adjusted, strict=True):
        metrics[i] = replace(metrics[i], adjusted_p=q, changed=q < alpha)

    return DriftReport(
        suite=recent_record.suite,
        agent_version=versions.pop() if len(versions) == 1 else None,
        baseline_evals=tuple(record.eval_id for record, _ in baseline_history),
        recent_eval=recent_record.eval_id,
        metrics=tuple(metrics),
        models_baseline=_models(base_all),
        models_recent=_models(recent_all),
        alpha=alpha,
    )
