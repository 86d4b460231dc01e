"""Two evals of one suite side by side: did the candidate get worse than the baseline?

The comparison is paired, case by case, as the architecture requires (never by
eyeballing two intervals): McNemar's exact test on trials paired by index within
a case, and a paired bootstrap over cases of the per-case pass rate and pass^k.
Only counted trials take part; infrastructure failures are left out of both
sides before pairing, so trial ``i`` of a case is the ``i``-th counted trial.

``gate`` turns a comparison into a CI verdict: it fails only on a significant
regression, or when the candidate's pass rate is below an absolute floor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tether.errors import UserError
from tether.evals.report import CaseSummary, EvalSummary, summarize
from tether.evals.results import EvalRecord, TrialRecord
from tether.evals.stats import (
    Interval,
    PairedDifference,
    fisher_exact,
    mcnemar_exact,
    paired_bootstrap,
    paired_trials,
    pass_hat_k,
)

__all__ = ["CaseChange", "Comparison", "GateResult", "compare", "gate"]

CaseStatus = Literal["regressed", "improved", "unchanged"]

# How many regressed case ids the one-line gate message names before "...".
_NAMED_CASES = 5


@dataclass(frozen=True)
class CaseChange:
    """One case common to both evals: its counted passes on each side and Fisher's exact p-value."""

    case_id: str
    baseline_passes: int
    baseline_trials: int
    candidate_passes: int
    candidate_trials: int
    p_value: float

    @property
    def baseline_rate(self) -> float | None:
        return self.baseline_passes / self.baseline_trials if self.baseline_trials else None

    @property
    def candidate_rate(self) -> float | None:
        return self.candidate_passes / self.candidate_trials if self.candidate_trials else None

    @property
    def delta(self) -> float | None:
        """Candidate rate minus baseline rate; None when either side has no counted trial."""
        if self.baseline_rate is None or self.candidate_rate is None:
            return None
        return self.candidate_rate - self.baseline_rate

    @property
    def status(self) -> CaseStatus:
        delta = self.delta
        if delta is None or delta == 0:
            return "unchanged"
        return "regressed" if delta < 0 else "improved"

    def to_dict(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id,
            "baseline_passes": self.baseline_passes,
            "baseline_trials": self.baseline_trials,
            "candidate_passes": self.candidate_passes,
            "candidate_trials": self.candidate_trials,
            "baseline_rate": self.baseline_rate,
            "candidate_rate": self.candidate_rate,
            "delta": self.delta,
            "status": self.status,
            "p_value": self.p_value,
        }


def _interval(value: Interval | None) -> dict[str, Any] | None:
    return None if value is None else value.to_dict()


def _headline(summary: EvalSummary) -> dict[str, Any]:
    """An eval's figures without its per-case rows (the comparison carries those)."""
    record = summary.record
    return {
        "eval_id": record.eval_id,
        "suite": record.suite,
        "suite_fingerprint": record.suite_fingerprint,
        "agent_version": record.agent_version,
        "cases": len(summary.cases),
        "trials": summary.trials,
        "passes": summary.passes,
        "infra_errors": summary.infra_errors,
        "pass_rate": _interval(summary.pass_rate),
        "pass_hat_k": {str(k): _interval(v) for k, v in summary.pass_hat_k.items()},
        "pass_at_k": {str(k): _interval(v) for k, v in summary.pass_at_k.items()},
        "cost_usd": None if summary.cost_usd is None else str(summary.cost_usd),
        "duration_p50_s": summary.duration_p50_s,
        "duration_p95_s": summary.duration_p95_s,
        "models": list(summary.models),
    }


@dataclass(frozen=True)
class Comparison:
    """A candidate eval against a baseline eval of the same suite.

    Differences are candidate - baseline, so a negative ``pass_rate.estimate`` is a loss.
    """

    baseline: EvalSummary
    candidate: EvalSummary
    pass_rate: PairedDifference
    pass_hat_k: dict[int, PairedDifference]
    paired: tuple[int, int, int, int]  # (both_pass, baseline_only, candidate_only, both_fail)
    mcnemar_p: float
    cases: tuple[CaseChange, ...]
    only_in_baseline: tuple[str, ...]
    only_in_candidate: tuple[str, ...]
    suite_changed: bool
    alpha: float

    @property
    def significant_regression(self) -> bool:
        _, baseline_only, candidate_only, _ = self.paired
        return self.mcnemar_p < self.alpha and baseline_only > candidate_only

    @property
    def significant_improvement(self) -> bool:
        _, baseline_only, candidate_only, _ = self.paired
        return self.mcnemar_p < self.alpha and candidate_only > baseline_only

    @property
    def regressions(self) -> list[CaseChange]:
        return [c for c in self.cases if c.status == "regressed"]

    @property
    def improvements(self) -> list[CaseChange]:
        return [c for c in self.cases if c.status == "improved"]

    def to_dict(self) -> dict[str, Any]:
        both_pass, baseline_only, candidate_only, both_fail = self.paired
        return {
            "baseline": _headline(self.baseline),
            "candidate": _headline(self.candidate),
            "pass_rate": self.pass_rate.to_dict(),
            "pass_hat_k": {str(k): v.to_dict() for k, v in self.pass_hat_k.items()},
            "paired": {
                "both_pass": both_pass,
                "baseline_only": baseline_only,
                "candidate_only": candidate_only,
                "both_fail": both_fail,
            },
            "mcnemar_p": self.mcnemar_p,
            "alpha": self.alpha,
            "significant_regression": self.significant_regression,
            "significant_improvement": self.significant_improvement,
            "suite_changed": self.suite_changed,
            "only_in_baseline": list(self.only_in_baseline),
            "only_in_candidate": list(self.only_in_candidate),
            "cases": [c.to_dict() for c in self.cases],
        }


