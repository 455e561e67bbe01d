"""Soft-label KD losses: divergences between a teacher and a student, chunked so full logits are never built.

The student loss is

    loss = alpha * CE + (1 - alpha) * T^2 * D(teacher || student)

over the positions of a `(B, T)` mask, each mean divided by `mask.sum().clamp_min(1)` (a batch with no
unmasked position gives 0, not nan). CE always uses the *untempered* student logits.

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
  the top-k modes do not give (tests/softlabels/test_sampled_bias.py). The value is an upper-biased estimate of
  KL(p || q) (E[-H(p_hat)] >= -H(p)), the gradient unbiased. Forward KL only: reverse KL and JSD need p at the
  student's tokens, which draws do not give. The temperature applies to the student only, as in
  ``topk_tail``; draw the labels at the temperature wanted (`score.soft_label_temperature`).
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

Memory: `chunked_kd_loss` takes the student's final hidden states and its output projection and
works on `chunk_size` tokens at a time, in a custom autograd Function that keeps nothing of size
vocab between forward and backward: backward recomputes each chunk's logits (one extra projection
matmul, like activation checkpointing) and accumulates the gradients of the hidden states and of the
projection weight in place. Peak memory is O(chunk_size * V) plus one (V, H) weight gradient when the
weight is trained; see BENCHMARKS.md ("KD loss").

Size: pure functions, each divergence with its derivation and its chunked forward/backward; the tests
compare every one against TRL's and a dense reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Union

import torch
import torch.nn.functional as F

from distillkit.registry import DIVERGENCES, load_divergence

IGNORE_INDEX = -100
TAIL_FLOOR = 1e-6
"""Smallest teacher tail probability in `topk_tail`: fp16 logprobs can sum to >= 1 over the top-k, and a
zero tail would make reverse KL infinite wherever the student has any mass outside the top-k."""

Divergence = str
"""A name registered in `distillkit.registry.DIVERGENCES` (forward_kl, reverse_kl and jsd are defined below)."""
TeacherProbs = Literal["topk_renorm", "topk_tail", "sampled", "live"]
Projection = Union[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]
TEACHER_PROBS = ("topk_renorm", "topk_tail", "sampled", "live")


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
# Teacher/student distributions per row from student logits and stored top-k soft labels
# ---------------------------------------------------------------------------------------------------

def _check_options(divergence: str, teacher_probs: str, temperature: float, alpha: float) -> None:
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence={divergence!r} is unknown; choose one of {list(DIVERGENCES)}")
    if teacher_probs not in TEACHER_PROBS:
        raise ValueError(f"teacher_probs={teacher_probs!r} is unknown; choose one of {list(TEACHER_PROBS)}")
    if teacher_probs == "sampled" and divergence != "forward_kl":
        raise ValueError(f"teacher_probs='sampled' estimates the forward KL only, not divergence={divergence!r}: "
                         "reverse KL and JSD need the teacher's probability at the student's tokens; use "
                         "divergence='forward_kl' or top-k labels")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r} must be > 0")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha={alpha!r} must lie in [0, 1]")


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


def _row_losses(logits: torch.Tensor, labels: torch.Tensor | None, ce_mask: torch.Tensor, kd_mask: torch.Tensor,
                teacher: dict, teacher_probs: str, divergence: str, beta: float, temperature: float):
    """Masked per-row CE and D for one chunk: logits (N, V) -> (ce (N,), kd (N,)), zeros off the masks."""
    z = logits.float()
    zero = torch.zeros((), dtype=z.dtype, device=z.device)
    lse = torch.logsumexp(z, -1)
    if labels is not None:
        safe = torch.where(ce_mask, labels, 0).long()
        ce = torch.where(ce_mask, lse - z.gather(-1, safe[:, None])[:, 0], zero)
    else:
        ce = z.new_zeros(z.shape[0])
    if teacher_probs == "live":
        kd = live_row_divergence(z, teacher["logits"], divergence, beta, temperature)
    elif teacher_probs == "sampled":
        kd = sampled_row_divergence(z, teacher["ids"], teacher["logprobs"], temperature,
                                    student_lse=lse if temperature == 1 else None)
    else:
        # Rows off the KD mask may hold padding (ids 0, logprobs 0 -> "p = 1" k times): make them a
        # harmless valid row so nothing is nan, then zero them.
        ids, lp = teacher["ids"], teacher["logprobs"]
        ids = torch.where(kd_mask[:, None], ids, torch.arange(ids.shape[-1], device=ids.device) % z.shape[-1])
        lp = torch.where(kd_mask[:, None], lp.float(), -math.log(ids.shape[-1]) - 1.0)
        kd, _ = topk_row_divergence(z, ids, lp, teacher_probs, divergence, beta, temperature,
                                    student_lse=lse if temperature == 1 else None)
    kd = torch.where(kd_mask, kd, zero)
    return ce, kd


def _masks(labels, mask, kd_mask, shape):
    """CE mask = mask & labels != -100 (either may be absent); KD mask defaults to the CE mask."""
    ce_mask = torch.ones(shape, dtype=torch.bool) if mask is None else mask.bool()
    if labels is not None:
        ce_mask = ce_mask.to(labels.device) & (labels != IGNORE_INDEX)
    kd_mask = ce_mask if kd_mask is None else kd_mask.bool().to(ce_mask.device)
    return ce_mask, kd_mask


def _combine(ce_sum, kd_sum, ce_mask, kd_mask, alpha, temperature):
    # clamp_min(1) avoids 0/0 -> nan when nothing is masked in: the sums are 0 and so is the mean.
    ce = ce_sum / ce_mask.sum().clamp_min(1)
    kd = kd_sum / kd_mask.sum().clamp_min(1)
    return alpha * ce + (1 - alpha) * temperature ** 2 * kd, ce, kd


# ---------------------------------------------------------------------------------------------------
# Reference (unchunked) path: from full logits
# ---------------------------------------------------------------------------------------------------

def kd_loss_from_logits(student_logits: torch.Tensor, labels: torch.Tensor | None = None, *,
                        topk_ids: torch.Tensor | None = None, topk_logprobs: torch.Tensor | None = None,
                        teacher_logits: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                        kd_mask: torch.Tensor | None = None, alpha: float = 0.5, temperature: float = 1.0,
                        divergence: Divergence = "forward_kl", beta: float = 0.5,
                        teacher_probs: TeacherProbs = "topk_tail"):
    """alpha*CE + (1-alpha)*T^2*D from full logits: (B,T,V), (B,T) [, (B,T,k), (B,T,k) | (B,T,Vt)] -> 3 x ().

    Returns (loss, ce, kd): ce and kd are the masked means (kd unscaled, without T^2). `mask` selects the
    CE positions (and labels == -100 are ignored), `kd_mask` the KD positions (default: the CE mask).
    Builds (B*T, V) tensors: use it for tests and short sequences, `chunked_kd_loss` otherwise.
    """
    _check_options(divergence, teacher_probs, temperature, alpha)
    B, T, V = student_logits.shape
    ce_mask, kd_mask = _masks(labels, mask, kd_mask, (B, T))
    teacher = _teacher_rows(teacher_probs, topk_ids, topk_logprobs, teacher_logits, None, None, B * T)
    ce, kd = _row_losses(student_logits.reshape(B * T, V), None if labels is None else labels.reshape(-1),
                         ce_mask.reshape(-1), kd_mask.reshape(-1), teacher, teacher_probs, divergence, beta,
                         temperature)
    return _combine(ce.sum(), kd.sum(), ce_mask, kd_mask, alpha, temperature)


def _teacher_rows(teacher_probs, topk_ids, topk_logprobs, teacher_logits, teacher_hidden, teacher_weight, n):
    """The teacher inputs flattened to rows: {"ids","logprobs"} (N,k) or {"logits"} (N,Vt) / {"hidden"} (N,Ht)."""
    if teacher_probs == "live":
        if teacher_logits is not None:
            return {"logits": teacher_logits.detach().reshape(n, -1)}
        if teacher_hidden is None or teacher_weight is None:
            raise ValueError("teacher_probs='live' needs teacher_logits, or teacher_hidden with teacher_weight")
        return {"hidden": teacher_hidden.detach().reshape(n, -1), "project": teacher_weight}
    if topk_ids is None or topk_logprobs is None:
        raise ValueError(f"teacher_probs={teacher_probs!r} needs topk_ids and topk_logprobs of shape (B, T, k)")
    k = topk_ids.shape[-1]
    return {"ids": topk_ids.reshape(n, k), "logprobs": topk_logprobs.detach().reshape(n, k)}


# ---------------------------------------------------------------------------------------------------
# Chunked path: from hidden states and the output projection
# ---------------------------------------------------------------------------------------------------

def _project(project: Projection, bias: torch.Tensor | None, h: torch.Tensor) -> torch.Tensor:
    if callable(project) and not isinstance(project, torch.Tensor):
        return project(h)
    w = project
    out = h.to(w.dtype) @ w.t()
    return out if bias is None else out + bias


@dataclass
class _Spec:
    """Everything of the chunked loss that is not differentiated (masks, labels, teacher rows, options)."""

    project: Projection
    labels: torch.Tensor | None
    ce_mask: torch.Tensor
    kd_mask: torch.Tensor
    teacher: dict
    teacher_probs: str
    divergence: str
    beta: float
    temperature: float
    chunk_size: int
    rng_state: tuple | None = None


def _chunk_teacher(spec: _Spec, sl: slice) -> dict:
    t = spec.teacher
    if "hidden" in t:
        with torch.no_grad():
            return {"logits": _project(t["project"], None, t["hidden"][sl])}
    return {k: v[sl] for k, v in t.items()}


def _chunk_losses(spec: _Spec, logits: torch.Tensor, sl: slice):
    return _row_losses(logits, None if spec.labels is None else spec.labels[sl], spec.ce_mask[sl],
                       spec.kd_mask[sl], _chunk_teacher(spec, sl), spec.teacher_probs, spec.divergence,
                       spec.beta, spec.temperature)


def _rng_devices(h: torch.Tensor) -> list:
    return [h.device] if h.device.type == "cuda" else []


class _ChunkedKD(torch.autograd.Function):
    """(rows (N,H), weight (V,H)|None, bias (V,)|None, spec, *params) -> (ce_sum (), kd_sum ()).

    Forward keeps only the inputs; backward recomputes each chunk's logits, gets d(loss)/d(logits) by
    autograd on that chunk alone, and pushes it through the projection: in place into one (V,H) weight
    gradient for a tensor weight, or through `torch.autograd.grad` for a callable (whose trainable
    parameters are passed as `params` so they receive gradients, e.g. LoRA on the head). The RNG state is
    replayed so a callable with dropout sees the same masks in both passes.
    """

    # Backward recomputes the logits under the forward's autocast state (bf16 matmuls on GPU), so both
    # passes see the same logits.
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, rows, weight, bias, spec: _Spec, *params):
        is_callable = weight is None
        if is_callable:
            spec.rng_state = (torch.get_rng_state(),
                              [torch.cuda.get_rng_state(d) for d in _rng_devices(rows)])
        ce_sum = rows.new_zeros((), dtype=torch.float32)
        kd_sum = rows.new_zeros((), dtype=torch.float32)
        proj = spec.project if is_callable else weight
        for start in range(0, rows.shape[0], spec.chunk_size):
            sl = slice(start, start + spec.chunk_size)
            logits = _project(proj, bias, rows[sl])
            ce, kd = _chunk_losses(spec, logits, sl)
            ce_sum += ce.sum()
            kd_sum += kd.sum()
            del logits, ce, kd
        ctx.spec = spec
        ctx.save_for_backward(rows, weight, bias, *params)
        return ce_sum, kd_sum

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, g_ce, g_kd):
        spec: _Spec = ctx.spec
        rows, weight, bias, *params = ctx.saved_tensors
        need_rows, need_w, need_b = ctx.needs_input_grad[:3]
        need_params = ctx.needs_input_grad[4:]
        grad_rows = torch.zeros_like(rows) if need_rows else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if (weight is not None and need_w) else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if (bias is not None and need_b) else None
        train_params = [p for p, need in zip(params, need_params) if need]
        grad_params = [None] * len(params)
        acc = [torch.zeros_like(p) for p in train_params]
        with torch.random.fork_rng(devices=_rng_devices(rows), enabled=weight is None):
            if weight is None:
                torch.set_rng_state(spec.rng_state[0])
                for d, state in zip(_rng_devices(rows), spec.rng_state[1]):
                    torch.cuda.set_rng_state(state, d)
            for start in range(0, rows.shape[0], spec.chunk_size):
                sl = slice(start, start + spec.chunk_size)
                h = rows[sl].detach()
                with torch.enable_grad():
                    if weight is None:
                        h.requires_grad_(need_rows)
                        logits_graph = spec.project(h)
                        logits = logits_graph.detach()
                    else:
                        with torch.no_grad():
                            logits = _project(weight, bias, h)
                    z = logits.float().requires_grad_(True)
                    ce, kd = _chunk_losses(spec, z, sl)
                    (g_z,) = torch.autograd.grad(g_ce * ce.sum() + g_kd * kd.sum(), z)
                    del ce, kd, z
                    if weight is None:
                        inputs = ([h] if need_rows else []) + train_params
                        if inputs:
                            grads = torch.autograd.grad(logits_graph, inputs, g_z.to(logits_graph.dtype),
                                                        allow_unused=True)
                            if need_rows:
                                grad_rows[sl] = grads[0]
                                grads = grads[1:]
                            for a, g in zip(acc, grads):
                                if g is not None:
                                    a += g
                        del logits_graph
                        continue
                g_w = g_z.to(weight.dtype)
                if need_rows:
                    grad_rows[sl] = (g_w @ weight).to(rows.dtype)
                if grad_w is not None:
                    grad_w.addmm_(g_z.t(), h.float())
                if grad_b is not None:
                    grad_b += g_z.sum(0)
                del g_z, g_w, logits
        it = iter(acc)
        for i, need in enumerate(need_params):
            if need:
                grad_params[i] = next(it)
        if grad_w is not None:
            grad_w = grad_w.to(weight.dtype)
        if grad_b is not None:
            grad_b = grad_b.to(bias.dtype)
        return (grad_rows, grad_w, grad_b, None, *grad_params)


def chunked_kd_loss(hidden: torch.Tensor, weight: Projection, labels: torch.Tensor | None = None, *,
                    bias: torch.Tensor | None = None, topk_ids: torch.Tensor | None = None,
                    topk_logprobs: torch.Tensor | None = None, teacher_hidden: torch.Tensor | None = None,
                    teacher_weight: Projection | None = None, mask: torch.Tensor | None = None,
                    kd_mask: torch.Tensor | None = None, alpha: float = 0.5, temperature: float = 1.0,
                    divergence: Divergence = "forward_kl", beta: float = 0.5,
                    teacher_probs: TeacherProbs = "topk_tail", chunk_size: int = 1024):
    """alpha*CE + (1-alpha)*T^2*D from final hidden states, `chunk_size` tokens at a time.

    Shapes: hidden (B,T,H); weight (V,H) tensor (any dtype, trained or frozen, tied or not) or a callable
    `project(h (n,H)) -> logits (n,V)` (a PEFT-wrapped or 4-bit head; its parameters with
    requires_grad get gradients); bias (V,); labels (B,T) with -100 ignored; topk_ids/topk_logprobs
    (B,T,k) for the stored modes (`sampled`: the drawn ids and log(count/N), k = N), or teacher_hidden (B,T,Ht)
    with teacher_weight (Vt,Ht)/callable for `live`; mask, kd_mask (B,T) bool -> (loss (), ce (), kd ()).

    Same values and gradients as `kd_loss_from_logits(hidden @ weight.T + bias, ...)` but the (B*T, V)
    logits never exist: only positions on either mask are computed, in chunks, and backward recomputes
    each chunk's logits. ce and kd are the masked means (kd without T^2), each differentiable, so a
    caller may reweight them (the trainer rescales both by global token counts).
    """
    _check_options(divergence, teacher_probs, temperature, alpha)
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be >= 1")
    B, T, H = hidden.shape
    ce_mask, kd_mask = _masks(labels, mask, kd_mask, (B, T))
    ce_mask, kd_mask = ce_mask.to(hidden.device), kd_mask.to(hidden.device)
    teacher = _teacher_rows(teacher_probs, topk_ids, topk_logprobs, None, teacher_hidden, teacher_weight, B * T)
    # Only positions that carry some loss are projected (prompt and padding rows never are).
    sel = (ce_mask | kd_mask).reshape(-1).nonzero().squeeze(-1)
    rows = hidden.reshape(B * T, H).index_select(0, sel)
    teacher = {k: (v if k == "project" else v.index_select(0, sel)) for k, v in teacher.items()}
    spec = _Spec(project=weight, labels=None if labels is None else labels.reshape(-1).index_select(0, sel),
                 ce_mask=ce_mask.reshape(-1).index_select(0, sel), kd_mask=kd_mask.reshape(-1).index_select(0, sel),
                 teacher=teacher, teacher_probs=teacher_probs, divergence=divergence, beta=beta,
                 temperature=temperature, chunk_size=chunk_size)
    if isinstance(weight, torch.Tensor):
        ce_sum, kd_sum = _ChunkedKD.apply(rows, weight, bias, spec)
    elif callable(weight):
        if bias is not None:
            raise ValueError("bias is only for a tensor weight; a callable projection adds its own bias")
        params = [p for p in getattr(weight, "parameters", lambda: [])() if p.requires_grad]
        ce_sum, kd_sum = _ChunkedKD.apply(rows, None, None, spec, *params)
    else:
        raise TypeError(f"weight must be a (V, H) tensor or a callable projection, not {type(weight).__name__}")
    return _combine(ce_sum, kd_sum, ce_mask, kd_mask, alpha, temperature)
