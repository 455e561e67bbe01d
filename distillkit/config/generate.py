"""`generate:`: the prompts, how the teacher samples them, pre-screening by the student, resampling."""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Optional

from pydantic import Field, ValidationError, NonNegativeFloat, NonNegativeInt, PositiveInt, field_validator, model_validator

from distillkit.config.base import R1_PROMPT, SOFT_LABEL_SAMPLES, StrictModel
from distillkit.config.teacher import TeacherConfig
from distillkit.registry import TEACHER_BACKENDS, load_backend
from distillkit.softlabels.codec import MAX_K  # packed-v1 holds k <= MAX_K (the sampled rank is a byte)
from distillkit.softlabels.sampled import MAX_SAMPLES  # sampled-v1 holds N <= MAX_SAMPLES draws (counts are bytes)


class ColumnsConfig(StrictModel):
    """Which columns of the prompt data hold what."""

    id: Optional[str] = "id"
    """Prompt id column; missing ids are derived from a hash of the problem."""
    problem: str = "problem"
    answer: Optional[str] = "answer"
    tests: Optional[str] = "tests"
    source: Optional[str] = "source"


class PromptsConfig(StrictModel):
    renamed: ClassVar[dict[str, str]] = {"file": "path"}

    path: Optional[str] = None
    """Local .jsonl / .json / .parquet file of prompts."""
    hub_dataset: Optional[str] = None
    """Hub dataset name, loaded with datasets.load_dataset."""
    hub_config: Optional[str] = None
    split: str = "train"
    builtin: Optional[Literal["arith"]] = None
    """Generate prompts in-process: `arith` makes seeded arithmetic word problems (offline quickstart)."""
    builtin_args: dict[str, Any] = Field(default_factory=dict)
    columns: ColumnsConfig = Field(default_factory=ColumnsConfig)
    template: str = R1_PROMPT
    """User turn; "{problem}" is replaced by the problem text. The default is the R1 evaluation prompt."""
    system_prompt: Optional[str] = None
    """R1 uses none."""
    prefill: Optional[str] = "<think>\n"
    """Text the assistant turn starts with (R1 forces "<think>\\n"); null for none."""
    dedup: bool = True
    """Drop prompts whose problem text repeats an earlier one."""
    on_bad_row: Literal["skip", "error"] = "skip"
    """A malformed row is reported with file and row, then skipped and counted, or stops the run."""
    limit: Optional[PositiveInt] = None
    """Use only the first N prompts."""

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in ("path", "hub_dataset", "builtin") if getattr(self, k)]
        if len(given) > 1:
            raise ValueError(f"set only one of path, hub_dataset, builtin (got {', '.join(given)})")
        return self

    def render(self, problem: str) -> str:
        """The user turn for one problem (plain substitution: no str.format brace escaping)."""
        return self.template.replace("{problem}", problem)

    @field_validator("template")
    @classmethod
    def _has_problem(cls, v: str) -> str:
        if "{problem}" not in v:
            raise ValueError("template must contain {problem}")
        return v


class SamplingConfig(StrictModel):
    """Sampling parameters; defaults are DeepSeek-R1's."""

    n: PositiveInt = 4
    """Samples per prompt."""
    temperature: NonNegativeFloat = 0.6
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: PositiveInt = Field(32768, le=131072)
    """Completion budget per sample."""
    seed: Optional[int] = 0
    topk_logprobs: NonNegativeInt = 0
    """Keep the teacher's top-k logprobs of every generated token as soft labels; 0 = off."""
    logprobs_mode: Literal["raw_logprobs", "processed_logprobs"] = "raw_logprobs"
    """raw: before temperature/top-p (the model's distribution); processed: after them."""
    soft_labels: Literal["topk", "sampled"] = "topk"
    """Which soft labels to keep: topk (the `topk_logprobs` most likely tokens, on when topk_logprobs > 0) or sampled
    (`soft_label_samples` draws per token from the distribution `logprobs_mode` names, stored as distinct ids with
    counts: an unbiased estimate for `train.kd.teacher_probs: sampled`). sampled needs the teacher's full distribution
    at every step, which only `teacher.backend: transformers` has (vLLM and OpenAI servers return the top-k only)."""
    soft_label_samples: int = Field(SOFT_LABEL_SAMPLES, ge=1, le=MAX_SAMPLES)
    """Draws per token for `soft_labels: sampled` (N; see `score.soft_label_samples` for its cost)."""
    stop: list[str] = Field(default_factory=list)
    """Strings that end a sample, left out of the text (e.g. "Question:" for a model that goes on to
    invent the next few-shot example). Token ids and soft labels are trimmed to match the text."""

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, v: list[str]) -> list[str]:
        if any(not s for s in v):
            raise ValueError("an empty stop string would end every sample at once; remove it")
        return v

    @model_validator(mode="after")
    def _sampled_is_not_topk(self):
        if self.soft_labels == "sampled" and self.topk_logprobs:
            raise ValueError(f"soft_labels: sampled stores draws, not top-k rows; topk_logprobs={self.topk_logprobs} "
                             "would be ignored: set topk_logprobs: 0 (the draws per token are soft_label_samples)")
        # Checked on values, not on the keys given: a dumped config (replicas, manifests) gives every key.
        if self.soft_label_samples != SOFT_LABEL_SAMPLES and self.soft_labels != "sampled":
            raise ValueError("soft_label_samples sets the draws of soft_labels: sampled; with soft_labels: topk set "
                             "topk_logprobs instead (or set soft_labels: sampled)")
        return self

    @model_validator(mode="after")
    def _greedy_needs_one_sample(self):
        # vLLM's server rejects it, and the offline engine would return n identical copies.
        if self.temperature == 0 and self.n > 1:
            raise ValueError(f"temperature=0 (greedy) with n={self.n} gives {self.n} identical samples; "
                             "set n: 1 or a temperature > 0")
        return self


