"""`train.student.tokenizer: map` on real tokenizers: roles read from the tokenizers' files and templates, the
teacher's special ids moved onto the student's in stored soft labels (packed-v1 and fp16), in the trained ids, for
live and served teachers, and preflight's verdict on a pair before anything is generated.

Facts the assertions rest on (distillkit/testing/real_tokenizers/ cites their sources): Qwen3 has <think> 151667,
</think> 151668, <|im_end|> 151645 (its EOS and end of turn), <|box_end|> at 151649 and no BOS; R1-Distill-Qwen has
<think> 151648, </think> 151649, <｜end▁of▁sentence｜> 151643 (EOS), <｜begin▁of▁sentence｜> 151646, <｜User｜> 151644;
both share Qwen2.5's BPE ("Hello world" -> [9707, 1879]). R1-Distill-Llama has <think>/</think> at 128013/128014
on Llama 3's BPE, whose base models have no reasoning tokens.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from distillkit.errors import DistillkitError

rt = pytest.importorskip("distillkit.testing.real_tokenizers")

R1_QWEN, QWEN3_06B = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "Qwen/Qwen3-0.6B"
R1_LLAMA, LLAMA32_1B = "deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "meta-llama/Llama-3.2-1B"
COMPLETION = "Seven plus five makes twelve.\n</think>\n\nThe answer is $\\boxed{12}$."


def tok(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def toks():
    from distillkit.student.tokenizer import fix_tokenizer

    out = {"r1_qwen": tok(rt.r1_distill_qwen_tokenizer()), "qwen3": tok(rt.qwen3_tokenizer()),
           "r1_llama": tok(rt.r1_distill_llama_tokenizer()), "llama": tok(rt.llama3_tokenizer("3.1-base")),
           "qwen25": tok(rt.qwen25_tokenizer("math-base"))}
    out["qwen3_fixed"] = copy.deepcopy(out["qwen3"])
    fix_tokenizer(out["qwen3_fixed"])  # as student_init/ holds it
    return out


@pytest.fixture(scope="module")
def qwen_map(toks):
    from distillkit.student.special_map import build_special_map

    return build_special_map(toks["r1_qwen"], toks["qwen3_fixed"], R1_QWEN, QWEN3_06B)


# ----------------------------------------------------------------------------------------- roles and the map


def test_roles_are_read_from_the_tokenizers_and_templates(toks):
    from distillkit.student.special_map import special_roles

    assert special_roles(toks["r1_qwen"]) == {"think_open": "<think>", "think_close": "</think>",
                                              "turn_end": "<｜end▁of▁sentence｜>", "bos": "<｜begin▁of▁sentence｜>"}
    assert special_roles(toks["qwen3"]) == {"think_open": "<think>", "think_close": "</think>",
                                            "turn_end": "<|im_end|>", "pad": "<|endoftext|>"}
    # Qwen2.5-Math base: EOS <|endoftext|>, but its ChatML template closes turns with <|im_end|>; no reasoning tokens
    assert special_roles(toks["qwen25"]) == {"turn_end": "<|im_end|>"}
    assert "think_close" not in special_roles(toks["llama"])


def test_r1_qwen_to_qwen3_map(toks, qwen_map):
    """The issue's pair: R1-Distill-Qwen's </think> 151649 (Qwen3's <|box_end|>) lands on Qwen3's </think> 151668."""
    moved = {(p.teacher_id, p.student_id): (p.how, p.teacher_token, p.student_token) for p in qwen_map.pairs
             if p.teacher_id != p.student_id}
    assert moved == {(151648, 151667): ("think_open", "<think>", "<think>"),
                     (151649, 151668): ("think_close", "</think>", "</think>"),
                     (151643, 151645): ("turn_end", "<｜end▁of▁sentence｜>", "<|im_end|>")}
    assert dict(qwen_map.unmatched) == {151644: "<｜User｜>", 151645: "<｜Assistant｜>", 151646: "<｜begin▁of▁sentence｜>",
                                        151647: "<|EOT|>"}  # Qwen3 has no BOS, and no single token for the others
    kept = [p for p in qwen_map.pairs if p.teacher_id == p.student_id]
    assert [p.teacher_id for p in kept] == list(range(151650, 151665)) and all(p.how == "same text" for p in kept)
    r1 = toks["r1_qwen"]
    ids = r1(COMPLETION, add_special_tokens=False)["input_ids"] + [r1.eos_token_id]
    assert 151649 in ids
    mapped = qwen_map.map_ids(ids)
    assert toks["qwen3_fixed"].decode(mapped[:-1]) == COMPLETION and mapped[-1] == toks["qwen3_fixed"].eos_token_id == 151645
    assert 151668 in mapped and 151649 not in mapped
    # ordinary ids stay, padded rows of the teacher's 152,064-row head (past its 151,665 tokens) have no counterpart
    assert qwen_map.map_ids([9707, 1879, 151665, 151668, 152063]).tolist() == [9707, 1879, -1, -1, -1]


def test_a_user_pair_is_mapped_by_what_its_files_say(toks, tmp_path):
    """Not a known model: a Llama 3.1 Instruct tokenizer whose reserved slots 128002/128003 were renamed <think>/</think>
    (as reasoning fine-tunes of Llama do). Roles come from its added tokens and its template: R1-Distill-Llama's
    <think>/</think>/EOS land on 128002/128003/<|eot_id|>, its BOS on <|begin_of_text|>."""
    from distillkit.student.special_map import build_special_map

    folder = tmp_path / "llama-reasoner"
    folder.mkdir()
    src = rt.llama3_tokenizer("3.1-instruct")
    tj = json.loads((src / "tokenizer.json").read_text())
    for entry in tj["added_tokens"]:
        if entry["id"] in (128002, 128003):
            entry.update(content="<think>" if entry["id"] == 128002 else "</think>", special=False)
    (folder / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    config = json.loads((src / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"]["128002"].update(content="<think>", special=False)
    config["added_tokens_decoder"]["128003"].update(content="</think>", special=False)
    (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False))
    (folder / "special_tokens_map.json").write_text((src / "special_tokens_map.json").read_text())
    student = tok(folder)
    assert student.convert_tokens_to_ids("</think>") == 128003

    special_map = build_special_map(toks["r1_llama"], student, R1_LLAMA, "my/llama-reasoner")
    roles = {p.how: (p.teacher_id, p.student_id) for p in special_map.pairs}
    assert roles["think_open"] == (128013, 128002) and roles["think_close"] == (128014, 128003)
    assert roles["turn_end"] == (128001, 128009) and roles["bos"] == (128000, 128000)
    assert special_map.map_ids([128011]).tolist() == [-1]  # <｜User｜>: no counterpart


def test_map_refuses_unmatched_roles_naming_both_tokenizers_and_the_fix(toks):
    """R1-Distill-Llama -> Llama 3.2 base (the same BPE): the base model has no reasoning tokens to keep, so `map`
    refuses and points at `teacher` (what auto does for this pair); the reverse direction points at cross_tokenizer."""
    from distillkit.student.special_map import build_special_map
    from distillkit.student.tokenizer import choose_tokenizer

    with pytest.raises(DistillkitError) as e:
        build_special_map(toks["r1_llama"], toks["llama"], R1_LLAMA, LLAMA32_1B)
    msg = str(e.value)
    assert R1_LLAMA in msg and LLAMA32_1B in msg
    assert "think_open '<think>' (id 128013" in msg and "think_close '</think>' (id 128014" in msg
    assert "Fix: train.student.tokenizer: teacher or auto" in msg
    with pytest.raises(DistillkitError, match="cross_tokenizer"):
        build_special_map(toks["qwen25"], toks["qwen3"], "Qwen/Qwen2.5-Math-1.5B", QWEN3_06B)
    chosen, rows, note = choose_tokenizer("auto", toks["llama"], toks["r1_llama"])
    assert chosen is toks["r1_llama"] and note.startswith("adopted the teacher's special tokens")


def test_auto_maps_for_a_student_with_its_own_thinking_tokens(toks):
    from distillkit.student.tokenizer import MAP_NOTE, choose_tokenizer

    chosen, rows, note = choose_tokenizer("auto", toks["qwen3"], toks["r1_qwen"])
    assert chosen is toks["qwen3"] and rows == [] and note == MAP_NOTE
    # the flagship R1 pair is unchanged: Qwen2.5 has no reasoning tokens, so it adopts R1's
    chosen, rows, _ = choose_tokenizer("auto", toks["qwen25"], toks["r1_qwen"])
    assert chosen is toks["r1_qwen"] and len(rows) == 7


# ----------------------------------------------------------------------------------------- stored labels


def _records(teacher, n: int = 3, k: int = 6) -> list[dict]:
    """Generate-stage records of the R1 teacher: its ids, EOS, and top-k rows whose first candidate is the sampled
    token; other candidates include teacher specials (<｜User｜>, </think>), a padded row (151700) and text."""
    from distillkit.records import make_record, split_reasoning

    out = []
    rng = np.random.default_rng(0)
    for i in range(n):
        ids = teacher(COMPLETION, add_special_tokens=False)["input_ids"] + [teacher.eos_token_id]
        topk = np.zeros((len(ids), k), dtype=np.int32)
        for t, sampled in enumerate(ids):
            others = [151644, 151649, 151700, *rng.choice(100_000, size=k - 3, replace=False).tolist()]
            topk[t] = [sampled, *[o for o in others if o != sampled][:k - 1]]
        lp = np.sort(rng.uniform(-12, -5, size=(len(ids), k)).astype(np.float32), axis=1)[:, ::-1].copy()
        lp[:, 0] = -0.05
        reasoning, response, closed = split_reasoning(COMPLETION, "<think>\n")
        out.append(make_record(prompt_id=f"p{i}", problem="What is 7 + 5?", gold_answer="12",
                               messages=[{"role": "user", "content": "What is 7 + 5?"}], prefill="<think>\n",
                               completion=COMPLETION, reasoning=reasoning, response=response, reasoning_closed=closed,
                               completion_ids=np.asarray(ids, dtype=np.int32), completion_tokens=len(ids),
                               topk_ids=topk, topk_logprobs=lp))
    return out


@pytest.mark.parametrize("fmt", ["packed-v1", "fp16"])
def test_stored_soft_labels_and_trained_ids_land_on_the_students_tokens(toks, qwen_map, tmp_path, fmt):
    """Records written in either soft-label format and streamed back (the train stage's reader) -> training
    examples for the Qwen3 student: its own </think> and EOS are trained, and the teacher's row at </think>
    (the teacher's </think> first, logprob -0.05) sits on the student's </think>; teacher specials without a
    counterpart are dropped from the rows (id 0, logprob -inf)."""
    from distillkit.records import StageOutput, StageRecords, record_features
    from distillkit.train.data import build_train_dataset
    from distillkit.train.data import MappedRecords

    teacher, student = toks["r1_qwen"], toks["qwen3_fixed"]
    records = _records(teacher)
    out = StageOutput(tmp_path / "generate", "generate", "h")
    out.begin()
    out.write_shard(0, records, record_features(6, fmt))
    out.finish(counts={"records": len(records)})
    stage = StageRecords(tmp_path / "generate")
    ds, info = build_train_dataset(MappedRecords(stage, qwen_map), student, max_length=None, use_kd=True,
                                   packing=False, cache_dir=tmp_path / "cache")
    assert info["teacher_ids_used"] and info["num_examples"] == 3 and info["soft_label_format"] == fmt
    ex = ds[0]
    ids, labels = ex["input_ids"], ex["labels"]
    assert 151649 not in ids and ids.count(151668) == 1
    trained = [t for t, lab in zip(ids, labels) if lab != -100]
    assert trained[-1] == 151645 == student.eos_token_id  # the student's end of turn, not R1's 151643
    assert student.decode(trained) == "<think>\n" + COMPLETION + "<|im_end|>"
    assert ids == student.apply_chat_template(
        [{"role": "user", "content": "What is 7 + 5?"}, {"role": "assistant", "content": "<think>\n" + COMPLETION}],
        tokenize=True, return_dict=True)["input_ids"]
    at = ids.index(151668)
    assert ex["kd_mask"][at] == 1 and ex["kd_ids"][at][0] == 151668
    assert ex["kd_logprobs"][at][0] == pytest.approx(-0.05, abs=0.02)
    eos_at = max(i for i, lab in enumerate(labels) if lab != -100)
    assert ids[eos_at] == 151645 and ex["kd_mask"][eos_at] == 1 and ex["kd_ids"][eos_at][0] == 151645
    row = ex["kd_ids"][at + 1]  # a later row: </think> among the candidates -> 151668; <｜User｜>, 151700 -> dropped
    lps = ex["kd_logprobs"][at + 1]
    assert 151668 in row and 151644 not in row and 151700 not in row and 151649 not in row
    assert sum(1 for i, lp in zip(row, lps) if i == 0 and lp == float("-inf")) == 2


def test_a_trace_with_an_unmatched_special_trains_on_its_text(toks, qwen_map, tmp_path):
    from distillkit.train.data import build_train_dataset
    from distillkit.train.data import MappedRecords

    teacher = toks["r1_qwen"]
    rec = _records(teacher, n=1)[0]
    odd = rec["completion"] + "<｜User｜>"
    ids = teacher(odd, add_special_tokens=False)["input_ids"]
    assert 151644 in ids
    rec.update(completion=odd, completion_ids=np.asarray(ids, dtype=np.int32), topk_ids=np.zeros((len(ids), 6), np.int32),
               topk_logprobs=np.zeros((len(ids), 6), np.float32), finish_reason="length")
    good = _records(teacher, n=1)[0]
    ds, info = build_train_dataset(MappedRecords([good, rec], qwen_map), toks["qwen3_fixed"], None, use_kd=True,
                                   packing=False, cache_dir=tmp_path / "c")
    assert info["special_map_unmatched"] == 1 and info["num_examples"] == 2
    assert sum(ds[1]["kd_mask"]) == 0 and sum(ds[0]["kd_mask"]) > 0  # text only: no soft labels


# ----------------------------------------------------------------------------------------- live and served


def test_live_teacher_reads_its_own_ids_and_its_logits_come_back_on_the_students(qwen_map):
    import torch

    size = 151936  # min(R1-Distill-Qwen-7B's 152,064 rows, Qwen3-0.6B's 151,936)
    perm = qwen_map.permutation(size)
    assert sorted(perm.tolist()) == list(range(size))  # a bijection
    student_ids = torch.tensor([[9707, 151667, 151668, 151645, 151643]])
    assert qwen_map.teacher_ids(student_ids, size).tolist() == [[9707, 151648, 151649, 151643, perm.tolist().index(151643)]]
    hidden, weight = torch.randn(4, 8), torch.randn(152064, 8)
    logits = qwen_map.live_projection(weight, size)(hidden)
    teacher_logits = hidden @ weight.t()
    assert logits.shape == (4, size)
    assert torch.equal(logits[:, 151668], teacher_logits[:, 151649])  # the teacher's </think> on the student's
    assert torch.equal(logits[:, 151645], teacher_logits[:, 151643])  # its EOS on the student's end of turn
    assert torch.equal(logits[:, :151643], teacher_logits[:, :151643])  # ordinary tokens untouched


def test_served_teacher_is_sent_its_ids_and_returns_the_students(qwen_map):
    from distillkit.student.special_map import MappedScorer

    class Echo:  # a scorer that returns, per position, the token it was sent and </think> as candidates
        tokenizer = None
        sent: list = []

        def score(self, sequences, starts, k):
            self.sent = sequences
            return [(np.asarray([[t, 151649] for t in s[start:]]), np.full((len(s) - start, 2), -1.0, np.float32))
                    for s, start in zip(sequences, starts)]

        def close(self):
            pass

    echo = Echo()
    scorer = MappedScorer(echo, qwen_map, 151669)
    rows = scorer.score([[151644, 9707, 151667, 151668, 151645]], [1], 2)
    assert echo.sent[0][1:] == [9707, 151648, 151649, 151643]
    ids, lps = rows[0]
    assert ids.tolist() == [[9707, 151668], [151667, 151668], [151668, 151668], [151645, 151668]]


# ----------------------------------------------------------------------------------------- student_init and preflight


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("map_pairs")
    return {name: rt.build_real_shaped_model(name, root / name.replace("/", "--"))
            for name in (R1_QWEN, QWEN3_06B, R1_LLAMA, LLAMA32_1B)}


def test_student_init_keeps_qwen3_tokens_and_records_the_map(models, tmp_path):
    from distillkit.config import StudentConfig
    from distillkit.models import QWEN3_REASONING_TEMPLATE
    from distillkit.student.build import build_student_init

    info = build_student_init(StudentConfig(model=str(models[QWEN3_06B])), tmp_path / "init",
                              teacher=str(models[R1_QWEN]))
    assert info["adopted_rows"] == [] and info["weights"] == "linked"  # no embedding row changes
    pairs = {(p["teacher_id"], p["student_id"]) for p in info["special_map"]["pairs"]}
    assert {(151648, 151667), (151649, 151668), (151643, 151645)} <= pairs
    assert "'</think>' 151649->151668" in info["tokenizer_changes"][0]
    saved = tok(tmp_path / "init")
    assert saved.convert_tokens_to_ids(["<think>", "</think>"]) == [151667, 151668]
    assert saved.eos_token_id == 151645 and saved.pad_token_id == 151643
    assert saved.chat_template == QWEN3_REASONING_TEMPLATE


def recipe(teacher, student, **overrides):
    from distillkit.config import RecipeConfig

    data = {"generate": {"teacher": {"model": str(teacher)}, "sampling": {"max_tokens": 1024, "topk_logprobs": 20}},
            "train": {"student": {"model": str(student)}, "max_length": 2048, "kd": {"enabled": True}},
            "evaluate": {"max_gen_toks": 1024}}
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return RecipeConfig.model_validate(data)


def test_preflight_explains_the_mode_and_passes_the_qwen3_pair(models):
    from distillkit.preflight import preflight, raise_on_fatal

    findings = preflight(recipe(models[R1_QWEN], models[QWEN3_06B]), stages=["generate", "train"])
    raise_on_fatal(findings)
    checks = {f.check: f for f in findings if f.subject == "teacher/student"}
    assert "reasoning tokens of its own: train.student.tokenizer: map" in checks["tokenizer_mode"].message
    assert checks["special_roles"].severity == "ok" and "'</think>' 151649->151668" in checks["special_roles"].message
    assert "vocab_compat" not in checks  # the raw ids differ on purpose: the map, not an id-by-id check, applies


def test_preflight_says_llama32_adopts_and_refuses_map_before_generation(models):
    from distillkit.preflight import preflight

    auto = preflight(recipe(models[R1_LLAMA], models[LLAMA32_1B]), stages=["train"])
    assert [f for f in auto if f.severity == "error"] == []
    mode = next(f for f in auto if f.check == "tokenizer_mode")
    assert "none of the student's own to keep: train.student.tokenizer: teacher" in mode.message
    forced = preflight(recipe(models[R1_LLAMA], models[LLAMA32_1B], train__student__tokenizer="map"),
                       stages=["generate", "train"])
    errors = [f for f in forced if f.severity == "error"]
    assert [f.check for f in errors] == ["special_roles"]
    assert str(models[R1_LLAMA]) in errors[0].message and str(models[LLAMA32_1B]) in errors[0].message
    assert "think_close '</think>'" in errors[0].message and "train.student.tokenizer: teacher" in errors[0].fix


def test_run_refuses_an_unmatched_pair_before_generation(models, tmp_path):
    """`distillkit run` with `map` forced on a pair whose roles do not match: one message naming both models, the
    role and the fix; exit 2, no traceback, no run folder."""
    import subprocess
    import sys

    recipe_file = tmp_path / "pair.yaml"
    recipe_file.write_text(
        f"name: pair\noutput_dir: {tmp_path / 'runs' / 'pair'}\n"
        f"generate: {{teacher: {{model: {models[R1_LLAMA]}}}, sampling: {{max_tokens: 1024, topk_logprobs: 20}}}}\n"
        f"train: {{student: {{model: {models[LLAMA32_1B]}, tokenizer: map}}, max_length: 2048, kd: {{enabled: true}}}}\n"
        "evaluate: {max_gen_toks: 1024}\n")
    proc = subprocess.run([sys.executable, "-m", "distillkit", "run", str(recipe_file)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "special_roles" in proc.stderr and "think_close" in proc.stderr
    assert str(models[R1_LLAMA]) in proc.stderr and str(models[LLAMA32_1B]) in proc.stderr
    assert "train.student.tokenizer: teacher" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_live_teacher_kd_through_the_map_matches_its_definition(models, toks, tmp_path):
    """`kd.teacher_probs: live` for the Qwen3 student of R1-Distill-Qwen (real-shaped tiny models): the train stage
    maps the trained ids (the student's </think>, its EOS), feeds the teacher its own ids and compares the
    student with the teacher's logits moved onto the student's ids. The first logged KL equals that divergence
    computed here over every assistant token (forward KL, T=1, vocabulary min(152064, 151936))."""
    import torch
    from transformers import AutoModelForCausalLM

    from distillkit.train.data import IGNORE, build_train_dataset
    from distillkit.train.stage import run_train
    from distillkit.student.build import load_student

    from train_helpers import make_recipe

    records = [{k: v for k, v in r.items() if k not in ("topk_ids", "topk_logprobs")}
               for r in _records(toks["r1_qwen"], n=2)]
    cfg = make_recipe(tmp_path, records, models[QWEN3_06B], topk=0, max_length=256, per_device_train_batch_size=2,
                      kd={"enabled": True, "alpha": 0.0, "teacher_probs": "live"})
    cfg.generate.teacher.model = str(models[R1_QWEN])
    m = run_train(cfg)
    assert "'</think>' 151649->151668" in m.stats["data"]["special_map"]["summary"]
    first = m.stats["loss_curve"][0]

    student, tok = load_student(cfg.train, cfg.stage_dir("train") / "student_init")
    teacher = AutoModelForCausalLM.from_pretrained(models[R1_QWEN], dtype=torch.float32).eval()
    from distillkit.student.special_map import build_special_map
    from distillkit.train.data import MappedRecords

    special_map = build_special_map(toks["r1_qwen"], tok)
    size = 151936
    inverse = np.empty(size, dtype=np.int64)
    inverse[special_map.permutation(size)] = np.arange(size)
    ds, _ = build_train_dataset(MappedRecords(records, special_map), tok, 256, use_kd=False, packing=False)
    total, count = 0.0, 0
    with torch.no_grad():
        for ex in ds:
            ids = torch.tensor([ex["input_ids"]])
            assert 151668 in ex["input_ids"] and ex["input_ids"].count(151645) >= 1
            labels = torch.tensor(ex["labels"][1:])
            s = student(ids).logits[0, :-1, :size].log_softmax(-1)
            t_ids = torch.as_tensor(inverse)[ids]  # the teacher reads its own </think> 151649, EOS 151643
            assert 151649 in t_ids.tolist()[0] and 151668 not in t_ids.tolist()[0]
            t = teacher(t_ids).logits[0, :-1][:, torch.as_tensor(inverse)].log_softmax(-1)
            kl = (t.exp() * (t - s)).sum(-1)[labels != IGNORE]
            total, count = total + kl.sum().item(), count + kl.numel()
    assert first["kl"] == pytest.approx(total / count, rel=1e-4)


def test_one_map_serves_several_teachers_only_of_one_family(toks, qwen_map, monkeypatch):
    """generate.teachers with `tokenizer: map`: the records of every teacher go through one map, so teachers whose
    special ids map differently (R1-Distill-Qwen's </think> 151649 vs a Qwen3 teacher's own 151668) are refused."""
    from types import SimpleNamespace

    import distillkit.models
    from distillkit.student.special_map import build_special_map
    from distillkit.train.stage import _map_teacher_specials

    assert qwen_map.same_mapping(build_special_map(toks["r1_qwen"], toks["qwen3_fixed"], R1_QWEN, QWEN3_06B))
    qwen3_teacher = build_special_map(toks["qwen3"], toks["qwen3_fixed"], "Qwen/Qwen3-8B", QWEN3_06B)
    assert not qwen_map.same_mapping(qwen3_teacher)

    by_name = {R1_QWEN: toks["r1_qwen"], "Qwen/Qwen3-8B": toks["qwen3"]}
    monkeypatch.setattr(distillkit.models, "load_tokenizer_and_config", lambda spec: (by_name[spec], None))

    def cfg(*models):
        return SimpleNamespace(label_teacher=SimpleNamespace(model=models[0]),
                               generate=SimpleNamespace(teachers=[SimpleNamespace(model=m) for m in models]),
                               train=SimpleNamespace(student=SimpleNamespace(model=QWEN3_06B)))

    init = {"special_map": True}
    assert _map_teacher_specials(cfg(R1_QWEN, R1_QWEN), init, toks["qwen3_fixed"]).same_mapping(qwen_map)
    with pytest.raises(DistillkitError, match="different special tokens"):
        _map_teacher_specials(cfg(R1_QWEN, "Qwen/Qwen3-8B"), init, toks["qwen3_fixed"])
