"""Per-position divergences between a teacher and a student: the functions, and how stored soft labels become
the teacher's side of them. `distillkit.train.losses` sums them into the KD loss (chunked, masked, with CE).

Teacher distributions (`teacher_probs`)
---------------------------------------
Stored soft labels give, per position, the teacher's top-k token ids `(B, T, k)` and their raw logprobs
`(B, T, k)` (possibly fp16). Two ways to turn them into a distribution:

* ``topk_renorm`` -- both sides live on the k stored ids only. The teacher is renormalized over its
  top-k; the student's logits are gathered at those same k ids and renormalized over them. D compares
  two k-way distributions, so mass the student puts outside the teacher's top-k is *not* penalized by D
  (only CE pushes on it). Temperature applies to both: teacher `log_softmax(lp / T)` over the k ids
  (exact: tempering then renormalizing over k equals renormalizing the tempered distribution over k),
  student `log_softmax(z[ids] / T)`.
* ``topk_tail`` -- k + 1 buckets: the k stored ids plus one "tail" bucket holding everything else.
  Teacher tail = 1 - sum(p_topk) (log1mexp of the logsumexp, floored at `TAIL_FLOOR` because fp16
  rounding can make the stored top-k sum to >= 1; 0 when the k ids cover the student's whole
  vocabulary); student probabilities come from its full softmax,
  student tail = its mass outside the k ids, computed exactly as a logsumexp over the vocabulary with
  the k ids masked out (no cancellation when the student's top-k mass is close to 1, which the
  log1mexp form suffers; see `_LogSumExpExcluding`). Unlike
  ``topk_renorm`` this penalizes a student that spreads too much (or too little) mass outside the
  teacher's top-k, and it is the coarse-graining of the full-vocabulary divergence onto the k+1
  buckets (so it lower-bounds the full KL, by the data-processing inequality). The temperature applies
  to the student only: the teacher's tempered tail mass depends on how the tail is spread over the
  vocabulary, which stored top-k logprobs do not say, so the stored distribution is used as is.
* ``sampled`` -- sampled soft labels (`distillkit/softlabels/sampled.py`): per position the distinct ids of N
  draws from the teacher's distribution p and log(count / N), passed as `topk_ids` / `topk_logprobs`. The
  target is the empirical distribution p_hat = counts / N, an unbiased estimate of p (Anshumann et al. 2025,
  "Sparse Logit Sampling"), and D = KL(p_hat || q) = sum_i p_hat_i (log p_hat_i - log q(x_i)) with the
  student's full softmax q, gathered at the drawn ids only (`sampled_row_divergence`). Its gradient in the
  student's logits, q - p_hat at T = 1, has expectation q - p: the full-vocabulary forward-KL gradient, which
  the top-k modes do not give (tests/softlabels/test_sampled_bias.py). The value is not KL(p || q): its
  expectation is KL(p || q) + H(p) - E[H(p_hat)], the gap being how much entropy N draws miss, set by the
  teacher's row and N alone (0.26 nats on the 5-id row of tests/softlabels/test_sampled_bias.py at N = 8, where
  the KLs are 0.40 and 0.07; larger the flatter the row). So the trainer logs it as
  `kl_sampled`, never as `kl` (`kd_metric_name`): its changes along a run, or between students on the same
  labels, are unbiased estimates of the changes of KL(p || q), its level is not comparable with a top-k run's
  `kl`. An unbiased KL would need H(p): no estimator of entropy from N draws is unbiased (Paninski 2003), and
  the stored own logprob is the trace token's, a draw of the generating policy rather than of p. Forward KL
  only: reverse KL and JSD need p at the student's tokens, which draws do not give. The temperature applies to
  the student only, as in ``topk_tail``; draw the labels at the temperature wanted
  (`score.soft_label_temperature`).
* ``live`` -- full teacher logits (from a live teacher's hidden states and projection, or passed as
  logits to the reference function). Temperature applies to both sides, like TRL.

Vocabulary mismatch within a family (e.g. Qwen's padded 152064 vs the student's 151936): a stored id
outside ``[0, V_student)`` (or with a -inf / nan logprob) is dropped from the top-k, and the teacher
is conditioned on the kept ids (plus, in ``topk_tail``, the tail, assumed to lie in the shared
vocabulary): its remaining entries are renormalized by 1 - p_dropped. A position whose k ids are all
dropped contributes 0 to D in ``topk_renorm`` (there is nothing to compare), and is pure tail in
``topk_tail`` (so D = 0 there too); it still counts in the denominator, so the mean stays
`sum / kd_mask.sum()` as the trainer assumes. In ``live`` both sides are truncated to the shared
range ``[0, min(V_teacher, V_student))`` and renormalized there. Stored top-k ids are assumed distinct.

Divergences (`divergence`, `beta`) follow TRL's `GKDTrainer.generalized_jsd_loss` exactly:
``forward_kl`` = KL(p_teacher || q_student), ``reverse_kl`` = KL(q || p), and ``jsd`` =
beta * KL(p || M) + (1 - beta) * KL(q || M) with M = beta * p + (1 - beta) * q, where beta = 0 is
*defined* as forward KL and beta = 1 as reverse KL (TRL special-cases both ends; the formula itself
tends to 0 at either end, so the family is not continuous at 0 and 1). Each is a function here, registered by
name in `distillkit.registry.DIVERGENCES`; another one is a function of the same shape plus one line there.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from distillkit.registry import DIVERGENCES, load_divergence

TAIL_FLOOR = 1e-6
"""Smallest teacher tail probability in `topk_tail`: fp16 logprobs can sum to >= 1 over the top-k, and a
zero tail would make reverse KL infinite wherever the student has any mass outside the top-k."""

Divergence = str
"""A name registered in `distillkit.registry.DIVERGENCES` (forward_kl, reverse_kl and jsd are defined below)."""
TeacherProbs = Literal["topk_renorm", "topk_tail", "sampled", "live"]


# ---------------------------------------------------------------------------------------------------
# Divergences between distributions given as log-probabilities over the last dim
# ---------------------------------------------------------------------------------------------------

def _kl(logp_a: torch.Tensor, logp_b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) over the last dim: (..., K), (..., K) -> (...). Entries with a == 0 contribute 0.

    The `where` runs *before* the product: 0 * (-inf - -inf) would be nan in forward, and in backward
    the grad of `a` would be 0 * nan even where the term is masked out.
    """
    a = logp_a.exp()
    diff = torch.where(a > 0, logp_a - logp_b, torch.zeros((), dtype=a.dtype, device=a.device))
    return (a * diff).sum(-1)


