"""The eval statistics agree with brute force, closed forms and published values."""

from __future__ import annotations

import itertools
import json
import math
import random
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.evals import stats
from tether.evals.stats import (
    Interval,
    PairedDifference,
    benjamini_hochberg,
    bootstrap_mean,
    chi2_sf,
    chi_square_homogeneity,
    fisher_exact,
    mann_whitney,
    mcnemar_exact,
    paired_bootstrap,
    paired_trials,
    pass_at_k,
    pass_hat_k,
    suite_pass_at_k,
    suite_pass_hat_k,
    wilson,
)

FAST = settings(max_examples=60, deadline=None)


@st.composite
def cases(draw: st.DrawFn, max_n: int = 12) -> tuple[int, int, int]:
    """An (n, c, k) with 1 ≤ n ≤ max_n, 0 ≤ c ≤ n, 1 ≤ k ≤ n."""
    n = draw(st.integers(1, max_n))
    c = draw(st.integers(0, n))
    k = draw(st.integers(1, n))
    return n, c, k


def _brute_force(n: int, c: int, k: int) -> tuple[Fraction, Fraction]:
    """Fractions of k-subsets of the trials with at least one pass, and with only passes."""
    trials = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(trials, k))
    any_pass = sum(1 for s in subsets if any(s))
    all_pass = sum(1 for s in subsets if all(s))
    return Fraction(any_pass, len(subsets)), Fraction(all_pass, len(subsets))


def test_the_public_names_are_listed_once_and_exist() -> None:
    assert len(set(stats.__all__)) == len(stats.__all__)
    for name in stats.__all__:
        assert hasattr(stats, name), name


# --- pass@k and pass^k --------------------------------------------------------------------------------------------


@FAST
@given(cases())
def test_pass_at_k_is_the_fraction_of_k_subsets_with_a_pass(case: tuple[int, int, int]) -> None:
    n, c, k = case
    expected, _ = _brute_force(n, c, k)
    assert math.isclose(pass_at_k(n, c, k), float(expected), rel_tol=1e-12)


@FAST
@given(cases())
def test_pass_hat_k_is_the_fraction_of_k_subsets_that_all_pass(case: tuple[int, int, int]) -> None:
    n, c, k = case
    _, expected = _brute_force(n, c, k)
    assert math.isclose(pass_hat_k(n, c, k), float(expected), rel_tol=1e-12)


@FAST
@given(cases(max_n=200))
def test_pass_at_1_and_pass_hat_1_are_the_pass_rate(case: tuple[int, int, int]) -> None:
    n, c, _ = case
    assert pass_at_k(n, c, 1) == pass_hat_k(n, c, 1) == c / n


@FAST
@given(cases(max_n=200))
def test_pass_hat_k_never_exceeds_pass_at_k(case: tuple[int, int, int]) -> None:
    n, c, k = case
    assert pass_hat_k(n, c, k) <= pass_at_k(n, c, k)


@FAST
@given(cases(max_n=60))
def test_pass_at_k_rises_and_pass_hat_k_falls_with_k(case: tuple[int, int, int]) -> None:
    n, c, _ = case
    at = [pass_at_k(n, c, k) for k in range(1, n + 1)]
    hat = [pass_hat_k(n, c, k) for k in range(1, n + 1)]
    assert all(x <= y for x, y in itertools.pairwise(at))
    assert all(x >= y for x, y in itertools.pairwise(hat))


def test_pass_at_k_is_exactly_one_when_every_k_subset_holds_a_pass() -> None:
    assert pass_at_k(10, 8, 3) == 1.0
    assert pass_at_k(1000, 999, 2) == 1.0


def test_pass_at_k_stays_exact_for_large_trial_counts() -> None:
    # C(1000, 500) overflows a float; the integer division must not.
    assert math.isclose(pass_at_k(1000, 1, 500), 0.5, rel_tol=1e-12)
    assert math.isclose(pass_hat_k(1000, 999, 500), 0.5, rel_tol=1e-12)


