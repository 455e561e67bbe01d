"""Sampled soft labels (sampled-v1): the sampler draws exactly and reproducibly, the codec gives back the ids and
counts exactly, readers and writers carry them through a stage folder, and the loss reads them as documented."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from distillkit.softlabels.sampled import (
    ABSENT,
    counts_from_draws,
    decode_sampled_column,
    decode_sampled_record,
    draw_sampled_labels,
    encode_sampled_record,
    encode_sampled_records,
    log_weights,
    sample_seed,
    sampled_labels_type,
)
from distillkit.train.losses import chunked_kd_loss, kd_loss_from_logits, sampled_row_divergence


def lm_logits(t: int = 300, v: int = 5_000, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Peaked LM-like rows (a few likely ids, a long tail) and a token drawn from each."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(t, v, generator=g) * 2
    z[torch.arange(t), torch.randint(0, v, (t,), generator=g)] += torch.rand(t, generator=g) * 12
    tokens = torch.multinomial(z.softmax(-1), 1, generator=g)[:, 0].numpy()
    return z, tokens


# ----------------------------------------------------------------------------------------- sampler


def test_draws_are_exact_seeded_and_independent_of_chunking():
    z, tokens = lm_logits()
    z[:, :100] = float("-inf")  # ids of probability 0 are never drawn
    ids, counts, tlp = draw_sampled_labels(z, 16, seed=7, tokens=tokens)
    assert ids.shape == counts.shape == (300, 16) and (counts.sum(1) == 16).all()
    assert (ids[counts > 0] >= 100).all()
    # most drawn first, ties in id order, padding last
    assert (np.diff(counts, axis=1) <= 0).all()
    tie = (counts[:, 1:] == counts[:, :-1]) & (counts[:, 1:] > 0)
    assert (ids[:, 1:][tie] > ids[:, :-1][tie]).all()
    np.testing.assert_allclose(tlp, z.log_softmax(-1)[torch.arange(300), tokens].numpy(), atol=1e-5)
    again = draw_sampled_labels([z[:7], z[7:150], z[150:]], 16, seed=7, tokens=tokens, rows_per_pass=5)
    assert all(np.array_equal(a, b) for a, b in zip(again, (ids, counts, tlp)))
    other = draw_sampled_labels(z, 16, seed=8)
    assert not np.array_equal(other[0], ids)


def test_draw_frequencies_match_the_tempered_distribution():
    """Chi-square goodness of fit of 200k draws from one row at T = 2."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(1, 8, generator=g) * 2
    ids, counts, _ = draw_sampled_labels(z.expand(2_000, 8), 100, temperature=2.0, seed=1)
    observed = np.zeros(8)
    np.add.at(observed, ids.reshape(-1), counts.reshape(-1))
    expected = (z[0] / 2).softmax(-1).double().numpy() * observed.sum()
    chi2 = ((observed - expected) ** 2 / expected).sum()
    assert chi2 < 24.3  # chi-square with 7 degrees of freedom, p = 0.001


def test_counts_from_draws_and_seeds():
    ids, counts = counts_from_draws(np.array([[5, 3, 5, 5], [2, 2, 9, 9], [1, 1, 1, 1]]))
    assert ids.tolist() == [[5, 3, 0, 0], [2, 9, 0, 0], [1, 0, 0, 0]]
    assert counts.tolist() == [[3, 1, 0, 0], [2, 2, 0, 0], [4, 0, 0, 0]]
    assert sample_seed(0, [1, 2, 3]) == sample_seed(0, np.array([1, 2, 3]))
    assert len({sample_seed(0, [1, 2, 3]), sample_seed(1, [1, 2, 3]), sample_seed(0, [1, 2, 4])}) == 3


# ----------------------------------------------------------------------------------------- codec


