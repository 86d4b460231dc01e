"""The statistics of the eval engine, in pure Python (standard library only).

A trial *passes* when its score is 1. For one case with ``n`` trials and ``c``
passes:

* ``pass@k = 1 - C(n-c, k) / C(n, k)`` — the chance that at least one of ``k``
  trials drawn without replacement passes (the unbiased estimator of the Codex
  paper, Chen et al. 2021);
* ``pass^k = C(c, k) / C(n, k)`` — the chance that all ``k`` pass (τ-bench,
  Yao et al. 2024).

A suite's value is the mean over its cases, with ``k ≤`` the smallest trial count.

Uncertainty:

* proportions (a pass rate over trials) carry a Wilson score interval;
* per-case means (pass@k, pass^k, mean score) carry a percentile bootstrap
  interval, resampling *cases* — trials of one case are not independent draws.

Comparing two versions of an agent on the same suite is *paired*, case by case:
McNemar's exact test on trials paired by index (``paired_trials`` then
``mcnemar_exact``), or a paired bootstrap over per-case values
(``paired_bootstrap``).

Drift (a baseline window against a recent window) compares two *independent*
samples: Fisher's exact test for pass rates, Mann-Whitney U for scores and
latencies, a chi-square test of homogeneity for categorical outcomes (stop
reasons, tool names), and Benjamini-Hochberg to adjust when many metrics are
tested at once.

Every function raises ``ValueError`` for arguments that have no meaning (``k``
larger than the trials run, an empty sample, counts out of range); the message
says what to change.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

__all__ = [
    "Interval",
    "PairedDifference",
    "benjamini_hochberg",
    "bootstrap_mean",
    "chi2_sf",
    "chi_square_homogeneity",
    "fisher_exact",
    "mann_whitney",
    "mcnemar_exact",
    "paired_bootstrap",
    "paired_trials",
    "pass_at_k",
    "pass_hat_k",
    "suite_pass_at_k",
    "suite_pass_hat_k",
    "wilson",
]

DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95

# R's fisher.test counts tables whose probability is within this relative
# tolerance of the observed one as "as extreme", so that ties computed with
# floating-point rounding are not dropped.
_FISHER_RELATIVE_TOLERANCE = 1e-7

# Numerical Recipes constants for the incomplete gamma function.
_GAMMA_EPS = 1e-15
_GAMMA_FPMIN = 1e-300


@dataclass(frozen=True, slots=True)
class Interval:
    """A point estimate with a two-sided confidence interval.

    Attributes:
        estimate: the point estimate (a pass rate, a mean of per-case values).
        low: lower bound of the interval.
        high: upper bound of the interval.
        method: how the interval was computed: ``"wilson"``, ``"bootstrap"`` or ``"exact"``.
    """

    estimate: float
    low: float
    high: float
    method: str

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise ValueError(f"interval low={self.low} is above high={self.high}: pass the bounds in order (low, high)")

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def contains(self, x: float) -> bool:
        """Whether ``low ≤ x ≤ high``."""
        return self.low <= x <= self.high

    def to_dict(self) -> dict[str, float | str]:
        """The interval as a plain JSON-able dict."""
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "method": self.method}


@dataclass(frozen=True, slots=True)
class PairedDifference:
    """The difference candidate - baseline of two paired samples.

    Attributes:
        estimate: mean over cases of (candidate - baseline).
        low: lower bound of the confidence interval of the difference.
        high: upper bound of the confidence interval of the difference.
        p_value: two-sided p-value of "no difference".
        method: how it was computed, e.g. ``"paired bootstrap"``.
    """

    estimate: float
    low: float
    high: float
    p_value: float
    method: str

    def __str__(self) -> str:
        return f"{self.estimate:+.3f} [{self.low:+.3f}, {self.high:+.3f}] p={self.p_value:.3g}"

    def to_dict(self) -> dict[str, float | str]:
        """The difference as a plain JSON-able dict."""
        return {
            "estimate": self.estimate,
            "low": self.low,
            "high": self.high,
            "p_value": self.p_value,
            "method": self.method,
        }


# --- pass@k and pass^k --------------------------------------------------------------------------------------------


def _check_case(n: int, c: int, k: int) -> None:
    if n < 1:
        raise ValueError(f"a case has n={n} trials: run every case at least once before computing pass@k or pass^k")
    if not 0 <= c <= n:
        raise ValueError(
            f"c={c} passes is not possible with n={n} trials: c counts the trials scored 1 and must be between 0 and n"
        )
    if k < 1:
        raise ValueError(f"k={k} is not a number of trials: ask for k of at least 1 (pass@1 is the plain pass rate)")
    if k > n:
        raise ValueError(
            f"k={k} is larger than the {n} trials of this case: "
            f"run at least {k} trials (--trials {k}) or ask for a smaller k"
        )


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of one case: the chance that at least one of k trials passes.

    ``pass@k = 1 - C(n-c, k) / C(n, k)``, computed exactly as
    ``(C(n, k) - C(n-c, k)) / C(n, k)`` with integers and one correctly rounded
    division; when ``n - c < k`` every k-subset holds a pass and the result is 1.0.

    Args:
        n: trials run for the case.
        c: trials that passed (score 1).
        k: trials drawn.

    Raises:
        ValueError: unless ``n ≥ 1``, ``0 ≤ c ≤ n`` and ``1 ≤ k ≤ n``.
    """
    _check_case(n, c, k)
    if n - c < k:
        return 1.0
    total = math.comb(n, k)
    return (total - math.comb(n - c, k)) / total