def forward_kl(teacher_logp: torch.Tensor, student_logp: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """KL(p || q), p the teacher and q the student: (..., K), (..., K) -> (...). `beta` is unused."""
    return _kl(teacher_logp, student_logp)


def reverse_kl(teacher_logp: torch.Tensor, student_logp: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """KL(q || p), q the student and p the teacher: (..., K), (..., K) -> (...). `beta` is unused."""
    return _kl(student_logp, teacher_logp)


def jsd(teacher_logp: torch.Tensor, student_logp: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """beta KL(p||M) + (1-beta) KL(q||M), M = beta p + (1-beta) q: (..., K), (..., K) -> (...), with beta 0 ->
    forward KL and 1 -> reverse KL (TRL's convention)."""
    if beta == 0:
        return forward_kl(teacher_logp, student_logp)
    if beta == 1:
        return reverse_kl(teacher_logp, student_logp)
    if not 0 <= beta <= 1:
        raise ValueError(f"beta={beta!r} must lie in [0, 1] (TRL's generalized JSD)")
    p, q = teacher_logp.exp(), student_logp.exp()
    m = beta * p + (1 - beta) * q
    # log(0) would be -inf with an inf gradient; M is only read where p > 0 or q > 0, where it is > 0.
    logm = torch.where(m > 0, m, torch.ones((), dtype=m.dtype, device=m.device)).log()
    return beta * _kl(teacher_logp, logm) + (1 - beta) * _kl(student_logp, logm)


def divergence_from_logprobs(teacher_logp: torch.Tensor, student_logp: torch.Tensor,
                             divergence: Divergence = "forward_kl", beta: float = 0.5) -> torch.Tensor:
    """D(teacher || student) per row: (..., K), (..., K) -> (...), both normalized log-probabilities, D the
    function registered as `divergence` in `distillkit.registry.DIVERGENCES`. -inf entries are zero probabilities.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence={divergence!r} is unknown; choose one of {list(DIVERGENCES)}")
    return load_divergence(divergence)(teacher_logp, student_logp, beta)


# ---------------------------------------------------------------------------------------------------
# Teacher/student distributions per row from student logits and stored soft labels (top-k or sampled)
# ---------------------------------------------------------------------------------------------------

def _topk_valid(topk_ids: torch.Tensor, topk_logprobs: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(N, k) bool: ids inside the student's vocabulary with a finite logprob (the documented keep rule)."""
    return (topk_ids >= 0) & (topk_ids < vocab_size) & torch.isfinite(topk_logprobs)


class _LogSumExpExcluding(torch.autograd.Function):
    """log sum_{j not in idx} exp(s_j) per row: (N, V), (N, k) -> (N, 1), exact and O(1) extra (N, V) buffers.

    `logsumexp(s.scatter(idx, -inf))` would keep the masked copy for backward and allocate two more
    (N, V) tensors there; this recomputes the masked exponentials in one buffer in each pass. The max is
    taken over the kept entries, so a tail far below the top-k does not underflow to 0. The log1mexp
    form `lse + log(1 - exp(lse_topk - lse))` needs no buffer but loses all precision when the top-k
    holds nearly all of the student's mass, which is exactly when the tail matters for reverse KL.
    """

    @staticmethod
    def forward(ctx, s, idx):
        e = s.detach().clone().scatter_(-1, idx, float("-inf"))
        m = e.amax(-1, keepdim=True)
        m = torch.where(torch.isfinite(m), m, 0.0)  # an empty tail: exp(-inf - 0) = 0, log 0 = -inf
        out = e.sub_(m).exp_().sum(-1, keepdim=True).log_().add_(m)
        ctx.save_for_backward(s, idx, out)
        return out

    @staticmethod
    def backward(ctx, g):
        s, idx, out = ctx.saved_tensors
        safe = torch.where(torch.isfinite(out), out, 0.0)
        e = s.detach().clone().scatter_(-1, idx, float("-inf"))
        return e.sub_(safe).exp_().mul_(g), None


def topk_row_divergence(student_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor,
                        teacher_probs: TeacherProbs = "topk_tail", divergence: Divergence = "forward_kl",
                        beta: float = 0.5, temperature: float = 1.0,
                        student_lse: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row D(teacher || student) from stored top-k soft labels.

    Shapes: student_logits (N, V) float, topk_ids (N, k) int, topk_logprobs (N, k) -> (div (N,), has_support (N,) bool).
    Rows without support (topk_renorm with every id dropped) get div 0 and a finite gradient.
    `student_lse` (N,): logsumexp of the *tempered* student logits when the caller has it (saves a pass).
    """
    V = student_logits.shape[-1]
    lp = topk_logprobs.float()
    valid = _topk_valid(topk_ids, lp, V)
    has_valid = valid.any(-1)
    # Invalid slots point at the row's first valid id (or 0): duplicate indices read/write the same
    # position with the same value, so gather and scatter stay deterministic and in range.
    first = torch.where(has_valid, valid.float().argmax(-1), torch.zeros_like(has_valid, dtype=torch.long))
    fill = topk_ids.gather(-1, first[:, None]).clamp(0, V - 1)
    idx = torch.where(valid, topk_ids, fill).long()
    neg_inf = torch.full((), float("-inf"), dtype=lp.dtype, device=lp.device)
    s = student_logits.float() / temperature if temperature != 1 else student_logits.float()
    s_top = torch.where(valid, s.gather(-1, idx), neg_inf)
    if teacher_probs == "topk_renorm":
        # Rows without a valid id: a dummy 1-point distribution on slot 0 keeps everything finite.
        dummy = (~has_valid)[:, None] & (torch.arange(lp.shape[-1], device=lp.device) == 0)
        keep = valid | dummy
        t_logp = torch.where(keep, torch.where(valid, lp / temperature, 0.0), neg_inf).log_softmax(-1)
        s_logp = torch.where(keep, torch.where(valid, s_top, 0.0), neg_inf).log_softmax(-1)
        div = divergence_from_logprobs(t_logp, s_logp, divergence, beta)
        return torch.where(has_valid, div, 0.0), has_valid
    if teacher_probs != "topk_tail":
        raise ValueError(f"teacher_probs={teacher_probs!r} is not a stored-top-k mode; choose 'topk_renorm' "
                         "or 'topk_tail' (or use live teacher logits)")
    # Teacher: tail = 1 - sum over *all* k stored entries (dropped ids are teacher mass, not tail);
    # the final log_softmax renormalizes the kept buckets by 1 - p_dropped and absorbs fp16 rounding.
    # Student: full softmax; its tail is an exact logsumexp over the vocabulary minus the kept ids.
    lse_all = torch.logsumexp(s, -1, keepdim=True) if student_lse is None else student_lse[:, None]
    s_tail = torch.where(has_valid[:, None], _LogSumExpExcluding.apply(s, idx), lse_all)
    s_logp = torch.cat([s_top, s_tail], -1) - lse_all
    lse_k = torch.logsumexp(torch.where(torch.isfinite(lp), lp, neg_inf), -1).clamp(max=0.0)
    t_tail = torch.log(-torch.expm1(lse_k)).clamp(min=math.log(TAIL_FLOOR))
    # When the k ids cover the whole student vocabulary the tail bucket is empty on both sides.
    t_tail = torch.where(torch.isfinite(s_tail[:, 0]), t_tail, neg_inf)
    t_logp = torch.cat([torch.where(valid, lp, neg_inf), t_tail[:, None]], -1).log_softmax(-1)
    return divergence_from_logprobs(t_logp, s_logp, divergence, beta), torch.ones_like(has_valid)


def sampled_row_divergence(student_logits: torch.Tensor, sample_ids: torch.Tensor, log_weights: torch.Tensor,
                           temperature: float = 1.0, student_lse: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row KL(p_hat || q) from sampled soft labels: (N, V), (N, W) int, (N, W) -> (N,).

    `sample_ids`: the distinct ids drawn at each row, `log_weights`: log(count / num_draws) of each (-inf padding).
    q = softmax(student_logits / T), read only at the W drawn ids (a gather and the row's logsumexp: nothing of size
    (N, V) beyond what the student's logsumexp needs, as the top-k modes). Ids outside [0, V) or with a -inf weight
    are dropped and the others renormalized (the estimate conditioned on the student's vocabulary); a row without
    any gives 0. `student_lse` (N,): logsumexp of the tempered student logits when the caller has it.
    """
    V = student_logits.shape[-1]
    lw = log_weights.float()
    valid = (sample_ids >= 0) & (sample_ids < V) & torch.isfinite(lw)
    has_valid = valid.any(-1)
    idx = torch.where(valid, sample_ids, torch.zeros_like(sample_ids)).long()
    s = student_logits.float() / temperature if temperature != 1 else student_logits.float()
    lse = torch.logsumexp(s, -1) if student_lse is None else student_lse
    log_q = s.gather(-1, idx) - lse[:, None]
    # A row without a valid id: a dummy one-point target on slot 0 keeps log_softmax finite; it is zeroed below.
    dummy = (~has_valid)[:, None] & (torch.arange(lw.shape[-1], device=lw.device) == 0)
    neg_inf = torch.full((), float("-inf"), dtype=lw.dtype, device=lw.device)
    log_p = torch.where(valid | dummy, torch.where(valid, lw, 0.0), neg_inf).log_softmax(-1)
    p = log_p.exp()
    # `where` before the product: 0 * (-inf) would be nan on padding, in forward and backward.
    terms = torch.where(valid, p * (log_p - log_q), torch.zeros((), dtype=p.dtype, device=p.device))
    return torch.where(has_valid, terms.sum(-1), 0.0)


def live_row_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                        divergence: Divergence = "forward_kl", beta: float = 0.5,
                        temperature: float = 1.0) -> torch.Tensor:
    """Per-row D(teacher || student) from full teacher logits: (N, Vs), (N, Vt) -> (N,).

    Both are truncated to the shared vocabulary [0, min(Vs, Vt)) and tempered by T before softmax.
    """
    v = min(student_logits.shape[-1], teacher_logits.shape[-1])
    t_logp = (teacher_logits[..., :v].float() / temperature).log_softmax(-1)
    s_logp = (student_logits[..., :v].float() / temperature).log_softmax(-1)
    return divergence_from_logprobs(t_logp, s_logp, divergence, beta)
