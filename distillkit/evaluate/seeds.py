"""Intervals over training seeds and questions: the statistics of `distillkit compare` (issue 31).

An arm (a training recipe) is trained with S seeds and each model is scored on the same Q questions (pass@1 per
question: the mean of its k samples). What a user wants to know is the arm's pass rate on *new* questions with a
*new* training seed, so both are random: the table y[s][q] is a two-way crossed design

    y[s][q] = mu + a[s] + b[q] + e[s][q]        a: seed effect, b: question effect, e: the rest

and the grand mean's variance is  var_a / S + var_b / Q + var_e / (S Q).  The variance components come from the
two-way ANOVA mean squares (method of moments), each clipped at zero:

    Var(mean) = (max(MS_seed - MS_residual, 0) + max(MS_question - MS_residual, 0) + MS_residual) / (S Q)

(= (MS_seed + MS_question - MS_residual) / (S Q) where neither is clipped), with Satterthwaite's degrees of
freedom for that combination of mean squares. Unclipped, the combination can carry a negative coefficient on a
mean square of similar size, and Satterthwaite's df then collapses towards 0: three KD - SFT seeds whose paired
means agreed to within a point (a seed term below the residual) read "+0.5 ± 947 points". Clipped, every
coefficient is 0 or 1 apart from the residual's -1 next to two larger terms, so df stays >= about S - 1, and a
seed term the data cannot see (MS_seed <= MS_residual) leaves the question and residual terms, as a zero
estimate should. Clipping can only widen the unbiased estimate, never narrow it. A paired comparison of two arms is the same
computation on the per-(seed, question) differences: seed s of arm A is paired with seed s of the baseline (the
same data order and initialisation seed) and question q with question q, which removes the variance both share.

With one seed the seed variance cannot be estimated: the interval then covers question sampling only, and the
result says so (`seed_variance_included: False`).
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict


class Interval(BaseModel):
    """A mean over seeds and questions with its two-sided 95% interval (`distillkit compare` writes these)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mean: float
    low: float
    high: float
    half_width: float
    df: float
    seeds: int
    questions: int
    seed_variance_included: bool
    per_seed: tuple[float, ...]

    @classmethod
    def around(cls, mean: float, half_width: float, **rest) -> "Interval":
        return cls(mean=mean, low=mean - half_width, high=mean + half_width, half_width=half_width, **rest)

    def text(self, scale: float = 100.0, signed: bool = False) -> str:
        """"37.5 ± 4.1" (points), or "+3.2 ± 2.0" for a difference."""
        mean = f"{scale * self.mean:+.1f}" if signed else f"{scale * self.mean:.1f}"
        return mean if math.isnan(self.half_width) else f"{mean} ± {scale * self.half_width:.1f}"


def t_quantile(df: float, p: float = 0.975) -> float:
    """Student's t quantile; df may be fractional (Satterthwaite's) or infinite (the normal quantile)."""
    from distillkit.errors import require

    stats = require("scipy.stats", "eval", "the intervals of `distillkit compare` need scipy")
    return float(stats.norm.ppf(p) if math.isinf(df) else stats.t.ppf(p, df))


def _mean_squares(table: list[list[float]]) -> tuple[int, int, float, list[float], float, float, float]:
    """(S, Q, grand mean, seed means, MS_seed, MS_question, MS_residual) of a rectangular seeds x questions table."""
    S = len(table)
    Q = len(table[0]) if S else 0
    if S == 0 or Q == 0 or any(len(row) != Q for row in table):
        raise ValueError("a rectangular seeds x questions table is needed (the same questions for every seed)")
    grand = sum(map(sum, table)) / (S * Q)
    row_means = [sum(row) / Q for row in table]
    col_means = [sum(table[s][q] for s in range(S)) / S for q in range(Q)]
    ms_seed = Q * sum((r - grand) ** 2 for r in row_means) / (S - 1) if S > 1 else math.nan
    ms_q = S * sum((c - grand) ** 2 for c in col_means) / (Q - 1) if Q > 1 else 0.0
    resid = sum((table[s][q] - row_means[s] - col_means[q] + grand) ** 2 for s in range(S) for q in range(Q))
    ms_e = resid / ((S - 1) * (Q - 1)) if S > 1 and Q > 1 else 0.0
    return S, Q, grand, row_means, ms_seed, ms_q, ms_e