@pytest.mark.parametrize("vocab", [49_152, 151_936, 1_500])  # SmolLM2, Qwen2.5 (18-bit ids), an 11-bit width
@pytest.mark.parametrize("with_tokens", [True, False])
def test_round_trip_is_exact(vocab, with_tokens):
    z, tokens = lm_logits(400, 1_000, seed=vocab)
    ids, counts, tlp = draw_sampled_labels(z, 32, seed=1, tokens=tokens)
    ids = ids * (vocab // 1_000) + (vocab - vocab // 1_000 * 1_000)  # spread over the vocabulary, keep distinct
    tokens = tokens * (vocab // 1_000) + (vocab - vocab // 1_000 * 1_000)
    counts[5] = 0  # a position without draws
    value = encode_sampled_record(ids, counts, tlp, tokens if with_tokens else None)
    assert value["id_bits"] == math.ceil(math.log2(ids.max() + 1)) and value["num_samples"] == 32
    got_ids, got_lw, got_tlp = decode_sampled_record(value, tokens if with_tokens else None)
    assert got_ids.shape == got_lw.shape == (400, 32) and got_ids.dtype == np.int32 and got_lw.dtype == np.float32
    assert np.array_equal(np.where(counts > 0, got_ids, 0), np.where(counts > 0, ids, 0))
    assert np.array_equal(np.rint(np.exp(got_lw.astype(np.float64)) * 32), counts)  # counts exactly
    assert np.isneginf(got_lw[counts == 0]).all()
    # the token's logprob: within 0.9% of its distance below 0, plus 0.009 nats
    assert (np.abs(got_tlp - tlp) <= 0.009 * np.abs(tlp) + 0.009).all()
    m = (counts > 0).sum(1)
    assert len(value["counts"]) == (m - 1).clip(0).sum()  # the last count of a row is implied
    if with_tokens:  # the record's own token is referenced, not stored again
        drawn = ((ids == tokens[:, None]) & (counts > 0)).any(1)
        assert np.frombuffer(value["token_rank"], np.uint8)[~drawn].tolist() == [ABSENT] * int((~drawn).sum())
        assert len(value["ids_0"]) == m.sum() - drawn.sum()


def test_a_column_decodes_in_one_pass_with_nulls_and_mixed_widths():
    parts = []
    for i, (t, n) in enumerate([(0, 8), (1, 8), (50, 8), (33, 8)]):
        z, tokens = lm_logits(max(t, 1), 700, seed=i)
        ids, counts, tlp = draw_sampled_labels(z[:t], n, seed=i, tokens=tokens[:t])
        parts.append((ids, counts, tlp, tokens[:t]))
    values = encode_sampled_records(parts)
    values.insert(2, None)  # a record without labels
    tokens = [p[3].tolist() for p in parts]
    tokens.insert(2, [4, 4])
    ids, lws, tlp, offsets, valid = decode_sampled_column(pa.array(values, type=sampled_labels_type()),
                                                         pa.array(tokens, type=pa.list_(pa.int32())))
    assert valid.tolist() == [True, True, False, True, True] and np.diff(offsets).tolist() == [0, 1, 0, 50, 33]
    for r, part in zip([0, 1, 3, 4], parts):
        a, b = offsets[r], offsets[r + 1]
        assert np.array_equal(np.rint(np.exp(lws[a:b].astype(np.float64)) * 8), part[1])
    # records of another N (a second run appended): decoded one at a time, padded to the widest
    z, tok = lm_logits(10, 700, seed=9)
    wide = encode_sampled_record(*draw_sampled_labels(z, 16, seed=0, tokens=tok), tokens=tok)
    ids, lws, _, offsets, _ = decode_sampled_column(pa.array([values[1], wide], type=sampled_labels_type()),
                                                    pa.array([tokens[1], tok.tolist()], type=pa.list_(pa.int32())))
    assert ids.shape == (11, 16) and np.isneginf(lws[0, 8:]).all()


def test_bad_inputs_and_damaged_values_are_refused():
    ids = np.array([[3, 4], [5, 0]])
    with pytest.raises(ValueError, match="holds 3 draws where every row holds num_samples=4"):
        encode_sampled_records([(ids, np.array([[2, 2], [3, 0]]), None, None)])
    with pytest.raises(ValueError, match="names the same id twice"):
        encode_sampled_record(np.array([[3, 3]]), np.array([[1, 1]]))
    with pytest.raises(ValueError, match="1..254 draws"):
        encode_sampled_record(np.array([[3]]), np.array([[300]]))
    value = encode_sampled_record(ids, np.array([[2, 2], [4, 0]]), tokens=np.array([3, 5]))
    with pytest.raises(ValueError, match="needs the records' completion_ids"):
        decode_sampled_record(value)
    with pytest.raises(ValueError, match="codec version 9"):
        decode_sampled_record({**value, "codec": 9}, [3, 5])
    with pytest.raises(ValueError, match="hold 2 counts where their rows need 1"):
        decode_sampled_record({**value, "counts": b"\x02\x01"}, [3, 5])


# ----------------------------------------------------------------------------------------- stage folders


def test_a_stage_folder_of_sampled_labels_reads_back_in_every_reader(tmp_path):
    from distillkit.records import (
        StageRecords, make_record, read_records, record_features, soft_label_bytes, unpack_soft_labels, write_shard,
    )

    rows = []
    for i in range(4):
        z, tokens = lm_logits(20 + i, 800, seed=i)
        ids, counts, tlp = draw_sampled_labels(z, 8, seed=i, tokens=tokens)
        rows.append(make_record(prompt_id=f"p{i}", problem="q", completion_ids=tokens, completion_tokens=len(tokens),
                                topk_ids=ids, topk_logprobs=log_weights(counts, 8), token_logprobs=tlp))
    rows.append(make_record(prompt_id="chat", problem="q", completion_ids=[1, 2]))  # no labels
    shard = write_shard(tmp_path, 0, rows, record_features(8, "sampled-v1"))
    records = StageRecords(tmp_path)
    assert records.soft_label_format == "sampled-v1" and records.topk == 8
    assert records.column_names[-3:] == ["topk_ids", "topk_logprobs", "token_logprobs"]
    for want, got in zip(rows, records):
        if want.get("topk_ids") is None:
            assert got["topk_ids"] is None and got["token_logprobs"] is None
            continue
        assert np.array_equal(got["topk_ids"], want["topk_ids"])
        np.testing.assert_allclose(got["topk_logprobs"], want["topk_logprobs"], rtol=1e-6)
        assert np.abs(got["token_logprobs"] - want["token_logprobs"]).max() < 0.1
    table = read_records(tmp_path)
    assert "float32" in str(table.features["topk_logprobs"]) and "token_logprobs" in table.column_names
    np.testing.assert_allclose(np.asarray(table[2]["topk_logprobs"], dtype=np.float32), rows[2]["topk_logprobs"],
                               rtol=1e-6)  # float32, not fp16: the weights stay exact
    assert soft_label_bytes(shard) > 0
    import pyarrow.parquet as pq

    unpacked = unpack_soft_labels(pq.read_table(shard))  # a .parquet mixture source
    assert {"topk_ids", "topk_logprobs", "token_logprobs"} <= set(unpacked.column_names)


# ----------------------------------------------------------------------------------------- loss


def test_loss_is_kl_of_the_empirical_distribution_with_ids_outside_the_vocab_dropped():
    z = torch.tensor([[1.0, 0.0, -1.0, 2.0]])
    ids = torch.tensor([[3, 0, 9, 0]])
    lw = torch.log(torch.tensor([[4 / 8, 2 / 8, 2 / 8, 0.0]]))  # id 9 is past the student's vocabulary
    q = z.log_softmax(-1)[0]
    p = torch.tensor([4 / 6, 2 / 6])  # renormalized without it
    want = (p * (p.log() - q[[3, 0]])).sum()
    torch.testing.assert_close(sampled_row_divergence(z, ids, lw)[0], want)
    # tempered student only
    q2 = (z / 2).log_softmax(-1)[0]
    torch.testing.assert_close(sampled_row_divergence(z, ids, lw, temperature=2.0)[0],
                               (p * (p.log() - q2[[3, 0]])).sum())
    # no valid id at all: 0, finite gradient
    s = z.clone().requires_grad_()
    row = sampled_row_divergence(s, torch.tensor([[9, 0]]), torch.tensor([[0.0, -math.inf]]))
    row.sum().backward()
    assert row.item() == 0 and torch.isfinite(s.grad).all()


def test_chunked_equals_unchunked_and_other_divergences_are_refused():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 6, 8, generator=g, requires_grad=True)
    weight = torch.randn(50, 8, generator=g, requires_grad=True)
    labels = torch.randint(0, 50, (2, 6), generator=g)
    labels[0, :2] = -100
    teacher = torch.randn(12, 50, generator=g) * 2
    ids, counts, _ = draw_sampled_labels(teacher, 8, seed=0)
    ids, lw = torch.as_tensor(ids).long().reshape(2, 6, 8), torch.as_tensor(log_weights(counts, 8)).reshape(2, 6, 8)
    kw = dict(topk_ids=ids, topk_logprobs=lw, teacher_probs="sampled", alpha=0.3, temperature=1.5)
    ref = kd_loss_from_logits(hidden @ weight.t(), labels, **kw)
    got = chunked_kd_loss(hidden, weight, labels, chunk_size=5, **kw)
    for r, c in zip(ref, got):
        torch.testing.assert_close(c, r)
    for a, b in zip(torch.autograd.grad(ref[0], [hidden, weight]), torch.autograd.grad(got[0], [hidden, weight])):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="estimates the forward KL only"):
        kd_loss_from_logits(hidden @ weight.t(), labels, **{**kw, "divergence": "reverse_kl"})