class PrescreenConfig(StrictModel):
    """Before the teacher samples, the *student* answers every prompt (`samples` times, with vLLM): prompts it
    already solves teach it little (s1K, LIMO keep what a model does not solve), so they are dropped, or only
    `keep_share` of them kept, before any teacher time is spent. "Solves" is judged by the correctness
    verifiers of `filter.verifiers` (math, code, judge)."""

    enabled: bool = False
    model: Optional[str] = None
    """The student to screen with (default: `train.student.model`, with `train.student.keep_layers` applied)."""
    backend: Literal["vllm", "transformers"] = "vllm"
    samples: PositiveInt = 4
    """Student samples per prompt."""
    temperature: NonNegativeFloat = 0.6
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: Optional[PositiveInt] = None
    """Budget per student sample (default: `generate.sampling.max_tokens`)."""
    max_model_len: Optional[PositiveInt] = None
    """The student engine's context (default: the teacher's `vllm.max_model_len`); a base student such as
    Qwen2.5-Math has 4,096 positions where the teacher's engine holds 32k."""
    tensor_parallel_size: Optional[PositiveInt] = None
    """GPUs of the student engine (default: the teacher's `vllm.tensor_parallel_size`); one engine, no data
    parallel replicas."""
    solved_at: float = Field(0.75, gt=0, le=1)
    """A prompt the student answers correctly in at least this share of its samples counts as solved."""
    keep_share: float = Field(0.0, ge=0, lt=1)
    """Share of the solved prompts kept anyway (a seeded hash of the prompt id picks which); 0 drops them all."""

    @model_validator(mode="after")
    def _samples_differ(self):
        if self.enabled and self.temperature == 0 and self.samples > 1:
            raise ValueError(f"temperature=0 (greedy) with samples={self.samples} gives identical answers; set "
                             "samples: 1 or a temperature > 0")
        return self


class ResampleConfig(StrictModel):
    """Resampling until verified (the AM data regenerated failed prompts until a verifier passed): a prompt
    none of whose `sampling.n` samples passes the filter's verifiers gets another round of n samples with
    new seeds, up to `rounds` more, stopping at the first round with a verified sample. Each shard is
    verified as it is generated (the same verifier chain as `filter.verifiers`), so a killed run resumes
    shard by shard as before."""

    rounds: NonNegativeInt = 0
    """Extra rounds for prompts with no verified sample (0: off)."""


EMPTY_THINK = "<think>\n\n</think>\n\n"
"""The prefill of a non-reasoning teacher (`reasoning: false`): R1-distilled students answer a direct question
after an empty reasoning block, so the trained turn is this block and the teacher's answer."""


