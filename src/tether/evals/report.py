"""What an eval's trials add up to: pass rate, pass@k, pass^k and mean score with 95% intervals.

The definitions are the architecture's: a trial passes when every check passes;
for a case with n counted trials and c passes, pass@k = 1 - C(n-c, k)/C(n, k) and
pass^k = C(c, k)/C(n, k), averaged over cases, with a bootstrap interval over
cases; the pass rate over all counted trials has a Wilson interval.
Infrastructure failures are not counted trials: they are excluded from every
rate and reported beside them. A case whose counted trials fell below k (its
other trials failed for infrastructure reasons) is left out of that pass^k and
pass@k, and the summary says how many were.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tether.evals.results import EvalRecord, TrialRecord, cost_sum
from tether.evals.stats import (
    Interval,
    bootstrap_mean,
    pass_at_k,
    pass_hat_k,
    suite_pass_at_k,
    suite_pass_hat_k,
    wilson,
)

__all__ = ["CaseSummary", "EvalSummary", "percentile", "summarize"]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class CaseSummary:
    """One case over its trials."""

    case_id: str
    tags: tuple[str, ...]
    trials: int  # counted (not infra_error)
    passes: int
    infra_errors: int
    mean_score: float | None
    pass_at_k: dict[int, float | None]
    pass_hat_k: dict[int, float | None]
    cost_usd: Decimal | None  # total over its trials (agent + judge); None when any is unknown
    mean_duration_s: float | None
    judge_sd: float | None  # mean spread of the judge's grades over trials, when judged
    failing_checks: dict[str, int]  # check name -> trials it failed in

    @property
    def pass_rate(self) -> float | None:
        return self.passes / self.trials if self.trials else None

    @property
    def flaky(self) -> bool:
        """It both passed and failed: the agent is not reliable on it."""
        return 0 < self.passes < self.trials

    def to_dict(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id,
            "tags": list(self.tags),
            "trials": self.trials,
            "passes": self.passes,
            "infra_errors": self.infra_errors,
            "pass_rate": self.pass_rate,
            "flaky": self.flaky,
            "mean_score": self.mean_score,
            "pass_at_k": {str(k): v for k, v in self.pass_at_k.items()},
            "pass_hat_k": {str(k): v for k, v in self.pass_hat_k.items()},
            "cost_usd": None if self.cost_usd is None else str(self.cost_usd),
            "mean_duration_s": self.mean_duration_s,
            "judge_sd": self.judge_sd,
            "failing_checks": self.failing_checks,
        }


@dataclass(frozen=True)
class EvalSummary:
    """An eval's figures."""

    record: EvalRecord
    cases: tuple[CaseSummary, ...]
    trials: int  # counted
    passes: int
    infra_errors: int
    pass_rate: Interval | None
    mean_score: Interval | None
    pass_at_k: dict[int, Interval | None]
    pass_hat_k: dict[int, Interval | None]
    #: Cases left out of pass@k / pass^k for each k because they had fewer counted trials than k.
    short_cases: dict[int, int]
    cost_usd: Decimal | None
    cost_per_trial_usd: Decimal | None
    duration_p50_s: float | None
    duration_p95_s: float | None
    judge_sd: float | None
    models: tuple[str, ...] = field(default=())

    @property
    def ks(self) -> tuple[int, ...]:
        return tuple(self.pass_hat_k)

    @property
    def flaky(self) -> list[CaseSummary]:
        return [c for c in self.cases if c.flaky]

    def to_dict(self) -> dict[str, Any]:
        def interval(value: Interval | None) -> dict[str, Any] | None:
            return None if value is None else value.to_dict()

        return {
            "eval": self.record.to_dict(),
            "trials": self.trials,
            "passes": self.passes,
            "infra_errors": self.infra_errors,
            "pass_rate": interval(self.pass_rate),
            "mean_score": interval(self.mean_score),
            "pass_at_k": {str(k): interval(v) for k, v in self.pass_at_k.items()},
            "pass_hat_k": {str(k): interval(v) for k, v in self.pass_hat_k.items()},
            "short_cases": {str(k): v for k, v in self.short_cases.items()},
            "flaky_cases": [c.case_id for c in self.flaky],
            "cost_usd": None if self.cost_usd is None else str(self.cost_usd),
            "cost_per_trial_usd": None if self.cost_per_trial_usd is None else str(self.cost_per_trial_usd),
            "duration_p50_s": self.duration_p50_s,
            "duration_p95_s": self.duration_p95_s,
            "judge_sd": self.judge_sd,
            "models": list(self.models),
            "cases": [c.to_dict() for c in self.cases],
        }