def _outcomes(trials: Sequence[TrialRecord]) -> dict[str, list[bool]]:
    """Per case, whether each counted trial passed, in trial order."""
    by_case: dict[str, list[TrialRecord]] = {}
    for trial in trials:
        if trial.counted:
            by_case.setdefault(trial.case_id, []).append(trial)
    return {case_id: [t.passed for t in sorted(rows, key=lambda t: t.trial)] for case_id, rows in by_case.items()}


def _case_order(change: CaseChange) -> tuple[int, float, str]:
    delta = change.delta or 0.0
    if change.status == "regressed":
        return 0, delta, change.case_id  # most negative first
    if change.status == "improved":
        return 1, -delta, change.case_id  # largest gain first
    return 2, 0.0, change.case_id


def _default_ks(baseline: EvalRecord, candidate: EvalRecord) -> tuple[int, ...]:
    def configured(record: EvalRecord) -> set[int]:
        return {int(k) for k in record.config.get("k") or (1,)}

    most = min(baseline.trials, candidate.trials)
    return tuple(sorted(k for k in configured(baseline) & configured(candidate) if 1 <= k <= most))


def _suite_changed(baseline: EvalRecord, candidate: EvalRecord, common: Sequence[str]) -> bool:
    """Whether what the common cases ask or check differs between the two evals.

    When both evals recorded a fingerprint per case (``config["case_fingerprints"]``),
    only the common cases are compared, so adding or removing a case does not count
    as a change; otherwise the suite fingerprints are, which covers the whole suite.
    """
    base_cases = baseline.config.get("case_fingerprints")
    cand_cases = candidate.config.get("case_fingerprints")
    if isinstance(base_cases, Mapping) and isinstance(cand_cases, Mapping):
        return any(base_cases.get(case_id) != cand_cases.get(case_id) for case_id in common)
    return baseline.suite_fingerprint != candidate.suite_fingerprint


