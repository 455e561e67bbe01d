"""The planner's soft-label bytes per token against real encoded batches: its formulas give the bytes the codecs write
(before Parquet's zstd) for sampled-v1 and packed-v1, at 16- and 18-bit ids, and a recipe's plan counts them."""

import numpy as np
import pytest
import torch

from distillkit.config import load_recipe
from distillkit.plan import (
    KNOWN_SHAPES,
    estimate_training,
    label_batch_bytes,
    packed_bytes_per_token,
    plan_recipe,
    sampled_bytes_per_token,
    sampled_distinct_per_token,
    soft_label_plan,
)
from distillkit.softlabels.codec import encode_records
from distillkit.softlabels.sampled import draw_sampled_labels, encode_sampled_records

SAMPLED_FIELDS = ("num_distinct", "token_rank", "ids_0", "ids_1", "ids_2", "counts", "token_logprob")
PACKED_FIELDS = ("sampled_rank", "ids_0", "ids_1", "ids_2", "gap_1", "gap_2_4", "gap_rest", "tail")


def teacher_rows(t: int, vocab: int, seed: int, peak: float):
    """LM-like logits (t, vocab): a long tail and one likely id per row, sharpened by `peak`; the trace's token drawn
    from each row, as generation does."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(t, vocab, generator=g) * 2
    z[torch.arange(t), torch.randint(0, vocab, (t,), generator=g)] += torch.rand(t, generator=g) * 12 + peak
    return z, torch.multinomial(z.softmax(-1), 1, generator=g)[:, 0].numpy()


@pytest.mark.parametrize("vocab,bits", [(49_152, 16), (152_064, 18)])
@pytest.mark.parametrize("peak", [0.0, 8.0])  # flat rows (~30 of 32 draws distinct), peaked ones (a few)
def test_formulas_are_the_bytes_of_a_real_encoded_batch(vocab, bits, peak):
    records, topk, tokens = [], [], 0
    for seed in range(3):
        z, tok = teacher_rows(150, vocab, seed, peak)
        ids, counts, tlp = draw_sampled_labels(z, 32, seed=seed, tokens=tok)
        records.append((ids, counts, tlp, tok))
        lp, top = z.log_softmax(-1).topk(20, dim=-1)
        topk.append((top.numpy(), lp.numpy(), tok))
        tokens += len(tok)
    sampled = encode_sampled_records(records)
    assert sampled[0]["id_bits"] == bits
    distinct = np.concatenate([(c > 0).sum(1) for _, c, _, _ in records])
    drawn_own = np.concatenate([((i == t[:, None]) & (c > 0)).any(1) for i, c, _, t in records])
    measured = sum(len(v[f]) for v in sampled for f in SAMPLED_FIELDS) / tokens
    # bit-packed planes round each record up to a whole byte: at most one byte per record and plane
    slack = 3 * (bits % 8 != 0) / tokens
    assert measured == pytest.approx(sampled_bytes_per_token(bits, distinct.mean(), drawn_own.mean()), abs=slack + 1e-9)
    packed = encode_records(topk)
    in_topk = np.concatenate([(top == t[:, None]).any(1) for top, _, t in topk])
    measured = sum(len(v[f]) for v in packed for f in PACKED_FIELDS) / tokens
    assert measured == pytest.approx(packed_bytes_per_token(20, bits, in_topk.mean()), abs=slack + 1e-9)


def test_planned_distinct_ids_follow_the_measured_points_and_stay_within_one_and_n():
    assert sampled_distinct_per_token(32) == pytest.approx(6.35)
    assert 6.35 < sampled_distinct_per_token(48) < 9.43
    assert sampled_distinct_per_token(1) == 1.0 and sampled_distinct_per_token(2) <= 2
    assert sampled_distinct_per_token(254) < 254


def test_a_recipe_with_sampled_labels_plans_their_bytes_and_batch_tensors():
    cfg = load_recipe(None, ["stages=[score,train]", "score.teacher.backend=transformers",
                             "score.teacher.model=builtin:smollm2-135m-instruct", "score.soft_labels=sampled",
                             "score.soft_label_samples=32", "train.student.model=builtin:smollm2-135m-instruct",
                             "train.kd.enabled=true", "train.kd.teacher_probs=sampled", "train.max_length=4096",
                             "train.per_device_train_batch_size=1"])
    plan = plan_recipe(cfg)
    labels = plan.soft_labels
    assert labels["format"] == "sampled-v1" and labels["width"] == 32 and labels["id_bits"] == 16
    # 3 + 5.35 ids x 2 bytes + 5.35 counts = 19.05 bytes before zstd (measured on disk: 12.9, BENCHMARKS.md)
    assert labels["disk_bytes_per_token"] == pytest.approx(19.05, abs=0.06)
    assert labels["disk_bytes_per_token_worst"] == 3 + 32 * 2 + 31
    assert labels["cache_bytes_per_token"] == pytest.approx(9 + 8 + 8 * 6.35, abs=0.06)  # ragged rows, not 9 + 8 x 32
    long = estimate_training(KNOWN_SHAPES["builtin:smollm2-135m-instruct"], "full", seq_len=65_536, label_width=32)
    assert long.labels == label_batch_bytes(65_536, 32) == 65_536 * (12 * 32 + 1)  # 24 MiB: int64 ids, fp32, mask
    assert long.total - estimate_training(KNOWN_SHAPES["builtin:smollm2-135m-instruct"], "full",
                                          seq_len=65_536).total == pytest.approx(1.08 * long.labels)
    assert "labels" in plan.train
    topk = plan_recipe(load_recipe(None, ["stages=[score,train]", "score.teacher.model=builtin:smollm2-135m-instruct",
                                          "train.student.model=builtin:smollm2-135m-instruct", "train.kd.enabled=true"]))
    assert topk.soft_labels == soft_label_plan("packed-v1", 20, 49_152)
    assert topk.soft_labels["disk_bytes_per_token"] == 2 + 19 * 2 + 19  # 59 before zstd (35.7 on disk)
