"""The statistics of `distillkit compare`: a seeds x questions table, checked against values computed by hand."""

from __future__ import annotations

import math
import random

import pytest

from distillkit.evaluate.seeds import arm_interval, crossed_interval, paired_interval, t_quantile

# 3 seeds x 4 questions (pass@1 per question, k = 4 samples: multiples of 0.25)
TABLE = [[1.00, 0.50, 0.25, 0.75],
         [0.75, 0.50, 0.00, 0.75],
         [1.00, 0.75, 0.25, 1.00]]


def test_two_way_interval_by_hand():
    # grand mean 7.5 / 12 = 0.625; seed means 0.625, 0.5, 0.75; question means 0.9167, 0.5833, 0.1667, 0.8333
    # MS_seed = 4 * (0 + 0.015625 + 0.015625) / 2 = 0.0625
    # MS_question = 3 * (0.085069 + 0.001736 + 0.210069 + 0.043403) / 3 = 0.340278
    # residuals (y - seed mean - question mean + grand): row 1 (1/12, -1/12, 1/12, -1/12), rows 2 and 3 (-1/24,
    # 1/24, -1/24, 1/24): SS = 4/144 + 8/576 = 0.0416667 -> MS_e = 0.0416667 / 6 = 0.0069444
    # Var(mean) = (0.0625 + 0.340278 - 0.0069444) / 12 = 0.0329861
    # df = 0.395833^2 / (0.0625^2/2 + 0.340278^2/3 + 0.0069444^2/6) = 3.8633
    iv = crossed_interval(TABLE)
    assert iv.mean == pytest.approx(0.625)
    assert iv.df == pytest.approx(3.8633, rel=1e-4)
    assert iv.half_width == pytest.approx(t_quantile(3.8633) * math.sqrt(0.0329861), rel=1e-4)
    assert iv.half_width == pytest.approx(0.5114, abs=1e-3)  # t(3.8633) = 2.8157
    assert iv.seed_variance_included and iv.per_seed == pytest.approx((0.625, 0.5, 0.75))



def test_seeds_that_agree_better_than_the_noise_give_a_sane_interval():
    """A seed term below the residual (the seeds' means agree more closely than the per-question noise predicts, as
    three KD - SFT differences of +0.4, +0.1, +1.0 points did in the lab) is estimated as zero, not as a negative
    variance: unclipped, Satterthwaite's df fell to 0.47 here and the half-width to 19.2 (1,920 points)."""
    table = [[0.0, 1.0, 0.5, 0.5],
             [0.0, 1.0, 0.5, 0.0],
             [1.0, 0.5, 0.5, 0.5]]
    # grand mean 0.5; seed means 0.5, 0.375, 0.625 -> MS_seed = 4 * 0.03125 / 2 = 0.0625
    # question means 1/3, 5/6, 1/2, 1/3 -> MS_question = 3 * 0.1666667 / 3 = 0.1666667
    # SS_residual = 0.875 -> MS_e = 0.1458333 > MS_seed: the seed component is clipped to 0, the question one is
    # (0.1666667 - 0.1458333) / 3 > 0, so Var(mean) = (0 + 0.0208333 + 0.1458333) / 12 = 0.1666667 / 12 = 0.0138889,
    # a combination of MS_question alone: df = Q - 1 = 3, half-width t(3) * 0.1178511 = 3.1824 * 0.1178511 = 0.37505
    iv = crossed_interval(table)
    assert iv.mean == pytest.approx(0.5) and iv.df == pytest.approx(3.0)
    assert iv.half_width == pytest.approx(0.37505, abs=1e-4)
    # with both components below the residual, only the residual remains: df (S - 1)(Q - 1)
    flat = [[0.0, 1.0, 0.5, 0.5], [1.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 0.0]]  # MS_seed 0, MS_q 0.0556, MS_e 0.2222
    iv = crossed_interval(flat)
    assert iv.df == pytest.approx(6.0) and iv.half_width == pytest.approx(t_quantile(6) * math.sqrt(0.2222222 / 12), rel=1e-4)
    # on any table the df stays >= 1 / (1/(S-1) + 1/(Q-1) + 1/((S-1)(Q-1))), 1.0 for 3 seeds x 4 questions (the
    # unclipped one went down to 0.0496 on these tables: a half-width of 8.6e23)
    rng = random.Random(0)
    dfs = []
    for _ in range(2000):
        t = [[rng.choice((0.0, 0.25, 0.5, 0.75, 1.0)) for _ in range(4)] for _ in range(3)]
        dfs.append(crossed_interval(t).df)
    assert min(dfs) >= 1.0 - 1e-9

