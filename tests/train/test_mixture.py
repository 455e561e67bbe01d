"""Training mixtures: counts per source, token shares, seeds, non-reasoning formatting, bad sources."""

from __future__ import annotations

import json

import pytest

from distillkit.config import MixtureSourceConfig
from distillkit.errors import DistillkitError
from distillkit.train.mixture import build_mixture, count_tokens, plan_counts

EMPTY_THINK = "<think>\n\n</think>\n\n"


@pytest.fixture(scope="module")
def tok(tiny_qwen2):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_qwen2)


def src(path="chat.jsonl", **kw) -> MixtureSourceConfig:
    return MixtureSourceConfig(path=path, **kw)


def chat_rows(num: int, answer: str = "the answer is {i}.") -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"say {i}"},
                          {"role": "assistant", "content": answer.format(i=i)}]} for i in range(num)]


# ----------------------------------------------------------------------------------------- counts


def test_weights_split_the_size_set_by_the_most_limiting_source():
    sources = [src("a.jsonl", weight=0.7), src("b.jsonl", weight=0.3)]
    counts = plan_counts(sources, available=[100, 100])
    assert counts == [99, 43]  # 142 = floor(100 / 0.7); quotas 99.4 and 42.6, largest remainder to b
    total = sum(counts)
    for n, w in zip(counts, (0.7, 0.3)):
        assert abs(n - total * w) < 1
    assert all(n <= 100 for n in counts)


def test_largest_remainder_sums_exactly_to_the_mixture_size():
    sources = [src(f"{c}.jsonl", weight=1) for c in "abc"]
    assert plan_counts(sources, [50, 50, 50], mixture_size=10) == [4, 3, 3]
    # Counted sources are exact; weighted ones share what is left of the size.
    mixed = [src("a.jsonl", count=5), src("b.jsonl", weight=3), src("c.jsonl", weight=1), src("d.jsonl", weight=0)]
    assert plan_counts(mixed, [5, 50, 50, 50], mixture_size=25) == [5, 15, 5, 0]


def test_asking_for_more_than_a_source_has_needs_upsample():
    with pytest.raises(DistillkitError, match=r"train.sources\[0\] \('a'\): the mixture asks for 30 samples but "
                                              r"the source has 10; lower its count, or set upsample: true"):
        plan_counts([src("a.jsonl", count=30)], [10])
    with pytest.raises(DistillkitError, match="lower train.mixture_size or its weight"):
        plan_counts([src("a.jsonl", weight=1), src("b.jsonl", weight=1)], [10, 100], mixture_size=40)
    assert plan_counts([src("a.jsonl", count=30, upsample=True)], [10]) == [30]


def test_upsampling_repeats_every_row_before_any_twice(tok):
    mix = build_mixture([(src(count=25, upsample=True, kind="non_reasoning"), chat_rows(10))], seed=0, tokenizer=tok)
    ids = [e["id"] for e in mix.examples]
    assert len(ids) == 25 and all(2 <= ids.count(f"chat:{i}") <= 3 for i in range(10))
    assert mix.composition["chat"]["available"] == 10 and mix.composition["chat"]["samples"] == 25


# ----------------------------------------------------------------------------------------- mixture


def test_counts_and_token_shares_match_and_a_seed_repeats_the_mixture(tok, tiny_records):
    loaded = [(src("stage:filter", weight=2), tiny_records),
              (src("chat.jsonl", kind="non_reasoning", weight=1), chat_rows(40))]
    mix = build_mixture(loaded, seed=7, tokenizer=tok)
    comp = mix.composition
    assert (comp["filter"]["samples"], comp["chat"]["samples"]) == (8, 4)  # 12 = 8 / (2/3); 2:1
    assert [comp[n]["available"] for n in ("filter", "chat")] == [8, 40]
    by_source = {n: [e for e in mix.examples if e["mixture_source"] == n] for n in comp}
    assert {n: len(v) for n, v in by_source.items()} == {"filter": 8, "chat": 4}
    for name, examples in by_source.items():  # tokens are the student's, of the rendered chats
        assert comp[name]["tokens"] == sum(count_tokens(tok, examples))
    total = sum(p["tokens"] for p in comp.values())
    assert comp["filter"]["token_share"] == pytest.approx(comp["filter"]["tokens"] / total, abs=1e-4)
    assert sum(p["token_share"] for p in comp.values()) == pytest.approx(1, abs=2e-4)
    assert comp["chat"]["sample_share"] == pytest.approx(1 / 3, abs=1e-4)

    again = build_mixture(loaded, seed=7, tokenizer=tok)
    assert [e["id"] for e in again.examples] == [e["id"] for e in mix.examples] and again.composition == comp
    other = build_mixture(loaded, seed=8, tokenizer=tok)
    assert [e["id"] for e in other.examples] != [e["id"] for e in mix.examples]
    # Shuffled: the sources are interleaved, not concatenated.
    kinds = [e["mixture_source"] for e in mix.examples]
    assert kinds != sorted(kinds) and kinds != sorted(kinds, reverse=True)