@pytest.mark.parametrize(
    ("n", "c", "k", "phrase"),
    [
        (3, 1, 5, r"k=5 is larger than the 3 trials of this case: run at least 5 trials \(--trials 5\)"),
        (0, 0, 1, "run every case at least once"),
        (3, 4, 1, "must be between 0 and n"),
        (3, -1, 1, "must be between 0 and n"),
        (3, 1, 0, "ask for k of at least 1"),
    ],
)
def test_an_impossible_case_is_refused_with_what_to_do(n: int, c: int, k: int, phrase: str) -> None:
    with pytest.raises(ValueError, match=phrase):
        pass_at_k(n, c, k)
    with pytest.raises(ValueError, match=phrase):
        pass_hat_k(n, c, k)


# --- Wilson -------------------------------------------------------------------------------------------------------


def test_wilson_matches_published_values() -> None:
    none = wilson(0, 10)
    assert none.low == 0.0
    assert math.isclose(none.high, 0.27753, abs_tol=5e-6)
    half = wilson(5, 10)
    assert math.isclose(half.low, 0.23659, abs_tol=5e-6)
    assert math.isclose(half.high, 0.76341, abs_tol=5e-6)
    every = wilson(10, 10)
    assert math.isclose(every.low, 0.72247, abs_tol=5e-6)
    assert every.high == 1.0
    assert half.method == "wilson"