def pass_hat_k(n: int, c: int, k: int) -> float:
    """pass^k of one case: the chance that all of k trials pass.

    ``pass^k = C(c, k) / C(n, k)`` (τ-bench), exact with integers; 0.0 when ``c < k``.

    Args:
        n: trials run for the case.
        c: trials that passed (score 1).
        k: trials drawn.

    Raises:
        ValueError: unless ``n ≥ 1``, ``0 ≤ c ≤ n`` and ``1 ≤ k ≤ n``.
    """
    _check_case(n, c, k)
    return math.comb(c, k) / math.comb(n, k)


# --- intervals ----------------------------------------------------------------------------------------------------


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must be strictly between 0 and 1: use e.g. 0.95 for a 95% interval")


def _check_resamples(resamples: int) -> None:
    if resamples < 1:
        raise ValueError(f"resamples={resamples} must be at least 1: use the default {DEFAULT_RESAMPLES} or more")


def _check_finite(values: Sequence[float], name: str) -> None:
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise ValueError(f"{name}[{i}] is {v}: every value must be a finite number; drop or re-score that case")


def wilson(successes: int, trials: int, *, confidence: float = DEFAULT_CONFIDENCE) -> Interval:
    """The Wilson score interval of a proportion.

    With ``p = s/n`` and ``z`` the ``1 - (1 - confidence)/2`` quantile of the
    standard normal::

        centre = (p + z²/2n) / (1 + z²/n)
        half   = z·√(p(1-p)/n + z²/4n²) / (1 + z²/n)

    The interval is ``[centre - half, centre + half]`` clamped to [0, 1]; its
    low end is exactly 0 when ``s = 0`` and its high end exactly 1 when ``s = n``.

    Args:
        successes: trials that passed.
        trials: trials run.
        confidence: coverage of the interval, strictly between 0 and 1.

    Raises:
        ValueError: if ``trials < 1``, ``successes`` is not in ``[0, trials]`` or
            ``confidence`` is not in (0, 1).
    """
    if trials < 1:
        raise ValueError(f"trials={trials}: a pass rate needs at least one trial; run the suite before asking for it")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes={successes} is not possible with {trials} trials: it must be between 0 and trials")
    _check_confidence(confidence)
    z = NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)
    p = successes / trials
    z2 = z * z
    denominator = 1.0 + z2 / trials
    centre = (p + z2 / (2.0 * trials)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / trials + z2 / (4.0 * trials * trials)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return Interval(estimate=p, low=low, high=high, method="wilson")


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default, R's type 7)."""
    position = q * (len(sorted_values) - 1)
    below = math.floor(position)
    above = min(below + 1, len(sorted_values) - 1)
    fraction = position - below
    return sorted_values[below] + (sorted_values[above] - sorted_values[below]) * fraction


def _bootstrap_means(values: Sequence[float], resamples: int, seed: int) -> list[float]:
    """Sorted means of ``resamples`` resamples of ``values`` with replacement."""
    rng = random.Random(seed)
    population = list(values)
    size = len(population)
    return sorted(sum(rng.choices(population, k=size)) / size for _ in range(resamples))


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def bootstrap_mean(
    values: Sequence[float],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Interval:
    """The mean of per-case values with a percentile bootstrap interval.

    Draws ``resamples`` samples of ``len(values)`` cases with replacement; the
    interval is the ``alpha/2`` and ``1 - alpha/2`` quantiles (linear interpolation) of
    their means, ``alpha = 1 - confidence``. The same seed gives the same interval.
    One value, or values all equal, give the degenerate interval ``[v, v]``.

    Args:
        values: one value per case (a pass@k, a pass^k, a mean score).
        resamples: bootstrap resamples.
        confidence: coverage of the interval, strictly between 0 and 1.
        seed: seed of the resampling.

    Raises:
        ValueError: if ``values`` is empty or holds a non-finite number,
            ``resamples < 1`` or ``confidence`` is not in (0, 1).
    """
    if not values:
        raise ValueError("no values to bootstrap: the suite has no cases; add cases or check the suite filter")
    _check_finite(values, "values")
    _check_resamples(resamples)
    _check_confidence(confidence)
    estimate = _mean(values)
    if all(v == values[0] for v in values):
        return Interval(estimate=values[0], low=values[0], high=values[0], method="bootstrap")
    means = _bootstrap_means(values, resamples, seed)
    alpha = 1.0 - confidence
    return Interval(
        estimate=estimate,
        low=_quantile(means, alpha / 2.0),
        high=_quantile(means, 1.0 - alpha / 2.0),
        method="bootstrap",
    )


def _check_suite(cases: Sequence[tuple[int, int]], k: int) -> None:
    if not cases:
        raise ValueError("no cases: the suite is empty; add cases or check the suite filter")
    smallest_index, (smallest_n, _) = min(enumerate(cases), key=lambda item: item[1][0])
    if k > smallest_n >= 1:
        raise ValueError(
            f"k={k} is larger than the {smallest_n} trials of the smallest case (case {smallest_index}): "
            f"run every case at least {k} trials (--trials {k}) or ask for k ≤ {smallest_n}"
        )


def _suite_mean(
    estimator: Callable[[int, int, int], float],
    cases: Sequence[tuple[int, int]],
    k: int,
    *,
    resamples: int,
    confidence: float,
    seed: int,
) -> Interval:
    """The mean over cases of ``estimator(n, c, k)``, with a bootstrap interval over cases."""
    _check_suite(cases, k)
    values = [estimator(n, c, k) for n, c in cases]
    return bootstrap_mean(values, resamples=resamples, confidence=confidence, seed=seed)


def suite_pass_at_k(
    cases: Sequence[tuple[int, int]],
    k: int,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Interval:
    """The suite's pass@k: the mean over cases of ``1 - C(n-c, k)/C(n, k)``, bootstrapped over cases.

    Args:
        cases: ``(n, c)`` per case — trials run and trials passed.
        k: trials drawn; at most the smallest ``n``.
        resamples: bootstrap resamples.
        confidence: coverage of the interval, strictly between 0 and 1.
        seed: seed of the resampling.

    Raises:
        ValueError: if there are no cases, ``k`` exceeds the smallest case's
            trials, a case is invalid for ``pass_at_k``, or a bootstrap argument is invalid.
    """
    return _suite_mean(pass_at_k, cases, k, resamples=resamples, confidence=confidence, seed=seed)


def suite_pass_hat_k(
    cases: Sequence[tuple[int, int]],
    k: int,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Interval:
    """The suite's pass^k: the mean over cases of ``C(c, k)/C(n, k)``, bootstrapped over cases.

    Args:
        cases: ``(n, c)`` per case — trials run and trials passed.
        k: trials drawn; at most the smallest ``n``.
        resamples: bootstrap resamples.
        confidence: coverage of the interval, strictly between 0 and 1.
        seed: seed of the resampling.

    Raises:
        ValueError: if there are no cases, ``k`` exceeds the smallest case's
            trials, a case is invalid for ``pass_hat_k``, or a bootstrap argument is invalid.
    """
    return _suite_mean(pass_hat_k, cases, k, resamples=resamples, confidence=confidence, seed=seed)


# --- paired comparison of two versions ----------------------------------------------------------------------------


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs.

    ``p = min(1, 2·P[X ≤ min(b, c)])`` with ``X ~ Binomial(b + c, 1/2)``, i.e.
    ``min(1, 2·Σ_{i ≤ min(b,c)} C(b+c, i) / 2^(b+c))``, summed with integers and
    divided once. No discordant pairs (``b + c = 0``) gives 1.0.

    Args:
        b: pairs where the baseline passed and the candidate failed.
        c: pairs where the baseline failed and the candidate passed.

    Raises:
        ValueError: if ``b`` or ``c`` is negative.
    """
    if b < 0 or c < 0:
        raise ValueError(
            f"b={b}, c={c}: discordant pair counts cannot be negative; take them from paired_trials() "
            "(baseline_only, candidate_only)"
        )
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    numerator = 2 * tail
    denominator = 2**n
    return 1.0 if numerator >= denominator else numerator / denominator


def paired_trials(
    baseline: Sequence[Sequence[bool]],
    candidate: Sequence[Sequence[bool]],
) -> tuple[int, int, int, int]:
    """Pair the trials of two runs of the same suite and count the four outcomes.

    Trials are paired *by index within a case*: trial ``i`` of case ``j`` in the
    baseline with trial ``i`` of case ``j`` in the candidate. A case with a
    different number of trials in the two runs contributes ``min`` of the two
    counts; the extra trials are left out.

    Args:
        baseline: per case, per trial, whether the baseline passed.
        candidate: per case, per trial, whether the candidate passed, cases in the same order.

    Returns:
        ``(both_pass, baseline_only, candidate_only, both_fail)``; the middle two
        are McNemar's ``b`` and ``c``.

    Raises:
        ValueError: if the two runs have a different number of cases.
    """
    if len(baseline) != len(candidate):
        raise ValueError(
            f"baseline has {len(baseline)} cases and candidate has {len(candidate)}: "
            "compare two runs of the same suite, with the cases in the same order"
        )
    both_pass = baseline_only = candidate_only = both_fail = 0
    for base_case, cand_case in zip(baseline, candidate, strict=True):
        for base, cand in zip(base_case, cand_case, strict=False):
            if base and cand:
                both_pass += 1
            elif base:
                baseline_only += 1
            elif cand:
                candidate_only += 1
            else:
                both_fail += 1
    return both_pass, baseline_only, candidate_only, both_fail


def paired_bootstrap(
    baseline: Sequence[float],
    candidate: Sequence[float],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> PairedDifference:
    """The mean per-case difference candidate - baseline, with a paired bootstrap interval and p-value.

    With ``d_j = candidate_j - baseline_j``, the estimate is ``mean(d)``. Cases
    are resampled with replacement (each keeping its pair), giving ``B``
    bootstrap means ``d*``; the interval is their ``alpha/2`` and ``1 - alpha/2``
    quantiles, ``alpha = 1 - confidence``.

    The p-value inverts the percentile interval, with the add-one correction
    that keeps a Monte Carlo p-value above zero::

        p = min(1, 2·min((#{d* ≤ 0} + 1)/(B + 1), (#{d* ≥ 0} + 1)/(B + 1)))

    so ``p < alpha`` exactly when (up to the add-one) the interval leaves out 0, and
    the smallest reachable p is ``2/(B + 1)``. Differences all zero give an
    estimate of 0, the interval [0, 0] and p = 1; differences all equal to
    ``δ ≠ 0`` give ``[δ, δ]`` and ``p = 2/(B + 1)``.

    Args:
        baseline: one value per case for the baseline (pass@k, pass^k, mean score).
        candidate: the same for the candidate, cases in the same order.
        resamples: bootstrap resamples ``B``.
        confidence: coverage of the interval, strictly between 0 and 1.
        seed: seed of the resampling.

    Raises:
        ValueError: if the lists are empty or of different lengths, hold a
            non-finite number, ``resamples < 1`` or ``confidence`` is not in (0, 1).
    """
    if len(baseline) != len(candidate):
        raise ValueError(
            f"baseline has {len(baseline)} cases and candidate has {len(candidate)}: "
            "a paired comparison needs one value per case from both runs, in the same order"
        )
    if not baseline:
        raise ValueError("no cases to compare: run both versions on a suite with at least one case")
    _check_finite(baseline, "baseline")
    _check_finite(candidate, "candidate")
    _check_resamples(resamples)
    _check_confidence(confidence)
    method = "paired bootstrap"
    differences = [cand - base for base, cand in zip(baseline, candidate, strict=True)]
    if all(d == differences[0] for d in differences):
        delta = differences[0]
        p_value = 1.0 if delta == 0 else min(1.0, 2.0 / (resamples + 1))
        return PairedDifference(estimate=delta, low=delta, high=delta, p_value=p_value, method=method)
    means = _bootstrap_means(differences, resamples, seed)
    alpha = 1.0 - confidence
    at_most_zero = sum(1 for m in means if m <= 0.0)
    at_least_zero = sum(1 for m in means if m >= 0.0)
    p_value = min(1.0, 2.0 * (min(at_most_zero, at_least_zero) + 1) / (resamples + 1))
    return PairedDifference(
        estimate=_mean(differences),
        low=_quantile(means, alpha / 2.0),
        high=_quantile(means, 1.0 - alpha / 2.0),
        p_value=p_value,
        method=method,
    )


# --- drift: two independent samples -------------------------------------------------------------------------------


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_exact(c1: int, n1: int, c2: int, n2: int) -> float:
    """Two-sided Fisher exact p-value for the pass rates of two independent samples.

    The table is ``[[c1, n1 - c1], [c2, n2 - c2]]``. With its margins fixed the
    passes in the first row follow a hypergeometric law,
    ``P(x) = C(K, x)·C(N - K, n1 - x) / C(N, n1)`` with ``K = c1 + c2`` and
    ``N = n1 + n2``; the p-value is the sum of ``P(x)`` over every table with
    ``P(x) ≤ P(c1)·(1 + 10⁻⁷)`` (the relative tolerance R's ``fisher.test`` uses
    so that floating-point ties count). Probabilities are computed in log space
    with ``math.lgamma``, so large windows cost O(min(n1, K)) floating-point operations.

    Args:
        c1: passes in the first sample (e.g. the baseline window).
        n1: trials in the first sample.
        c2: passes in the second sample (e.g. the recent window).
        n2: trials in the second sample.

    Raises:
        ValueError: unless ``0 ≤ c1 ≤ n1`` and ``0 ≤ c2 ≤ n2``.
    """
    for name, c, n in (("c1", c1, n1), ("c2", c2, n2)):
        if not 0 <= c <= n:
            raise ValueError(f"{name}={c} passes out of {n} trials: passes must be between 0 and the number of trials")
    total = n1 + n2
    passes = c1 + c2
    low = max(0, n1 - (total - passes))
    high = min(passes, n1)
    log_denominator = _log_comb(total, n1)

    def log_probability(x: int) -> float:
        return _log_comb(passes, x) + _log_comb(total - passes, n1 - x) - log_denominator

    threshold = log_probability(c1) + math.log1p(_FISHER_RELATIVE_TOLERANCE)
    terms = [lp for lp in (log_probability(x) for x in range(low, high + 1)) if lp <= threshold]
    return min(1.0, math.fsum(math.exp(lp) for lp in terms))


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Mann-Whitney U p-value (normal approximation) for two independent samples.

    Ranks the pooled values (ties get their average rank); ``U = R_a - n_a(n_a + 1)/2``
    with ``R_a`` the rank sum of ``a``. Under the null ``U`` has mean ``n_a·n_b/2`` and,
    with the tie correction, variance ``n_a·n_b/12 · ((N + 1) - Σ(t³ - t)/(N(N - 1)))``
    over tie groups of size ``t``. With the continuity correction,
    ``z = max(0, |U - n_a·n_b/2| - 1/2) / sigma`` and ``p = erfc(z/√2) = 2·(1 - Φ(z))``.
    All values equal (sigma = 0) gives 1.0. The approximation is fair from about
    eight values a side; it is what scipy's ``mannwhitneyu(method="asymptotic")`` returns.

    Args:
        a: first sample (e.g. scores in the baseline window).
        b: second sample (e.g. scores in the recent window).

    Raises:
        ValueError: if either sample is empty or holds a non-finite number.
    """
    if not a or not b:
        raise ValueError(
            f"samples of {len(a)} and {len(b)} values: Mann-Whitney needs at least one value on each side; "
            "widen the window that is empty"
        )
    _check_finite(a, "a")
    _check_finite(b, "b")
    n_a, n_b = len(a), len(b)
    n = n_a + n_b
    pooled = sorted([(v, 0) for v in a] + [(v, 1) for v in b])
    rank_sum_a = 0.0
    tie_term = 0
    i = 0
    while i < n:
        j = i
        while j + 1 < n and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        average_rank = (i + j) / 2.0 + 1.0
        ties = j - i + 1
        tie_term += ties**3 - ties
        rank_sum_a += average_rank * sum(1 for _, side in pooled[i : j + 1] if side == 0)
        i = j + 1
    u = rank_sum_a - n_a * (n_a + 1) / 2.0
    mean_u = n_a * n_b / 2.0
    variance = n_a * n_b / 12.0 * ((n + 1) - tie_term / (n * (n - 1)))
    if variance <= 0.0:
        return 1.0
    z = max(0.0, abs(u - mean_u) - 0.5) / math.sqrt(variance)
    return min(1.0, math.erfc(z / math.sqrt(2.0)))


def _gamma_series(a: float, x: float) -> float:
    """Regularized lower incomplete gamma P(a, x) by its series; converges fast for x < a + 1."""
    term = total = 1.0 / a
    denominator = a
    for _ in range(_gamma_iterations(a, x)):
        denominator += 1.0
        term *= x / denominator
        total += term
        if abs(term) < abs(total) * _GAMMA_EPS:
            return total * math.exp(-x + a * math.log(x) - math.lgamma(a))
    raise ArithmeticError(f"incomplete gamma series did not converge for a={a}, x={x}")


def _gamma_continued_fraction(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x) by its continued fraction (modified Lentz); for x ≥ a + 1."""
    b = x + 1.0 - a
    c = 1.0 / _GAMMA_FPMIN
    d = 1.0 / b
    h = d
    for i in range(1, _gamma_iterations(a, x) + 1):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        if abs(d) < _GAMMA_FPMIN:
            d = _GAMMA_FPMIN
        c = b + an / c
        if abs(c) < _GAMMA_FPMIN:
            c = _GAMMA_FPMIN
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _GAMMA_EPS:
            return math.exp(-x + a * math.log(x) - math.lgamma(a)) * h
    raise ArithmeticError(f"incomplete gamma continued fraction did not converge for a={a}, x={x}")


def _gamma_iterations(a: float, x: float) -> int:
    # Both expansions need O(√max(a, x)) terms; the margin keeps large df safe.
    return 1000 + 10 * math.isqrt(int(max(a, x)) + 1)


def chi2_sf(x: float, df: int) -> float:
    """The chi-square survival function ``P[χ²_df > x]``.

    Equals ``Q(df/2, x/2)``, the regularized upper incomplete gamma function,
    computed as in Numerical Recipes (§6.2): ``1 - P`` from the series when
    ``x/2 < df/2 + 1``, the continued fraction otherwise, with ``math.lgamma``.
    ``x ≤ 0`` gives 1.0; ``x = +inf`` gives 0.0.

    Args:
        x: the statistic.
        df: degrees of freedom.

    Raises:
        ValueError: if ``df < 1`` or ``x`` is NaN.
    """
    if df < 1:
        raise ValueError(f"df={df}: a chi-square distribution needs at least 1 degree of freedom (categories - 1)")
    if math.isnan(x):
        raise ValueError("x is NaN: pass the chi-square statistic as a number")
    if x <= 0.0:
        return 1.0
    if math.isinf(x):
        return 0.0
    a = df / 2.0
    y = x / 2.0
    if y == 0.0:  # x was the smallest subnormal: halving it underflowed, and P(a, 0) = 0
        return 1.0
    if y < a + 1.0:
        return max(0.0, 1.0 - _gamma_series(a, y))
    return _gamma_continued_fraction(a, y)


def chi_square_homogeneity(a: Mapping[str, int], b: Mapping[str, int]) -> tuple[float, int, float]:
    """Pearson's chi-square test that two samples share one categorical distribution.

    Over the union of categories with at least one count, ``E_rj = row_r·col_j/N``
    and ``χ² = Σ (O_rj - E_rj)² / E_rj`` with ``df = categories - 1``; ``p = chi2_sf(χ², df)``.
    No Yates continuity correction is applied (for two categories, e.g. pass/fail,
    prefer ``fisher_exact``). With fewer than two categories, or an empty
    sample, there is nothing to compare and the result is ``(0.0, 0, 1.0)``.
    Expected counts below 5 make the p-value approximate.

    Args:
        a: count per category in the first sample (e.g. stop reasons in the baseline window).
        b: count per category in the second sample.

    Returns:
        ``(statistic, degrees_of_freedom, p_value)``.

    Raises:
        ValueError: if a count is negative.
    """
    for name, counts in (("a", a), ("b", b)):
        for key, count in counts.items():
            if count < 0:
                raise ValueError(
                    f"{name}[{key!r}]={count}: category counts cannot be negative; pass how often each occurred"
                )
    categories = sorted(key for key in set(a) | set(b) if a.get(key, 0) + b.get(key, 0) > 0)
    total_a = sum(a.get(key, 0) for key in categories)
    total_b = sum(b.get(key, 0) for key in categories)
    if len(categories) < 2 or total_a == 0 or total_b == 0:
        return 0.0, 0, 1.0
    total = total_a + total_b
    statistic = 0.0
    for key in categories:
        column = a.get(key, 0) + b.get(key, 0)
        for row_total, observed in ((total_a, a.get(key, 0)), (total_b, b.get(key, 0))):
            expected = row_total * column / total
            statistic += (observed - expected) ** 2 / expected
    df = len(categories) - 1
    return statistic, df, chi2_sf(statistic, df)


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (false discovery rate), in the input order.

    With ``p_(1) ≤ … ≤ p_(m)`` sorted, ``q_(i) = min_{j ≥ i} min(1, m·p_(j)/j)``
    (R's ``p.adjust(method="BH")``). Reject the metrics whose adjusted value is below
    the chosen false discovery rate. An empty list gives an empty list.

    Args:
        p_values: one p-value per metric tested.

    Raises:
        ValueError: if a p-value is not in [0, 1].
    """
    for i, p in enumerate(p_values):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p_values[{i}]={p} is not a probability: pass p-values between 0 and 1")
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 1.0
    for rank in range(m, 0, -1):
        index = order[rank - 1]
        # p·(m/rank) rather than m·p/rank: m/rank ≥ 1, so rounding can never push q below p.
        running = min(running, p_values[index] * (m / rank))
        adjusted[index] = running
    return adjusted
