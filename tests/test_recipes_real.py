"""Every shipped recipe runs end to end, shrunk, on its real models' tokenizers and configs.

Each test takes a recipe under recipes/ and replaces only what this machine cannot have:
- the model weights: the teacher is a scripted tiny model (distillkit.testing.scripted) and the student a
  tiny random one (distillkit.testing.real_tokenizers.build_real_shaped_model), both carrying the real
  tokenizer, chat template, vocabulary size, context length, RoPE settings, tying and special ids;
- the prompt and benchmark sources: local files instead of Hub datasets;
- the sizes and the hardware: 4 prompts x 2 samples of 64 tokens, one epoch at 256 tokens, one GPU's
  worth of parallelism (one training process, no accelerate launch, TP = DP = 1), bf16 where the CPU has it, one evaluated
  model on a local task.
Everything else stays as the recipe has it: backend, sampling, top-k soft labels, filters, selection,
method (QLoRA runs on CPU through bitsandbytes), LoRA settings, KD mode, packing, checkpointing,
bf16, RoPE override, evaluation protocol. generate -> filter -> train -> evaluate then run for real
(evaluate once per student: a multi-GPU recipe with a single-GPU sibling stops after train).

The teacher writes `COMPLETION` after every prompt, so each assertion is about something known: the
trained text keeps the reasoning, the student's EOS is trained, the soft label at `</think>` is the
teacher's, and the chat template saved with the student renders exactly what it was trained on.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

rt = pytest.importorskip("distillkit.testing.real_tokenizers")

ROOT = Path(__file__).resolve().parents[1]
# The size recipes (the lab's run on their real models in tests/test_compare.py).
# R1's two-teacher data recipe has its own test below (test_two_teacher_recipe_shrunk_on_real_tokenizers).
TWO_TEACHERS = ROOT / "recipes" / "r1-two-teachers.yaml"
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml")
                 if not {"accelerate", "lab"} & set(p.parts) and p != TWO_TEACHERS)
# The recipe's teacher when this machine has its tokenizer; DeepSeek-R1's own (129k vocabulary) ships in
# no package, so the 70B recipe's served teacher uses R1-Distill-Qwen's tokenizer: another BPE than the
# Llama student's, which is the point of that recipe (SFT only).
TEACHER_STAND_IN = {"deepseek-ai/DeepSeek-R1": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
                    "deepseek-ai/DeepSeek-V3": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"}  # V3 has R1's tokenizer
PROBLEMS = ["What is 2 + 3?", "What is 1 + 4?", "Compute 10 - 5.", "How much is 15 / 3?"]
COMPLETION = "Two plus three makes five.\n</think>\n\nThe answer is $\\boxed{5}$."
SCRIPTED_CONFIG_KEYS = ("vocab_size", "max_position_embeddings", "rope_theta", "rope_scaling",
                        "tie_word_embeddings", "bos_token_id", "eos_token_id")


# What student_init does with each recipe's pair (README, "Real teacher/student pairs"): adopt the teacher's special
# tokens (a student without reasoning tokens of its own), map them by role onto the student's own (Qwen3 student,
# R1 teacher), nothing (the same tokenizer), or nothing with another BPE (SFT only).
PAIR_MODE = {"qwen2.5-math-1.5b": "adopt", "qwen2.5-math-7b": "adopt", "llama-3.1-8b": "adopt", "qwen2.5-14b": "adopt",
             "qwen2.5-32b": "adopt", "llama-3.3-70b-instruct": "other_bpe", "qwen3-0.6b": "map", "qwen3-1.7b": "same",
             "qwen3-4b": "same", "qwen3-8b": "same", "llama-3.2-1b": "adopt", "llama-3.2-3b": "adopt"}

# A recipe that differs from a sibling only in its name, its student's size and its publish repos (the same teacher,
# student tokenizer and chat template, method, KD, filters and parallelism) would run the sibling's pipeline again:
# it is checked on its own as shipped (validation, its model's context limits, preflight of its shrunk form) and
# shown to be that twin (test_twins_are_twins); its pipeline is the sibling's run. Keeps the suite in its budget.
TWINS = {"qwen3-8b/qlora_single_gpu.yaml": "qwen3-4b/qlora_single_gpu.yaml",
         "qwen3-8b/multi_gpu.yaml": "qwen3-4b/multi_gpu.yaml",
         "qwen2.5-math-7b/qlora_single_gpu.yaml": "qwen2.5-math-1.5b/qlora_single_gpu.yaml",
         "qwen2.5-math-7b/multi_gpu.yaml": "qwen2.5-math-1.5b/multi_gpu.yaml",
         "llama-3.2-3b/qlora_single_gpu.yaml": "llama-3.2-1b/qlora_single_gpu.yaml"}


def _without_size(recipe: dict) -> dict:
    """The recipe less what may differ between twins: its name, the student's id and the publish repos."""
    out = json.loads(json.dumps(recipe))
    out.pop("name", None)
    out["train"]["student"].pop("model")
    out.pop("publish", None)
    return out