@FAST
@given(st.integers(1, 10_000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_contains_the_pass_rate_within_zero_and_one(counts: tuple[int, int]) -> None:
    successes, trials = counts
    interval = wilson(successes, trials)
    assert interval.estimate == successes / trials
    assert interval.contains(successes / trials)
    assert 0.0 <= interval.low <= interval.high <= 1.0


def test_wilson_narrows_as_trials_grow() -> None:
    widths = [wilson(3 * n // 10, n).high - wilson(3 * n // 10, n).low for n in (10, 100, 1000, 10_000)]
    assert widths == sorted(widths, reverse=True)
    assert widths[-1] < 0.02


def test_wilson_widens_with_confidence() -> None:
    narrow, wide = wilson(30, 100, confidence=0.8), wilson(30, 100, confidence=0.99)
    assert wide.low < narrow.low < narrow.high < wide.high


@pytest.mark.parametrize(
    ("successes", "trials", "confidence", "phrase"),
    [
        (0, 0, 0.95, "at least one trial"),
        (11, 10, 0.95, "between 0 and trials"),
        (5, 10, 1.0, "use e.g. 0.95"),
        (5, 10, 0.0, "use e.g. 0.95"),
    ],
)
def test_wilson_refuses_meaningless_arguments(successes: int, trials: int, confidence: float, phrase: str) -> None:
    with pytest.raises(ValueError, match=phrase):
        wilson(successes, trials, confidence=confidence)


# --- Interval and PairedDifference --------------------------------------------------------------------------------


def test_an_interval_prints_reads_and_serialises_plainly() -> None:
    interval = Interval(estimate=0.75, low=0.6123, high=0.8512, method="wilson")
    assert str(interval) == "0.750 [0.612, 0.851]"
    assert interval.contains(0.6123)
    assert interval.contains(0.8512)
    assert not interval.contains(0.9)
    assert json.loads(json.dumps(interval.to_dict())) == {
        "estimate": 0.75,
        "low": 0.6123,
        "high": 0.8512,
        "method": "wilson",
    }


def test_an_interval_with_bounds_out_of_order_is_refused() -> None:
    with pytest.raises(ValueError, match="in order"):
        Interval(estimate=0.5, low=0.9, high=0.1, method="exact")


def test_a_paired_difference_prints_and_serialises_plainly() -> None:
    difference = PairedDifference(estimate=-0.05, low=-0.1, high=0.0, p_value=0.049, method="paired bootstrap")
    assert str(difference) == "-0.050 [-0.100, +0.000] p=0.049"
    assert json.loads(json.dumps(difference.to_dict()))["p_value"] == 0.049


# --- bootstrap ----------------------------------------------------------------------------------------------------

SCORES = [0.0, 0.2, 0.4, 0.5, 0.5, 0.6, 0.7, 0.9, 1.0, 1.0, 0.3, 0.8]


def test_bootstrap_is_deterministic_for_a_seed_and_contains_the_mean() -> None:
    first = bootstrap_mean(SCORES, seed=7)
    assert first == bootstrap_mean(SCORES, seed=7)
    assert first != bootstrap_mean(SCORES, seed=8)
    assert first.estimate == pytest.approx(sum(SCORES) / len(SCORES))
    assert first.contains(first.estimate)
    assert first.method == "bootstrap"
    assert 0.0 <= first.low < first.high <= 1.0


def test_bootstrap_narrows_as_cases_grow() -> None:
    few = bootstrap_mean(SCORES)
    many = bootstrap_mean(SCORES * 10)
    assert many.high - many.low < few.high - few.low


@pytest.mark.parametrize("values", [[0.4], [0.7, 0.7, 0.7]])
def test_bootstrap_of_equal_values_is_the_value(values: list[float]) -> None:
    assert bootstrap_mean(values) == Interval(values[0], values[0], values[0], "bootstrap")


@pytest.mark.parametrize(
    ("values", "kwargs", "phrase"),
    [
        ([], {}, "add cases"),
        ([0.1, math.nan], {}, r"values\[1\] is nan: every value must be a finite number"),
        ([0.1, 0.2], {"resamples": 0}, "use the default 2000"),
        ([0.1, 0.2], {"confidence": 95}, "use e.g. 0.95"),
    ],
)
def test_bootstrap_refuses_meaningless_arguments(values: list[float], kwargs: dict[str, float], phrase: str) -> None:
    with pytest.raises(ValueError, match=phrase):
        bootstrap_mean(values, **kwargs)


def test_suite_pass_at_k_and_pass_hat_k_average_the_cases() -> None:
    suite = [(5, 2), (5, 0), (5, 5), (6, 1)]
    at = suite_pass_at_k(suite, 3, seed=1)
    hat = suite_pass_hat_k(suite, 3, seed=1)
    assert at.estimate == pytest.approx(sum(pass_at_k(n, c, 3) for n, c in suite) / 4)
    assert hat.estimate == pytest.approx(sum(pass_hat_k(n, c, 3) for n, c in suite) / 4)
    assert at.contains(at.estimate)
    assert hat.contains(hat.estimate)
    assert hat.estimate <= at.estimate


def test_a_one_case_suite_has_a_degenerate_interval() -> None:
    assert suite_pass_hat_k([(4, 2)], 2) == Interval(1 / 6, 1 / 6, 1 / 6, "bootstrap")


def test_suite_k_above_the_smallest_case_names_that_case() -> None:
    with pytest.raises(ValueError, match=r"larger than the 3 trials of the smallest case \(case 1\).*--trials 5"):
        suite_pass_at_k([(5, 1), (3, 2), (4, 4)], 5)
    with pytest.raises(ValueError, match="ask for k ≤ 3"):
        suite_pass_hat_k([(5, 1), (3, 2)], 4)


def test_an_empty_suite_is_refused() -> None:
    with pytest.raises(ValueError, match="the suite is empty"):
        suite_pass_at_k([], 1)


# --- paired comparison --------------------------------------------------------------------------------------------


def _mcnemar_by_fractions(b: int, c: int) -> Fraction:
    n = b + c
    tail = sum((Fraction(math.comb(n, i), 2**n) for i in range(min(b, c) + 1)), Fraction(0))
    return min(Fraction(1), 2 * tail)


def test_mcnemar_known_values() -> None:
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(1, 9) == 0.021484375  # 2·(C(10,0) + C(10,1)) / 2¹⁰ = 22/1024
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 1) == 1.0
    assert mcnemar_exact(0, 6) == 2 / 64


@FAST
@given(st.integers(0, 60), st.integers(0, 60))
def test_mcnemar_matches_the_binomial_and_is_symmetric(b: int, c: int) -> None:
    expected = 1.0 if b + c == 0 else float(_mcnemar_by_fractions(b, c))
    assert mcnemar_exact(b, c) == expected
    assert mcnemar_exact(b, c) == mcnemar_exact(c, b)


def test_mcnemar_refuses_negative_counts() -> None:
    with pytest.raises(ValueError, match=r"take them from paired_trials\(\)"):
        mcnemar_exact(-1, 3)


def test_paired_trials_pairs_by_index_within_a_case() -> None:
    baseline = [[True, True, False], [False, False], [True]]
    candidate = [[True, False, True, True], [False, True], []]
    # case 0: (T,T) (T,F) (F,T), the fourth candidate trial has no pair; case 1: (F,F) (F,T); case 2: nothing.
    assert paired_trials(baseline, candidate) == (1, 1, 2, 1)


def test_paired_trials_refuses_runs_of_different_suites() -> None:
    with pytest.raises(ValueError, match="same suite"):
        paired_trials([[True]], [[True], [False]])


def test_paired_bootstrap_of_identical_runs_finds_no_difference() -> None:
    result = paired_bootstrap(SCORES, list(SCORES))
    assert result == PairedDifference(0.0, 0.0, 0.0, 1.0, "paired bootstrap")


def test_paired_bootstrap_finds_a_candidate_worse_on_every_case() -> None:
    rng = random.Random(3)
    baseline = [rng.uniform(0.5, 1.0) for _ in range(20)]
    candidate = [b - rng.uniform(0.05, 0.3) for b in baseline]
    result = paired_bootstrap(baseline, candidate)
    assert result.estimate < 0
    assert result.high < 0
    assert result.p_value < 0.05
    assert result.low <= result.estimate <= result.high


def test_paired_bootstrap_sees_no_effect_in_noise() -> None:
    rng = random.Random(4)
    baseline = [rng.random() for _ in range(30)]
    candidate = [b + rng.choice([-0.1, 0.1]) for b in baseline]
    result = paired_bootstrap(baseline, candidate, seed=4)
    assert result.low < 0 < result.high
    assert result.p_value > 0.05


def test_paired_bootstrap_p_value_agrees_with_its_interval() -> None:
    rng = random.Random(5)
    seen: set[bool] = set()
    for trial in range(20):
        baseline = [rng.random() for _ in range(15)]
        candidate = [b + rng.gauss(0.05, 0.2) for b in baseline]
        result = paired_bootstrap(baseline, candidate, seed=trial, confidence=0.9)
        excludes_zero = result.low > 0 or result.high < 0
        seen.add(excludes_zero)
        if excludes_zero:
            assert result.p_value <= 0.1 + 2 / 2001
        else:
            assert result.p_value >= 0.1 - 2 / 2001
    assert seen == {True, False}, "the data should give both significant and non-significant comparisons"


def test_paired_bootstrap_of_a_constant_shift_is_degenerate() -> None:
    result = paired_bootstrap([0.25, 0.5, 0.75], [0.75, 1.0, 1.25], resamples=999)
    assert result.low == result.high == result.estimate == 0.5
    assert result.p_value == 2 / 1000


@pytest.mark.parametrize(
    ("baseline", "candidate", "phrase"),
    [
        ([0.1, 0.2], [0.1], "one value per case from both runs"),
        ([], [], "at least one case"),
        ([0.1, math.inf], [0.1, 0.2], r"baseline\[1\] is inf"),
    ],
)
def test_paired_bootstrap_refuses_unpaired_data(baseline: list[float], candidate: list[float], phrase: str) -> None:
    with pytest.raises(ValueError, match=phrase):
        paired_bootstrap(baseline, candidate)


# --- drift --------------------------------------------------------------------------------------------------------


def _fisher_by_fractions(c1: int, n1: int, c2: int, n2: int) -> Fraction:
    total, passes = n1 + n2, c1 + c2
    denominator = math.comb(total, n1)

    def probability(x: int) -> Fraction:
        return Fraction(math.comb(passes, x) * math.comb(total - passes, n1 - x), denominator)

    observed = probability(c1)
    support = range(max(0, n1 - (total - passes)), min(passes, n1) + 1)
    return sum((probability(x) for x in support if probability(x) <= observed), Fraction(0))


def test_fisher_tea_tasting() -> None:
    assert math.isclose(fisher_exact(3, 4, 1, 4), 34 / 70, rel_tol=1e-12)


def test_fisher_of_identical_proportions_is_one() -> None:
    assert fisher_exact(30, 100, 30, 100) == pytest.approx(1.0)
    assert fisher_exact(0, 0, 3, 7) == 1.0


def test_fisher_detects_a_collapsed_pass_rate() -> None:
    assert fisher_exact(90, 100, 40, 100) < 1e-10


@FAST
@given(
    st.integers(0, 25).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))),
    st.integers(0, 25).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))),
)
def test_fisher_matches_exact_fractions_and_is_symmetric(first: tuple[int, int], second: tuple[int, int]) -> None:
    (c1, n1), (c2, n2) = first, second
    p = fisher_exact(c1, n1, c2, n2)
    assert math.isclose(p, min(1.0, float(_fisher_by_fractions(c1, n1, c2, n2))), rel_tol=1e-9)
    assert math.isclose(p, fisher_exact(c2, n2, c1, n1), rel_tol=1e-9)
    assert math.isclose(p, fisher_exact(n1 - c1, n1, n2 - c2, n2), rel_tol=1e-9)


