"""The registries (distillkit/registry.py): the recipe's choices are their names, a lookup loads no engine, and a
teacher backend or scorer registered with one line is what make_backend, preflight, plan and generate use."""

from __future__ import annotations

import subprocess
import sys
import typing
from types import SimpleNamespace

import pytest

from distillkit.config import KDConfig, PrescreenConfig, TeacherConfig, validate_recipe
from distillkit.engines import make_backend
from distillkit.engines.base import PromptResult, Sample
from distillkit.errors import ConfigError
from distillkit.registry import DIVERGENCES, SCORERS, TEACHER_BACKENDS, load_backend


def choices(model, field: str) -> tuple:
    return typing.get_args(model.model_fields[field].annotation)


def test_the_recipe_choices_are_the_registered_names():
    assert choices(TeacherConfig, "backend") == tuple(TEACHER_BACKENDS)
    assert choices(KDConfig, "divergence") == tuple(DIVERGENCES)
    # the pre-screen runs the student from a folder, in this process: a subset of the teacher backends
    assert set(choices(PrescreenConfig, "backend")) <= set(TEACHER_BACKENDS)
    assert set(SCORERS) <= set(TEACHER_BACKENDS)


def test_an_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown teacher backend 'vlm'; choose one of \['openai', 'transformers', "
                                         r"'vllm'\]"):
        load_backend("vlm")
    with pytest.raises(ConfigError, match=r"generate.teacher.backend='vlm': Input should be 'vllm', 'openai' or "
                                        r"'transformers'"):
        validate_recipe({"generate": {"teacher": {"backend": "vlm"}}})