def compare(
    baseline: tuple[EvalRecord, Sequence[TrialRecord]],
    candidate: tuple[EvalRecord, Sequence[TrialRecord]],
    *,
    ks: Sequence[int] | None = None,
    alpha: float = 0.05,
    seed: int = 0,
    resamples: int = 2000,
) -> Comparison:
    """Compare a candidate eval with a baseline eval of the same suite, paired per case.

    Args:
        baseline: the reference eval and its trials.
        candidate: the eval under test and its trials.
        ks: the k values of pass^k to compare; by default those both evals were run
            with that both ran enough trials for.
        alpha: significance level of McNemar's test, in (0, 1).
        seed: seed of the bootstrap.
        resamples: bootstrap resamples.

    Raises:
        UserError: the evals ran different suites, share no case (or no case with a
            counted trial on both sides), or ``alpha``, ``ks`` or ``resamples`` make no sense.
    """
    (base_record, base_trials), (cand_record, cand_trials) = baseline, candidate
    if base_record.suite != cand_record.suite:
        raise UserError(
            f"eval {base_record.eval_id} ran suite {base_record.suite!r}, eval {cand_record.eval_id} ran suite "
            f"{cand_record.suite!r}: compare evals of one suite"
        )
    if not 0.0 < alpha < 1.0:
        raise UserError(f"alpha={alpha} is not a significance level: give a value between 0 and 1, e.g. 0.05")
    if resamples < 1:
        raise UserError(f"resamples={resamples}: ask for at least one bootstrap resample (2000 is usual)")
    if ks is not None and any(k < 1 for k in ks):
        raise UserError(f"k values {list(ks)}: pass^k needs k of at least 1")
    chosen = tuple(sorted(set(ks))) if ks is not None else _default_ks(base_record, cand_record)

    base_summary = summarize(base_record, base_trials, ks=chosen, seed=seed)
    cand_summary = summarize(cand_record, cand_trials, ks=chosen, seed=seed)
    base_cases = {c.case_id: c for c in base_summary.cases}
    cand_cases = {c.case_id: c for c in cand_summary.cases}
    common = sorted(base_cases.keys() & cand_cases.keys())
    if not common:
        raise UserError(
            f"evals {base_record.eval_id} and {cand_record.eval_id} have no case in common: "
            "compare two evals of the same cases"
        )
    # Cases with a counted trial on both sides: the others have nothing to pair.
    measured = [c for c in common if base_cases[c].trials and cand_cases[c].trials]
    if not measured:
        raise UserError(
            f"no case common to evals {base_record.eval_id} and {cand_record.eval_id} has a counted trial on both "
            "sides (every trial failed for infrastructure reasons): run them again with `tether eval run --resume`"
        )

    base_outcomes, cand_outcomes = _outcomes(base_trials), _outcomes(cand_trials)
    paired = paired_trials([base_outcomes[c] for c in measured], [cand_outcomes[c] for c in measured])

    def rates(summary: Mapping[str, CaseSummary], cases: Sequence[str]) -> list[float]:
        return [summary[c].passes / summary[c].trials for c in cases]

    pass_rate = paired_bootstrap(
        rates(base_cases, measured), rates(cand_cases, measured), resamples=resamples, seed=seed
    )
    hat_k: dict[int, PairedDifference] = {}
    for k in chosen:
        eligible = [c for c in measured if base_cases[c].trials >= k and cand_cases[c].trials >= k]
        if eligible:
            hat_k[k] = paired_bootstrap(
                [pass_hat_k(base_cases[c].trials, base_cases[c].passes, k) for c in eligible],
                [pass_hat_k(cand_cases[c].trials, cand_cases[c].passes, k) for c in eligible],
                resamples=resamples,
                seed=seed,
            )

    changes = []
    for case_id in common:
        base, cand = base_cases[case_id], cand_cases[case_id]
        p_value = (
            fisher_exact(base.passes, base.trials, cand.passes, cand.trials) if base.trials and cand.trials else 1.0
        )
        changes.append(CaseChange(case_id, base.passes, base.trials, cand.passes, cand.trials, p_value))

    return Comparison(
        baseline=base_summary,
        candidate=cand_summary,
        pass_rate=pass_rate,
        pass_hat_k=hat_k,
        paired=paired,
        mcnemar_p=mcnemar_exact(paired[1], paired[2]),
        cases=tuple(sorted(changes, key=_case_order)),
        only_in_baseline=tuple(sorted(base_cases.keys() - cand_cases.keys())),
        only_in_candidate=tuple(sorted(cand_cases.keys() - base_cases.keys())),
        suite_changed=_suite_changed(base_record, cand_record, common),
        alpha=alpha,
    )


@dataclass(frozen=True)
class GateResult:
    """A CI verdict on a comparison; ``message`` is one line saying why."""

    passed: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "message": self.message}


def _rate(value: Interval | None) -> str:
    return "n/a" if value is None else f"{value.estimate:.2f}"


def _p(value: float) -> str:
    return f"{value:.2g}"


def gate(comparison: Comparison, *, floor: float | None = None) -> GateResult:
    """Pass unless the candidate regressed significantly or its pass rate is below ``floor``.

    Args:
        comparison: what ``compare`` returned.
        floor: an absolute minimum for the candidate's pass rate (point estimate), in [0, 1].

    Raises:
        UserError: ``floor`` is outside [0, 1].
    """
    if floor is not None and not 0.0 <= floor <= 1.0:
        raise UserError(f"floor={floor} is not a pass rate: give a value between 0 and 1, e.g. 0.8")
    before, after = _rate(comparison.baseline.pass_rate), _rate(comparison.candidate.pass_rate)
    p_text = f"McNemar p={_p(comparison.mcnemar_p)}"
    reasons: list[str] = []
    if comparison.significant_regression:
        diff = comparison.pass_rate
        reasons.append(
            f"pass rate fell {before} -> {after} ({diff.estimate:+.2f} [{diff.low:+.2f}, {diff.high:+.2f}]), "
            f"{p_text} < {comparison.alpha:g}"
        )
        regressed = [c.case_id for c in comparison.regressions]
        if regressed:
            named = ", ".join(regressed[:_NAMED_CASES]) + (", ..." if len(regressed) > _NAMED_CASES else "")
            noun = "case" if len(regressed) == 1 else "cases"
            reasons.append(f"{len(regressed)} {noun} regressed ({named})")
    candidate_rate = comparison.candidate.pass_rate
    if floor is not None and (candidate_rate is None or candidate_rate.estimate < floor):
        reasons.append(f"candidate pass rate {after} is below the floor {floor:g}")
    if reasons:
        if not comparison.significant_regression:
            reasons.append(f"no significant regression ({p_text})")
        return GateResult(passed=False, message="gate failed: " + "; ".join(reasons))
    verdict = "significant improvement" if comparison.significant_improvement else "no significant regression"
    floor_text = f", at or above the floor {floor:g}" if floor is not None else ""
    return GateResult(
        passed=True, message=f"gate passed: {verdict} (pass rate {before} -> {after}, {p_text}){floor_text}"
    )