def _tokenizer_files(hub_id: str) -> dict:
    folder = Path(rt.REAL_MODELS[hub_id]["tokenizer"]())
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_twins_are_twins():
    for twin, sibling in TWINS.items():
        a, b = (yaml.safe_load((ROOT / "recipes" / r).read_text()) for r in (twin, sibling))
        assert _without_size(a) == _without_size(b), f"{twin} is no longer {sibling}'s twin: run it (drop it from TWINS)"
        student_a, student_b = a["train"]["student"]["model"], b["train"]["student"]["model"]
        assert student_a != student_b and _tokenizer_files(student_a) == _tokenizer_files(student_b), twin


def test_every_recipe_is_covered():
    assert len(RECIPES) >= 19 and all(p.exists() for p in RECIPES)
    assert {p.parent.name for p in RECIPES if p.name != "quickstart.yaml"} == set(PAIR_MODE)


def _scripted_teacher(teacher_id: str, prefill: str | None, out: Path) -> Path:
    from transformers import AutoTokenizer

    from distillkit.engines.base import render_prompt
    from distillkit.testing.scripted import build_scripted_model, chain_for

    spec = rt.REAL_MODELS[teacher_id]
    tok_dir = spec["tokenizer"]()
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    tail, _, _ = render_prompt(tokenizer, [{"role": "user", "content": PROBLEMS[0]}], prefill or "")
    completion = COMPLETION if prefill and "<think>" in prefill else "<think>\n" + COMPLETION
    chain = chain_for(tokenizer, tail, completion, tokenizer.eos_token_id)
    overrides = {k: v for k, v in spec["config"].items() if k in SCRIPTED_CONFIG_KEYS}
    vocab = overrides.pop("vocab_size")
    arch = spec["config"]["model_type"]
    return build_scripted_model(out, tok_dir, chain, arch=arch, vocab_size=vocab, config_overrides=overrides)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Models built once per module: several recipes share a teacher or a student."""
    root, cache = tmp_path_factory.mktemp("models"), {}

    def get(kind: str, model_id: str, prefill: str | None = None) -> Path:
        key = (kind, model_id, prefill)
        if key not in cache:
            out = root / f"{kind}-{len(cache)}"
            cache[key] = (_scripted_teacher(model_id, prefill, out) if kind == "teacher"
                          else rt.build_real_shaped_model(model_id, out))
        return cache[key]
    return get


def shrink(recipe: Path, tmp: Path, built) -> tuple[dict, str, str]:
    """The recipe as a dict with weights, sources, sizes and hardware replaced (see the module docstring);
    also the teacher's and student's real ids."""
    data = yaml.safe_load(recipe.read_text())
    gen, filt, train, ev = data["generate"], data["filter"], data["train"], data["evaluate"]
    teacher_id = TEACHER_STAND_IN.get(gen["teacher"]["model"], gen["teacher"]["model"])
    student_id = train["student"]["model"]
    data["output_dir"] = str(tmp / "run")
    data.pop("hardware", None)

    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "problem": q, "answer": "5"}) + "\n"
                               for i, q in enumerate(PROBLEMS)))
    prefill = gen.get("prompts", {}).get("prefill", "<think>\n")
    gen["prompts"] = {"path": str(prompts), "columns": {"id": "id", "problem": "problem", "answer": "answer"}}
    if prefill != "<think>\n":
        gen["prompts"]["prefill"] = prefill
    gen["teacher"]["model"] = str(built("teacher", teacher_id, prefill))
    if "vllm" in gen["teacher"]:
        gen["teacher"]["vllm"].update(tensor_parallel_size=1, data_parallel_size=1, max_model_len=512)
        gen["teacher"]["vllm"].pop("distributed_executor_backend", None)
    gen["sampling"].update(n=2, max_tokens=64)
    gen["shard_size"] = 4
    # The student's pre-screen costs a vLLM engine start: one recipe runs it for real (the real-shaped random
    # student solves nothing, so every prompt goes on to the teacher), the others skip it.
    if gen.get("prescreen", {}).get("enabled"):
        if recipe.parent.name == "qwen2.5-math-1.5b" and recipe.name == "qlora_single_gpu.yaml":
            gen["prescreen"].update(samples=2, max_tokens=16, max_model_len=512, tensor_parallel_size=1)
        else:
            gen["prescreen"]["enabled"] = False

    if filt.get("decontaminate", {}).get("enabled"):
        bench = tmp / "benchmark.jsonl"
        bench.write_text(json.dumps({"problem": "Find the area of a circle of radius 3 in square units."}) + "\n")
        filt["decontaminate"]["benchmarks"] = [{"path": str(bench), "column": "problem", "name": "local"}]
    filt.pop("num_workers", None)
    # the scripted teacher solves every prompt in every sample: a band that drops what the teacher always solves
    # would leave nothing (tested on its own in tests/filter/test_filter_stage.py)
    filt.get("selection", {}).pop("max_pass_rate", None)

    train["student"]["model"] = str(built("student", student_id))
    # bf16 follows the hardware (train.bf16: null): bf16 autocast on a CPU without native bf16 runs 12x
    # slower than fp32 (distillkit.student.build.resolve_bf16); on a GPU or an AVX512-BF16 CPU it is bf16.
    train.update(num_train_epochs=1, per_device_train_batch_size=1, gradient_accumulation_steps=1,
                 max_length=256, save_steps=1000, report_to=[], bf16=None)
    if train.get("accelerate_config"):  # multi-GPU recipes: their FSDP config for real, over 2 CPU processes
        train.update(accelerate_config=str(ROOT / train["accelerate_config"]), num_processes=2)
    else:
        train.pop("num_processes", None)
    train.pop("max_steps", None)

    ev.update(models=["student_after"], tasks=["distillkit_arith"], num_samples=1, max_gen_toks=32, limit=2)
    for key in ("tensor_parallel_size", "data_parallel_size", "pipeline_parallel_size"):
        ev.get("model_args", {}).pop(key, None)
    # Evaluation runs once per student: a multi-GPU recipe whose single-GPU sibling evaluates the same student
    # (same tokenizer and template; the evaluation parallelism is shrunk to one process anyway) stops after train.
    sibling = recipe.name == "multi_gpu.yaml" and (recipe.parent / "qlora_single_gpu.yaml").exists()
    data["stages"] = ["generate", "filter", "train"] + ([] if sibling else ["evaluate"])
    return data, teacher_id, student_id


@contextlib.contextmanager
def served_teacher(data: dict):
    """An OpenAI-compatible vLLM server over the scripted teacher, for recipes whose teacher is an endpoint."""
    teacher = data["generate"]["teacher"]
    if teacher["backend"] != "openai":
        yield
        return
    from distillkit.evaluate.harness import vllm_server

    with vllm_server(teacher["model"], seed=0) as url:
        teacher["openai"].update(base_url=url + "/v1", model=teacher["model"], max_retries=1)
        yield


# The quickstart runs on its real models already (make quickstart, tests/test_cli.py).
@pytest.mark.parametrize("recipe", [p for p in RECIPES if p.name != "quickstart.yaml"],
                         ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_recipe_runs_shrunk_on_real_tokenizers(recipe, tmp_path, monkeypatch, built):
    from transformers import AutoTokenizer

    from distillkit.config import validate_recipe
    from distillkit.pipeline import run_pipeline
    from distillkit.preflight import preflight, raise_on_fatal
    from distillkit.records import read_records
    from distillkit.train.data import record_to_messages, tokenize_record
    from distillkit.student.special_map import build_special_map, turn_end
    from distillkit.student.tokenizer import MAP_NOTE

    monkeypatch.setenv("OPENAI_API_KEY", "local")
    original = yaml.safe_load(recipe.read_text())
    data, teacher_id, student_id = shrink(recipe, tmp_path, built)
    twin = TWINS.get(str(recipe.relative_to(ROOT / "recipes")))
    # As shipped (16-32k tokens), the lengths fit the real models' positions (RoPE overrides included).
    from transformers import AutoConfig

    from distillkit.preflight import check_context

    as_shipped = validate_recipe(original, source=str(recipe))
    context = check_context(as_shipped, list(as_shipped.stages), AutoConfig.from_pretrained(built("student", student_id)),
                            AutoConfig.from_pretrained(data["generate"]["teacher"]["model"]))
    assert [str(f) for f in context] == []
    with served_teacher(data):
        cfg = validate_recipe(data, source=str(recipe))
        findings = preflight(cfg)
        raise_on_fatal(findings)  # the pair passes preflight as shipped
        if twin:  # its pipeline is its twin's run (TWINS)
            return
        manifests = run_pipeline(cfg)
    assert set(manifests) == set(cfg.stages) >= {"generate", "filter", "train"}
    if cfg.generate.prescreen.enabled:  # the student screened every prompt with vLLM before the teacher ran
        screen = manifests["generate"].stats["prescreen"]
        assert screen["prompts"] == len(PROBLEMS) and screen["kept"] == manifests["generate"].counts["prompts"]
    kept = read_records(cfg.stage_dir("filter"))
    assert len(kept) >= 1 and all(r["completion"].endswith(COMPLETION.split("</think>")[1]) for r in kept)

    stats = manifests["train"].stats
    if original["train"].get("accelerate_config"):  # sharded for real, not a silent fallback to DDP
        d = stats["distributed"]
        assert d["type"] == "FSDP" and d["fsdp_version"] == 2 and d["num_processes"] == 2 and d["sharded"] == 1.0
    kd_on = original["train"].get("kd", {}).get("enabled", False)
    assert (stats["kd"] is not None) == kd_on  # KD stays on wherever the recipe has it on
    if kd_on:
        assert stats["data"]["num_kd_tokens"] > 0 and stats["data"]["teacher_ids_used"]
    changes = " ".join(stats["student_init"]["tokenizer_changes"])
    mode = PAIR_MODE[recipe.parent.name]
    assert ("adopted the teacher's special tokens" in changes) == (mode == "adopt")
    assert (MAP_NOTE in changes) == (mode == "map") == ("special_map" in stats["data"])

    saved_dir = cfg.stage_dir("train") / "model"
    saved = AutoTokenizer.from_pretrained(saved_dir)
    teacher_tok = AutoTokenizer.from_pretrained(data["generate"]["teacher"]["model"])
    own = AutoTokenizer.from_pretrained(rt.REAL_MODELS[student_id]["tokenizer"]())  # the student as released
    config = json.loads((saved_dir / "config.json").read_text())
    if mode in ("map", "same"):  # the student keeps its own <think>/</think> ids (Qwen3: 151667/151668)
        assert saved.convert_tokens_to_ids(["<think>", "</think>"]) == own.convert_tokens_to_ids(["<think>", "</think>"])
    record = kept[0]
    if mode == "map":  # the records hold the teacher's ids: moved onto the student's as the train stage does
        special_map = build_special_map(teacher_tok, saved)
        assert teacher_tok.convert_tokens_to_ids("</think>") != saved.convert_tokens_to_ids("</think>")
        teacher_record, record = record, special_map.map_record(record)
    topk = len(record["topk_ids"][0]) if kd_on else 0
    ex = tokenize_record(saved, record, use_teacher_ids=stats["data"]["teacher_ids_used"], topk=topk)
    # the chat template saved with the student renders exactly what it was trained on
    assert saved.decode(ex["input_ids"]) == saved.apply_chat_template(record_to_messages(record), tokenize=False)
    trained = [t for t, label in zip(ex["input_ids"], ex["labels"]) if label != -100]
    text = saved.decode(trained)
    assert "Two plus three makes five." in text and "</think>" in text  # the reasoning is trained
    assert trained[-1] == saved.eos_token_id == config["eos_token_id"]  # and the EOS that ends it,
    assert saved.eos_token == turn_end(saved)  # which is the student's end of turn in its saved template
    if kd_on:  # the soft label at </think> is the teacher's distribution over that very token
        think_end = saved.convert_tokens_to_ids("</think>")
        at = ex["input_ids"].index(think_end)
        assert ex["kd_mask"][at] == 1 and ex["kd_ids"][at][0] == think_end
        if mode == "map":  # ... stored on the teacher's own </think> id, 151649 for R1 (Qwen3's <|box_end|>)
            t_at = list(teacher_record["completion_ids"]).index(teacher_tok.convert_tokens_to_ids("</think>"))
            assert teacher_record["topk_ids"][t_at][0] == teacher_tok.convert_tokens_to_ids("</think>") != think_end
    if own.chat_template and "enable_thinking" in own.chat_template:  # Qwen3: thinking on at evaluation, switch kept
        question = record_to_messages(record)[:1]
        prompt = saved.apply_chat_template(question, add_generation_prompt=True, tokenize=False)  # as lm-eval renders it
        assert prompt == own.apply_chat_template(question, add_generation_prompt=True, tokenize=False)
        assert prompt.endswith("<|im_start|>assistant\n") and "</think>" not in prompt
        assert saved.apply_chat_template(question, add_generation_prompt=True, tokenize=False,
                                         enable_thinking=False).endswith("<think>\n\n</think>\n\n")
    if "evaluate" in cfg.stages:
        from distillkit.schemas.evaluate import EvalResults

        results = EvalResults.read(cfg.stage_dir("evaluate"))
        assert results.model_keys() == ["student_after"] and results.score("student_after", "distillkit_arith")
        assert results.protocol.gen_prefix == "<think>\n"  # every answer opens the reasoning block


def test_two_teacher_recipe_shrunk_on_real_tokenizers(tmp_path, built, monkeypatch):
    """R1's two-teacher data recipe as shipped fits its student's real positions and its reasoning teacher's; shrunk
    (each teacher a scripted model on R1's stand-in tokenizer with its own prefill, the real-shaped student) it
    routes math to R1 and general prompts to V3 without reasoning, and passes preflight. Its pipeline is not run
    here: generation with several teachers runs on CPU in the generate tests, and the rest is the single-teacher
    pipeline of the other recipes (SFT, the student of qwen2.5-math-7b)."""
    from transformers import AutoConfig

    from distillkit.config import validate_recipe
    from distillkit.config.generate import EMPTY_THINK
    from distillkit.preflight import check_context, preflight, raise_on_fatal

    monkeypatch.setenv("OPENAI_API_KEY", "local")
    original = yaml.safe_load(TWO_TEACHERS.read_text())
    as_shipped = validate_recipe(original, source=str(TWO_TEACHERS))
    data = json.loads(json.dumps(original))
    for t in data["generate"]["teachers"]:  # one scripted model stands in for both (not run: its script is moot)
        t["model"] = str(built("teacher", TEACHER_STAND_IN[t["model"]], "<think>\n"))
    student = built("student", original["train"]["student"]["model"])
    context = check_context(as_shipped, list(as_shipped.stages), AutoConfig.from_pretrained(student),
                            AutoConfig.from_pretrained(data["generate"]["teachers"][0]["model"]))
    assert [str(f) for f in context] == []

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "problem": q, "answer": "5", "tests": None,
                                           "source": "math" if i % 4 else "general"}) + "\n"
                               for i, q in enumerate(PROBLEMS)))
    data.update(output_dir=str(tmp_path / "run"), stages=["generate", "filter", "train"])
    data.pop("hardware")
    data["generate"]["prompts"]["path"] = str(prompts)
    data["generate"]["sampling"].update(n=2, max_tokens=64)
    data["train"]["student"]["model"] = str(student)
    data["train"].update(accelerate_config=str(ROOT / data["train"]["accelerate_config"]), num_processes=2,
                         max_length=256, report_to=[])
    cfg = validate_recipe(data, source=str(TWO_TEACHERS))
    gen = cfg.generate
    assert (gen.route("math"), gen.route("code"), gen.route("general")) == ("r1", "r1", "v3")
    assert gen.for_teacher("r1").prompts.prefill == "<think>\n" and gen.for_teacher("v3").prompts.prefill == EMPTY_THINK
    assert gen.for_teacher("v3").sampling.n == 1 and gen.for_teacher("r1").sampling.n == 2
    assert [v.kind for v in cfg.filter.source_verifiers["general"]] == ["truncation", "language", "repetition", "length"]
    raise_on_fatal(preflight(cfg))
