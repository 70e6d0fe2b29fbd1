"""`alignray.stats`: the intervals checked against values computed independently (scipy,
closed forms, a published worked example), and the summary across seeds. Pure, fast."""

import math

import numpy as np
import pytest
from alignray.stats import (
    SeedSummary,
    across_seeds,
    bootstrap_interval,
    difference_across_seeds,
    paired_proportion_difference,
    wilson_interval,
)
from scipy import stats

Z2 = stats.norm.ppf(0.975) ** 2  # 3.8415


def test_wilson_zero_of_forty_has_width_and_the_textbook_upper_bound():
    low, high = wilson_interval(0, 40)
    # Wilson at 0 events: upper = z² / (n + z²) = 3.8415 / 43.8415 = 0.0876 (Clopper–Pearson:
    # 1 - 0.025^(1/40) = 0.0881); a percentile bootstrap of 40 zeros gives [0, 0].
    assert low == 0.0 and round(high, 3) == 0.088
    assert high == pytest.approx(Z2 / (40 + Z2), abs=1e-12)
    assert high == pytest.approx(stats.binomtest(0, 40).proportion_ci(0.95, method="wilson").high, abs=1e-12)
    assert bootstrap_interval(np.zeros(40), 1000, seed=0) == (0.0, 0.0)  # what the rates carried before


def test_wilson_n_of_n_mirrors_zero_and_matches_scipy_everywhere():
    low, high = wilson_interval(40, 40)
    assert high == 1.0 and round(low, 3) == 0.912 and low == pytest.approx(1 - wilson_interval(0, 40)[1], abs=1e-12)
    for k in range(41):
        mine = wilson_interval(k, 40)
        ref = stats.binomtest(k, 40).proportion_ci(0.95, method="wilson")
        assert mine == pytest.approx((ref.low, ref.high), abs=1e-12)
        assert mine == pytest.approx(tuple(1 - b for b in reversed(wilson_interval(40 - k, 40))), abs=1e-12)
        assert mine[1] - mine[0] > 0
    assert wilson_interval(0, 40, level=0.99)[1] > wilson_interval(0, 40)[1]  # wider at a higher level


def test_wilson_takes_fractional_counts_and_checks_its_inputs():
    low, high = wilson_interval(20.5, 40)  # e.g. 15 wins and 11 ties: 20.5 / 40
    assert low < 20.5 / 40 < high
    for events, n in ((-1, 40), (41, 40), (0, 0)):
        with pytest.raises(ValueError):
            wilson_interval(events, n)
    with pytest.raises(ValueError, match="level"):
        wilson_interval(1, 4, level=95)


def test_paired_difference_without_change_is_not_zero_width():
    none, every = np.zeros(40), np.ones(40)
    for same in (none, every):
        diff, low, high = paired_proportion_difference(same, same)
        # no pair is discordant and both rates are 0/40 (or 40/40): φ = 0 and the interval is
        # ± the Wilson bound of 0/40, 0.0876
        assert diff == 0.0 and low == pytest.approx(-Z2 / (40 + Z2)) and high == pytest.approx(Z2 / (40 + Z2))
    half = np.repeat([1.0, 0.0], 20)
    diff, low, high = paired_proportion_difference(half, half)
    # 20 refuse under both, 20 under neither: φ = (20·20 - 0 - 40/2) / sqrt(20·20·20·20) = 0.95, and
    # both Wilson half-widths are 0.1480: ± 0.1480 · sqrt(2 - 2·0.95) = ± 0.0468
    assert diff == 0.0 and low < 0 < high and high == pytest.approx(-low) and round(high, 4) == 0.0468


def test_paired_difference_newcombe_worked_example():
    # Complete response before (a) and after (b) consolidation therapy, Cavo et al. 2012, the worked
    # example of Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency Tables" (2017),
    # ch. 8 (Newcombe square-and-add: -0.0621, 95% CI -0.1186 to -0.0046). Counts: e = 59 both,
    # f = 6 before only, g = 16 after only, h = 80 neither; n = 161. By hand:
    #   p1 = 65/161 = 0.40373, Wilson [0.33104, 0.48090];  p2 = 75/161 = 0.46584, Wilson [0.39048, 0.54279]
    #   eh - fg = 4720 - 96 = 4624 > n/2, so φ = (4624 - 80.5) / sqrt(65·96·75·86) = 4543.5 / 6344.13 = 0.71617
    #   low  = -0.06211 - sqrt(0.07269² - 2·0.71617·0.07269·0.07695 + 0.07695²) = -0.11862
    #   high = -0.06211 + sqrt(0.07536² - 2·0.71617·0.07536·0.07718 + 0.07718²) = -0.00463
    a = np.repeat([1.0, 1.0, 0.0, 0.0], [59, 6, 16, 80])
    b = np.repeat([1.0, 0.0, 1.0, 0.0], [59, 6, 16, 80])
    diff, low, high = paired_proportion_difference(a, b)
    assert (round(diff, 4), round(low, 4), round(high, 4)) == (-0.0621, -0.1186, -0.0046)
    # swapping the sides mirrors the interval
    assert paired_proportion_difference(b, a) == pytest.approx((-diff, -high, -low), abs=1e-12)
    # only pairing distinguishes it from two independent samples: shuffling b widens the interval
    loose = paired_proportion_difference(a, np.random.default_rng(0).permutation(b))
    assert loose[2] - loose[1] > high - low