def _half_width(S: int, Q: int, ms_seed: float, ms_q: float, ms_e: float, p: float) -> tuple[float, float, float]:
    """(half-width, df, Var(mean)) of the crossed design's grand mean from its mean squares (module doc: the
    variance components clipped at zero, Satterthwaite's df for the mean squares they combine)."""
    c_seed = 1.0 if ms_seed > ms_e else 0.0  # the seed component is estimated > 0
    c_q = 1.0 if ms_q > ms_e else 0.0
    c_e = 1.0 - c_seed - c_q
    combined = c_seed * ms_seed + c_q * ms_q + c_e * ms_e  # = S Q Var(mean)
    var = combined / (S * Q)
    terms = [(c_seed * ms_seed, S - 1), (c_q * ms_q, Q - 1), (c_e * ms_e, (S - 1) * (Q - 1))]
    denominator = sum(value ** 2 / dof for value, dof in terms if value != 0 and dof > 0)
    df = combined ** 2 / denominator if denominator > 0 else math.inf
    return (t_quantile(df, p) * math.sqrt(var) if var > 0 else 0.0), df, var


def crossed_interval(table: list[list[float]], level: float = 0.95) -> Interval:
    """Mean of `table[seed][question]` and its `level` interval with seed and question variance (see the module).

    Every row must score the same questions in the same order (a rectangular table)."""
    S, Q, grand, row_means, ms_seed, ms_q, ms_e = _mean_squares(table)
    p = 1 - (1 - level) / 2
    if S == 1:  # question variance only
        var = ms_q / S / Q if Q > 1 else math.nan
        df = Q - 1
        half = t_quantile(df, p) * math.sqrt(var) if Q > 1 else math.nan
        return Interval.around(grand, half, df=df, seeds=S, questions=Q, seed_variance_included=False,
                               per_seed=tuple(row_means))
    half, df, _ = _half_width(S, Q, ms_seed, ms_q, ms_e, p)
    return Interval.around(grand, half, df=df, seeds=S, questions=Q, seed_variance_included=True,
                           per_seed=tuple(row_means))


def seeds_needed(table: list[list[float]], half_width: float, level: float = 0.95, most: int = 100) -> int | None:
    """How many training seeds would bring this table's interval to `half_width` or less, on the same questions.

    The variance components (seed, question, residual) are estimated from the table's mean squares, each mean
    square is projected to S' seeds (MS_seed = Q var_seed + var_e, MS_question = S' var_question + var_e) and the
    interval computed as `crossed_interval` does; at S' = S this gives the table's own half-width (where no
    component is negative). None: more than `most` seeds, or a table with fewer than 2 seeds or questions."""
    S, Q, _, _, ms_seed, ms_q, ms_e = _mean_squares(table)
    if S < 2 or Q < 2:
        return None
    var_seed, var_q = max(ms_seed - ms_e, 0.0) / Q, max(ms_q - ms_e, 0.0) / S
    p = 1 - (1 - level) / 2
    for seeds in range(2, most + 1):
        half, _, _ = _half_width(seeds, Q, Q * var_seed + ms_e, seeds * var_q + ms_e, ms_e, p)
        if half <= half_width:
            return seeds
    return None


def paired_interval(arm: dict[int, dict[str, float]], baseline: dict[int, dict[str, float]],
                    level: float = 0.95) -> Interval:
    """arm - baseline, paired by seed and by question: `arm[seed][question]` is that seed's pass@1 on that question.

    Only seeds both arms have and questions every one of those seeds scored are used (a run that is still going
    leaves out what it has not scored yet)."""
    return crossed_interval(paired_table(arm, baseline), level)


def paired_table(arm: dict[int, dict[str, float]], baseline: dict[int, dict[str, float]]) -> list[list[float]]:
    """arm - baseline per (shared seed, question every shared seed scored): the table `paired_interval` reads."""
    seeds = sorted(set(arm) & set(baseline))
    if not seeds:
        raise ValueError("the two arms share no training seed")
    questions = sorted(set.intersection(*(set(arm[s]) & set(baseline[s]) for s in seeds)))
    if not questions:
        raise ValueError("the two arms share no question scored under every shared seed")
    return [[arm[s][q] - baseline[s][q] for q in questions] for s in seeds]


def arm_interval(arm: dict[int, dict[str, float]], level: float = 0.95) -> Interval:
    """An arm's pass@1 over its seeds and the questions all of them scored."""
    seeds = sorted(arm)
    if not seeds:
        raise ValueError("the arm has no scored seed")
    questions = sorted(set.intersection(*(set(arm[s]) for s in seeds)))
    return crossed_interval([[arm[s][q] for q in questions] for s in seeds], level)
