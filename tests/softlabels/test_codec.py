"""packed-v1 soft labels: ids come back exactly, logprobs within the KL bound, the KD loss within 1e-3, in the bytes
the issue asks for (issue 33: <= 50 per token at k=20 on a 152k-vocabulary worst case)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from distillkit.softlabels import decode_column, decode_record, encode_record, encode_records, kl_topk
from distillkit.softlabels.codec import soft_labels_type
from distillkit.testing.traces import lm_soft_labels

NEG_INF = np.float16(-np.inf)


@pytest.mark.parametrize("vocab", [49_152, 151_936, 1_500, 100_003])  # SmolLM2, Qwen2.5, odd widths (11, 17 bits)
@pytest.mark.parametrize("with_tokens", [True, False])
def test_ids_round_trip_exactly(vocab, with_tokens):
    ids, lp, tokens = lm_soft_labels(2_000, 20, vocab, seed=1)
    ids[0, 3] = vocab - 1  # the largest id sets the width
    ids[7, 15:], lp[7, 15:] = 0, NEG_INF  # a step that offered 15 candidates: padding
    value = encode_record(ids, lp, tokens if with_tokens else None)
    assert value["id_bits"] == math.ceil(math.log2(vocab))
    got_ids, got_lp = decode_record(value, tokens if with_tokens else None)
    assert got_ids.dtype == np.int32 and got_lp.dtype == np.float32 and got_ids.shape == ids.shape
    assert np.array_equal(got_ids, ids)
    assert np.isneginf(got_lp[7, 15:]).all() and np.isfinite(got_lp[7, :15]).all()
    # the sampled token's id is stored once, in completion_ids: plane 0 holds one byte per other id
    in_row = (ids == tokens[:, None]).any(1).sum() if with_tokens else 0
    assert len(value["ids_0"]) == ids.size - in_row


@pytest.mark.parametrize("vocab", [151_936, 1_500])  # a 2-bit top plane (whole bytes split), a 3-bit one (bit by bit)
def test_a_batch_decodes_in_one_pass_like_one_record_at_a_time(vocab):
    lengths = [0, 1, 50, 333, 7]  # records whose packed top plane ends mid-byte
    parts = [lm_soft_labels(n, 8, vocab, seed=i) for i, n in enumerate(lengths)]
    values = encode_records([(i, lp, t) for i, lp, t in parts])
    assert len({v["id_bits"] for v in values}) == 1  # one width for the records written together
    values.insert(2, None)  # a record without soft labels
    tokens = [t.tolist() for _, _, t in parts]
    tokens.insert(2, [5, 6])
    ids, lps, offsets, valid = decode_column(pa.array(values, type=soft_labels_type()),
                                             pa.array(tokens, type=pa.list_(pa.int32())))
    assert valid.tolist() == [True, True, False, True, True, True]
    assert np.diff(offsets).tolist() == [0, 1, 0, 50, 333, 7]
    for r, (part, value) in enumerate(zip([parts[0], parts[1], None, *parts[2:]], values)):
        if part is None:
            continue
        one_ids, one_lp = decode_record(value, part[2])
        assert np.array_equal(ids[offsets[r]:offsets[r + 1]], part[0]) and np.array_equal(one_ids, part[0])
        np.testing.assert_array_equal(lps[offsets[r]:offsets[r + 1]], one_lp)


def test_a_shard_encoded_in_several_passes_is_the_same(monkeypatch):
    from distillkit.softlabels import codec

    parts = [lm_soft_labels(n, 20, 49_152, seed=n) for n in (300, 5, 700, 0, 90)]
    whole = encode_records(parts)
    monkeypatch.setattr(codec, "ROWS_PER_PASS", 256)  # memory stays bounded on shards of 32k-token traces
    assert encode_records(parts) == whole


def test_rank_order_padding_empty_rows_and_rows_summing_past_one():
    ids = np.array([[5, 9, 2], [7, 3, 1], [0, 0, 0], [4, 8, 6], [1, 2, 3]])
    lp = np.array([[-0.1, -2.5, -5.0],
                   [-3.0, -0.3, -1.7],                      # not in rank order: comes back sorted, pairs kept
                   [-np.inf, -np.inf, -np.inf],             # no candidate at all
                   [np.log(0.6), np.log(0.41), -9.0],       # sums to > 1 (fp16 rounding does this): no tail
                   [-0.5, np.nan, np.inf]], dtype=np.float32)  # nan / inf: padding, as the loss drops them
    got_ids, got_lp = decode_record(encode_record(ids, lp))
    assert got_ids[1].tolist() == [3, 1, 7] and np.all(np.diff(got_lp[1]) <= 0)
    assert np.abs(got_lp[1] - [-0.3, -1.7, -3.0]).max() < 0.1
    assert got_ids[2].tolist() == [0, 0, 0] and np.isneginf(got_lp[2]).all()
    assert np.exp(got_lp[3].astype(np.float64)).sum() == pytest.approx(1.0, abs=1e-6)
    assert np.isfinite(got_lp[4, 0]) and np.isneginf(got_lp[4, 1:]).all()
    assert abs(got_lp[0, 0] - -0.1) < 0.02  # a confident row's top-1 is held by its tail: to ~2%


def _broad_rows(n: int, seed: int) -> np.ndarray:
    """Flat rows: the top 20 of a 2000-way softmax of N(0, 2) logits (mass spread over many ranks)."""
    z = np.random.default_rng(seed).normal(0, 2.0, (n, 2000))
    lp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return np.sort(lp, 1)[:, ::-1][:, :20].astype(np.float16)


@pytest.mark.parametrize("rows", ["lm_shaped", "broad", "flat_tiny_mass"])
def test_mean_kl_to_the_fp16_labels_is_below_1e3(rows):
    if rows == "lm_shaped":
        ids, lp, tokens = lm_soft_labels(20_000, 20, 151_936, seed=2)
    elif rows == "broad":
        lp = _broad_rows(4_000, 3)
    else:  # a tiny random teacher: every logprob near -log(500), top-20 mass 4%
        lp = (-np.log(500) + np.random.default_rng(4).normal(0, 0.1, (4_000, 20))).astype(np.float16)
        lp = np.sort(lp, 1)[:, ::-1]
    if rows != "lm_shaped":
        ids, tokens = np.tile(np.arange(20), (len(lp), 1)), None
    _, decoded = decode_record(encode_record(ids, lp, tokens), tokens)
    kl = kl_topk(lp, decoded)
    assert kl.mean() < 1e-3 and kl.max() < 5e-3


@pytest.mark.parametrize("teacher_probs", ["topk_tail", "topk_renorm"])
@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_kd_loss_on_a_fixed_batch_is_within_1e3_of_the_fp16_labels(teacher_probs, divergence):
    import torch

    from distillkit.train.losses import kd_loss_from_logits

    B, T, V, k = 4, 256, 4_096, 20
    ids, lp, tokens = lm_soft_labels(B * T, k, V, seed=5)
    g = torch.Generator().manual_seed(0)
    # A student that roughly agrees with the teacher (forward KL ~0.2): noise over the vocabulary, the teacher's
    # top-k lifted above it. The loss moves by KL(decoded || stored) (~3e-4, always up) plus zero-mean noise.
    student = torch.randn(B * T, V, generator=g) * 1.5
    student.scatter_(1, torch.from_numpy(ids).long(),
                     torch.from_numpy(lp.astype(np.float32)) + 12 + torch.randn(B * T, k, generator=g))
    _, decoded = decode_record(encode_record(ids, lp, tokens), tokens)

    def kd(logprobs):
        return kd_loss_from_logits(student.reshape(B, T, V), None, topk_ids=torch.from_numpy(ids).long().reshape(B, T, k),
                                   topk_logprobs=torch.from_numpy(np.asarray(logprobs)).reshape(B, T, k), alpha=0.0,
                                   divergence=divergence, teacher_probs=teacher_probs)[0]

    stored, packed = float(kd(lp)), float(kd(decoded))
    assert stored > 0.02  # a real divergence, not a degenerate batch
    assert abs(packed - stored) < 1e-3


def test_bytes_per_token_on_a_152k_vocabulary_worst_case(tmp_path):
    """Uniform random ids over 152,064 (incompressible: 18 bits each), LM-shaped logprobs, 8k-token records."""
    from distillkit.records import make_record, record_features, soft_label_bytes, write_shard

    records = []
    for r in range(4):
        ids, lp, tokens = lm_soft_labels(8_192, 20, 152_064, seed=10 + r)
        records.append(make_record(prompt_id=f"p{r}", problem="", completion_ids=tokens, topk_ids=ids,
                                   topk_logprobs=lp, completion_tokens=len(tokens)))
    tokens = 4 * 8_192
    packed = soft_label_bytes(write_shard(tmp_path / "packed", 0, records, record_features(20, "packed-v1"))) / tokens
    fp16 = soft_label_bytes(write_shard(tmp_path / "fp16", 0, records, record_features(20, "fp16"))) / tokens
    assert packed <= 50 and fp16 > 80  # measured: 48.4 vs 84.3