def test_fisher_refuses_more_passes_than_trials() -> None:
    with pytest.raises(ValueError, match=r"c2=5 passes out of 4 trials"):
        fisher_exact(1, 4, 5, 4)


def test_mann_whitney_of_identical_samples_is_one() -> None:
    sample = [0.1, 0.5, 0.5, 0.9, 1.3, 2.0]
    assert mann_whitney(sample, list(sample)) == pytest.approx(1.0)
    assert mann_whitney([3.0] * 5, [3.0] * 8) == 1.0


def test_mann_whitney_detects_a_large_shift() -> None:
    rng = random.Random(0)
    before = [rng.gauss(0.0, 1.0) for _ in range(30)]
    after = [rng.gauss(10.0, 1.0) for _ in range(30)]
    assert mann_whitney(before, after) < 1e-6
    assert mann_whitney(before, after) == mann_whitney(after, before)


def test_mann_whitney_matches_a_hand_computed_value() -> None:
    # Ranks of a: 1, 2, 4, 6, 7 → U = 5; mu = 15, sigma = √30; z = (10 - 0.5)/√30.
    expected = math.erfc((9.5 / math.sqrt(30)) / math.sqrt(2))
    assert math.isclose(mann_whitney([1.1, 2.2, 3.3, 4.4, 5.5], [2.5, 3.5, 6.5, 7.5, 8.5, 9.5]), expected)


