"""Record -> training example: which tokens carry CE and KD, soft-label alignment, packing, tokenizer checks."""

from __future__ import annotations

import pytest

from train_helpers import PREFILL, teacher_records


@pytest.fixture(scope="module")
def tok(tiny_qwen2):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_qwen2)


def _dataset(records, tok, **kw):
    from datasets import Dataset

    from distillkit.train.data import build_train_dataset

    return build_train_dataset(Dataset.from_list(records), tok, kw.pop("max_length", 256), **kw)


def test_batch_check_marks_only_the_assistant_turn_including_eos(tok, tiny_records):
    from distillkit.train.batches import DistillCollator, describe_batch, format_batch_check

    ds, info = _dataset(tiny_records[:2], tok, use_kd=True, packing=False)
    batch = DistillCollator(pad_token_id=tok.pad_token_id)([ds[0], ds[1]])
    for row, rec in enumerate(tiny_records[:2]):
        tokens = describe_batch(batch, tok, row)
        trained = "".join(t["text"] for t in tokens if t["loss"])
        assert trained == PREFILL + rec["completion"] + tok.eos_token  # reasoning, answer and EOS; nothing else
        untrained = [t for t in tokens if not t["loss"]]
        assert tok.decode([t["id"] for t in untrained if t["id"] != tok.pad_token_id]).startswith("<|im_start|>user")
        # Soft labels: every completion token and the EOS (the teacher's ids ended with it); not the prefill.
        assert "".join(t["text"] for t in tokens if t["kd"]) == rec["completion"] + tok.eos_token
    # Padding of the shorter row carries nothing.
    pad_rows = batch["input_ids"] == tok.pad_token_id
    assert not (batch["labels"][pad_rows] != -100).any() and not batch["kd_mask"][pad_rows].any()
    text = format_batch_check(batch, tok, 0)
    assert "[<think>]" in text and "[<|im_end|>*]" in text and "[<|im_start|>" not in text
    assert info["num_kd_tokens"] == sum(len(r["completion_ids"]) for r in tiny_records[:2])