def sampled_stage_records(tmp_path, tok, num_samples: int = 8, peak: float = 0.0):
    """Four records with sampled labels, through generate's writer and the filter stage: (kept StageRecords, rows).
    `peak` sharpens the teacher's rows (fewer distinct ids per row, as on real traces)."""
    from distillkit.config import RecipeConfig
    from distillkit.filter.stage import run_filter
    from distillkit.pipeline import stage_config_hash
    from distillkit.records import StageOutput, StageRecords, make_record, record_features, split_reasoning

    rows = []
    for i in range(4):
        completion = f"{i} + {i} = {2 * i}.</think> so the answer is \\boxed{{{2 * i}}}"
        ids = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        z, _ = lm_logits(len(ids), len(tok), seed=i)
        z[torch.arange(len(ids)), torch.as_tensor(ids)] += peak
        top, counts, tlp = draw_sampled_labels(z, num_samples, seed=i, tokens=ids)
        messages = [{"role": "user", "content": f"{i} + {i}?"}]
        reasoning, response, closed = split_reasoning(completion, "<think>\n")
        rows.append(make_record(prompt_id=f"p{i}", problem=messages[0]["content"], messages=messages,
                                prefill="<think>\n", completion=completion, reasoning=reasoning, response=response,
                                reasoning_closed=closed, completion_ids=np.asarray(ids, np.int32),
                                completion_tokens=len(ids), topk_ids=top,
                                topk_logprobs=log_weights(counts, num_samples), token_logprobs=tlp))
    cfg = RecipeConfig.model_validate({"name": "t", "output_dir": str(tmp_path), "filter": {
        "verifiers": [{"kind": "truncation"}], "num_workers": 1}})
    out = StageOutput(cfg.stage_dir("generate"), "generate", stage_config_hash(cfg, "generate"))
    out.begin()
    out.write_shard(0, rows, record_features(num_samples, "sampled-v1"))
    out.finish(counts={"records": 4}, versions=["distillkit"])
    run_filter(cfg, show_progress=False)
    return StageRecords(cfg.stage_dir("filter")), rows