@pytest.mark.parametrize(
    ("a", "b", "phrase"),
    [([], [1.0], "widen the window that is empty"), ([1.0], [], "at least one value on each side")],
)
def test_mann_whitney_refuses_an_empty_side(a: list[float], b: list[float], phrase: str) -> None:
    with pytest.raises(ValueError, match=phrase):
        mann_whitney(a, b)


@pytest.mark.parametrize(
    ("x", "df", "expected"),
    [
        (3.841458820694124, 1, 0.05),
        (5.991464547107979, 2, 0.05),
        (7.814727903251178, 3, 0.05),
        (6.634896601021214, 1, 0.01),
        (100.0, 3, 1.554159431389603e-21),
        (124.34211340400407, 100, 0.05),
    ],
)
def test_chi2_sf_known_values(x: float, df: int, expected: float) -> None:
    assert math.isclose(chi2_sf(x, df), expected, rel_tol=1e-9)


@pytest.mark.parametrize("df", [1, 2, 5, 40])
def test_chi2_sf_is_one_at_zero_and_zero_at_infinity(df: int) -> None:
    assert chi2_sf(0.0, df) == 1.0
    assert chi2_sf(5e-324, df) == 1.0  # the smallest subnormal: x/2 underflows to 0
    assert chi2_sf(math.inf, df) == 0.0


@FAST
@given(st.floats(0.0, 1000.0))
def test_chi2_sf_with_two_degrees_of_freedom_is_exp_minus_half_x(x: float) -> None:
    assert math.isclose(chi2_sf(x, 2), math.exp(-x / 2), rel_tol=1e-12)


