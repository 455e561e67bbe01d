"""`train:`: the student, the method (full, LoRA, QLoRA), KD and on-policy distillation, the trainer's options."""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Optional

from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator

from distillkit.config.base import DivergenceName, StrictModel
from distillkit.config.sources import MixtureSourceConfig
from distillkit.config.teacher import OpenAIEndpointConfig


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
    """The teacher's server for `teacher_probs: served`. With several `generate.teachers` (and no `model` here) each
    prompt goes to its own teacher's server instead: `teacher_servers`, where a teacher not listed there gets this
    server's settings with its own model (a server started for it with `openai.serve: true`)."""
    teacher_servers: dict[str, ServedTeacherConfig] = Field(default_factory=dict)
    """Routed on-policy distillation: teacher name of `generate.teachers` -> its server (model default: that
    teacher's model). Each prompt's samples are scored by the server of the teacher that wrote its record (the
    record's routed teacher name), and every server's top-k is read on the student's ids as with one server (the
    teacher shares the student's vocabulary, or its specials are mapped). `topk` is `teacher_server.topk` for all.
    The servers run side by side; one started with `openai.serve: true` takes vLLM's default GPU memory share, so
    on one GPU point base_url at servers started with a fitting --gpu-memory-utilization."""
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