def test_the_filter_keeps_sampled_labels_and_train_builds_them_as_rows(tmp_path, tiny_qwen2):
    """Filter copies the sampled-v1 column as it is; the training examples carry the drawn ids and log(count / N)
    exactly, at the completion's positions, one entry per distinct id drawn (the cache keeps no -inf padding), and
    the label kind check passes for teacher_probs: sampled."""
    from transformers import AutoTokenizer

    from distillkit.train.data import build_train_dataset

    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    kept, rows = sampled_stage_records(tmp_path, tok)
    assert kept.soft_label_format == "sampled-v1" and len(kept) == 4
    ds, info = build_train_dataset(kept, tok, max_length=None, use_kd=True, packing=False,
                                   cache_dir=tmp_path / "cache", teacher_probs="sampled")
    assert info["topk"] == 8 and info["num_kd_tokens"] == sum(len(r["completion_ids"]) for r in rows)
    for ex, rec in zip(ds, rows):
        on = np.asarray(ex["kd_mask"], bool)
        distinct = np.isfinite(rec["topk_logprobs"]).sum(1)
        assert [len(r) for r, o in zip(ex["kd_ids"], on) if o] == distinct.tolist() and distinct.min() >= 1
        assert all(len(r) == 0 for r, o in zip(ex["kd_ids"], on) if not o)  # the prompt's rows hold nothing
        labelled = [(i, lp) for i, lp, o in zip(ex["kd_ids"], ex["kd_logprobs"], on) if o]
        for (got_ids, got_lp), want_ids, want_lp, m in zip(labelled, rec["topk_ids"], rec["topk_logprobs"], distinct):
            assert got_ids == want_ids[:m].tolist()
            np.testing.assert_allclose(got_lp, want_lp[:m], rtol=1e-6)


