"""The recipe: one validated config tree (a sub-model per stage), loaded from YAML with dotted overrides.

Every model forbids unknown keys, so a typo is an error that names the key and the closest valid
one. `load_recipe` collects *all* mistakes of a file before raising one `ConfigError`.

Size: the whole tree is here on purpose (one schema a user reads top to bottom, every key documented where
it is defined); loading and override parsing follow it. Stage hashes live in pipeline.py.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from distillkit.errors import ConfigError, DistillkitError
from distillkit.registry import DIVERGENCES, SCORERS, TEACHER_BACKENDS, load_backend, load_scorer
from distillkit.softlabels.codec import MAX_K  # packed-v1 holds k <= MAX_K (the sampled rank is a byte)
from distillkit.softlabels.sampled import MAX_SAMPLES  # sampled-v1 holds N <= MAX_SAMPLES draws (counts are bytes)

STAGES = ("generate", "filter", "score", "train", "evaluate", "publish")
DEFAULT_STAGES = ("generate", "filter", "train", "evaluate", "publish")
"""`score` runs only when a recipe lists it (soft labels for traces that have none, or another teacher's)."""

# The user turn of the R1 evaluation protocol. "{problem}" is substituted with str.replace, so
# literal braces such as \boxed{} need no escaping in recipes.
R1_PROMPT = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{}."

# The choices of registered names are the registries' keys (distillkit/registry.py), so registering one there makes
# it a valid value here; a Literal keeps the choices in the schema and in pydantic's error for an unknown name.
TeacherBackendName = Literal[tuple(TEACHER_BACKENDS)]
DivergenceName = Literal[tuple(DIVERGENCES)]


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors; `renamed` maps old keys to new ones."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)
    renamed: ClassVar[dict[str, str]] = {}


# ----------------------------------------------------------------------------------------- generate

SOFT_LABEL_SAMPLES = 32
"""Default draws per position of sampled soft labels: ~13 bytes per token on real traces, a third of top-20's
(see `ScoreConfig.soft_label_samples`)."""


class VllmConfig(StrictModel):
    """Options of the vLLM offline engine (passed through to `vllm.LLM`)."""

    tensor_parallel_size: PositiveInt = 1
    """GPUs per model replica (tensor parallel)."""
    data_parallel_size: PositiveInt = 1
    """Independent replicas; prompts are split between them."""
    pipeline_parallel_size: PositiveInt = 1
    """Pipeline stages; with several nodes use distributed_executor_backend=ray."""
    distributed_executor_backend: Optional[Literal["mp", "ray"]] = None
    """`ray` for multi-node runs; `mp` (or unset) on one node."""
    max_model_len: Optional[PositiveInt] = None
    """Context length of the engine (prompt + completion); unset = the model's."""
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    """Share of GPU memory vLLM may take."""
    enforce_eager: bool = False
    """Disable CUDA graphs (always on for CPU)."""
    dtype: str = "auto"
    """Weights dtype: auto, bfloat16, float16, float32. auto = the checkpoint's dtype, except on a CPU
    without native bf16 (no AVX512-BF16/AMX), where distillkit picks float32 (2.7x faster than emulated
    bf16; twice the memory: set bfloat16 to trade speed for memory)."""
    max_logprobs: PositiveInt = 20
    """Largest top-k of logprobs the engine will return."""
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Anything else for `vllm.LLM(...)`, passed through unchanged."""


class OpenAIEndpointConfig(StrictModel):
    """A teacher behind an OpenAI-compatible server (vllm serve, SGLang, a hosted R1 API)."""

    base_url: str = "http://127.0.0.1:8000/v1"
    """Server base URL including /v1."""
    model: Optional[str] = None
    """Model name the server expects; defaults to generate.teacher.model."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (never written anywhere)."""
    max_concurrency: PositiveInt = 16
    """Requests in flight at once."""
    timeout_s: PositiveFloat = 600.0
    """Per-request timeout in seconds."""
    max_retries: NonNegativeInt = 5
    """Retries with exponential backoff on timeouts, 429 and 5xx."""
    api: Literal["chat", "completions"] = "chat"
    """chat: /v1/chat/completions; completions: render the template locally and use /v1/completions."""
    serve: bool = False
    """Start a local vLLM server for `teacher.model` on a free port (base_url is then ignored) and stop it
    at the end: the served path on one machine, e.g. to keep the teacher in its own process."""


class TeacherConfig(StrictModel):
    model: str = "builtin:smollm2-135m-instruct"
    """Hub id, local folder, .gguf file, or builtin:smollm2-135m-instruct (shipped in a PyPI package)."""
    backend: TeacherBackendName = "vllm"
    """vllm: offline engine (default); openai: an OpenAI-compatible endpoint; transformers: generate()."""
    vllm: VllmConfig = Field(default_factory=VllmConfig)
    openai: OpenAIEndpointConfig = Field(default_factory=OpenAIEndpointConfig)


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


class GenerateConfig(StrictModel):
    renamed: ClassVar[dict[str, str]] = {"samples_per_prompt": "sampling.n"}

    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
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


# ----------------------------------------------------------------------------------------- filter


class VerifierSpec(BaseModel):
    """One verifier in the filter chain: `kind` names it, the other keys are its parameters."""

    model_config = ConfigDict(extra="allow")
    kind: str
    """Registered verifier name (see `distillkit filter --help`)."""
    on_cannot_judge: Optional[Literal["keep", "reject"]] = None
    """A record this verifier cannot judge (no gold answer, no tests, an unparseable judge reply) is kept or
    rejected. Default: reject for `judge` (deciding is its only job), keep for the others."""

    @property
    def rejects_unjudged(self) -> bool:
        return (self.on_cannot_judge or ("reject" if self.kind == "judge" else "keep")) == "reject"

    @model_validator(mode="after")
    def _known_kind(self):
        from distillkit.registry import validate_spec  # light: names and param models only

        validate_spec(self.kind, self.model_extra or {})
        return self

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def _default_verifiers() -> list[VerifierSpec]:
    return [VerifierSpec(kind=k) for k in ("truncation", "format", "math", "language", "repetition", "length")]


class NearDedupConfig(StrictModel):
    enabled: bool = True
    threshold: float = Field(0.9, gt=0, le=1)
    """Jaccard similarity above which two traces are near duplicates."""
    num_perm: PositiveInt = 128
    ngram: PositiveInt = 5


class DedupConfig(StrictModel):
    exact: bool = True
    near: NearDedupConfig = Field(default_factory=NearDedupConfig)
    scope: Literal["prompt", "global"] = "prompt"
    """Compare traces of the same prompt only, or all traces with each other."""


class BenchmarkSource(StrictModel):
    path: Optional[str] = None
    """Local file of benchmark problems: .jsonl/.json/.parquet/.csv (read `column`) or .txt (one per line)."""
    hub_dataset: Optional[str] = None
    hub_config: Optional[str] = None
    split: str = "test"
    column: str = "problem"
    name: Optional[str] = None
    """Label in the funnel report (defaults to the path or Hub id)."""

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.hub_dataset is None):
            raise ValueError("set exactly one of `path` (a local file) or `hub_dataset` (a Hub dataset id)")
        return self

    @property
    def label(self) -> str:
        return self.name or self.path or self.hub_dataset or "benchmark"