class RoutedTeacherConfig(TeacherConfig):
    """One of several teachers (`generate.teachers`): the keys of `generate.teacher` (model, backend, vllm, openai),
    the prompt sources it answers, whether it reasons, and its own prefill and sampling."""

    name: str
    """Its name in records (the `teacher` column holds the model; meta "teacher_name" this name), funnels and cards."""
    sources: list[str] = Field(default_factory=list)
    """Prompt sources it answers (the prompts' source column, `generate.prompts.columns.source`); empty: every
    source no other teacher lists (at most one teacher may leave this empty)."""
    reasoning: bool = True
    """false: a non-reasoning teacher (DeepSeek-V3's part of R1's SFT data): its prefill defaults to an empty
    reasoning block, so the student learns to answer such prompts directly."""
    prefill: Optional[str] = "inherit"
    """Its assistant prefill; "inherit" (default): `generate.prompts.prefill` for a reasoning teacher, the empty
    block "<think>\\n\\n</think>\\n\\n" for a non-reasoning one; null: none."""
    sampling: dict[str, Any] = Field(default_factory=dict)
    """Keys of `generate.sampling` that differ for this teacher (e.g. {temperature: 0.7, max_tokens: 4096});
    the others are `generate.sampling`'s."""

    @field_validator("sampling")
    @classmethod
    def _known_sampling_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(v) - set(SamplingConfig.model_fields))
        if unknown:
            raise ValueError(f"unknown generate.sampling key(s) {unknown}; known: {sorted(SamplingConfig.model_fields)}")
        return v

    def engine(self) -> TeacherConfig:
        """This teacher as a plain `TeacherConfig` (model, backend and engine options)."""
        return TeacherConfig(**{k: getattr(self, k) for k in TeacherConfig.model_fields})


