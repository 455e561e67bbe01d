"""KD losses: divergences vs direct full-vocabulary references, top-k modes vs hand-computed values,
chunked == unchunked (values and gradients), masks, frozen/tied/callable heads, vocabulary mismatch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distillkit.train.losses import (
    TAIL_FLOOR,
    chunked_kd_loss,
    divergence_from_logprobs,
    kd_loss_from_logits,
    topk_row_divergence,
)

DIVS = ["forward_kl", "reverse_kl", "jsd"]
MODES = ["topk_renorm", "topk_tail"]


def make_batch(B=2, T=7, H=12, V=40, k=5, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g, dtype=dtype).requires_grad_()
    weight = (torch.randn(V, H, generator=g, dtype=dtype) * 0.5).requires_grad_()
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :2] = -100  # a "prompt"
    labels[1, -1] = -100  # a "pad"
    teacher_logits = torch.randn(B, T, V, generator=g) * 2
    lp, ids = teacher_logits.log_softmax(-1).topk(k, dim=-1)
    kd_mask = labels != -100
    kd_mask[1, 2] = False  # a labelled token without soft label
    return dict(hidden=hidden, weight=weight, labels=labels, teacher_logits=teacher_logits, ids=ids, lp=lp,
                kd_mask=kd_mask)


def masked_mean(per_token, mask):
    return (per_token * mask).sum() / mask.sum().clamp_min(1)


# ---------------------------------------------------------------------------------------------------
# Divergences vs direct references (full vocabulary, live teacher)
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_forward_and_reverse_kl_match_f_kl_div(temperature):
    b = make_batch()
    logits = b["hidden"].detach() @ b["weight"].detach().t()
    s = (logits / temperature).log_softmax(-1)
    t = (b["teacher_logits"] / temperature).log_softmax(-1)
    # F.kl_div(input, target) = KL(target || input)
    fwd_ref = masked_mean(F.kl_div(s, t, reduction="none", log_target=True).sum(-1), b["kd_mask"])
    rev_ref = masked_mean(F.kl_div(t, s, reduction="none", log_target=True).sum(-1), b["kd_mask"])
    for div, ref in [("forward_kl", fwd_ref), ("reverse_kl", rev_ref)]:
        loss, ce, kd = kd_loss_from_logits(logits, b["labels"], teacher_logits=b["teacher_logits"],
                                           kd_mask=b["kd_mask"], teacher_probs="live", divergence=div,
                                           temperature=temperature, alpha=0.25)
        torch.testing.assert_close(kd, ref)
        ce_ref = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), b["labels"].reshape(-1), ignore_index=-100)
        torch.testing.assert_close(ce, ce_ref)
        torch.testing.assert_close(loss, 0.25 * ce_ref + 0.75 * temperature ** 2 * ref)


def _trl_generalized_jsd_loss():
    """TRL's own `GKDTrainer.generalized_jsd_loss`, its source executed alone: importing the trainer module
    pulls in all of transformers' Trainer (~30 s on a shared CPU), the function needs only torch."""
    import ast
    import importlib.util
    import pathlib

    spec = importlib.util.find_spec("trl")
    if spec is None:
        pytest.skip("trl not installed")
    path = pathlib.Path(spec.origin).parent / "experimental" / "gkd" / "gkd_trainer.py"
    tree = ast.parse(path.read_text())
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "generalized_jsd_loss")
    fn.decorator_list = []
    ns = {"torch": torch, "F": F}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(path), "exec"), ns)
    return ns["generalized_jsd_loss"]


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_jsd_matches_trl_generalized_jsd_loss(beta):
    trl_jsd = _trl_generalized_jsd_loss()
    b = make_batch(seed=1)
    logits = b["hidden"].detach() @ b["weight"].detach().t()
    ref = trl_jsd(logits, b["teacher_logits"], labels=b["labels"], beta=beta, temperature=2.0)
    _, _, kd = kd_loss_from_logits(logits, b["labels"], teacher_logits=b["teacher_logits"], teacher_probs="live",
                                   divergence="jsd", beta=beta, temperature=2.0)
    torch.testing.assert_close(kd, ref)