def test_t_quantiles_are_the_textbook_ones():
    assert t_quantile(2) == pytest.approx(4.3027, abs=1e-4)
    assert t_quantile(10) == pytest.approx(2.2281, abs=1e-4)
    assert t_quantile(math.inf) == pytest.approx(1.9600, abs=1e-4)


def test_one_seed_covers_questions_only_and_says_so():
    iv = crossed_interval([TABLE[0]])
    # question values 1, .5, .25, .75: mean .625, sample var .1041667, se .161374, t(3) = 3.1824
    assert iv.mean == pytest.approx(0.625) and iv.df == 3 and not iv.seed_variance_included
    assert iv.half_width == pytest.approx(3.1824 * 0.161374, rel=1e-4)


def test_pairing_by_seed_and_question_removes_what_both_arms_share():
    rng = random.Random(0)
    questions = [f"q{i}" for i in range(200)]
    hardness = {q: rng.random() for q in questions}  # large question effect, shared by both arms
    seed_shift = {s: rng.gauss(0, 0.05) for s in range(3)}  # a seed moves both arms alike (same data order)

    def arm(effect):
        return {s: {q: min(1.0, max(0.0, hardness[q] + seed_shift[s] + effect + rng.gauss(0, 0.05)))
                    for q in questions} for s in range(3)}

    base, better = arm(0.0), arm(0.03)
    diff = paired_interval(better, base)
    assert diff.mean == pytest.approx(0.03, abs=0.01)
    assert diff.half_width < 0.02 < arm_interval(base).half_width  # the shared variance is gone
    assert diff.low > 0  # a 3-point effect is found


def test_only_shared_seeds_and_questions_are_paired():
    a = {0: {"x": 1.0, "y": 0.0}, 1: {"x": 1.0, "y": 1.0}, 2: {"x": 0.0}}
    b = {0: {"x": 0.0, "y": 0.0, "z": 1.0}, 1: {"x": 0.0, "y": 0.0}}
    iv = paired_interval(a, b)
    assert (iv.seeds, iv.questions) == (2, 2) and iv.mean == pytest.approx(0.75)
    with pytest.raises(ValueError, match="share no training seed"):
        paired_interval({5: {"x": 1.0}}, b)
    with pytest.raises(ValueError, match="rectangular"):
        crossed_interval([[1.0, 0.0], [1.0]])


def test_seeds_needed_projects_the_tables_own_interval():
    """At the table's own seed count the projection is the table's interval (no component is negative in TABLE:
    var_seed = (0.0625 - 0.0069444) / 4 = 0.013889, var_question = (0.340278 - 0.0069444) / 3 = 0.111111)."""
    from distillkit.evaluate.seeds import seeds_needed

    own = crossed_interval(TABLE).half_width  # 0.5114 with 3 seeds
    assert _projected(3) == pytest.approx(own, rel=1e-4)
    assert _projected(2) > 0.52 > own
    assert seeds_needed(TABLE, 0.52) == 3
    # 4 questions: the question term (3 degrees of freedom) dominates, so more seeds barely help (best 0.5097 at
    # 4 seeds, then the interval widens again as df settles): +-0.50 is out of reach on these questions
    assert min(_projected(s) for s in range(2, 200)) > 0.50 and seeds_needed(TABLE, 0.50) is None
    # where seeds matter more (shifted by +-0.3), more seeds do narrow it, down to the same question floor
    seedy = [[v + shift for v in row] for row, shift in zip(TABLE, (0.3, 0.0, -0.3))]
    wide = crossed_interval(seedy).half_width
    assert [seeds_needed(seedy, h) for h in (wide, 0.54, 0.51)] == [3, 4, 5]
    assert seeds_needed([[0.5, 0.25]], 0.1) is None  # one seed: nothing to project from


def _projected(seeds, Q=4, var_seed=0.0625 / 4 - 0.0069444 / 4, var_q=(0.340278 - 0.0069444) / 3, var_e=0.0069444):
    """The projection written out by hand for TABLE (module doc of distillkit.evaluate.seeds)."""
    ms_seed, ms_q = Q * var_seed + var_e, seeds * var_q + var_e
    combined = ms_seed + ms_q - var_e
    df = combined ** 2 / (ms_seed ** 2 / (seeds - 1) + ms_q ** 2 / (Q - 1) + var_e ** 2 / ((seeds - 1) * (Q - 1)))
    return t_quantile(df) * math.sqrt(combined / (seeds * Q))