@FAST
@given(st.floats(1e-6, 500.0))
def test_chi2_sf_with_one_degree_of_freedom_is_the_normal_tail(x: float) -> None:
    assert math.isclose(chi2_sf(x, 1), math.erfc(math.sqrt(x / 2)), rel_tol=1e-10)


@FAST
@given(st.floats(1e-6, 300.0), st.integers(1, 15))
def test_chi2_sf_with_even_degrees_of_freedom_is_a_poisson_sum(x: float, half_df: int) -> None:
    # Q(m, y) = e^(-y) · Σ_{i<m} y^i / i!
    y = x / 2
    expected = math.exp(-y) * math.fsum(y**i / math.factorial(i) for i in range(half_df))
    assert math.isclose(chi2_sf(x, 2 * half_df), expected, rel_tol=1e-10)


def test_chi2_sf_refuses_meaningless_arguments() -> None:
    with pytest.raises(ValueError, match="at least 1 degree of freedom"):
        chi2_sf(1.0, 0)
    with pytest.raises(ValueError, match="pass the chi-square statistic as a number"):
        chi2_sf(math.nan, 1)


def test_chi_square_homogeneity_of_a_two_by_two_table() -> None:
    statistic, df, p = chi_square_homogeneity({"done": 10, "limit": 20}, {"done": 20, "limit": 10})
    assert statistic == pytest.approx(20 / 3)
    assert df == 1
    assert p == pytest.approx(0.009823274507519235, rel=1e-9)


def test_chi_square_homogeneity_uses_the_union_of_categories() -> None:
    statistic, df, p = chi_square_homogeneity({"done": 50, "limit": 50}, {"done": 50, "timeout": 50, "error": 0})
    assert df == 2  # "error" never occurred and is not a category
    assert statistic == pytest.approx(100.0)
    assert p == pytest.approx(math.exp(-50.0))


def test_chi_square_homogeneity_of_the_same_distribution_is_one() -> None:
    statistic, df, p = chi_square_homogeneity({"a": 10, "b": 30}, {"a": 20, "b": 60})
    assert (statistic, df) == (0.0, 1)
    assert p == 1.0


@pytest.mark.parametrize(
    ("a", "b"),
    [({"done": 5}, {"done": 9}), ({}, {}), ({"done": 0, "limit": 0}, {}), ({"a": 3, "b": 4}, {})],
)
def test_chi_square_homogeneity_with_nothing_to_compare(a: dict[str, int], b: dict[str, int]) -> None:
    assert chi_square_homogeneity(a, b) == (0.0, 0, 1.0)


def test_chi_square_homogeneity_refuses_negative_counts() -> None:
    with pytest.raises(ValueError, match="pass how often each occurred"):
        chi_square_homogeneity({"a": -1, "b": 2}, {"a": 1, "b": 1})


def test_benjamini_hochberg_matches_r_p_adjust() -> None:
    # p.adjust(c(0.01, 0.04, 0.03, 0.2, 0.005), "BH")
    adjusted = benjamini_hochberg([0.01, 0.04, 0.03, 0.2, 0.005])
    assert adjusted == pytest.approx([0.025, 0.05, 0.05, 0.2, 0.025])
    assert benjamini_hochberg([]) == []


@FAST
@given(st.lists(st.floats(0.0, 1.0), max_size=30))
def test_benjamini_hochberg_only_raises_p_values_and_keeps_their_order(p_values: list[float]) -> None:
    adjusted = benjamini_hochberg(p_values)
    assert all(p <= q <= 1.0 for p, q in zip(p_values, adjusted, strict=True))
    for i, j in itertools.combinations(range(len(p_values)), 2):
        if p_values[i] <= p_values[j]:
            assert adjusted[i] <= adjusted[j]


def test_benjamini_hochberg_refuses_what_is_not_a_probability() -> None:
    with pytest.raises(ValueError, match=r"p_values\[1\]=1.5 is not a probability"):
        benjamini_hochberg([0.1, 1.5])
