"""Preflight: each deliberately broken tokenizer or template gets its finding (check name, severity, message)."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from distillkit.config import RecipeConfig, load_recipe
from distillkit.errors import DistillkitError
from distillkit.preflight import (
    Finding,
    check_chat_template,
    check_eos,
    check_generation_markers,
    check_pair,
    check_reasoning_rendered,
    check_think_tokens,
    check_tokenizer,
    check_trained_turn,
    load_tokenizer_and_config,
    preflight,
    raise_on_fatal,
)

# SmolLM2's template, reduced: ChatML that keeps content as is, but no {% generation %} markers.
PLAIN_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# QwQ / R1-distill style: every assistant turn, the trained one included, loses its <think> block.
STRIP_ALL = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- set content = message['content'].split('</think>')[-1].lstrip('\n') -%}"
    "{{- '<|im_start|>assistant\n' -}}{% generation %}{{- content + '<|im_end|>' -}}{% endgeneration %}"
    "{{- '\n' -}}"
    "{%- else -%}{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' -}}{%- endif -%}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)
# Qwen3 style: reasoning is stripped only from assistant turns before the last user message.
STRIP_HISTORY = (
    "{%- set ns = namespace(last_user=0) -%}"
    "{%- for message in messages -%}{%- if message['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- set content = message['content'] -%}"
    "{%- if loop.index0 < ns.last_user -%}{%- set content = content.split('</think>')[-1].lstrip('\n') -%}{%- endif -%}"
    "{{- '<|im_start|>assistant\n' -}}{% generation %}{{- content + '<|im_end|>' -}}{% endgeneration %}"
    "{{- '\n' -}}"
    "{%- else -%}{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' -}}{%- endif -%}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)
# Markers that wrap only the end-of-turn token: assistant_only_loss would not train the reasoning.
MARKERS_MISS_REASONING = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] -}}"
    "{%- if message['role'] == 'assistant' -%}{% generation %}{{- '<|im_end|>' -}}{% endgeneration %}"
    "{%- else -%}{{- '<|im_end|>' -}}{%- endif -%}{{- '\n' -}}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    """The tiny tokenizer: ChatML reasoning template with markers, <think> as normal tokens, pad != eos."""
    from distillkit.testing import build_tiny_tokenizer

    out = tmp_path_factory.mktemp("tiny_tok")
    build_tiny_tokenizer(out)
    return out


def load(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def by_check(findings, subject: str | None = None) -> dict[str, Finding]:
    """check name -> finding (of one subject when given); each check reported once per subject."""
    findings = [f for f in findings if subject is None or f.subject == subject]
    checks = [f.check for f in findings]
    assert len(checks) == len(set(checks)), checks
    return {f.check: f for f in findings}


def think_special(tok):
    """<think>/</think> re-registered as special tokens (what many tokenizer configs do)."""
    tok.add_special_tokens({"additional_special_tokens": ["<think>", "</think>"]})
    return tok


def other_tokenizer():
    """A tokenizer of another family: different special tokens, corpus and vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([f"zebra {i} quokka narwhal okapi axolotl {i * 7}" for i in range(200)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<unk>")


def model_folder(path: Path, tokenizer, vocab_size: int | None = None) -> str:
    """A model folder with config.json and the tokenizer but no weights: preflight must never need them."""
    from transformers import LlamaConfig

    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(path)
    LlamaConfig(vocab_size=vocab_size or len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                num_attention_heads=1, num_key_value_heads=1, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id).save_pretrained(path)
    assert not list(path.glob("*.safetensors"))
    return str(path)


def recipe(teacher: str, student: str, **overrides) -> RecipeConfig:
    # The tiny models have 2,048 positions (the context check would flag the default lengths).
    data = {"generate": {"teacher": {"model": teacher}, "sampling": {"max_tokens": 512}},
            "train": {"student": {"model": student}, "max_length": 1024}}
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return RecipeConfig.model_validate(data)


# ----------------------------------------------------------------------------------------- single tokenizer


def test_the_tiny_tokenizer_passes_every_check(tok_dir):
    findings = by_check(check_tokenizer(load(tok_dir), subject="tiny"))
    assert set(findings) == {"chat_template", "reasoning_rendered", "trained_turn", "eos_pad", "think_tokens",
                             "generation_markers"}
    assert {f.severity for f in findings.values()} == {"ok"}
    assert findings["think_tokens"].message == "tiny keeps <think>/</think> through encode/decode (single tokens)."
    assert findings["trained_turn"].message.endswith("closed by '<|im_end|>'.")


def test_no_chat_template_is_fatal_and_skips_template_checks(tok_dir):
    tok = load(tok_dir)
    tok.chat_template = None
    findings = by_check(check_tokenizer(tok, subject="student"))
    assert findings["chat_template"].severity == "error"
    assert findings["chat_template"].message == "student has no chat template."
    assert "CHATML_REASONING_TEMPLATE" in findings["chat_template"].fix
    # the template-dependent checks say nothing rather than repeating the same problem
    assert not {"reasoning_rendered", "trained_turn", "generation_markers"} & set(findings)
    assert check_reasoning_rendered(tok) is None and check_trained_turn(tok) is None


def test_template_that_strips_reasoning_from_the_trained_turn_is_fatal(tok_dir):
    tok = load(tok_dir)
    tok.chat_template = STRIP_ALL
    f = check_reasoning_rendered(tok, "student")
    assert (f.check, f.severity) == ("reasoning_rendered", "error")
    assert "drops the reasoning of the trained (last) assistant turn" in f.message
    assert "CHATML_REASONING_TEMPLATE" in f.fix
    # and the train stage could not splice the completion after the generation prompt either
    t = check_trained_turn(tok, "student")
    assert (t.check, t.severity) == ("trained_turn", "error")
    assert "not render the assistant turn verbatim" in t.message


def test_template_that_strips_reasoning_only_from_history_is_fine(tok_dir):
    tok = load(tok_dir)
    tok.chat_template = STRIP_HISTORY
    f = check_reasoning_rendered(tok, "student")
    assert (f.check, f.severity) == ("reasoning_rendered", "ok")
    assert "strips reasoning from earlier turns" in f.message
    assert check_trained_turn(tok).severity == "ok"


def test_template_that_raises_is_reported_not_crashed(tok_dir):
    tok = load(tok_dir)
    tok.chat_template = "{{ raise_exception('System role not supported') }}"
    f = check_reasoning_rendered(tok, "student")
    assert f.severity == "error" and "System role not supported" in f.message


def test_pad_equal_to_eos_is_fatal_only_when_eos_is_trained(tok_dir):
    tok = load(tok_dir)
    tok.pad_token = tok.eos_token
    f = check_eos(tok, subject="student")
    assert (f.check, f.severity) == ("eos_pad", "error")
    assert f.message.startswith("student's pad token '<|im_end|>' is its EOS token (id 2)")
    assert "distinct pad token" in f.fix
    assert check_eos(tok, is_eos_trained=False).severity == "ok"  # a teacher only generates


def test_missing_eos_is_fatal(tok_dir):
    tok = load(tok_dir)
    tok.eos_token = None
    f = check_eos(tok, is_eos_trained=False, subject="teacher")
    assert (f.check, f.severity) == ("eos_pad", "error")
    assert "defines no EOS token" in f.message


def test_config_eos_that_disagrees_with_the_tokenizer_warns(tok_dir):
    f = check_eos(load(tok_dir), types.SimpleNamespace(eos_token_id=[0]), subject="student")
    assert (f.check, f.severity) == ("eos_pad", "warning")
    assert "not among the model config's eos_token_id [0]" in f.message


def test_template_not_closing_the_turn_with_eos_is_fatal(tok_dir):
    tok = load(tok_dir)
    tok.eos_token = "<|endoftext|>"  # a base-model EOS while the template ends turns with <|im_end|>
    f = check_trained_turn(tok, "student")
    assert (f.check, f.severity) == ("trained_turn", "error")
    assert "not with the EOS token '<|endoftext|>'" in f.message


def test_think_registered_as_special_is_dropped_and_fatal(tok_dir, tmp_path):
    tok = think_special(load(tok_dir))
    f = check_think_tokens(tok, "teacher")
    assert (f.check, f.severity) == ("think_tokens", "error")
    assert "<think> (skip_special_tokens=True)" in f.message and "</think> (skip_special_tokens=True)" in f.message
    assert "registered as special tokens" in f.message
    assert "special_tokens=False" in f.fix
    # survives a save/load round trip, i.e. this is what a folder on disk gives
    tok.save_pretrained(tmp_path)
    assert check_think_tokens(load(tmp_path)).severity == "error"


def test_think_split_into_pieces_survives(tok_dir):
    """A tokenizer without <think> tokens (SmolLM2) spells them in pieces: fine for traces."""
    tok = other_tokenizer()
    f = check_think_tokens(tok)
    assert f.severity == "ok" and "several tokens each" in f.message


def test_template_without_generation_markers_warns(tok_dir):
    tok = load(tok_dir)
    tok.chat_template = PLAIN_CHATML
    findings = by_check(check_tokenizer(tok, subject="student"))
    f = findings["generation_markers"]
    assert (f.check, f.severity) == ("generation_markers", "warning")
    assert "no {% generation %} markers" in f.message
    assert "CHATML_REASONING_TEMPLATE" in f.fix
    # everything else about this template is fine
    assert all(g.severity == "ok" for c, g in findings.items() if c != "generation_markers")


def test_generation_markers_that_miss_the_reasoning_warn(tok_dir):
    tok = load(tok_dir)
    tok.chat_template = MARKERS_MISS_REASONING
    f = check_generation_markers(tok, "student")
    assert f.severity == "warning" and "do not cover the assistant's reasoning" in f.message


# ----------------------------------------------------------------------------------------- pairs


def test_same_tokenizer_is_compatible(tok_dir):
    tok = load(tok_dir)
    f, shared = check_pair(tok, load(tok_dir))
    assert (f.check, f.severity, shared) == ("vocab_compat", "ok", len(tok))


def test_padded_vocab_sizes_of_one_family_use_the_shared_range(tok_dir):
    """Qwen2.5: the same tokenizer, config vocab_size 152,064 (7B) vs 151,936 (1.5B)."""
    tok = load(tok_dir)
    f, shared = check_pair(tok, load(tok_dir), types.SimpleNamespace(vocab_size=576),
                           types.SimpleNamespace(vocab_size=512))
    assert (f.severity, shared) == ("ok", 512)
    assert "vocab_size 576 vs 512" in f.message and "shared range [0, 512)" in f.message


def test_different_families_are_incompatible(tok_dir):
    f, shared = check_pair(load(tok_dir), other_tokenizer())
    assert (f.check, f.severity, shared) == ("vocab_compat", "error", None)
    assert "vocabularies differ at" in f.message and "train.kd.enabled: false" in f.fix


def test_differing_added_tokens_only_warn(tok_dir):
    teacher, student = load(tok_dir), load(tok_dir)
    teacher.add_tokens(["<tool_call>"])
    student.add_tokens(["<answer>"])
    f, shared = check_pair(teacher, student)
    assert (f.severity, shared) == ("warning", len(teacher))
    assert "except 1 added token(s)" in f.message and "'<tool_call>' vs '<answer>'" in f.message


def test_teacher_tokens_beyond_the_students_vocab_are_fatal(tok_dir):
    teacher, student = load(tok_dir), load(tok_dir)
    teacher.add_tokens(["<tool_call>"])
    f, shared = check_pair(teacher, student, None, types.SimpleNamespace(vocab_size=len(student)))
    assert (f.severity, shared) == ("error", None)
    assert "'<tool_call>'" in f.message and "no logit for them" in f.message


# ----------------------------------------------------------------------------------------- recipes


@pytest.fixture(scope="module")
def folders(tok_dir, tmp_path_factory):
    """Weightless model folders: good (two padded sizes), SmolLM2-like, stripping, special think, other."""
    root = tmp_path_factory.mktemp("preflight_models")
    good = model_folder(root / "good", load(tok_dir), vocab_size=576)
    good_small = model_folder(root / "good_small", load(tok_dir), vocab_size=512)
    smol_like = load(tok_dir)
    smol_like.pad_token = smol_like.eos_token
    smol_like.chat_template = PLAIN_CHATML
    stripping = load(tok_dir)
    stripping.chat_template = STRIP_ALL
    stripping_unknown = load(tok_dir)  # the same, in a turn format of no known family
    stripping_unknown.chat_template = STRIP_ALL.replace("<|im_start|>", "[").replace("<|im_end|>", "<|im_end|>]")
    return {"good": good, "good_small": good_small,
            "smol_like": model_folder(root / "smol_like", smol_like),
            "stripping": model_folder(root / "stripping", stripping),
            "stripping_unknown": model_folder(root / "stripping_unknown", stripping_unknown),
            "think_special": model_folder(root / "think_special", think_special(load(tok_dir))),
            "other": model_folder(root / "other", other_tokenizer())}


def test_recipe_with_good_models_and_padded_vocab_passes(folders):
    cfg = recipe(folders["good"], folders["good_small"], train__kd__enabled=True, generate__sampling__topk_logprobs=20)
    findings = preflight(cfg, stages=["generate", "train"])
    assert {f.severity for f in findings} == {"ok"}, [str(f) for f in findings if f.severity != "ok"]
    teacher = [f for f in findings if f.subject == "teacher"]
    assert [f.check for f in teacher] == ["chat_template", "eos_pad", "think_tokens"]
    assert len([f for f in findings if f.subject == "student"]) == 6
    vocab = by_check(findings, "teacher/student")["vocab_compat"]
    assert "vocab_size 576 vs 512" in vocab.message and "[0, 512)" in vocab.message
    raise_on_fatal(findings)  # nothing fatal: returns


def test_what_the_train_stage_fixes_is_a_warning_that_says_so(folders):
    findings = by_check(preflight(recipe(folders["good"], folders["smol_like"]), stages=["train"]))
    assert findings["eos_pad"].severity == "warning"
    assert "The train stage fixes this in student_init/ (pad_token: '<|pad|>'" in findings["eos_pad"].message
    assert findings["generation_markers"].severity == "warning"
    assert "(chat_template: installed a template" in findings["generation_markers"].message
    raise_on_fatal(findings.values())


def test_stripping_chatml_template_is_replaced_by_the_train_stage(folders):
    """A ChatML template that strips reasoning (even one with markers) is replaced in student_init/."""
    findings = by_check(preflight(recipe(folders["good"], folders["stripping"]), stages=["train"]))
    for check in ("reasoning_rendered", "trained_turn"):
        assert findings[check].severity == "warning"
        assert "The train stage fixes this in student_init/ (chat_template: installed" in findings[check].message
    raise_on_fatal(findings.values())


def test_stripping_template_of_unknown_family_stops_the_train_stage(folders):
    """No known family to replace it with: stripping reasoning stays fatal."""
    findings = preflight(recipe(folders["good"], folders["stripping_unknown"]), stages=["train"])
    errors = [f.check for f in findings if f.severity == "error"]
    assert errors == ["reasoning_rendered", "trained_turn"]
    with pytest.raises(DistillkitError) as e:
        raise_on_fatal(findings)
    text = str(e.value)
    assert text.startswith("preflight found 2 fatal problems:")
    assert "reasoning_rendered: student " in text and "trained_turn: student " in text
    assert text.count("    fix: ") == 2 and "CHATML_REASONING_TEMPLATE" in text


def test_teacher_with_special_think_tokens_stops_generate(folders):
    findings = preflight(recipe(folders["think_special"], folders["good"]), stages=["generate"])
    f = by_check(findings)["think_tokens"]
    assert f.severity == "error" and f.subject == "teacher"
    # the transformers backend decodes with skip_special_tokens=False: only a warning there
    cfg = recipe(folders["think_special"], folders["good"], generate__teacher__backend="transformers")
    assert by_check(preflight(cfg, stages=["generate"]))["think_tokens"].severity == "warning"


def test_kd_between_families_is_fatal_and_sft_is_not_checked(folders):
    cfg = recipe(folders["other"], folders["good"], train__kd__enabled=True)
    f = by_check(preflight(cfg, stages=["train"]))["vocab_compat"]
    assert f.severity == "error" and f.subject == "teacher/student"
    assert "vocab_compat" not in by_check(preflight(recipe(folders["other"], folders["good"]), stages=["train"]))


def test_kd_compat_is_checked_against_the_teacher_whose_labels_train_uses(folders):
    """With a score stage the soft labels are the scoring teacher's; a served teacher's model likewise."""
    scored = recipe(folders["good"], folders["good"], train__kd__enabled=True, stages=["score", "train"],
                    score__teacher__model=folders["other"])
    f = by_check(preflight(scored, stages=["train"]))["vocab_compat"]
    assert f.severity == "error" and folders["other"] in f.message
    fine = recipe(folders["other"], folders["good"], train__kd__enabled=True, stages=["score", "train"],
                  score__teacher__model=folders["good"])
    assert by_check(preflight(fine, stages=["train"]))["vocab_compat"].severity != "error"
    served = recipe(folders["good"], folders["good"], train__kd__enabled=True, train__kd__teacher_probs="served",
                    train__on_policy__enabled=True, train__kd__teacher_server__model=folders["other"])
    assert by_check(preflight(served, stages=["train"]))["vocab_compat"].severity == "error"


def test_openai_teacher_without_a_local_tokenizer_is_a_warning(folders):
    cfg = recipe("deepseek-reasoner", folders["good"], generate__teacher__backend="openai")
    findings = preflight(cfg, stages=["generate"])
    assert [(f.check, f.severity) for f in findings] == [("tokenizer_load", "warning")]
    assert "applies its own template" in findings[0].message
    # api: completions renders prompts locally, so the tokenizer is required
    cfg = recipe("deepseek-reasoner", folders["good"], generate__teacher__backend="openai",
                 generate__teacher__openai={"api": "completions"})
    assert [(f.check, f.severity) for f in preflight(cfg, stages=["generate"])] == [("tokenizer_load", "error")]


def test_only_the_stages_that_run_are_checked(folders, tmp_path):
    missing = str(tmp_path / "no_such_teacher")
    assert preflight(recipe(missing, folders["good"]), stages=["train"])  # student findings only
    assert all(f.subject == "student" for f in preflight(recipe(missing, folders["good"]), stages=["train"]))
    # evaluate: only its tasks are checked (offline here: the Hub datasets are reported as not checked)
    findings = preflight(recipe(missing, missing), stages=["filter", "evaluate"])
    assert findings and {(f.subject, f.severity) for f in findings} == {("evaluate", "ok")}
    f = by_check(preflight(recipe(missing, folders["good"]), stages=["generate"]))["tokenizer_load"]
    assert f.severity == "error" and "no such folder" in f.message


def test_missing_student_is_fatal(folders, tmp_path):
    findings = preflight(recipe(folders["good"], str(tmp_path / "nope")), stages=["train"])
    assert [(f.check, f.severity) for f in findings] == [("tokenizer_load", "error")]
    with pytest.raises(DistillkitError, match="tokenizer_load: student"):
        raise_on_fatal(findings)


def test_report_to_must_be_known_and_installed(folders, monkeypatch):
    from transformers.integrations import integration_utils

    ok = by_check(preflight(recipe(folders["good"], folders["good"], train__report_to=["tensorboard"]),
                            stages=["train"]))["report_to"]
    assert ok.severity == "ok" and ok.subject == "train"
    typo = by_check(preflight(recipe(folders["good"], folders["good"], train__report_to=["tensorbored"]),
                              stages=["train"]))["report_to"]
    assert typo.severity == "error" and "'tensorbored'" in typo.message and "'wandb'" in typo.fix
    monkeypatch.setattr(integration_utils, "get_available_reporting_integrations", lambda: ["tensorboard"])
    cfg = recipe(folders["good"], folders["good"], train__report_to=["tensorboard", "wandb"])
    findings = preflight(cfg, stages=["train"])
    missing = by_check(findings)["report_to"]
    assert missing.severity == "error" and "['wandb']" in missing.message and missing.fix.startswith("pip install wandb")
    with pytest.raises(DistillkitError, match="report_to: train.report_to asks for"):
        raise_on_fatal(findings)
    assert "report_to" not in by_check(preflight(recipe(folders["good"], folders["good"]), stages=["train"]))


# ----------------------------------------------------------------------------------------- real model


@pytest.mark.slow
def test_smollm2_findings(smollm2_dir):
    from distillkit.models import builtin_gguf, converted_folder

    # preflight finds the cached conversion instead of re-reading the GGUF
    assert converted_folder(builtin_gguf("smollm2-135m-instruct")) == Path(smollm2_dir)
    tok, config = load_tokenizer_and_config("builtin:smollm2-135m-instruct")
    assert Path(tok.name_or_path) == Path(smollm2_dir) and config.vocab_size == 49152
    raw = by_check(check_tokenizer(tok, config, subject="student"))
    assert {c: f.severity for c, f in raw.items()} == {
        "chat_template": "ok", "reasoning_rendered": "ok", "trained_turn": "ok",
        "eos_pad": "error",  # pad == eos == <|im_end|>
        "think_tokens": "ok",  # no <think> token: spelled in pieces, which decode back
        "generation_markers": "warning"}
    assert "pad token '<|im_end|>' is its EOS token (id 2)" in raw["eos_pad"].message
    assert "several tokens each" in raw["think_tokens"].message

    # the quickstart's default student: both problems are repaired by the train stage, so no error
    findings = by_check(preflight(load_recipe("quickstart"), stages=["generate", "train"]), "student")
    assert findings["eos_pad"].severity == "warning" and "'<|endoftext|>'" in findings["eos_pad"].message
    assert findings["generation_markers"].severity == "warning"
    raise_on_fatal(findings.values())
    # as a teacher (EOS not trained) SmolLM2 is fine
    teacher = preflight(load_recipe("quickstart"), stages=["generate"])
    assert [(f.check, f.severity) for f in teacher] == [("chat_template", "ok"), ("eos_pad", "ok"),
                                                        ("think_tokens", "ok")]


def test_check_chat_template_names_the_subject(tok_dir):
    assert check_chat_template(load(tok_dir), "teacher x").message == "teacher x has a chat template."


def test_stored_kd_without_stored_soft_labels_stops_before_generation(folders):
    findings = preflight(recipe(folders["good"], folders["good"], train__kd__enabled=True,
                                generate__sampling__topk_logprobs=0), stages=["generate", "train"])
    errors = [f for f in findings if f.severity == "error"]
    assert [f.check for f in errors] == ["soft_labels"] and "topk_logprobs: 20" in errors[0].fix
    ok = preflight(recipe(folders["good"], folders["good"], train__kd__enabled=True,
                          generate__sampling__topk_logprobs=20), stages=["generate", "train"])
    assert [f for f in ok if f.severity == "error"] == []
    # the score stage adds them: no error, and the finding names the scoring teacher
    scored = preflight(recipe(folders["good"], folders["good"], train__kd__enabled=True,
                              generate__sampling__topk_logprobs=0, stages=["generate", "score", "train"],
                              score__teacher__model=folders["good"]), stages=["generate", "score", "train"])
    assert [f for f in scored if f.severity == "error"] == []
    assert any(f.check == "soft_labels" and "score stage adds" in f.message for f in scored)
    # sampled labels need the sampled loss, and the reverse: the kind is checked before any generation
    sampled = dict(stages=["generate", "score", "train"], score__teacher__model=folders["good"],
                   score__teacher__backend="transformers", score__soft_labels="sampled")
    wrong = preflight(recipe(folders["good"], folders["good"], train__kd__enabled=True, **sampled),
                      stages=["generate", "score", "train"])
    errors = [f for f in wrong if f.severity == "error"]
    assert [f.check for f in errors] == ["soft_labels"] and "teacher_probs: sampled" in errors[0].fix
    right = preflight(recipe(folders["good"], folders["good"], train__kd__enabled=True,
                             train__kd__teacher_probs="sampled", **sampled), stages=["generate", "score", "train"])
    assert [f for f in right if f.severity == "error"] == []
    assert any(f.check == "soft_labels" and "32 sampled draws per token" in f.message for f in right)


def test_findings_print_one_entry_each_within_80_columns():
    from distillkit.preflight import Finding, format_finding

    long = Finding("task_dataset", "error", "evaluate.tasks: r1_gpqa_diamond reads Idavidrein/gpqa, a gated dataset "
                   "this machine has no access to " + "x" * 120, "accept its terms at "
                   "https://huggingface.co/datasets/Idavidrein/gpqa and log in (`huggingface-cli login` or HF_TOKEN)",
                   "evaluate")
    text = format_finding(long, 80)
    lines = text.splitlines()
    assert lines[0].startswith("error   task_dataset (evaluate): evaluate.tasks: r1_gpqa_diamond")
    assert all(len(line) <= 80 for line in lines), [len(x) for x in lines]
    assert all(line.startswith(" " * 8) for line in lines[1:])  # wrapped under the first line's text
    assert any(line.strip().startswith("fix: accept its terms") for line in lines)
    assert format_finding(Finding("eos_pad", "ok", "fine."), 80) == "ok      eos_pad: fine."
