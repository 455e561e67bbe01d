"""Soft-label KD losses: divergences between a teacher and a student, chunked so full logits are never built.

The student loss is

    loss = alpha * CE + (1 - alpha) * T^2 * D(teacher || student)

over the positions of a `(B, T)` mask, each mean divided by `mask.sum().clamp_min(1)` (a batch with no
unmasked position gives 0, not nan). CE always uses the *untempered* student logits.

Teacher distributions (`teacher_probs`: topk_renorm, topk_tail, sampled, live), the divergences (forward_kl,
reverse_kl, jsd) and what happens to ids outside the student's vocabulary: `distillkit.train.divergences`, whose
names are importable from here as well.

Memory: `chunked_kd_loss` takes the student's final hidden states and its output projection and
works on `chunk_size` tokens at a time, in a custom autograd Function that keeps nothing of size
vocab between forward and backward: backward recomputes each chunk's logits (one extra projection
matmul, like activation checkpointing) and accumulates the gradients of the hidden states and of the
projection weight in place. Peak memory is O(chunk_size * V) plus one (V, H) weight gradient when the
weight is trained; see BENCHMARKS.md ("KD loss").

Size: pure functions; the tests compare every mode against TRL's and a dense reference
(`kd_loss_from_logits`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Union

import torch

from distillkit.registry import DIVERGENCES
from distillkit.train.divergences import (  # noqa: F401  (re-exported: their old home, and the API of losses)
    TAIL_FLOOR,
    Divergence,
    TeacherProbs,
    _kl,
    _LogSumExpExcluding,
    _topk_valid,
    divergence_from_logprobs,
    forward_kl,
    jsd,
    live_row_divergence,
    reverse_kl,
    sampled_row_divergence,
    topk_row_divergence,
)

IGNORE_INDEX = -100
Projection = Union[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]
TEACHER_PROBS = ("topk_renorm", "topk_tail", "sampled", "live")


# ---------------------------------------------------------------------------------------------------
# Options, per-row CE and D of a chunk, masks and means
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


def kd_metric_name(teacher_probs: str) -> str:
    """The name the trainer logs the KD term's mean under: `kl_sampled` for sampled labels, whose value is
    KL(counts / N || q), biased up by a gap that depends on the teacher alone (`distillkit.train.divergences`),
    so it must not read as the `kl` of top-k or live runs; `kl` for the others (the chosen divergence)."""
    return "kl_sampled" if teacher_probs == "sampled" else "kl"


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
        if weight is None:
            grad_rows, grad_params = _backward_through_callable(spec, rows, params, need_rows,
                                                                ctx.needs_input_grad[4:], g_ce, g_kd)
            return (grad_rows, None, None, None, *grad_params)
        grad_rows, grad_w, grad_b = _backward_through_weight(spec, rows, weight, bias, need_rows, need_w, need_b,
                                                             g_ce, g_kd)
        return (grad_rows, grad_w, grad_b, None)


def _logits_grad(spec: _Spec, logits: torch.Tensor, sl: slice, g_ce, g_kd) -> torch.Tensor:
    """d(g_ce * ce_sum + g_kd * kd_sum) / d(logits) of one chunk (n, V), by autograd on that chunk alone (fp32)."""
    with torch.enable_grad():
        z = logits.float().requires_grad_(True)
        ce, kd = _chunk_losses(spec, z, sl)
        (g_z,) = torch.autograd.grad(g_ce * ce.sum() + g_kd * kd.sum(), z)
    return g_z


def _backward_through_weight(spec: _Spec, rows, weight, bias, need_rows, need_w, need_b, g_ce, g_kd):
    """A (V, H) tensor head: each chunk's logits recomputed without a graph, the gradients of the rows, of the
    weight and of the bias accumulated in place (one fp32 (V, H) buffer) -> (grad_rows, grad_w, grad_b)."""
    grad_rows = torch.zeros_like(rows) if need_rows else None
    grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
    grad_b = torch.zeros_like(bias, dtype=torch.float32) if (bias is not None and need_b) else None
    for start in range(0, rows.shape[0], spec.chunk_size):
        sl = slice(start, start + spec.chunk_size)
        h = rows[sl].detach()
        with torch.no_grad():
            logits = _project(weight, bias, h)
        g_z = _logits_grad(spec, logits, sl, g_ce, g_kd)
        del logits
        if need_rows:
            grad_rows[sl] = (g_z.to(weight.dtype) @ weight).to(rows.dtype)
        if grad_w is not None:
            grad_w.addmm_(g_z.t(), h.float())
        if grad_b is not None:
            grad_b += g_z.sum(0)
        del g_z
    return (grad_rows, None if grad_w is None else grad_w.to(weight.dtype),
            None if grad_b is None else grad_b.to(bias.dtype))


def _backward_through_callable(spec: _Spec, rows, params, need_rows, need_params, g_ce, g_kd):
    """A callable head (LoRA, 4-bit): each chunk projected again under the forward's RNG state (the same dropout
    masks), the logits' gradient pushed through that graph -> (grad_rows, a gradient or None per param)."""
    train_params = [p for p, need in zip(params, need_params) if need]
    acc = [torch.zeros_like(p) for p in train_params]
    grad_rows = torch.zeros_like(rows) if need_rows else None
    with torch.random.fork_rng(devices=_rng_devices(rows)):
        torch.set_rng_state(spec.rng_state[0])
        for d, state in zip(_rng_devices(rows), spec.rng_state[1]):
            torch.cuda.set_rng_state(state, d)
        for start in range(0, rows.shape[0], spec.chunk_size):
            sl = slice(start, start + spec.chunk_size)
            h = rows[sl].detach()
            with torch.enable_grad():
                h.requires_grad_(need_rows)
                logits_graph = spec.project(h)
            g_z = _logits_grad(spec, logits_graph.detach(), sl, g_ce, g_kd)
            inputs = ([h] if need_rows else []) + train_params
            if inputs:
                with torch.enable_grad():
                    grads = torch.autograd.grad(logits_graph, inputs, g_z.to(logits_graph.dtype), allow_unused=True)
                if need_rows:
                    grad_rows[sl] = grads[0]
                    grads = grads[1:]
                for a, g in zip(acc, grads):
                    if g is not None:
                        a += g
            del logits_graph, g_z
    it = iter(acc)
    return grad_rows, [next(it) if need else None for need in need_params]


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
