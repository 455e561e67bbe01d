"""The root of the tree: a whole run (`RecipeConfig`, a section per stage), its hardware, `distillkit compare`'s
arms."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

from pydantic import Field, PositiveFloat, PositiveInt, ValidationError, field_validator, model_validator

from distillkit.config.base import DEFAULT_STAGES, StrictModel
from distillkit.config.evaluate import EvaluateConfig
from distillkit.config.filter import FilterConfig
from distillkit.config.generate import GenerateConfig
from distillkit.config.publish import PublishConfig
from distillkit.config.score import ScoreConfig
from distillkit.config.teacher import TeacherConfig
from distillkit.config.train import ServedTeacherConfig, TrainConfig


class HardwareConfig(StrictModel):
    """The GPUs a recipe is written for; `distillkit plan` checks the estimates against them."""

    gpu_memory_gib: PositiveFloat = 24.0
    """Memory of one GPU in GiB (24 for an RTX 3090/4090, 80 for an A100/H100)."""
    num_gpus: PositiveInt = 1


class CompareConfig(StrictModel):
    """`distillkit compare`: the recipe trained as several arms x training seeds, each arm's student scored on the
    same questions, with intervals that include seed-to-seed variance (distillkit/compare.py)."""

    arms: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Arm name -> dotted overrides of this recipe, e.g. {sft: {train.kd.enabled: false}, kd: {}}. The key `after:
    ARM` starts each seed's training from that arm's trained student of the same seed (SFT, then on-policy
    distillation: {onpolicy: {after: sft, train.on_policy.enabled: true, ...}}); that arm runs first."""
    baseline: Optional[str] = None
    """The arm every other one is compared with (paired by seed and question); default: the first."""
    seeds: PositiveInt = 3
    """Training seeds per arm (train.seed = 0 .. seeds-1); data and sampling seeds stay as the recipe has them."""
    train_only: bool = False
    """The arms differ in training only: an arm overriding a generate/filter/score key is refused (they would no
    longer share one teacher generation)."""
    target_half_width: float = Field(0.03, gt=0, lt=1)
    """The half-width (pass@1 as a fraction: 0.03 = 3 points) a difference between arms should be measured to;
    comparison.md says how many training seeds would reach it on the same questions (seeds.seeds_needed)."""

    @field_validator("arms")
    @classmethod
    def _names(cls, arms: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        bad = [a for a in arms if not re.fullmatch(r"[A-Za-z0-9_.-]+", a)]
        if bad:
            raise ValueError(f"arm names become folder names: use letters, digits, '_', '-', '.' ({bad})")
        return arms

    @model_validator(mode="after")
    def _baseline_is_an_arm(self):
        if self.baseline is not None and self.arms and self.baseline not in self.arms:
            raise ValueError(f"baseline: {self.baseline!r} is not one of the arms {list(self.arms)}")
        for arm, overrides in self.arms.items():
            seen, at = [arm], overrides.get("after")
            while at is not None:
                if at not in self.arms:
                    raise ValueError(f"arms.{arm}.after: {at!r} is not one of the arms {list(self.arms)}")
                if at in seen:
                    raise ValueError(f"arms.{arm}.after: the arms start from each other in a circle "
                                     f"({' -> '.join(seen + [at])}); one of them must start from the recipe's student")
                seen.append(at)
                at = self.arms[at].get("after")
        return self

    def arm_order(self) -> list[str]:
        """The arms in an order where each runs after the arm it starts from (`after`), otherwise as written."""
        order: list[str] = []

        def visit(arm: str) -> None:
            if arm not in order:
                if (first := self.arms[arm].get("after")) is not None:
                    visit(first)
                order.append(arm)

        for arm in self.arms:
            visit(arm)
        return order


class RecipeConfig(StrictModel):
    """A whole distillation run."""

    renamed: ClassVar[dict[str, str]] = {"out_dir": "output_dir"}

    name: str = "run"
    output_dir: str = "runs/{name}"
    """Run folder; each stage writes a subfolder. {name} is replaced."""
    seed: int = 0
    stages: list[Literal["generate", "filter", "score", "train", "evaluate", "publish"]] = Field(
        default_factory=lambda: list(DEFAULT_STAGES))
    """Stages `distillkit run` executes, in pipeline order (`score` only when listed)."""
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    hardware: HardwareConfig = Field(default_factory=HardwareConfig)
    compare: CompareConfig = Field(default_factory=CompareConfig)
    """Arms x seeds for `distillkit compare` (not a stage: `distillkit run` ignores it)."""

    @field_validator("output_dir")
    @classmethod
    def _output_dir_formats(cls, v: str, info) -> str:
        try:  # run_dir fills in {name}; any other brace would crash every command that needs the folder
            v.format(name=info.data.get("name", "run"))
        except (KeyError, IndexError, AttributeError, ValueError, TypeError):
            raise ValueError("only {name} may appear in braces (it becomes the recipe's name); write a literal "
                             "brace as {{ or }}") from None
        return v

    @model_validator(mode="after")
    def _prescreen_can_judge(self):
        kinds = [v.kind for v in self.filter.verifiers]
        if self.generate.prescreen.enabled and not {"math", "code", "judge"} & set(kinds):
            raise ValueError(f"generate.prescreen judges the student's answers with the correctness verifiers of "
                             f"filter.verifiers (math, code or judge), and this recipe lists none ({kinds}); add one, "
                             "or set generate.prescreen.enabled: false")
        return self

    @model_validator(mode="after")
    def _live_teacher_is_one(self):
        t = self.train
        live = (t.kd.enabled and t.kd.teacher_probs == "live") or (t.on_policy.enabled and t.kd.teacher_probs != "served")
        models = list(dict.fromkeys(x.model for x in self.generate.teachers))
        if live and len(models) > 1:
            raise ValueError(f"a live teacher (train.kd.teacher_probs: live, or train.on_policy without teacher_probs: "
                             f"served) is one model loaded next to the student, and generate.teachers has "
                             f"{len(models)} ({', '.join(models)}); train on their stored soft labels "
                             "(train.kd.teacher_probs: topk_tail, each record with its own teacher's), or on-policy "
                             "with served teachers (train.kd.teacher_probs: served)")
        return self

    @model_validator(mode="after")
    def _score_per_teacher(self):
        s, names = self.score, [t.name for t in self.generate.teachers]
        if not s.per_teacher:
            if len(names) > 1 and "score" in self.stages and "teacher" not in s.model_fields_set:
                raise ValueError(f"the score stage would label the records of all of generate.teachers ({', '.join(names)}) "
                                 f"with score.teacher's default model {s.teacher.model}; set score.per_teacher: true "
                                 "(each record scored by its own teacher) or score.teacher")
            return self
        if not names:
            raise ValueError("score.per_teacher scores each record with its teacher of generate.teachers, and "
                             "generate.teachers is empty; list the teachers there, or remove score.per_teacher "
                             "(score.teacher then scores every record)")
        if s.teacher != TeacherConfig():
            raise ValueError(f"score.per_teacher scores each record with its own teacher of generate.teachers, and "
                             f"score.teacher is set too ({s.teacher.model}); remove one of them")
        for name in names:  # each teacher's scoring section validates here, not when its engine starts
            self.score_for(name)
        return self

    def score_for(self, name: str) -> ScoreConfig:
        """The score section of one teacher of `generate.teachers` (`score.per_teacher`): that teacher's engine as
        `score.teacher`, the rest of `score` as it is; a backend that cannot score is a ValueError naming it."""
        engine = self.generate.routed(name).engine()
        try:
            return ScoreConfig.model_validate({**self.score.model_dump(exclude={"teacher", "per_teacher"}),
                                               "teacher": engine.model_dump()})
        except ValidationError as e:
            msg = e.errors()[0]["msg"].removeprefix("Value error, ")
            raise ValueError(f"score.per_teacher: generate.teachers ({name}, backend {engine.backend}): {msg}") from None

    @model_validator(mode="after")
    def _served_teachers_route(self):
        kd, names = self.train.kd, [t.name for t in self.generate.teachers]
        unknown = sorted(set(kd.teacher_servers) - set(names))
        if unknown:
            raise ValueError(f"train.kd.teacher_servers: {', '.join(unknown)} is not a teacher of generate.teachers "
                             f"({', '.join(names) or 'none'}); name the teachers there")
        if kd.teacher_servers and kd.teacher_server.model is not None:
            raise ValueError(f"train.kd.teacher_server.model ({kd.teacher_server.model}) serves every prompt, and "
                             "train.kd.teacher_servers routes prompts to their own teachers; remove one of them")
        if kd.teacher_probs != "served":
            return self
        routes = self.served_teachers()
        bad_k = [n for n, server in kd.teacher_servers.items() if server.topk != kd.teacher_server.topk]
        if bad_k:
            raise ValueError(f"train.kd.teacher_servers.{bad_k[0]}.topk differs from train.kd.teacher_server.topk "
                             f"({kd.teacher_server.topk}); every teacher's rows share one k: set teacher_server.topk")
        urls = [(n, s.openai.base_url) for n, s in routes.items() if not s.openai.serve]
        shared = [n for n, url in urls if [u for _, u in urls].count(url) > 1]
        if shared:
            raise ValueError(f"train.kd: teachers {', '.join(shared)} would all be scored by the server at "
                             f"{dict(urls)[shared[0]]} (one vLLM server serves one model); give each its server in "
                             "train.kd.teacher_servers.<name>.openai.base_url, or set openai.serve: true to start one")
        return self

    def served_teachers(self) -> dict[str, ServedTeacherConfig]:
        """`train.kd.teacher_probs: served` with several `generate.teachers`: teacher name -> its server (model
        filled in); {} when one server scores every prompt (one teacher, or `train.kd.teacher_server.model` set)."""
        kd, teachers = self.train.kd, self.generate.teachers
        if len(teachers) < 2 or kd.teacher_server.model is not None:
            return {}
        out = {}
        for t in teachers:
            server = kd.teacher_servers.get(t.name, kd.teacher_server)
            out[t.name] = server.model_copy(update={"model": server.model or t.model})
        return out

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir.format(name=self.name))

    def stage_dir(self, stage: str) -> Path:
        return self.run_dir / stage

    @property
    def records_dir(self) -> Path:
        """Where training reads its records: the score output, else the filter's, else the generate output."""
        return self.stage_dir(next((s for s in ("score", "filter") if s in self.stages), "generate"))

    @property
    def label_teacher(self) -> TeacherConfig:
        """The teacher whose soft labels training uses: the scoring teacher when `score` runs, else generate's. With
        `score.per_teacher` each record's labels are its own teacher's (its `teacher` column); this is then the run's
        teacher, the first of `generate.teachers`, as without a score stage."""
        if "score" in self.stages and not self.score.per_teacher:
            return self.score.teacher
        return self.generate.teacher