def test_jsd_ends_are_forward_and_reverse_kl_and_middle_is_symmetric_js():
    g = torch.Generator().manual_seed(3)
    p = torch.randn(4, 9, generator=g).log_softmax(-1)
    q = torch.randn(4, 9, generator=g).log_softmax(-1)
    torch.testing.assert_close(divergence_from_logprobs(p, q, "jsd", 0.0), divergence_from_logprobs(p, q, "forward_kl"))
    torch.testing.assert_close(divergence_from_logprobs(p, q, "jsd", 1.0), divergence_from_logprobs(p, q, "reverse_kl"))
    m = (0.5 * (p.exp() + q.exp())).log()
    js = 0.5 * F.kl_div(m, p, reduction="none", log_target=True).sum(-1) + \
        0.5 * F.kl_div(m, q, reduction="none", log_target=True).sum(-1)
    torch.testing.assert_close(divergence_from_logprobs(p, q, "jsd", 0.5), js)


# ---------------------------------------------------------------------------------------------------
# Stored top-k modes vs full-vocabulary references and hand-computed values
# ---------------------------------------------------------------------------------------------------

def _dense_topk_reference(logits, ids, lp, mode, temperature):
    """Dense (N, buckets) teacher/student log-probs built the long way round, for F.kl_div references."""
    N, V = logits.shape
    k = ids.shape[-1]
    in_topk = torch.zeros(N, V, dtype=torch.bool).scatter(1, ids, True)
    s = logits / temperature
    if mode == "topk_renorm":
        # both on the k ids only: big negative (not -inf) outside, so F.kl_div sees exact zeros
        t_dense = torch.full((N, V), -1e9).scatter(1, ids, lp / temperature).log_softmax(-1)
        s_dense = s.masked_fill(~in_topk, -1e9).log_softmax(-1)
        return t_dense, s_dense
    # tail: coarse-grain full distributions with a (V, k+1) bucket matrix
    A = torch.zeros(N, V, k + 1)
    A[:, :, k] = 1.0
    for n in range(N):
        for j in range(k):
            A[n, ids[n, j], :] = 0.0
            A[n, ids[n, j], j] = 1.0
    p_full = torch.zeros(N, V).scatter(1, ids, lp.exp())
    p_b = torch.einsum("nv,nvb->nb", p_full, A)
    p_b[:, k] = 1 - lp.exp().sum(-1)
    q_b = torch.einsum("nv,nvb->nb", s.softmax(-1), A)
    return p_b.log(), q_b.log()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("div", DIVS)
def test_topk_modes_match_dense_references(mode, div):
    b = make_batch(seed=2)
    logits = (b["hidden"].detach() @ b["weight"].detach().t()).reshape(-1, 40)
    ids, lp = b["ids"].reshape(-1, 5), b["lp"].reshape(-1, 5)
    T = 1.5
    t_logp, s_logp = _dense_topk_reference(logits, ids, lp, mode, T)
    p, q = t_logp.exp(), s_logp.exp()
    if div == "forward_kl":
        ref = F.kl_div(s_logp, p, reduction="none").sum(-1)
    elif div == "reverse_kl":
        ref = F.kl_div(t_logp, q, reduction="none").sum(-1)
    else:
        m = (0.5 * p + 0.5 * q).clamp_min(1e-30).log()  # 0*log0 is nan in F.kl_div
        ref = 0.5 * F.kl_div(m, p, reduction="none").sum(-1) + 0.5 * F.kl_div(m, q, reduction="none").sum(-1)
    got, _ = topk_row_divergence(logits, ids, lp, mode, div, beta=0.5, temperature=T)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_topk_tail_is_the_full_kl_when_k_is_the_whole_vocabulary():
    # with every id stored the tail is empty (floored) and topk_tail == full-vocabulary forward KL
    g = torch.Generator().manual_seed(4)
    z, t = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    lp, ids = t.log_softmax(-1).topk(8, dim=-1)
    got, _ = topk_row_divergence(z, ids, lp, "topk_tail", "forward_kl")
    ref = F.kl_div(z.log_softmax(-1), t.log_softmax(-1), reduction="none", log_target=True).sum(-1)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