class GenerateConfig(StrictModel):
    renamed: ClassVar[dict[str, str]] = {"samples_per_prompt": "sampling.n"}

    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    """The teacher (one per run). With `teachers`, the first of them (what `evaluate` scores as "the teacher" and a
    live or served KD teacher defaults to); leave it unset then."""
    teachers: list[RoutedTeacherConfig] = Field(default_factory=list)
    """Several teachers routed by prompt source (R1's SFT data: reasoning prompts to R1, general ones to
    DeepSeek-V3 without reasoning). Generation runs them one engine at a time, in this order (a teacher's
    `vllm.data_parallel_size` spreads its own shards over replicas), or all at once on separate GPUs with
    `teachers_side_by_side`; each record keeps its teacher."""
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    shard_size: PositiveInt = 64
    """Prompts per output shard; a killed run redoes at most one shard."""
    soft_label_format: Literal["packed-v1", "fp16"] = "packed-v1"
    """How the top-k soft labels are stored: packed-v1 (ids bit-packed, logprobs quantized: ~35 bytes per token at
    k=20 instead of ~71, mean KL to the fp16 values ~3e-4 nats; distillkit/softlabels/codec.py) or fp16 (int32 ids +
    fp16 logprobs, what distillkit wrote before). Readers take either."""
    prescreen: PrescreenConfig = Field(default_factory=PrescreenConfig)
    resample: ResampleConfig = Field(default_factory=ResampleConfig)
    teachers_side_by_side: bool = False
    """With `generate.teachers` on several GPUs: run every teacher at once, each in its own processes on its own GPUs
    (handed out in the order of `teachers`: a vLLM teacher takes tensor x pipeline x data parallel GPUs, a
    transformers one 1, an OpenAI endpoint none). Default false: one teacher after another, each on every GPU. The
    records are the same either way (every prompt carries its own seed)."""

    @model_validator(mode="after")
    def _packed_width(self):
        if self.soft_label_format == "packed-v1" and self.sampling.topk_logprobs > MAX_K:
            raise ValueError(f"sampling.topk_logprobs={self.sampling.topk_logprobs}: soft_label_format packed-v1 "
                             f"stores at most {MAX_K} candidates per token; lower it or set "
                             "soft_label_format: fp16")
        return self

    @model_validator(mode="after")
    def _sampled_needs_full_logits(self):
        if self.sampling.soft_labels != "sampled":
            return self
        if not load_backend(self.teacher.backend).draws_sampled_labels:
            able = [name for name in TEACHER_BACKENDS if load_backend(name).draws_sampled_labels]
            raise ValueError(
                f"sampling.soft_labels: sampled draws from the teacher's whole distribution at every step, and "
                f"teacher.backend={self.teacher.backend} returns only its top-k logprobs (drawing from those would drop "
                f"the tail: a biased label). Generate with teacher.backend: {' or '.join(able)}, or generate without labels "
                "and add the `score` stage with score.soft_labels: sampled (its transformers backend computes full "
                "logits)")
        if self.soft_label_format != "packed-v1":
            raise ValueError(f"soft_label_format={self.soft_label_format} chooses how top-k labels are stored; sampled "
                             "labels are always written as sampled-v1: remove soft_label_format")
        return self

    @model_validator(mode="after")
    def _routed_teachers(self):
        if not self.teachers:
            return self
        names = [t.name for t in self.teachers]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"generate.teachers: names must differ ({', '.join(dup)} repeats)")
        catch_all = [t.name for t in self.teachers if not t.sources]
        if len(catch_all) > 1:
            raise ValueError(f"generate.teachers: {' and '.join(catch_all)} both leave `sources` empty (every source no "
                             "other teacher lists); give all but one of them their sources")
        owner: dict[str, str] = {}
        for t in self.teachers:
            for src in t.sources:
                if src in owner:
                    raise ValueError(f"generate.teachers: source {src!r} is routed to both {owner[src]} and {t.name}; "
                                     "route each source to one teacher")
                owner[src] = t.name
        first = self.teachers[0].engine()
        if "teacher" in self.model_fields_set and self.teacher != first:
            raise ValueError("set either generate.teacher (one teacher) or generate.teachers (several); with teachers "
                             "the first one is the run's teacher: remove generate.teacher")
        label_keys = ("soft_labels", "topk_logprobs", "soft_label_samples", "logprobs_mode")
        for t in self.teachers:  # each teacher's merged section validates here, not when its engine starts
            try:
                own = self.for_teacher(t.name)
            except ValidationError as e:
                first_error = e.errors()[0]
                where = ".".join(str(x) for x in first_error["loc"])
                where = f"sampling.{where}" if where.split(".")[0] in SamplingConfig.model_fields else where
                raise ValueError(f"generate.teachers ({t.name}): {where}: {first_error['msg']}") from None
            differ = [k for k in label_keys if getattr(own.sampling, k) != getattr(self.sampling, k)]
            if differ:
                raise ValueError(f"generate.teachers ({t.name}): sampling.{differ[0]} differs from generate.sampling's; "
                                 "every teacher's soft labels share one stored format: set it in generate.sampling")
        object.__setattr__(self, "teacher", first)  # no re-validation: the first teacher is the run's teacher
        return self

    @model_validator(mode="after")
    def _side_by_side_needs_teachers(self):
        if self.teachers_side_by_side and len(self.teachers) < 2:
            raise ValueError("generate.teachers_side_by_side runs several teachers at once, and generate.teachers lists "
                             f"{len(self.teachers)}; list them there, or remove teachers_side_by_side")
        return self

    def route(self, source: str) -> str | None:
        """The name of the teacher that answers prompts of `source` (None: no teacher does; one teacher: its name)."""
        if not self.teachers:
            return None
        for t in self.teachers:
            if source in t.sources:
                return t.name
        return next((t.name for t in self.teachers if not t.sources), None)

    def routed(self, name: str) -> RoutedTeacherConfig:
        for t in self.teachers:
            if t.name == name:
                return t
        raise KeyError(f"no teacher named {name!r} in generate.teachers ({', '.join(t.name for t in self.teachers)})")

    def teacher_named(self, name_or_model: str) -> str | None:
        """The teacher of `teachers` a record names (`distillkit.records.teacher_name`): its name, or its model when
        that model is one teacher's alone (records that keep only the `teacher` column); None for no teacher."""
        names = [t.name for t in self.teachers]
        if name_or_model in names:
            return name_or_model
        owners = [t.name for t in self.teachers if t.model == name_or_model]
        return owners[0] if len(owners) == 1 else None

    def prefill_of(self, model: str) -> Optional[str]:
        """The prefill the teacher `model` answers with: the first routed teacher of that model's, else
        `prompts.prefill` (one teacher, or a model no routed teacher has: a scoring teacher)."""
        for t in self.teachers:
            if t.model == model:
                return self.for_teacher(t.name).prompts.prefill
        return self.prompts.prefill

    def for_teacher(self, name: str) -> "GenerateConfig":
        """This section as one teacher's: its engine as `teacher`, its prefill and sampling, no `teachers`. The
        stage's single-teacher code (backends, requests, records) runs on it unchanged."""
        t = self.routed(name)
        prefill = self.prompts.prefill if t.reasoning else EMPTY_THINK
        if t.prefill != "inherit":
            prefill = t.prefill
        sampling = SamplingConfig.model_validate({**self.sampling.model_dump(), **t.sampling})
        data = self.model_dump(exclude={"teachers", "teachers_side_by_side", "teacher", "sampling", "prompts"})
        return GenerateConfig.model_validate({
            **data, "teacher": t.engine().model_dump(), "sampling": sampling.model_dump(),
            "prompts": self.prompts.model_copy(update={"prefill": prefill}).model_dump()})

    @property
    def label_format(self) -> str | None:
        """How this stage stores its soft labels: "sampled-v1", `soft_label_format` for top-k, None without labels."""
        if self.sampling.soft_labels == "sampled":
            return "sampled-v1"
        return self.soft_label_format if self.sampling.topk_logprobs else None

    @property
    def label_width(self) -> int:
        """Width of the stored rows: k for top-k, N draws for sampled labels, 0 without labels."""
        s = self.sampling
        return s.soft_label_samples if s.soft_labels == "sampled" else s.topk_logprobs