def test_asking_every_backend_and_scorer_class_imports_no_engine():
    """preflight and plan ask the classes on machines without vLLM (and `distillkit plan` must stay fast)."""
    code = ("import sys\n"
            "from distillkit.registry import SCORERS, TEACHER_BACKENDS, load_backend, load_scorer\n"
            "for name in TEACHER_BACKENDS:\n"
            "    c = load_backend(name)\n"
            "    c.skips_special_tokens, c.uses_vllm_engine, c.supports_data_parallel, c.renders_prompt_locally\n"
            "    c.draws_sampled_labels\n"
            "for name in SCORERS:\n"
            "    load_scorer(name).draws_sampled_labels\n"
            "print(sorted(m for m in ('vllm', 'torch', 'transformers', 'httpx') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- a backend registered by a test


class EchoBackend:
    """A teacher backend no config names until a test registers it: each sample repeats the problem, no model."""

    name = "echo"
    skips_special_tokens = True
    uses_vllm_engine = True
    supports_data_parallel = False
    draws_sampled_labels = False
    model_id, tokenizer, logprobs_mode = "echo", None, "raw_logprobs"

    @classmethod
    def renders_prompt_locally(cls, teacher) -> bool:
        return False

    @classmethod
    def from_config(cls, gen_cfg) -> "EchoBackend":
        return cls()

    def generate(self, requests, sampling):
        return [PromptResult(prompt_tokens=3, samples=[Sample(text=r.messages[-1]["content"], token_ids=[1, 2, i],
                                                              finish_reason="stop") for i in range(sampling.n)])
                for r in requests]

    def close(self) -> None:
        pass


class EchoScorer:
    name = "echo"

    def __init__(self, topk: int, seed: int):
        self.topk, self.seed = topk, seed

    @classmethod
    def for_score(cls, score_cfg, seed: int = 0) -> "EchoScorer":
        return cls(score_cfg.topk, seed)


@pytest.fixture
def echo(monkeypatch):
    """The one line that registers a backend (here for this test only)."""
    monkeypatch.setitem(TEACHER_BACKENDS, "echo", f"{__name__}:EchoBackend")


def with_teacher(cfg, **update):
    """`cfg` with generate.teacher updated, unvalidated: the recipe's choices were fixed when distillkit.config was
    imported, before the test registered "echo" (a line in registry.py is there first; see the first test)."""
    teacher = cfg.generate.teacher.model_copy(update=update)
    return cfg.model_copy(update={"generate": cfg.generate.model_copy(update={"teacher": teacher})})


def recipe(tmp_path, **generate):
    cfg = validate_recipe({"name": "t", "output_dir": str(tmp_path / "run"), "stages": ["generate"],
                           "generate": {"prompts": {"builtin": "arith", "builtin_args": {"num": 5}, "prefill": None},
                                        "sampling": {"n": 2, "max_tokens": 64}, "shard_size": 2, **generate}})
    return with_teacher(cfg, backend="echo")


def test_make_backend_builds_a_registered_backend(echo, tmp_path):
    assert isinstance(make_backend(recipe(tmp_path).generate), EchoBackend)


def test_generate_runs_a_registered_backend_and_asks_it_about_replicas(echo, tmp_path, monkeypatch):
    from distillkit.generate import stage
    from distillkit.records import read_records

    cfg = recipe(tmp_path, teacher={"vllm": {"data_parallel_size": 2}})
    m = stage.run_generate(cfg)  # no replicas: EchoBackend.supports_data_parallel is False
    recs = read_records(cfg.stage_dir("generate")).to_list()
    assert m.counts["samples"] == 10 and len(recs) == 10 and m.stats["backend"] == "echo"
    assert all('"backend": "echo"' in r["meta"] and r["completion"] == r["messages"][-1]["content"] for r in recs)

    replicas = []
    monkeypatch.setattr(EchoBackend, "supports_data_parallel", True)
    monkeypatch.setattr(stage, "_run_data_parallel", lambda cfg, shards, todo, n, on_progress, teacher=None: replicas.append(n))
    stage.run_generate(cfg, overwrite=True)
    assert replicas == [2]


def test_preflight_and_plan_ask_a_registered_backend(echo, tmp_path, monkeypatch):
    from distillkit.plan import plan_recipe
    from distillkit.preflight import check_context, preflight

    missing = str(tmp_path / "no_such_teacher")
    cfg = with_teacher(recipe(tmp_path), model=missing)
    # renders_prompt_locally False: the teacher's tokenizer is not needed, so its absence only warns
    assert [(f.check, f.severity) for f in preflight(cfg, stages=["generate"])] == [("tokenizer_load", "warning")]
    monkeypatch.setattr(EchoBackend, "renders_prompt_locally", classmethod(lambda cls, teacher: True))
    assert [(f.check, f.severity) for f in preflight(cfg, stages=["generate"])] == [("tokenizer_load", "error")]

    # uses_vllm_engine: the engine's max_model_len is checked against the teacher's positions, and planned
    long = with_teacher(cfg, model="Qwen/Qwen2.5-Math-7B",
                        vllm=cfg.generate.teacher.vllm.model_copy(update={"max_model_len": 8192}))
    positions = SimpleNamespace(max_position_embeddings=4096)
    found = check_context(long, ["generate"], None, positions)
    assert [f.check for f in found] == ["context"] and "max_model_len=8,192 exceeds" in found[0].message
    assert plan_recipe(long).generate["weights"] > 10
    monkeypatch.setattr(EchoBackend, "uses_vllm_engine", False)
    assert check_context(long, ["generate"], None, positions) == []
    assert plan_recipe(long).generate is None


def test_make_scorer_builds_the_scorer_registered_for_the_backend(monkeypatch):
    from distillkit.engines.scorers import make_scorer

    monkeypatch.setitem(SCORERS, "echo", f"{__name__}:EchoScorer")
    cfg = validate_recipe({"stages": ["generate", "score", "train"], "score": {"topk": 7}})
    score = cfg.score.model_copy(update={"teacher": cfg.score.teacher.model_copy(update={"backend": "echo"})})
    scorer = make_scorer(score, seed=3)
    assert isinstance(scorer, EchoScorer) and (scorer.topk, scorer.seed) == (7, 3)


def test_sampled_labels_ask_the_backend_and_the_scorer_whether_they_see_full_logits(tmp_path, monkeypatch):
    """The config asks the registered classes (`draws_sampled_labels`), not the backend's name."""
    from distillkit.config import validate_recipe
    from distillkit.engines.hf import HFBackend
    from distillkit.engines.hf_scorer import TransformersScorer
    from distillkit.engines.scorers import VllmScorer
    from distillkit.engines.vllm import VllmBackend
    from distillkit.errors import ConfigError

    base = {"name": "s", "output_dir": str(tmp_path), "stages": ["score"]}
    vllm_sampled = {**base, "generate": {"sampling": {"soft_labels": "sampled"}},
                    "score": {"soft_labels": "sampled"}}
    with pytest.raises(ConfigError, match="returns only its top-k"):
        validate_recipe(vllm_sampled)
    monkeypatch.setattr(VllmBackend, "draws_sampled_labels", True)
    monkeypatch.setattr(VllmScorer, "draws_sampled_labels", True)
    assert validate_recipe(vllm_sampled).score.soft_labels == "sampled"  # vLLM said yes: accepted
    monkeypatch.setattr(HFBackend, "draws_sampled_labels", False)
    monkeypatch.setattr(TransformersScorer, "draws_sampled_labels", False)
    hf = {"model": "x", "backend": "transformers"}
    with pytest.raises(ConfigError, match="teacher.backend=transformers returns only its top-k"):
        validate_recipe({**base, "score": {"teacher": hf, "soft_labels": "sampled"}})