def test_student_tail_is_exact_when_topk_holds_nearly_all_mass():
    # top-2 logits 30 above the rest: tail ~ 8 e^-30 ~ 7.5e-13, invisible to log1mexp in fp32
    z = torch.tensor([[30.0, 30.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    ids = torch.tensor([[0, 1]])
    lp = torch.tensor([[math.log(0.45), math.log(0.45)]])  # teacher tail 0.1
    got, _ = topk_row_divergence(z, ids, lp, "topk_tail", "forward_kl")
    z64 = z.detach().double()
    q = z64.softmax(-1)[0]
    q_b = [q[0].item(), q[1].item(), q[2:].sum().item()]
    assert got.item() == pytest.approx(_kl([0.45, 0.45, 0.1], q_b), rel=1e-5)
    # gradient of the exact tail vs float64 autograd of the masked logsumexp
    (g,) = torch.autograd.grad(got, z)
    z64.requires_grad_()
    ls = z64.log_softmax(-1)
    s_logp = torch.cat([ls[:, :2], torch.logsumexp(z64[:, 2:], -1, keepdim=True) - torch.logsumexp(z64, -1, keepdim=True)], -1)
    p = torch.tensor([[0.45, 0.45, 0.1]], dtype=torch.float64)
    (g64,) = torch.autograd.grad((p * (p.log() - s_logp)).sum(), z64)
    torch.testing.assert_close(g, g64.float(), atol=1e-6, rtol=1e-4)


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def test_hand_computed_tiny_vocab():
    # V=4, student logits [2, 1, 0, -1]; teacher stored top-2: id 1 -> 0.5, id 2 -> 0.3 (tail 0.2)
    z = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    ids = torch.tensor([[1, 2]])
    lp = torch.tensor([[math.log(0.5), math.log(0.3)]])
    e = [math.exp(x) for x in (2, 1, 0, -1)]
    q = [x / sum(e) for x in e]
    # renorm: teacher [0.625, 0.375]; student over ids {1, 2}: [e/(e+1), 1/(e+1)]
    p_r, q_r = [0.625, 0.375], [math.e / (math.e + 1), 1 / (math.e + 1)]
    # tail: teacher [0.5, 0.3, 0.2]; student [q1, q2, q0 + q3]
    p_t, q_t = [0.5, 0.3, 0.2], [q[1], q[2], q[0] + q[3]]
    cases = {("topk_renorm", "forward_kl"): _kl(p_r, q_r), ("topk_renorm", "reverse_kl"): _kl(q_r, p_r),
             ("topk_tail", "forward_kl"): _kl(p_t, q_t), ("topk_tail", "reverse_kl"): _kl(q_t, p_t)}
    m_t = [0.5 * a + 0.5 * b for a, b in zip(p_t, q_t)]
    cases[("topk_tail", "jsd")] = 0.5 * _kl(p_t, m_t) + 0.5 * _kl(q_t, m_t)
    for (mode, div), want in cases.items():
        got, _ = topk_row_divergence(z, ids, lp, mode, div, beta=0.5)
        assert got.item() == pytest.approx(want, rel=1e-5), (mode, div)
    # temperature 2: renorm tempers both (teacher 0.5^(1/2) : 0.3^(1/2)), tail only the student
    a, c = math.sqrt(0.5), math.sqrt(0.3)
    p_r2 = [a / (a + c), c / (a + c)]
    q_r2 = [math.exp(0.5) / (math.exp(0.5) + 1), 1 / (math.exp(0.5) + 1)]
    got, _ = topk_row_divergence(z, ids, lp, "topk_renorm", "forward_kl", temperature=2.0)
    assert got.item() == pytest.approx(_kl(p_r2, q_r2), rel=1e-5)
    e2 = [math.exp(x / 2) for x in (2, 1, 0, -1)]
    q2 = [x / sum(e2) for x in e2]
    got, _ = topk_row_divergence(z, ids, lp, "topk_tail", "forward_kl", temperature=2.0)
    assert got.item() == pytest.approx(_kl(p_t, [q2[1], q2[2], q2[0] + q2[3]]), rel=1e-5)


def test_tail_is_floored_when_fp16_topk_sums_past_one():
    z = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    ids = torch.tensor([[0, 1]])
    lp = torch.tensor([[math.log(0.6), math.log(0.41)]]).half()  # sums to 1.01
    for div in DIVS:
        got, _ = topk_row_divergence(z, ids, lp, "topk_tail", div)
        assert torch.isfinite(got).all(), div
    # teacher ~ [0.6/1.01, 0.41/1.01, TAIL_FLOOR]; student [0.25, 0.25, 0.5]
    lp32 = lp.float().exp()
    p = [x / (1 + TAIL_FLOOR) for x in (lp32[0, 0].item() / lp32.sum().item(), lp32[0, 1].item() / lp32.sum().item())]
    got, _ = topk_row_divergence(z, ids, lp, "topk_tail", "forward_kl")
    assert got.item() == pytest.approx(_kl(p + [TAIL_FLOOR / (1 + TAIL_FLOOR)], [0.25, 0.25, 0.5]), rel=1e-4)


# ---------------------------------------------------------------------------------------------------
# Vocabulary mismatch
# ---------------------------------------------------------------------------------------------------

def test_teacher_ids_outside_student_vocab_are_dropped_and_teacher_conditioned():
    # student V=4; teacher top-3 has id 5 (a padded-vocab id) with p=0.1
    z = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    ids = torch.tensor([[1, 5, 2]])
    lp = torch.tensor([[math.log(0.5), math.log(0.1), math.log(0.3)]])
    e = [math.exp(x) for x in (2, 1, 0, -1)]
    q = [x / sum(e) for x in e]
    got, ok = topk_row_divergence(z, ids, lp, "topk_renorm", "forward_kl")
    assert ok.item() and got.item() == pytest.approx(_kl([0.625, 0.375], [math.e / (math.e + 1), 1 / (math.e + 1)]), rel=1e-5)
    # tail: teacher [0.5, 0.3, tail 0.1] / 0.9 (conditioned on the shared vocabulary)
    got, _ = topk_row_divergence(z, ids, lp, "topk_tail", "forward_kl")
    assert got.item() == pytest.approx(_kl([0.5 / 0.9, 0.3 / 0.9, 0.1 / 0.9], [q[1], q[2], q[0] + q[3]]), rel=1e-5)


def test_all_ids_outside_vocab_contribute_zero_but_count_in_the_mean():
    z = torch.randn(1, 2, 4)
    ids = torch.tensor([[[7, 9], [0, 1]]])
    lp = torch.tensor([[[-0.5, -1.5], [-0.5, -1.5]]])
    for mode in MODES:
        row, _ = topk_row_divergence(z[0], ids[0], lp[0], mode, "forward_kl")
        assert row[0].item() == pytest.approx(0.0, abs=1e-6)
        _, _, kd = kd_loss_from_logits(z, None, topk_ids=ids, topk_logprobs=lp, teacher_probs=mode, alpha=0.0)
        torch.testing.assert_close(kd, row.sum() / 2)


def test_live_teacher_with_padded_vocab_compares_on_shared_range():
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(1, 3, 10, generator=g), torch.randn(1, 3, 13, generator=g)
    _, _, kd = kd_loss_from_logits(s, None, teacher_logits=t, teacher_probs="live", alpha=0.0)
    _, _, ref = kd_loss_from_logits(s, None, teacher_logits=t[..., :10], teacher_probs="live", alpha=0.0)
    torch.testing.assert_close(kd, ref)


def test_chunked_handles_teacher_ids_past_student_vocab():
    b = make_batch(seed=6)
    ids = b["ids"].clone()
    ids[..., 0] = 40 + 3  # every position's top-1 lies in the teacher's padded vocab
    for mode in MODES:
        ref = kd_loss_from_logits(b["hidden"] @ b["weight"].t(), b["labels"], topk_ids=ids, topk_logprobs=b["lp"],
                                  teacher_probs=mode)
        got = chunked_kd_loss(b["hidden"], b["weight"], b["labels"], topk_ids=ids, topk_logprobs=b["lp"],
                              teacher_probs=mode, chunk_size=4)
        for r, c in zip(ref, got):
            torch.testing.assert_close(c, r)
            assert torch.isfinite(c)


# ---------------------------------------------------------------------------------------------------
# Chunked == unchunked
# ---------------------------------------------------------------------------------------------------

def _both(b, chunk_size, bias=None, **kw):
    logits = b["hidden"] @ b["weight"].t()
    if bias is not None:
        logits = logits + bias
    kwargs = dict(topk_ids=b["ids"], topk_logprobs=b["lp"], kd_mask=b["kd_mask"], **kw)
    ref = kd_loss_from_logits(logits, b["labels"], **kwargs)
    got = chunked_kd_loss(b["hidden"], b["weight"], b["labels"], bias=bias, chunk_size=chunk_size, **kwargs)
    return ref, got


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("div", DIVS)
@pytest.mark.parametrize("chunk_size", [1, 4, 5, 1000])
def test_chunked_equals_unchunked_values_and_grads(mode, div, chunk_size):
    b = make_batch(seed=7)
    ref, got = _both(b, chunk_size, teacher_probs=mode, divergence=div, beta=0.3, temperature=2.0, alpha=0.4)
    for r, c in zip(ref, got):
        torch.testing.assert_close(c, r)
    # different weights on ce and kd (the trainer rescales them by global token counts)
    params = [b["hidden"], b["weight"]]
    g_ref = torch.autograd.grad(ref[1] * 0.7 + ref[2] * 1.9, params)
    g_got = torch.autograd.grad(got[1] * 0.7 + got[2] * 1.9, params)
    for r, c in zip(g_ref, g_got):
        torch.testing.assert_close(c, r)


def test_chunked_with_bias_and_live_teacher_hidden():
    b = make_batch(seed=8)
    bias = torch.randn(40, requires_grad=True)
    t_hidden, t_weight = torch.randn(2, 7, 6), torch.randn(44, 6)  # teacher with a padded 44-row head
    logits = b["hidden"] @ b["weight"].t() + bias
    ref = kd_loss_from_logits(logits, b["labels"], teacher_logits=t_hidden @ t_weight.t(), teacher_probs="live",
                              divergence="reverse_kl", temperature=1.5)
    got = chunked_kd_loss(b["hidden"], b["weight"], b["labels"], bias=bias, teacher_hidden=t_hidden,
                          teacher_weight=t_weight, teacher_probs="live", divergence="reverse_kl", temperature=1.5,
                          chunk_size=3)
    for r, c in zip(ref, got):
        torch.testing.assert_close(c, r)
    params = [b["hidden"], b["weight"], bias]
    for r, c in zip(torch.autograd.grad(ref[0], params), torch.autograd.grad(got[0], params)):
        torch.testing.assert_close(c, r)


def test_fully_masked_batch_gives_zero_not_nan():
    b = make_batch(seed=9)
    labels = torch.full_like(b["labels"], -100)
    none = torch.zeros_like(b["kd_mask"])
    zeros_ids, zeros_lp = torch.zeros_like(b["ids"]), torch.zeros_like(b["lp"])  # collator padding
    for mode in MODES:
        for fn in ("ref", "chunked"):
            kw = dict(topk_ids=zeros_ids, topk_logprobs=zeros_lp, kd_mask=none, teacher_probs=mode)
            if fn == "ref":
                out = kd_loss_from_logits(b["hidden"] @ b["weight"].t(), labels, **kw)
            else:
                out = chunked_kd_loss(b["hidden"], b["weight"], labels, chunk_size=4, **kw)
            assert [x.item() for x in out] == [0.0, 0.0, 0.0]
            grads = torch.autograd.grad(out[0], [b["hidden"], b["weight"]])
            assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_padding_rows_off_the_kd_mask_do_not_leak_nan():
    b = make_batch(seed=10)
    ids, lp = b["ids"].clone(), b["lp"].clone()
    ids[~b["kd_mask"]] = 0
    lp[~b["kd_mask"]] = 0.0  # "p = 1" k times: invalid as a distribution, but masked out
    for mode in MODES:
        out = chunked_kd_loss(b["hidden"], b["weight"], b["labels"], topk_ids=ids, topk_logprobs=lp,
                              kd_mask=b["kd_mask"], teacher_probs=mode, chunk_size=3)
        ref = kd_loss_from_logits(b["hidden"] @ b["weight"].t(), b["labels"], topk_ids=b["ids"],
                                  topk_logprobs=b["lp"], kd_mask=b["kd_mask"], teacher_probs=mode)
        torch.testing.assert_close(out[0], ref[0])
        g = torch.autograd.grad(out[0], [b["hidden"], b["weight"]])
        assert all(torch.isfinite(x).all() for x in g)


# ---------------------------------------------------------------------------------------------------
# Heads: frozen, tied, callable (LoRA-like, with dropout), low precision
# ---------------------------------------------------------------------------------------------------

def test_frozen_weight_gets_no_gradient_and_hidden_gradient_matches():
    b = make_batch(seed=11)
    w = b["weight"].detach()  # frozen (QLoRA/LoRA students without a trained head)
    ref = kd_loss_from_logits(b["hidden"] @ w.t(), b["labels"], topk_ids=b["ids"], topk_logprobs=b["lp"])
    got = chunked_kd_loss(b["hidden"], w, b["labels"], topk_ids=b["ids"], topk_logprobs=b["lp"], chunk_size=3)
    (g_ref,) = torch.autograd.grad(ref[0], [b["hidden"]])
    got[0].backward()
    torch.testing.assert_close(b["hidden"].grad, g_ref)
    assert w.grad is None


def test_tied_embedding_gradient_sums_input_and_output_uses():
    torch.manual_seed(12)
    V, H = 30, 8
    emb = torch.nn.Embedding(V, H)
    tokens = torch.randint(0, V, (2, 6))
    labels = torch.randint(0, V, (2, 6))
    t_logits = torch.randn(2, 6, V)
    lp, ids = t_logits.log_softmax(-1).topk(4, dim=-1)

    def run(chunked):
        emb.zero_grad()
        hidden = torch.tanh(emb(tokens))  # a stand-in backbone
        if chunked:
            loss = chunked_kd_loss(hidden, emb.weight, labels, topk_ids=ids, topk_logprobs=lp, chunk_size=5)[0]
        else:
            loss = kd_loss_from_logits(hidden @ emb.weight.t(), labels, topk_ids=ids, topk_logprobs=lp)[0]
        loss.backward()
        return loss.detach(), emb.weight.grad.clone()

    (l_ref, g_ref), (l_got, g_got) = run(False), run(True)
    torch.testing.assert_close(l_got, l_ref)
    torch.testing.assert_close(g_got, g_ref)


class LoraHead(torch.nn.Module):
    """A frozen base head plus a trainable low-rank update with dropout (what PEFT builds on lm_head)."""

    def __init__(self, base: torch.Tensor, r: int = 3, dropout: float = 0.0):
        super().__init__()
        self.base = torch.nn.Parameter(base.detach().clone(), requires_grad=False)
        self.A = torch.nn.Parameter(torch.randn(r, base.shape[1]) * 0.3)
        self.B = torch.nn.Parameter(torch.randn(base.shape[0], r) * 0.3)
        self.drop = torch.nn.Dropout(dropout)

    def forward(self, h):
        return h @ self.base.t() + self.drop(h) @ self.A.t() @ self.B.t()


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_callable_projection_sends_gradients_to_adapter_only(dropout):
    torch.manual_seed(13)
    b = make_batch(seed=13)
    head = LoraHead(b["weight"], dropout=dropout).train()
    labels = torch.randint(0, 40, (2, 7))  # every row on the mask: the dropout draws have the same shape
    kw = dict(topk_ids=b["ids"], topk_logprobs=b["lp"], divergence="jsd", beta=0.5)
    torch.manual_seed(99)
    ref = kd_loss_from_logits(head(b["hidden"].reshape(14, -1)).reshape(2, 7, 40), labels, **kw)
    g_ref = torch.autograd.grad(ref[0], [b["hidden"], head.A, head.B])
    torch.manual_seed(99)
    # one chunk, so the forward draws the same dropout mask as the reference; backward must replay it
    got = chunked_kd_loss(b["hidden"], head, labels, chunk_size=64, **kw)
    torch.testing.assert_close(got[0], ref[0])
    got[0].backward()
    for p, g in zip([b["hidden"], head.A, head.B], g_ref):
        torch.testing.assert_close(p.grad, g)
    assert head.base.grad is None


def test_callable_projection_chunked_equals_unchunked_without_dropout():
    b = make_batch(seed=14)
    head = LoraHead(b["weight"])
    kw = dict(topk_ids=b["ids"], topk_logprobs=b["lp"], kd_mask=b["kd_mask"], teacher_probs="topk_renorm")
    ref = kd_loss_from_logits(head(b["hidden"]), b["labels"], **kw)
    got = chunked_kd_loss(b["hidden"], head, b["labels"], chunk_size=4, **kw)
    params = [b["hidden"], head.A, head.B]
    for r, c in zip(torch.autograd.grad(ref[0], params), torch.autograd.grad(got[0], params)):
        torch.testing.assert_close(c, r)


def test_bf16_head_and_fp16_logprobs_run_and_stay_close_to_fp32():
    b = make_batch(seed=15)
    h16, w16 = b["hidden"].detach().bfloat16().requires_grad_(), b["weight"].detach().bfloat16().requires_grad_()
    got = chunked_kd_loss(h16, w16, b["labels"], topk_ids=b["ids"], topk_logprobs=b["lp"].half(), chunk_size=4)
    ref = kd_loss_from_logits(b["hidden"] @ b["weight"].t(), b["labels"], topk_ids=b["ids"], topk_logprobs=b["lp"])
    torch.testing.assert_close(got[0].float(), ref[0], rtol=3e-2, atol=3e-2)
    got[0].backward()
    assert h16.grad.dtype == torch.bfloat16 and w16.grad.dtype == torch.bfloat16
    assert torch.isfinite(w16.grad.float()).all()


def total_variation(teacher_logp, student_logp, beta=0.5):
    """A divergence the test below registers: half the L1 distance, (..., K), (..., K) -> (...)."""
    return 0.5 * (teacher_logp.exp() - student_logp.exp()).abs().sum(-1)


def test_a_registered_divergence_is_what_the_losses_compute(monkeypatch):
    from distillkit.registry import DIVERGENCES

    monkeypatch.setitem(DIVERGENCES, "total_variation", f"{__name__}:total_variation")  # the registration line
    b = make_batch(seed=3)
    logits = b["hidden"].detach() @ b["weight"].detach().t()
    ref = masked_mean(total_variation(b["teacher_logits"].log_softmax(-1), logits.log_softmax(-1)), b["kd_mask"])
    _, _, kd = kd_loss_from_logits(logits, b["labels"], teacher_logits=b["teacher_logits"], kd_mask=b["kd_mask"],
                                   teacher_probs="live", divergence="total_variation")
    torch.testing.assert_close(kd, ref)
    # the chunked loss (topk_tail soft labels) takes it too, and its value is not forward KL's
    kw = dict(topk_ids=b["ids"], topk_logprobs=b["lp"], kd_mask=b["kd_mask"], chunk_size=4)
    tv = chunked_kd_loss(b["hidden"], b["weight"], b["labels"], divergence="total_variation", **kw)[2]
    tv_ref = kd_loss_from_logits(b["hidden"] @ b["weight"].t(), b["labels"], divergence="total_variation",
                                 **{k: v for k, v in kw.items() if k != "chunk_size"})[2]
    torch.testing.assert_close(tv, tv_ref)
    assert not torch.isclose(tv, chunked_kd_loss(b["hidden"], b["weight"], b["labels"], **kw)[2])


def test_live_on_policy_refuses_a_divergence_that_trl_does_not_have():
    """TRL's trainers compute their own generalized JSD: a registered divergence would silently become jsd there."""
    from distillkit.config import validate_recipe
    from distillkit.errors import DistillkitError
    from distillkit.train.on_policy import build_on_policy_trainer

    cfg = validate_recipe({"train": {"kd": {"enabled": True}, "on_policy": {"enabled": True}}})
    cfg.train.kd = cfg.train.kd.model_copy(update={"divergence": "total_variation"})  # registered, not in TRL
    with pytest.raises(DistillkitError, match="train.kd.divergence='total_variation': on-policy training with a live"):
        build_on_policy_trainer(cfg, model=None, tokenizer=None, records=[], args=None)


def test_unknown_options_name_the_key_and_choices():
    b = make_batch()
    with pytest.raises(ValueError, match=r"divergence='kl' is unknown; choose one of"):
        chunked_kd_loss(b["hidden"], b["weight"], b["labels"], topk_ids=b["ids"], topk_logprobs=b["lp"],
                        divergence="kl")
    with pytest.raises(ValueError, match=r"teacher_probs='live' needs teacher_logits"):
        chunked_kd_loss(b["hidden"], b["weight"], b["labels"], teacher_probs="live")