class DecontaminateConfig(StrictModel):
    enabled: bool = False
    ngram: PositiveInt = 8
    """Drop a prompt sharing any n-gram of this many words with a benchmark problem (open-r1 uses 8)."""
    benchmarks: list[BenchmarkSource] = Field(default_factory=list)


class SelectionConfig(StrictModel):
    """Which prompts and traces to keep once the verifiers have spoken, in this order: the difficulty band,
    the share of each difficulty bin, then `policy` within each remaining prompt.

    A prompt's difficulty is the teacher's pass rate on it: of its n samples, the share no verifier rejected
    (the filter manifest's `stats.pass_rates`)."""

    policy: Literal["all", "max_k", "shortest"] = "all"
    """all: every passing sample; max_k: at most k per prompt; shortest: the shortest passing one."""
    k: PositiveInt = 1
    min_pass_rate: float = Field(0.0, ge=0, le=1)
    """Drop prompts the teacher solves less often than this (0 keeps all)."""
    max_pass_rate: float = Field(1.0, gt=0, le=1)
    """Drop prompts the teacher solves more often than this (1 keeps all; e.g. 0.99 drops the ones it always
    solves: too easy to teach)."""
    bins: Optional[list[float]] = None
    """Edges of difficulty bins over the pass rate, from 0 to 1, e.g. [0, 0.25, 0.5, 0.75, 1]; bins are
    [lo, hi) except the last, [lo, 1]. With `bin_shares`."""
    bin_shares: Optional[list[float]] = None
    """Share of each bin's prompts to keep (one per bin, each in [0, 1]), e.g. [1, 1, 0.5, 0.2] keeps every
    hard prompt and a fifth of the easy ones. Which prompts: a hash of the prompt id with `seed` (stable
    across runs, shards and machines)."""
    seed: int = 0
    """Seed of the bin-share choice."""

    @model_validator(mode="after")
    def _band_and_bins(self):
        if self.min_pass_rate > self.max_pass_rate:
            raise ValueError(f"min_pass_rate {self.min_pass_rate} > max_pass_rate {self.max_pass_rate} keeps no "
                             "prompt; the band is [min_pass_rate, max_pass_rate]")
        if (self.bins is None) != (self.bin_shares is None):
            raise ValueError("set both `bins` (edges from 0 to 1) and `bin_shares` (one share per bin), or neither")
        if self.bins is None:
            return self
        e = self.bins
        if len(e) < 2 or e[0] != 0 or e[-1] != 1 or any(b <= a for a, b in zip(e, e[1:])):
            raise ValueError(f"bins {e}: edges must rise strictly from 0 to 1, e.g. [0, 0.25, 0.5, 0.75, 1]")
        if len(self.bin_shares) != len(e) - 1:
            raise ValueError(f"bin_shares has {len(self.bin_shares)} values for {len(e) - 1} bins {e}: give one "
                             "share per bin")
        if any(not 0 <= x <= 1 for x in self.bin_shares):
            raise ValueError(f"bin_shares {self.bin_shares}: every share is a fraction in [0, 1]")
        if not any(x > 0 and hi > self.min_pass_rate and lo <= self.max_pass_rate and hi > 0
                   for x, lo, hi in zip(self.bin_shares, e, e[1:])):
            raise ValueError(f"bin_shares {self.bin_shares} keep no prompt inside the band [min_pass_rate "
                             f"{self.min_pass_rate}, max_pass_rate {self.max_pass_rate}]")
        return self

    @property
    def by_difficulty(self) -> bool:
        return self.min_pass_rate > 0 or self.max_pass_rate < 1 or self.bins is not None