def test_labels_match_trl_assistant_mask(tok, tiny_records):
    """Our spliced labels equal what TRL's assistant_only_loss derives from the {% generation %} markers."""
    from distillkit.train.data import record_to_messages, tokenize_record

    rec = tiny_records[0]
    ours = tokenize_record(tok, rec, use_teacher_ids=True, topk=0)
    trl = tok.apply_chat_template(record_to_messages(rec), tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    assert ours["input_ids"] == list(trl["input_ids"])
    assert [x != -100 for x in ours["labels"]] == [bool(m) for m in trl["assistant_masks"]]


def test_soft_labels_sit_at_the_position_of_their_token(tok, tiny_records):
    from distillkit.train.data import tokenize_record

    rec = tiny_records[1]
    ex = tokenize_record(tok, rec, use_teacher_ids=True, topk=4)
    start = ex["kd_mask"].index(1)
    assert ex["input_ids"][start:start + len(rec["completion_ids"])] == rec["completion_ids"]
    for i in range(len(rec["completion_ids"])):
        assert ex["kd_ids"][start + i] == rec["topk_ids"][i]
        assert ex["kd_logprobs"][start + i] == pytest.approx(rec["topk_logprobs"][i], abs=1e-3)
    assert sum(ex["kd_mask"]) == len(rec["completion_ids"])


def test_truncated_completion_teaches_no_eos(tok, tiny_qwen2):
    from distillkit.train.data import tokenize_record

    rec = {**teacher_records(tiny_qwen2, num=1, with_eos=False)[0], "finish_reason": "length"}
    ex = tokenize_record(tok, rec, use_teacher_ids=True, topk=4)
    assert tok.eos_token_id not in [t for t, l in zip(ex["input_ids"], ex["labels"]) if l != -100]
    assert ex["input_ids"][-1] == rec["completion_ids"][-1]


def test_other_tokenizer_refuses_topk_kd_but_allows_sft(tok, tiny_records):
    from distillkit.errors import DistillkitError

    # A teacher of another vocabulary: same text, ids that decode to something else.
    foreign = [{**r, "completion_ids": [(i * 7 + 3) % 400 for i in r["completion_ids"]]} for r in tiny_records[:3]]
    with pytest.raises(DistillkitError, match="another vocabulary"):
        _dataset(foreign, tok, use_kd=True, packing=False)
    ds, info = _dataset(foreign, tok, use_kd=False, packing=False)
    assert not info["teacher_ids_used"] and info["num_examples"] == 3
    assert tok.decode([t for t, l in zip(ds[0]["input_ids"], ds[0]["labels"]) if l != -100]) == \
        PREFILL + foreign[0]["completion"] + tok.eos_token


def test_packing_fills_rows_and_feeds_no_padding(tok, tiny_qwen2):
    from distillkit.train.batches import DistillCollator

    records = teacher_records(tiny_qwen2, num=60, seed=3, max_extra_steps=8)  # 70-170 tokens each
    ds, info = _dataset(records, tok, use_kd=True, packing=True, max_length=1024)
    assert info["packed_row_fill"] > 0.95
    assert sum(len(r) for r in ds["input_ids"]) == info["num_tokens"]  # BFD keeps every token
    assert sum(sum(m) for m in ds["kd_mask"]) == info["num_kd_tokens"]
    batch = DistillCollator(tok.pad_token_id, padding_free=True)([ds[0], ds[1]])
    assert batch["input_ids"].shape == (1, len(ds[0]["input_ids"]) + len(ds[1]["input_ids"]))
    assert (batch["input_ids"] == tok.pad_token_id).sum() == 0
    # Each packed document starts at position 0 and its first token is never a target.
    starts = (batch["position_ids"][0] == 0).nonzero().flatten()
    assert len(starts) == len(ds[0]["seq_lengths"]) + len(ds[1]["seq_lengths"])
    assert (batch["labels"][0, starts] == -100).all() and not batch["kd_mask"][0, starts].any()


def test_packed_batch_gives_the_same_loss_as_padded(tok, tiny_qwen2, tiny_records):
    """Padding-free packed rows (position_ids, no mask) must not attend across documents."""
    import torch
    from transformers import AutoModelForCausalLM

    from distillkit.train.batches import DistillCollator
    from distillkit.train.losses import chunked_kd_loss
    from distillkit.train.trainer import add_hidden_forward

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.float32).eval()
    add_hidden_forward(model)
    padded_ds, _ = _dataset(tiny_records[:3], tok, use_kd=True, packing=False)
    packed_ds, _ = _dataset(tiny_records[:3], tok, use_kd=True, packing=True, max_length=512)
    assert len(packed_ds) == 1
    losses = []
    for batch in (DistillCollator(tok.pad_token_id)(list(padded_ds)),
                  DistillCollator(tok.pad_token_id, padding_free=True)(list(packed_ds))):
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
        with torch.no_grad():
            hidden = model(**inputs, return_hidden=True)[:, :-1]
        labels = batch["labels"][:, 1:]
        losses.append(chunked_kd_loss(hidden, model.lm_head.weight, labels, kd_mask=batch["kd_mask"][:, 1:],
                                      topk_ids=batch["kd_ids"][:, 1:], topk_logprobs=batch["kd_logprobs"][:, 1:],
                                      chunk_size=16))
    for a, b in zip(*losses):
        assert float(a) == pytest.approx(float(b), rel=1e-5, abs=1e-6)


def test_same_tokenizer_check_ignores_a_character_cut_at_the_end(tok):
    """vLLM's text holds back the bytes of a character cut by max_tokens; a full decode writes U+FFFD."""
    from distillkit.train.data import check_same_tokenizer

    ids = tok("so the answer is 12 \u00e9t\u00e9", add_special_tokens=False)["input_ids"]
    cut = next(n for n in range(len(ids), 0, -1)
               if tok.decode(ids[:n], clean_up_tokenization_spaces=False).endswith("\ufffd"))
    full = tok.decode(ids[:cut], clean_up_tokenization_spaces=False)
    vllm_text = full.rstrip("\ufffd")
    assert vllm_text != full
    rec = {"completion_ids": ids[:cut], "completion": vllm_text}
    assert check_same_tokenizer(tok, [rec])
    assert not check_same_tokenizer(tok, [{**rec, "completion": "so the answer is 13"}])