@pytest.mark.parametrize("packing", [False, True])
def test_the_ragged_cache_collates_to_the_loss_of_the_full_rows(tmp_path, tiny_qwen2, packing):
    """The collator pads the ragged rows back with -inf: its batch gives the same KD loss as the batch built from the
    same records at full width N (as top-k rows are cached), padded and packed padding-free alike; and the cache is
    a fraction of the N-wide one (peaked teacher rows at N = 32: a few distinct ids per position)."""
    from transformers import AutoTokenizer

    from distillkit.train.batches import DistillCollator
    from distillkit.train.data import build_train_dataset

    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    kept, _ = sampled_stage_records(tmp_path, tok, num_samples=32, peak=6.0)
    built = {}
    for name, records, probs in (("ragged", kept, "sampled"),
                                 ("full", [{**r, "token_logprobs": None} for r in kept], None)):
        ds, info = build_train_dataset(records, tok, max_length=64, use_kd=True, packing=packing,
                                       cache_dir=tmp_path / name, teacher_probs=probs)
        collate = DistillCollator(pad_token_id=tok.pad_token_id or 0, padding_free=packing)
        built[name] = (collate(list(ds)), (tmp_path / name / "examples.arrow").stat().st_size)
    (ragged, ragged_bytes), (full, full_bytes) = built["ragged"], built["full"]
    assert full["kd_ids"].shape[-1] == 32 and ragged["kd_ids"].shape[-1] < 32
    assert ragged_bytes < 0.5 * full_bytes, (ragged_bytes, full_bytes)
    assert torch.equal(ragged["kd_mask"], full["kd_mask"]) and torch.equal(ragged["labels"], full["labels"])
    on = ragged["kd_mask"]
    width = ragged["kd_ids"].shape[-1]
    assert torch.equal(ragged["kd_ids"][on], full["kd_ids"][on][:, :width])
    assert torch.equal(ragged["kd_logprobs"][on], full["kd_logprobs"][on][:, :width])
    assert torch.isinf(full["kd_logprobs"][on][:, width:]).all()  # what the cache dropped: padding only
    logits = torch.randn(*on.shape, len(tok), generator=torch.Generator().manual_seed(0))
    losses = [kd_loss_from_logits(logits, b["labels"], topk_ids=b["kd_ids"], topk_logprobs=b["kd_logprobs"],
                                  kd_mask=b["kd_mask"], teacher_probs="sampled", alpha=0.5)
              for b in (ragged, full)]
    assert losses[0][2] > 0
    for a, b in zip(*losses):
        torch.testing.assert_close(a, b)