class FilterExecutorConfig(StrictModel):
    """Where the per-record work (verifiers, dedup keys) runs; dedup, selection and writing run once after it.

    Shards are the unit: a finished shard is never verified again, so a killed filter resumes."""

    kind: Literal["inline", "local", "slurm"] = "inline"
    """inline: shard after shard in this process (math and code verifiers still use `filter.num_workers`
    processes). local: datatrove's LocalPipelineExecutor, `workers` processes on this machine, each
    verifying whole shards. slurm: datatrove's SlurmPipelineExecutor, an array job verifying the shards
    and a dependent job for the global steps; `distillkit filter` submits them and returns (rerun it when
    they finish, or let the second job finish the stage); the run folder must be on a file system every node
    sees. Results are the same under every kind (the executor is not part of the stage's config hash)."""
    workers: PositiveInt = 2
    """Tasks running at once: processes on this machine (local), array tasks at a time (slurm)."""
    tasks: Optional[PositiveInt] = None
    """How many tasks share the shards (default: one per worker for local, one per shard for slurm)."""
    slurm: dict[str, Any] = Field(default_factory=dict)
    """Arguments of datatrove's SlurmPipelineExecutor: partition and time are required, e.g.
    {partition: cpu, time: "04:00:00", cpus_per_task: 4, mem_per_cpu_gb: 4, venv_path: .venv/bin/activate}."""

    @model_validator(mode="after")
    def _slurm_needs(self):
        if self.kind == "slurm":
            missing = [k for k in ("partition", "time") if k not in self.slurm]
            if missing:
                raise ValueError(f"filter.executor.kind=slurm needs filter.executor.slurm.{missing[0]} "
                                 "(e.g. slurm: {partition: cpu, time: \"04:00:00\"})")
        return self