def test_paired_difference_extremes_and_inputs():
    one, zero = np.ones(30), np.zeros(30)
    diff, low, high = paired_proportion_difference(one, zero)  # everything changed
    assert diff == 1.0 and high == 1.0 and 0.8 < low < 1
    with pytest.raises(ValueError, match="0/1"):
        paired_proportion_difference(np.array([0.5, 1.0]), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="pair up"):
        paired_proportion_difference(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="0/1"):
        paired_proportion_difference(np.array([]), np.array([]))


def test_across_seeds_one_seed_has_no_interval():
    s = across_seeds([0.07])
    assert (s.mean, s.low, s.high, s.min, s.max, s.n) == (0.07, None, None, 0.07, 0.07, 1)
    assert "no interval" in s.method
    assert s.verdict() == s.verdict(higher_is_better=False) == "inconclusive"
    assert s.describe() == "+0.070 (one seed: no interval, n=1; min +0.070, max +0.070)"


def test_across_seeds_student_t_against_scipy():
    values = [0.05, 0.07, 0.10]
    s = across_seeds(values)
    # mean 0.07333, s = 0.02517, s/sqrt(3) = 0.01453, t(0.975, 2) = 4.3027: ± 0.06252
    low, high = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
    assert (s.low, s.high) == pytest.approx((low, high), abs=1e-12)
    assert (round(s.low, 4), round(s.high, 4)) == (0.0108, 0.1358)
    assert (s.mean, s.min, s.max, s.n) == (pytest.approx(0.073333, abs=1e-6), 0.05, 0.10, 3)
    assert s.method == "Student t 95% over seeds"
    assert s.describe() == "+0.073 [+0.011, +0.136] (Student t 95% over seeds, n=3; min +0.050, max +0.100)"
    wider = across_seeds(values, level=0.99)
    assert wider.low < s.low and wider.high > s.high and wider.method == "Student t 99% over seeds"


def test_across_seeds_verdicts():
    assert across_seeds([0.05, 0.07, 0.10]).verdict() == "better"
    assert across_seeds([0.05, 0.07, 0.10]).verdict(higher_is_better=False) == "worse"  # e.g. over-refusal
    assert across_seeds([-0.05, -0.07, -0.10]).verdict() == "worse"
    assert across_seeds([-0.05, -0.07, -0.10]).verdict(higher_is_better=False) == "better"
    straddles = across_seeds([-0.02, 0.01, 0.09])
    assert straddles.low < 0 < straddles.high and straddles.verdict() == "inconclusive"
    assert across_seeds([0.2, 0.3]).verdict() == "inconclusive"  # two seeds: t(0.975, 1) = 12.7
    touching = SeedSummary(0.1, 0.0, 0.2, 0.05, 0.15, 3, "Student t 95% over seeds")
    assert touching.verdict() == touching.verdict(False) == "inconclusive"  # excluding 0 means strictly


def test_across_seeds_rejects_nothing_and_nan():
    for bad in ([], [0.1, math.nan], [[0.1, 0.2]]):
        with pytest.raises(ValueError, match="across_seeds"):
            across_seeds(bad)


def test_seeds_that_agree_keep_their_prompts_interval():
    """Three seeds with the same refusal gain: Student t alone is zero-width; with each seed's own
    interval over prompts (half-width 0.0876, Newcombe for no change on 40 prompts) it is not."""
    alone = across_seeds([0.0, 0.0, 0.0])
    assert alone.low == alone.high == 0.0
    widened = across_seeds([0.0, 0.0, 0.0], within=[0.0876] * 3)
    assert (widened.low, widened.high) == (-0.0876, 0.0876) and "widened" in widened.method
    assert widened.verdict() == "inconclusive"
    spread = across_seeds([0.05, 0.10, 0.12], within=[0.03, 0.04, 0.05])
    t_half = stats.t.ppf(0.975, 2) * np.std([0.05, 0.10, 0.12], ddof=1) / np.sqrt(3)
    assert spread.high - spread.mean == pytest.approx(np.hypot(t_half, 0.04))
    one = across_seeds([0.2], within=[0.05])
    assert (one.low, one.high) == (pytest.approx(0.15), pytest.approx(0.25)) and one.verdict() == "inconclusive"
    assert across_seeds([0.6, 0.62, 0.61], within=[0.01] * 3).verdict(reference=0.5) == "better"
    with pytest.raises(ValueError, match="one half-width >= 0 per value"):
        across_seeds([0.1, 0.2], within=[0.1])