def _judge_sd(trials: Sequence[TrialRecord]) -> float | None:
    spreads = [float(c.details["sd"]) for t in trials for c in t.checks if c.kind == "judge" and "sd" in c.details]
    return statistics.fmean(spreads) if spreads else None


def _case_summary(case_id: str, trials: Sequence[TrialRecord], ks: Sequence[int]) -> CaseSummary:
    counted = [t for t in trials if t.counted]
    n, c = len(counted), sum(1 for t in counted if t.passed)
    failing: dict[str, int] = {}
    for t in counted:
        for check in t.checks:
            if not check.passed:
                failing[check.name] = failing.get(check.name, 0) + 1
    return CaseSummary(
        case_id=case_id,
        tags=trials[0].tags if trials else (),
        trials=n,
        passes=c,
        infra_errors=len(trials) - n,
        mean_score=statistics.fmean(t.score or 0.0 for t in counted) if counted else None,
        pass_at_k={k: pass_at_k(n, c, k) if n >= k else None for k in ks},
        pass_hat_k={k: pass_hat_k(n, c, k) if n >= k else None for k in ks},
        cost_usd=cost_sum([None if t.cost_usd is None else t.cost_usd + t.judge_cost_usd for t in trials]),
        mean_duration_s=statistics.fmean(t.duration_s for t in counted) if counted else None,
        judge_sd=_judge_sd(counted),
        failing_checks=failing,
    )


def summarize(
    record: EvalRecord, trials: Sequence[TrialRecord], *, ks: Sequence[int] | None = None, seed: int = 0
) -> EvalSummary:
    """The figures of one eval. ``ks`` defaults to the k values the eval was run with."""
    chosen = tuple(ks) if ks is not None else tuple(record.config.get("k") or (1,))
    by_case: dict[str, list[TrialRecord]] = {}
    for t in trials:
        by_case.setdefault(t.case_id, []).append(t)
    cases = tuple(_case_summary(case_id, rows, chosen) for case_id, rows in sorted(by_case.items()))
    counted = [t for t in trials if t.counted]
    passes = sum(1 for t in counted if t.passed)
    at_k: dict[int, Interval | None] = {}
    hat_k: dict[int, Interval | None] = {}
    short: dict[int, int] = {}
    for k in chosen:
        eligible = [(c.trials, c.passes) for c in cases if c.trials >= k]
        short[k] = len(cases) - len(eligible)
        at_k[k] = suite_pass_at_k(eligible, k, seed=seed) if eligible else None
        hat_k[k] = suite_pass_hat_k(eligible, k, seed=seed) if eligible else None
    scores = [c.mean_score for c in cases if c.mean_score is not None]
    durations = [t.duration_s for t in counted]
    total = cost_sum([None if t.cost_usd is None else t.cost_usd + t.judge_cost_usd for t in trials])
    models = tuple(sorted({m for t in trials if t.model for m in t.model.split(",")}))
    return EvalSummary(
        record=record,
        cases=cases,
        trials=len(counted),
        passes=passes,
        infra_errors=len(trials) - len(counted),
        pass_rate=wilson(passes, len(counted)) if counted else None,
        mean_score=bootstrap_mean(scores, seed=seed) if scores else None,
        pass_at_k=at_k,
        pass_hat_k=hat_k,
        short_cases=short,
        cost_usd=total,
        cost_per_trial_usd=None if total is None or not trials else total / len(trials),
        duration_p50_s=percentile(durations, 50),
        duration_p95_s=percentile(durations, 95),
        judge_sd=_judge_sd(counted),
        models=models,
    )