class FilterConfig(StrictModel):
    verifiers: list[VerifierSpec] = Field(default_factory=_default_verifiers)
    """Ordered chain; a record is kept when no verifier fails it."""
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    decontaminate: DecontaminateConfig = Field(default_factory=DecontaminateConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    num_workers: PositiveInt = 2
    """Worker processes for math and code verification (in each executor task)."""
    executor: FilterExecutorConfig = Field(default_factory=FilterExecutorConfig)
    write_rejected: bool = True
    warn_cannot_judge: float = Field(0.2, ge=0, le=1)
    """Warn (CLI, manifest, report) when a verifier cannot judge more than this share of the records it saw."""
    stop_at_first_rejection: bool = False
    """Skip later verifiers once one rejects a record: faster, but rejected records then carry only
    the reasons found up to there (by default every verifier judges every record)."""


# ----------------------------------------------------------------------------------------- train


class StudentConfig(StrictModel):
    model: str = "builtin:smollm2-135m-instruct"
    """Hub id, folder, .gguf, or builtin:..."""
    keep_layers: Optional[str | list[int]] = None
    """Initialize by keeping some decoder layers: "every_other", "first:N", "last:N", "auto:N" or a list
    of indices. Which layers go matters more than how many (for SmolLM2, first:24 loses the arithmetic;
    see the quickstart). auto:N measures it: layers are dropped one at a time, each round the one whose
    absence costs the gold-answer tokens of kept traces least (distillkit/student/layers.py). A heuristic:
    on the quickstart auto:24 gave 19.2% after training vs 4.2% for first:24 and 40.0% for the
    hand-picked list (BENCHMARKS.md, Quickstart)."""
    tokenizer: Literal["auto", "own", "teacher", "map"] = "auto"
    """Whose special tokens the student trains with. teacher: the teacher's tokenizer and a reasoning-keeping
    template of its family (as DeepSeek gave its Qwen/Llama students R1's), embedding rows of the ids whose
    token changes re-initialised (distillkit/student/tokenizer.py); needs the same BPE. map: the student's own
    tokens and template, the teacher's special ids (think open/close, end of turn, BOS, pad) moved onto the
    student's by role in soft labels and trained ids (distillkit/student/special_map.py); needs the same BPE.
    own: the student's, nothing mapped. auto: map when both share a BPE, differ in special tokens and the
    student has reasoning tokens of its own (R1-Distill-Qwen -> Qwen3); teacher when it has none (R1-Distill ->
    Qwen2.5 / Llama 3.x); else own."""
    rope_theta: Optional[PositiveFloat] = None
    """RoPE base frequency override for training at a longer context than the student was made for
    (open-r1 trained Qwen2.5-Math-7B, 4,096 positions, with rope_theta 300000 at 32k). Saved in
    student_init's config and recorded in the model card."""
    rope_scaling: Optional[dict[str, Any]] = None
    """RoPE scaling override, merged into the config's RoPE settings, e.g. {rope_type: yarn, factor: 4.0,
    original_max_position_embeddings: 4096}."""
    max_position_embeddings: Optional[PositiveInt] = None
    """The context the student is saved for; required with rope_theta / rope_scaling."""

    @model_validator(mode="after")
    def _context_complete(self):
        if (self.rope_theta is not None or self.rope_scaling) and self.max_position_embeddings is None:
            raise ValueError("train.student.rope_theta / rope_scaling change the context the student handles; "
                             "also set train.student.max_position_embeddings (e.g. 32768) to the new length")
        return self


class LoraConfig(StrictModel):
    r: PositiveInt = 16
    """LoRA rank."""
    alpha: PositiveFloat = 32
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"


class QloraConfig(StrictModel):
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"


class ServedTeacherConfig(StrictModel):
    """A teacher behind a vLLM server (`train.kd.teacher_probs: served`): on-policy training sends the
    student's samples to it and trains on the top-k logprobs it returns (scored like `distillkit score`)."""

    model: Optional[str] = None
    """The served model (its tokenizer must be the student's); default generate.teacher.model."""
    openai: OpenAIEndpointConfig = Field(default_factory=OpenAIEndpointConfig)
    """Where the server is (base_url), or `serve: true` to start one for `model` on this machine."""
    topk: PositiveInt = Field(20, le=1024)
    """Teacher candidates per token (the loss is top-k with a tail bucket)."""


class KDConfig(StrictModel):
    """Soft-label distillation: loss = alpha*CE + (1-alpha)*T^2*D(teacher || student)."""

    enabled: bool = False
    alpha: float = Field(0.5, ge=0, le=1)
    """Weight of cross-entropy; 1 - alpha weights the divergence."""
    temperature: PositiveFloat = 1.0
    divergence: DivergenceName = "forward_kl"
    beta: float = Field(0.5, ge=0, le=1)
    """Generalized JSD interpolation (jsd only)."""
    teacher_probs: Literal["topk_renorm", "topk_tail", "sampled", "live", "served"] = "topk_tail"
    """topk_renorm: renormalize over stored top-k; topk_tail: keep the rest as one bucket; sampled: stored sampled
    labels (`soft_labels: sampled` in score or generate), forward KL to counts / N, unbiased in expectation; live: run
    the teacher beside the student; served: a vLLM server scores the student's samples (on-policy; top-k with a tail
    bucket)."""
    teacher_server: ServedTeacherConfig = Field(default_factory=ServedTeacherConfig)
    """The teacher's server for `teacher_probs: served`."""
    chunk_size: PositiveInt = 256
    """Tokens per chunk of the memory-bounded loss (256 keeps the peak ~0.1x of full logits; BENCHMARKS.md)."""
    cross_tokenizer: bool = False
    """Stored top-k of a teacher with another tokenizer: student tokens covering exactly one teacher token's
    bytes get its candidates mapped by spelling, the others a label chained from the teacher's rows along their
    bytes (distillkit.train.cross_tokenizer). Explicit, not automatic: the labels become an approximation, and
    preflight reports how good."""

    @model_validator(mode="after")
    def _sampled_is_forward_kl(self):
        if self.teacher_probs == "sampled" and self.divergence != "forward_kl":
            raise ValueError(f"kd.teacher_probs: sampled estimates the forward KL only (draws from the teacher do not "
                             f"give its probability at the student's tokens, which divergence={self.divergence} "
                             "needs); set kd.divergence: forward_kl, or use top-k labels")
        return self

    @model_validator(mode="after")
    def _cross_tokenizer_is_stored(self):
        if self.cross_tokenizer and self.teacher_probs == "sampled":
            raise ValueError("kd.cross_tokenizer maps stored top-k soft labels, and distillkit does not map sampled "
                             "ones (N draws at one teacher position do not chain along a student token that spans "
                             "several). Score the traces with top-k labels (score.soft_labels: topk) and set "
                             "kd.teacher_probs: topk_tail, or keep sampled labels with a student of the teacher's "
                             "tokenizer (cross_tokenizer: false)")
        if self.cross_tokenizer and self.teacher_probs not in ("topk_renorm", "topk_tail"):
            raise ValueError(f"kd.cross_tokenizer maps stored top-k soft labels; kd.teacher_probs={self.teacher_probs} "
                             "needs the student's own vocabulary. Use teacher_probs: topk_tail, or cross_tokenizer: false")
        return self


class OnPolicyConfig(StrictModel):
    enabled: bool = False
    lmbda: float = Field(1.0, ge=0, le=1)
    """Fraction of batches generated by the student (TRL GKD/Distillation lmbda)."""
    max_new_tokens: PositiveInt = 256


MIXTURE_STAGES = ("generate", "filter")
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


class SourceColumnsConfig(StrictModel):
    """Where a chat-format file or Hub dataset keeps its conversations (unset: a `messages` column)."""

    messages: Optional[str] = None
    """Column of chats [{"role", "content"}, ...]; the last turn (the assistant's) is the trained one."""
    prompt: Optional[str] = None
    """Column of user prompts (plain text), paired with `response`; use instead of `messages`."""
    response: Optional[str] = None
    """Column of assistant answers (plain text), paired with `prompt`."""

    @model_validator(mode="after")
    def _messages_or_pair(self):
        if (self.prompt is None) != (self.response is None):
            raise ValueError("set both `prompt` and `response` (two text columns), or neither")
        if self.messages is not None and self.prompt is not None:
            raise ValueError("set either `messages` (a chat column) or `prompt` and `response`, not both")
        return self

    @property
    def mode(self) -> Literal["messages", "pair"]:
        return "pair" if self.prompt is not None else "messages"

    @property
    def required(self) -> list[str]:
        return [self.prompt, self.response] if self.prompt is not None else [self.messages or "messages"]


class MixtureSourceConfig(StrictModel):
    """One source of the training mixture (an entry of `train.sources`).

    `path` is one of:
      - `stage:filter` or `stage:generate`: that stage's output in this run (trace records);
      - a folder holding a stage output (shard-*.parquet), e.g. another run's `runs/x/filter`;
      - a local `.jsonl` / `.json` / `.parquet` file in chat format (see `columns`);
      - anything else is a Hub dataset name, loaded with `datasets.load_dataset(path, config, split=split)`.
    """

    path: str
    """stage:filter, stage:generate, a stage output folder, a .jsonl/.json/.parquet file, or a Hub dataset name."""
    name: Optional[str] = None
    """Label in the manifest and model card; default: the stage name, the file's stem, or the Hub id."""
    kind: Literal["reasoning", "non_reasoning"] = "reasoning"
    """reasoning: train on the reasoning and the answer; non_reasoning: a direct answer (see reasoning_format)."""
    weight: Optional[NonNegativeFloat] = None
    """Share of the weighted part of the mixture (relative to the other weights); set this or `count`."""
    count: Optional[NonNegativeInt] = None
    """Exact number of samples to take from this source; set this or `weight`."""
    upsample: bool = False
    """Allow repeating samples when the mixture asks for more than the source has (otherwise that is an error)."""
    config: Optional[str] = None
    """Hub dataset configuration (Hub datasets only)."""
    split: str = "train"
    """Hub dataset split (Hub datasets only)."""
    columns: SourceColumnsConfig = Field(default_factory=SourceColumnsConfig)
    """Columns of a chat-format file or Hub dataset (stage outputs have fixed columns)."""
    reasoning_format: Optional[Literal["empty", "none"]] = None
    """non_reasoning only. empty (default): the answer follows an empty "<think>\\n\\n</think>\\n\\n" block, as
    R1-distill students answer directly; none: the answer alone."""

    @property
    def is_stage(self) -> bool:
        return self.path.startswith("stage:")

    @property
    def is_file(self) -> bool:
        return Path(self.path).suffix.lower() in DATA_SUFFIXES

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.is_stage:
            return self.path.removeprefix("stage:")
        if self.is_file:
            return Path(self.path).stem
        base = self.path.rstrip("/")
        return f"{base}:{self.config}" if self.config else base

    @property
    def answer_prefix(self) -> str:
        """Text put before a non-reasoning answer (nothing for reasoning sources)."""
        if self.kind == "reasoning" or self.reasoning_format == "none":
            return ""
        return "<think>\n\n</think>\n\n"

    @model_validator(mode="after")
    def _check(self):
        problems = []
        if (self.weight is None) == (self.count is None):
            problems.append("set exactly one of `weight` (a share of the mixture) or `count` (a number of samples)")
        if self.is_stage:
            stage = self.path.removeprefix("stage:")
            if stage not in MIXTURE_STAGES:
                problems.append(f"path {self.path!r} names no stage with records; use "
                                f"{' or '.join('stage:' + s for s in MIXTURE_STAGES)}")
            if self.kind != "reasoning":
                problems.append("stage outputs hold reasoning traces; use kind: reasoning for a stage: path")
            if "columns" in self.model_fields_set:
                problems.append("stage outputs have fixed columns; remove `columns` for a stage: path")
        if (self.is_stage or self.is_file) and ({"config", "split"} & self.model_fields_set):
            problems.append("`config` and `split` apply to Hub datasets only; remove them for a stage or a file")
        if self.kind == "reasoning" and self.reasoning_format is not None:
            problems.append("reasoning_format applies to kind: non_reasoning only; remove it")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class TrainConfig(StrictModel):
    """Training of the student.

    `sources` builds the training set from several sources (an empty list, the default, trains on the
    filter stage's kept records, or the generate output without a filter stage). Each source gives a
    `count` (exact number of samples) or a `weight`. Counted sources contribute exactly their count;
    weighted sources share the rest in proportion to their weights, with largest-remainder rounding so
    the counts sum exactly. The rest is `mixture_size` minus the counts; without `mixture_size` it is the
    largest size no weighted source must repeat samples for (the most limiting source sets it). Asking a
    source for more samples than it has is an error unless it sets `upsample: true`. Refer to this run's
    own stage outputs as `path: stage:filter` / `stage:generate`. Example:

        sources:
          - {path: stage:filter, weight: 0.8}
          - {path: data/chat.jsonl, kind: non_reasoning, weight: 0.2}
    """

    renamed: ClassVar[dict[str, str]] = {"lora_r": "lora.r", "epochs": "num_train_epochs"}

    mixture_size: Optional[PositiveInt] = None
    """Total samples of the mixture (counts included); unset = sized by the most limiting weighted source."""
    sources: list[MixtureSourceConfig] = Field(default_factory=list)
    """Training mixture; empty = the filter stage's kept records (see the class docstring)."""
    student: StudentConfig = Field(default_factory=StudentConfig)
    method: Literal["full", "lora", "qlora"] = "lora"
    lora: LoraConfig = Field(default_factory=LoraConfig)
    qlora: QloraConfig = Field(default_factory=QloraConfig)
    kd: KDConfig = Field(default_factory=KDConfig)
    on_policy: OnPolicyConfig = Field(default_factory=OnPolicyConfig)
    learning_rate: PositiveFloat = 1e-5
    num_train_epochs: PositiveFloat = 3.0
    per_device_train_batch_size: PositiveInt = 1
    gradient_accumulation_steps: PositiveInt = 8
    max_length: Optional[PositiveInt] = 16384
    """Longest training sequence in tokens (prompt + trace)."""
    packing: bool = True
    gradient_checkpointing: bool = True
    bf16: Optional[bool] = None
    """None = use bf16 where the hardware supports it."""
    seed: int = 42
    save_steps: PositiveInt = 500
    logging_steps: PositiveInt = 10
    report_to: list[str] = Field(default_factory=lambda: ["none"])
    """Loggers for the loss curves (transformers' report_to): e.g. tensorboard (event files under
    train/checkpoints/runs/), wandb, mlflow, trackio; each needs its package installed (preflight checks)."""
    resume: bool = True
    """After an interrupted run of the same config, continue from its last checkpoint (rerun the same
    command; every `save_steps`); false discards the checkpoints and starts over. A changed config is
    refused, not resumed (--overwrite starts over)."""
    accelerate_config: Optional[str] = None
    """An accelerate config file (DDP/FSDP/ZeRO-3); `distillkit train` then launches through accelerate."""
    num_processes: Optional[PositiveInt] = None
    sft_args: dict[str, Any] = Field(default_factory=dict)
    """Any other trl.SFTConfig argument, passed through unchanged."""
    save_merged: bool = True
    """With LoRA/QLoRA, also save the adapter merged into the base model."""

    @field_validator("sources")
    @classmethod
    def _mixture_is_possible(cls, sources: list[MixtureSourceConfig], info) -> list[MixtureSourceConfig]:
        if not sources:
            return sources
        problems = []
        labels = [s.label for s in sources]
        repeated = sorted({n for n in labels if labels.count(n) > 1})
        if repeated:
            problems.append(f"source names {repeated} repeat; give each source a distinct `name`")
        weighted = [s for s in sources if s.weight is not None]
        counted = [s for s in sources if s.count is not None]
        if weighted and sum(s.weight for s in weighted) <= 0:
            problems.append(f"the weights of {[s.label for s in weighted]} sum to 0; give at least one a weight > 0 "
                            "(or remove the zero-weight sources)")
        size = info.data.get("mixture_size")
        num_counted = sum(s.count for s in counted)
        if size is not None and num_counted > size:
            problems.append(f"the counts sum to {num_counted}, more than train.mixture_size={size}; "
                            "raise mixture_size or lower the counts")
        if not weighted and size is not None and num_counted != size:
            problems.append(f"every source has a count (sum {num_counted}), so train.mixture_size={size} cannot "
                            "be met; remove mixture_size or give a source a weight")
        if not weighted and counted and num_counted == 0:
            problems.append("every count is 0: the mixture would be empty; give a source a count > 0")
        if problems:
            raise ValueError("; ".join(problems))
        return sources

    @model_validator(mode="after")
    def _size_needs_sources(self):
        if self.mixture_size is not None and not self.sources:
            raise ValueError("mixture_size sizes a mixture of train.sources, and none are listed; add sources "
                             "or remove mixture_size")
        return self

    @model_validator(mode="after")
    def _kd_needs_alpha(self):
        if self.kd.enabled and self.kd.alpha == 1.0:
            raise ValueError("kd.enabled with kd.alpha=1.0 trains on CE only; lower kd.alpha or disable kd")
        return self

    @model_validator(mode="after")
    def _served_is_on_policy(self):
        if self.kd.teacher_probs == "served" and not (self.on_policy.enabled and self.on_policy.lmbda == 1.0):
            raise ValueError("kd.teacher_probs: served scores the student's own samples: set on_policy.enabled: true "
                             "with on_policy.lmbda: 1. For soft labels on stored traces run the `score` stage "
                             "(add it to `stages`) and keep teacher_probs: topk_tail")
        return self


# ----------------------------------------------------------------------------------------- evaluate


class EvaluateConfig(StrictModel):
    models: list[Literal["teacher", "student_before", "student_after"]] = Field(
        default_factory=lambda: ["teacher", "student_before", "student_after"])
    tasks: list[str] = Field(default_factory=lambda: ["r1_aime24", "r1_aime25", "r1_math500"])
    """lm-eval task names. distillkit's R1-protocol tasks (r1_aime24, r1_aime25, r1_math500, r1_gpqa_diamond:
    R1's zero-shot prompt, the boxed answer read after </think>; GPQA's dataset is gated), its local
    distillkit_arith, a folder of your own (`include_path`), or lm-eval's built-ins by name (aime24,
    minerva_math500, ...: written for other prompt formats; a warning names those whose reported metric
    cannot read a boxed answer)."""
    include_path: Optional[str] = None
    """Extra folder of lm-eval task YAMLs."""
    backend: Literal["vllm", "hf", "local-completions"] = "vllm"
    num_samples: PositiveInt = 4
    """k samples per question; pass@1 is averaged over them (R1 used 64)."""
    temperature: NonNegativeFloat = 0.6
    top_p: float = Field(0.95, gt=0, le=1)
    max_gen_toks: PositiveInt = 32768
    gen_prefix: Optional[str] = "auto"
    """Text every answer is forced to start with, after the chat template (the R1 protocol forces
    "<think>\n"). auto: the recipe's `generate.prompts.prefill`, so teacher and students answer as the
    teacher was prompted for the traces and the students were trained; null: none."""
    limit: Optional[PositiveInt] = None
    """Evaluate only the first N questions of each task."""
    batch_size: str | int = "auto"
    model_args: dict[str, Any] = Field(default_factory=dict)
    """Extra lm-eval model_args, passed through."""


# ----------------------------------------------------------------------------------------- publish


class PublishConfig(StrictModel):
    model_repo: Optional[str] = None
    """Hub repo id for the student, e.g. you/qwen-1.5b-r1-distill."""
    dataset_repo: Optional[str] = None
    """Hub repo id for the kept traces."""
    private: bool = True
    """Create the repos private (an existing repo keeps its visibility)."""
    upload: Literal["adapter", "merged", "both"] = "merged"
    """merged: full weights (the adapter merged in with LoRA); adapter: the PEFT adapter only; both: merged + adapter/."""
    license: str = "apache-2.0"
    """SPDX-style license id written into both cards; check it against the teacher's and the student's licenses."""
    include_rejected: bool = False
    """Also upload the rejected traces (with their reasons) as the dataset's `rejected` configuration."""


# ----------------------------------------------------------------------------------------- root


class HardwareConfig(StrictModel):
    """The GPUs a recipe is written for; `distillkit plan` checks the estimates against them."""

    gpu_memory_gib: PositiveFloat = 24.0
    """Memory of one GPU in GiB (24 for an RTX 3090/4090, 80 for an A100/H100)."""
    num_gpus: PositiveInt = 1


# ----------------------------------------------------------------------------------------- score


class ScoreConfig(StrictModel):
    """Teacher scoring: the teacher's top-k logprobs (or sampled soft labels) at every completion token of existing
    traces.

    One prefill pass per trace (vLLM `prompt_logprobs`, or a transformers forward), written in the trace schema with
    the same soft labels as generate captures (`soft_label_format`). The logprobs are raw (the model's
    distribution before temperature and top-p), as generate's default `logprobs_mode: raw_logprobs`; sampled labels
    (`soft_labels: sampled`) are drawn from the raw distribution tempered by `soft_label_temperature`."""

    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    """The scoring teacher; backend vllm (in-process), openai (a vLLM server: at base_url, or started
    with `openai.serve: true`) or transformers (one forward per trace in this process: full logits, the backend of
    `soft_labels: sampled`). Its tokenizer and chat template tokenize the traces."""
    input: str = "auto"
    """auto: this run's filter output (its generate output without a filter stage); stage:generate or
    stage:filter; another run's stage folder; a .jsonl/.json/.parquet chat file; or a Hub dataset name."""
    columns: SourceColumnsConfig = Field(default_factory=SourceColumnsConfig)
    """Columns of a chat file or Hub dataset: `messages` (last turn the assistant's), or `prompt`/`response`."""
    config: Optional[str] = None
    """Hub dataset configuration."""
    split: str = "train"
    """Hub dataset split."""
    prefill: Optional[str] = "<think>\n"
    """Chat rows whose answer starts with this text get it as the prefill (the prompt's end, as generate
    forces it), so an R1 template that opens the think block itself does not see it twice."""
    topk: PositiveInt = Field(20, le=1024)
    """Candidates kept per token (k of the stored soft labels)."""
    soft_label_format: Literal["packed-v1", "fp16"] = "packed-v1"
    """How the soft labels are stored, as `generate.soft_label_format` (packed-v1 holds k <= 254)."""
    soft_labels: Literal["topk", "sampled"] = "topk"
    """topk: the teacher's `topk` most likely tokens with their logprobs (the tail lumped in one bucket by the loss);
    sampled: `soft_label_samples` tokens drawn from the teacher's distribution softmax(logits / soft_label_temperature)
    at each position, stored as the distinct ids with their counts plus the trace token's own logprob (`sampled-v1`,
    distillkit/softlabels/sampled.py). counts / N is an unbiased estimate of the whole distribution, so the
    `train.kd.teacher_probs: sampled` loss has the full forward-KL gradient as its expectation, which top-k does not
    (Anshumann et al. 2025). Needs teacher.backend: transformers (full logits); draws are seeded by `seed` and each
    trace's tokens, so reruns and resumed runs draw the same."""
    soft_label_samples: int = Field(SOFT_LABEL_SAMPLES, ge=1, le=MAX_SAMPLES)
    """Draws per position N for soft_labels: sampled. Measured on SmolLM2-135M traces (BENCHMARKS.md, "Sampled soft
    labels"): 5.7 / 8.4 / 12.9 / 19.3 bytes per token at N = 8 / 16 / 32 / 64 (2.9 / 4.3 / 6.4 / 9.4 distinct ids per
    position), against 14.7 / 29.8 / 60.5 / 116 for top-k at k = N and ~36 for top-20. The default 32 costs a third of
    top-20's bytes; each estimated probability's standard error is sqrt(p(1-p)/N), halved by 4x the draws."""
    soft_label_temperature: PositiveFloat = 1.0
    """The draws come from softmax(logits / this): 1 is the model's raw distribution, as top-k labels store; set it
    to `train.kd.temperature` for tempered KD (the loss then tempers the student only)."""
    shard_size: PositiveInt = 256
    """Records per output shard; a killed run redoes at most one shard."""
    limit: Optional[PositiveInt] = None
    """Score only the first N records."""

    @field_validator("teacher")
    @classmethod
    def _backend(cls, teacher: TeacherConfig) -> TeacherConfig:
        if teacher.backend not in SCORERS:
            raise ValueError(f"backend: {teacher.backend!r} has no scorer; scoring runs on {' or '.join(SCORERS)}; "
                             "set score.teacher.backend to one of them")
        return teacher

    @model_validator(mode="after")
    def _sampled_labels(self):
        # Checked on values, not on the keys given: a dumped config (replicas, manifests) gives every key.
        if self.soft_labels == "topk":
            extra = [k for k, default in (("soft_label_samples", SOFT_LABEL_SAMPLES), ("soft_label_temperature", 1.0))
                     if getattr(self, k) != default]
            if extra:
                raise ValueError(f"{', '.join(extra)} set the draws of soft_labels: sampled, and soft_labels is topk; "
                                 "set soft_labels: sampled, or remove them (top-k's width is `topk`)")
            return self
        if not load_scorer(self.teacher.backend).draws_sampled_labels:
            able = [name for name in SCORERS if load_scorer(name).draws_sampled_labels]
            raise ValueError(f"soft_labels: sampled draws from the teacher's whole distribution, and "
                             f"teacher.backend={self.teacher.backend} returns only its top-k logprobs; set "
                             f"score.teacher.backend: {' or '.join(able)} (one forward per trace, full logits)")
        extra = [k for k in ("topk", "soft_label_format") if getattr(self, k) != type(self).model_fields[k].default]
        if extra:
            raise ValueError(f"{', '.join(extra)} only configure top-k labels, and soft_labels is sampled (written "
                             "as sampled-v1, soft_label_samples draws per token); remove them")
        return self

    @property
    def label_format(self) -> str:
        """How this stage stores its soft labels: "sampled-v1" or `soft_label_format`."""
        return "sampled-v1" if self.soft_labels == "sampled" else self.soft_label_format

    @property
    def label_width(self) -> int:
        """Width of the stored rows: `topk`, or `soft_label_samples` for sampled labels."""
        return self.soft_label_samples if self.soft_labels == "sampled" else self.topk

    @model_validator(mode="after")
    def _packed_width(self):
        if self.soft_label_format == "packed-v1" and self.topk > MAX_K:
            raise ValueError(f"topk={self.topk}: soft_label_format packed-v1 stores at most {MAX_K} candidates "
                             "per token; lower it or set soft_label_format: fp16")
        return self


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
        """The teacher whose soft labels training uses: the scoring teacher when `score` runs, else generate's."""
        return self.score.teacher if "score" in self.stages else self.generate.teacher


# ----------------------------------------------------------------------------------------- loading

_SCALAR = re.compile(r"^[A-Za-z_][\w-]*$")


def _fmt_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _submodel(annotation) -> type[StrictModel] | None:
    """The StrictModel class inside an annotation (Optional[X], list[X]), or None."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _submodel(arg)
        if found:
            return found
    return None


def _apply_renames(model: type[BaseModel], data: Any, loc: tuple, problems: list[str]) -> Any:
    """Report renamed keys (with their new name) and drop them, recursively, before validation."""
    if isinstance(data, list):
        return [_apply_renames(model, item, loc + (i,), problems) for i, item in enumerate(data)]
    if not isinstance(data, dict):
        return data
    renamed = getattr(model, "renamed", {})
    out = {}
    for key, value in data.items():
        if key in renamed:
            problems.append(f"{_fmt_path(loc + (key,))}: this key was renamed; use "
                            f"`{_fmt_path(loc + tuple(renamed[key].split('.')))}` instead")
            continue
        field = model.model_fields.get(key) if isinstance(key, str) else None
        sub = _submodel(field.annotation) if field else None
        out[key] = _apply_renames(sub, value, loc + (key,), problems) if sub else value
    return out


def _field_names(model: type[BaseModel], loc: tuple) -> list[str]:
    """Valid keys at `loc` (for "did you mean")."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        sub = _submodel(field.annotation) if field else None
        if sub is None:
            return []
        model = sub
    return list(model.model_fields)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _explain(err: dict, root: type[BaseModel]) -> str:
    loc = tuple(err["loc"])
    path = _fmt_path(loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        valid = _field_names(root, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f"did you mean `{_fmt_path(loc[:-1] + (close[0],))}`?" if close else \
            f"valid keys here: {', '.join(valid)}"
        return f"{path}: unknown key; {hint}"
    if kind == "missing":
        return f"{path}: required key is missing; add it"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return f"{path}={_short(err.get('input'))}: {msg}"


def _find_cycle(data: Any, loc: tuple = (), active: tuple = ()) -> tuple | None:
    """Where a value contains itself (YAML `&a [*a]`), or None; shared, non-cyclic aliases are fine."""
    if not isinstance(data, (dict, list)):
        return None
    if any(node is data for node in active):
        return loc
    for key, value in (data.items() if isinstance(data, dict) else enumerate(data)):
        found = _find_cycle(value, loc + (key,), active + (data,))
        if found is not None:
            return found
    return None


def validate_recipe(data: Any, source: str | None = None) -> RecipeConfig:
    """Validate a parsed recipe; raise ConfigError listing every problem (path, bad value, fix)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"(top level): expected a mapping of keys, got {type(data).__name__}"], source)
    cycle = _find_cycle(data)
    if cycle is not None:
        raise ConfigError([f"{_fmt_path(cycle)}: this value contains itself (a YAML alias *x inside its own "
                           "anchor &x); write the value out instead"], source)
    problems: list[str] = []
    data = _apply_renames(RecipeConfig, data, (), problems)
    try:
        cfg = RecipeConfig.model_validate(data)
    except ValidationError as e:
        problems += [_explain(err, RecipeConfig) for err in e.errors()]
        cfg = None
    if problems:
        raise ConfigError(problems, source)
    return cfg


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """"train.lora.r=32" -> (["train", "lora", "r"], 32); values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError([f"override {text!r}: expected KEY=VALUE, e.g. train.lora.r=32"])
    key, _, raw = text.partition("=")
    parts: list[str | int] = [int(p) if p.isdigit() else p for p in key.strip().split(".")]
    if not parts or any(p == "" for p in parts):
        raise ConfigError([f"override {text!r}: empty key segment"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, RecursionError):  # kept as text: validation names the key that takes no such string
        value = raw
    return parts, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            nxt = parts[i + 1]
            if isinstance(node, list):
                if not isinstance(part, int) or part >= len(node):
                    raise ConfigError([f"override {text!r}: index {part} is out of range"])
                if not isinstance(node[part], (dict, list)):  # a scalar item: replaced, as in a mapping below
                    node[part] = [] if isinstance(nxt, int) else {}
                node = node[part]
                continue
            if not isinstance(node.get(part), (dict, list)):
                node[part] = [] if isinstance(nxt, int) else {}
            node = node[part]
        last = parts[-1]
        if isinstance(node, list):
            if not isinstance(last, int) or last > len(node):
                raise ConfigError([f"override {text!r}: index {last} is out of range"])
            node[last:last + 1] = [value]
        else:
            node[last] = value
    return data


BUILTIN_RECIPES = Path(__file__).parent / "recipes"


def resolve_recipe_path(recipe: str | os.PathLike | None) -> Path:
    """A recipe argument: a file path, or the name of a built-in recipe (default: quickstart)."""
    if recipe is None:
        return BUILTIN_RECIPES / "quickstart.yaml"
    path = Path(recipe)
    if path.exists():
        return path
    builtin = BUILTIN_RECIPES / f"{recipe}.yaml"
    if builtin.exists() and not path.suffix:
        return builtin
    raise DistillkitError(f"recipe {str(recipe)!r} not found: give a YAML file path, or one of the "
                          f"built-in recipes {[p.stem for p in sorted(BUILTIN_RECIPES.glob('*.yaml'))]}")


def load_recipe(recipe: str | os.PathLike | None = None, overrides: list[str] | None = None) -> RecipeConfig:
    """Read a recipe YAML (or a built-in name), apply `key=value` overrides, validate everything."""
    path = resolve_recipe_path(recipe)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise DistillkitError(f"{path}: invalid YAML{where}: {getattr(e, 'problem', e)}") from None
    except OSError as e:
        raise DistillkitError(f"{path}: cannot read recipe ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise DistillkitError(f"{path}: not a text file (byte {e.object[e.start]:#04x} at offset {e.start} is not "
                              "UTF-8); a recipe is a YAML text file") from None
    except RecursionError:
        raise DistillkitError(f"{path}: YAML nested too deeply to read; a recipe is a few levels of keys") from None
    if data is None:  # an empty file (or comments only) is a mistake, not a request for every default
        raise DistillkitError(f"{path}: the recipe is empty (no keys); write its keys (e.g. copy "
                              f"{BUILTIN_RECIPES / 'quickstart.yaml'}), or give no RECIPE for the built-in quickstart")
    if overrides:
        if not isinstance(data, dict):
            raise ConfigError([f"(top level): expected a mapping of keys, got {type(data).__name__}"], str(path))
        data = apply_overrides(data, overrides)
    return validate_recipe(data, source=str(path))