def test_independent_difference_combines_each_side_on_its_own_side():
    from alignray.stats import independent_difference

    d, low, high = independent_difference((0.5, 0.3, 0.6), (0.1, 0.0, 0.4))
    assert d == pytest.approx(0.4)
    assert low == pytest.approx(0.4 - math.hypot(0.2, 0.3))  # a's lower arm, b's upper arm
    assert high == pytest.approx(0.4 + math.hypot(0.1, 0.1))
    same, lo, hi = independent_difference((0.0, -0.088, 0.088), (0.0, -0.088, 0.088))
    assert same == 0.0 and hi == -lo == pytest.approx(math.hypot(0.088, 0.088))  # never zero-width
    with pytest.raises(ValueError, match="must lie in its interval"):
        independent_difference((0.5, 0.6, 0.7), (0.0, -0.1, 0.1))


def test_the_difference_of_two_arms_is_welchs_interval():
    """Unequal seeds and spreads: a pooled-variance t, or a t with n_a + n_b - 2 degrees of
    freedom, gives another interval than Welch-Satterthwaite's (scipy's is the reference)."""
    arm, baseline = [0.10, 0.12, 0.14, 0.30], [0.02, 0.04]
    d = difference_across_seeds(arm, baseline)
    welch = stats.ttest_ind(arm, baseline, equal_var=False).confidence_interval(0.95)
    assert (d.low, d.high) == pytest.approx((welch.low, welch.high), abs=1e-12)
    # by hand: va = 0.008367 / 4, vb = 0.0002 / 2, df = (va + vb)² / (va²/3 + vb²/1) = 3.27,
    # t(0.975, 3.27) = 3.038, half = 3.038 * sqrt(va + vb) = 0.1422 (pooled variance: 0.1912)
    assert d.diff == pytest.approx(0.135) and (round(d.low, 3), round(d.high, 3)) == (-0.007, 0.277)
    assert (d.n_a, d.n_b, d.method) == (4, 2, "Welch t 95% over the two arms' seeds")
    assert d.verdict() == "inconclusive"  # the interval holds 0
    clear = difference_across_seeds([0.10, 0.12, 0.14], [0.02, 0.03, 0.04])
    assert clear.low > 0 and clear.verdict() == "better" and clear.verdict(higher_is_better=False) == "worse"
    assert difference_across_seeds([0.02, 0.03, 0.04], [0.10, 0.12, 0.14]).verdict() == "worse"
    only_one_varies = difference_across_seeds([0.1, 0.1, 0.1], [0.0, 0.1, 0.2])  # df = n_b - 1
    assert only_one_varies.high - only_one_varies.diff == pytest.approx(stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3))


def test_the_difference_of_two_arms_is_widened_by_their_prompts_and_never_zero_width():
    arm, baseline = [0.10, 0.12, 0.14], [0.02, 0.04]
    welch = stats.ttest_ind(arm, baseline, equal_var=False).confidence_interval(0.95)
    widened = difference_across_seeds(arm, baseline, within_a=[0.03, 0.04, 0.05], within_b=[0.04, 0.04])
    half = np.sqrt(((welch.high - welch.low) / 2) ** 2 + 0.04**2 + 0.04**2)
    assert (widened.low, widened.high) == pytest.approx((0.09 - half, 0.09 + half)) and "widened" in widened.method
    # every seed of both arms agrees: Welch alone is zero-width, so there is no interval (and no verdict)
    agree = difference_across_seeds([0.5, 0.5, 0.5], [0.5, 0.5])
    assert (agree.diff, agree.low, agree.high) == (0.0, None, None) and agree.verdict() == "inconclusive"
    assert "no interval" in agree.method
    apart = difference_across_seeds([0.6, 0.6], [0.5, 0.5])  # agreeing seeds, different arms: still no interval
    assert apart.low is None and apart.verdict() == "inconclusive"
    kept = difference_across_seeds([0.6, 0.6], [0.5, 0.5], within_a=[0.03, 0.03], within_b=[0.04, 0.04])
    assert (kept.low, kept.high) == (pytest.approx(0.05), pytest.approx(0.15)) and kept.verdict() == "better"
    one = difference_across_seeds([0.6], [0.5, 0.7], within_a=[0.03], within_b=[0.04, 0.04])
    assert (one.low, one.high) == (pytest.approx(-0.05), pytest.approx(0.05)) and one.verdict() == "inconclusive"
    assert "fewer than two seeds" in one.method and difference_across_seeds([0.6], [0.5]).low is None
    with pytest.raises(ValueError, match="within for both arms or for neither"):
        difference_across_seeds(arm, baseline, within_a=[0.1] * 3)
    with pytest.raises(ValueError, match=r"difference_across_seeds \(b\) needs one value per seed"):
        difference_across_seeds(arm, [])