def test_adding_a_source_keeps_the_rows_drawn_from_the_others(tok):
    a = (src("a.jsonl", count=5, kind="non_reasoning"), chat_rows(20))
    b = (src("b.jsonl", count=3, kind="non_reasoning"), chat_rows(20))
    alone = build_mixture([a], seed=1, tokenizer=tok)
    both = build_mixture([a, b], seed=1, tokenizer=tok)
    assert sorted(e["id"] for e in alone.examples) == sorted(e["id"] for e in both.examples if e["id"].startswith("a:"))


@pytest.mark.parametrize("fmt,prefix", [(None, EMPTY_THINK), ("empty", EMPTY_THINK), ("none", "")])
def test_non_reasoning_samples_train_the_answer_without_a_reasoning_block(tok, tiny_records, fmt, prefix):
    """The trained tokens of a direct answer are (an empty block and) the answer and EOS; reasoning
    records beside it keep the teacher's ids and soft labels."""
    from distillkit.train.data import build_train_dataset

    extra = {"reasoning_format": fmt} if fmt else {}
    loaded = [(src("stage:filter", count=4), tiny_records),
              (src("chat.jsonl", kind="non_reasoning", count=3, **extra),
               chat_rows(3, answer="  the answer is {i}."))]
    mix = build_mixture(loaded, seed=0, tokenizer=tok)
    ds, info = build_train_dataset(mix.examples, tok, 256, use_kd=True, packing=False)
    assert info["num_examples"] == 7 and info["teacher_ids_used"] and info["topk"] == 4
    answers = 0
    for ex, rec in zip(ds, mix.examples):
        trained = tok.decode([t for t, l in zip(ex["input_ids"], ex["labels"]) if l != -100])
        if rec["mixture_source"] == "chat":
            answers += 1
            i = int(rec["id"].split(":")[1])
            assert trained == f"{prefix}the answer is {i}.{tok.eos_token}"  # the loss covers the whole answer
            full = tok.decode(ex["input_ids"])
            if prefix:  # exactly one reasoning block, and it is empty
                assert full.count("<think>") == 1 and EMPTY_THINK + "the answer" in full
            else:
                assert "<think>" not in full and "</think>" not in full
            assert sum(ex["kd_mask"]) == 0  # chat rows carry no soft labels
        else:
            assert trained == rec["prefill"] + rec["completion"] + tok.eos_token
            assert sum(ex["kd_mask"]) == len(rec["completion_ids"])
    assert answers == 3


def test_prompt_response_columns_and_multi_turn_chats(tok):
    rows = [{"q": "what is 2 plus 2?", "a": "4"}]
    (rec,) = build_mixture([(src(count=1, kind="non_reasoning", columns={"prompt": "q", "response": "a"},
                                 reasoning_format="none"), rows)], seed=0, tokenizer=tok).examples
    assert rec["messages"] == [{"role": "user", "content": "what is 2 plus 2?"}] and rec["completion"] == "4"
    chat = [{"conv": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "<think>\nsay hi back\n</think>\n\nhello"}]}]
    (rec,) = build_mixture([(src(count=1, columns={"messages": "conv"}), chat)], seed=0, tokenizer=tok).examples
    assert [m["role"] for m in rec["messages"]] == ["system", "user"]
    assert rec["completion"].startswith("<think>\nsay hi back")


# ----------------------------------------------------------------------------------------- bad input


def test_missing_columns_name_the_source_and_the_columns(tok):
    rows = [{"question": "q", "answer": "a"}]
    with pytest.raises(DistillkitError) as info:
        build_mixture([(src("stage:filter", weight=1), [{"messages": []}]),
                       (src("qa.jsonl", name="qa", kind="non_reasoning", weight=1), rows)], seed=0, tokenizer=tok)
    msg = str(info.value)
    assert "train.sources[0] 'filter'" in msg and "['prefill', 'completion']" in msg
    with pytest.raises(DistillkitError) as info:
        build_mixture([(src("qa.jsonl", name="qa", kind="non_reasoning", weight=1,
                            columns={"prompt": "question", "response": "reply"}), rows)], seed=0, tokenizer=tok)
    msg = str(info.value)
    assert "train.sources[0] 'qa' (qa.jsonl) lacks the column(s) ['reply']" in msg
    assert "['answer', 'question']" in msg and "columns" in msg


def test_bad_rows_name_the_source_and_row(tok):
    rows = chat_rows(2) + [{"messages": [{"role": "user", "content": "hi"}]}]
    with pytest.raises(DistillkitError, match=r"source 'chat' \(chat.jsonl\), row 2: the last turn is 'user'"):
        build_mixture([(src(count=3, kind="non_reasoning"), rows)], seed=0, tokenizer=tok)
    thinking = chat_rows(1, answer="<think>\nhm\n</think>\n\n{i}")
    with pytest.raises(DistillkitError, match=r"row 0: a non_reasoning answer holds a reasoning block"):
        build_mixture([(src(count=1, kind="non_reasoning"), thinking)], seed=0, tokenizer=tok)


def test_a_bad_jsonl_line_names_the_file_and_line(tmp_path):
    from distillkit.config import RecipeConfig
    from distillkit.data.sources import load_source

    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(chat_rows(1)[0]) + "\n\n{not json\n")
    with pytest.raises(DistillkitError, match=r"chat.jsonl, line 3: invalid JSON \(Expecting property name"):
        load_source(src(str(path), weight=1), RecipeConfig())
    path.write_text(json.dumps(chat_rows(1)[0]) + "\n")
    assert load_source(src(str(path), weight=1), RecipeConfig()) == chat_rows(1)


def test_cli_train_with_a_source_lacking_columns_exits_2(tmp_path, tiny_qwen2, tiny_records, capsys):
    from distillkit.cli import main
    from distillkit.records import record_features, write_shard

    (tmp_path / "qa.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    write_shard(tmp_path / "run" / "filter", 0, tiny_records, record_features(4))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({
        "name": "m", "output_dir": str(tmp_path / "run"), "stages": ["filter", "train"],
        "train": {"student": {"model": str(tiny_qwen2)}, "max_length": 512, "sources": [
            {"path": "stage:filter", "weight": 1},
            {"path": str(tmp_path / "qa.jsonl"), "kind": "non_reasoning", "weight": 1}]}}))
    with pytest.raises(SystemExit) as info:
        main(["train", str(recipe)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "train.sources[1] 'qa'" in err and "lacks the column(s) ['messages']" in err and "Traceback" not in err


def test_an_edited_local_source_changes_the_train_hash_and_only_that(tmp_path):
    from distillkit.config import RecipeConfig
    from distillkit.pipeline import stage_config_hash

    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(3)))
    cfg = RecipeConfig(train={"sources": [{"path": "stage:filter", "weight": 1},
                                          {"path": str(chat), "kind": "non_reasoning", "weight": 1}]})
    before = {s: stage_config_hash(cfg, s) for s in ("filter", "train", "evaluate")}
    chat.write_text(chat.read_text())  # rewritten, same bytes: same hash
    assert {s: stage_config_hash(cfg, s) for s in before} == before
    chat.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(4)))
    after = {s: stage_config_hash(cfg, s) for s in before}
    assert after["filter"] == before["filter"]
    assert after["train"] != before["train"] and after["evaluate"] != before["evaluate"]


# ----------------------------------------------------------------------------------------- stage


def test_train_stage_trains_on_the_mixture_and_records_it(tmp_path, tiny_qwen2, tiny_records):
    from distillkit.publish import cards
    from distillkit.train.stage import run_train
    from train_helpers import make_recipe

    chat = tmp_path / "direct.jsonl"
    chat.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(10)))
    sources = [{"path": "stage:filter", "weight": 3}, {"path": str(chat), "kind": "non_reasoning", "weight": 1}]
    cfg = make_recipe(tmp_path / "run", tiny_records, tiny_qwen2, sources=sources, mixture_size=8,
                      sft_args={"max_steps": 2})
    m = run_train(cfg)
    mix = m.stats["mixture"]
    assert {n: (p["kind"], p["samples"]) for n, p in mix.items()} == {"filter": ("reasoning", 6),
                                                                      "direct": ("non_reasoning", 2)}
    assert m.counts["records"] == m.stats["data"]["num_examples"] == 8
    assert str(cfg.stage_dir("filter")) in m.inputs and m.inputs[str(chat)].startswith("sha256:")

    card = cards.render_model_card(cfg, train_manifest=m)
    cards.validate_model_card(str(card), expected_eval=0)
    share = f"{100 * mix['direct']['token_share']:.1f}"
    assert mix["direct"]["reasoning_format"] == "empty" and mix["filter"]["reasoning_format"] is None
    assert (f"| direct | non-reasoning (after an empty reasoning block) | 2 (of 10) | 25.0 | "
            f"{mix['direct']['tokens']} | {share} |") in card.text
    assert "| filter | reasoning | 6 (of" in card.text


def test_the_7b_recipes_commented_mixture_validates():
    """The example `sources:` block in the 7B QLoRA recipe stays valid when uncommented."""
    import re
    from pathlib import Path

    import yaml

    from distillkit.config import validate_recipe

    path = Path(__file__).resolve().parents[2] / "recipes" / "qwen2.5-math-7b" / "qlora_single_gpu.yaml"
    text = re.sub(r"(?m)^  # (sources:|  )", r"  \1", path.read_text())
    cfg = validate_recipe(yaml.safe_load(text))
    assert [(s.label, s.kind, s.weight) for s in cfg.train.sources] == [
        ("filter", "reasoning", 0.9), ("HuggingFaceTB/smoltalk:everyday-conversations", "non_reasoning", 0.1)]
