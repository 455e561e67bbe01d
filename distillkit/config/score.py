"""`score:`: the teacher's soft labels (top-k or sampled) at every token of existing traces."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator

from distillkit.config.base import SOFT_LABEL_SAMPLES, StrictModel
from distillkit.config.sources import SourceColumnsConfig
from distillkit.config.teacher import TeacherConfig
from distillkit.registry import SCORERS, load_scorer
from distillkit.softlabels.codec import MAX_K  # packed-v1 holds k <= MAX_K (the sampled rank is a byte)
from distillkit.softlabels.sampled import MAX_SAMPLES  # sampled-v1 holds N <= MAX_SAMPLES draws (counts are bytes)


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
    `soft_labels: sampled`). Its tokenizer and chat template tokenize the traces. Leave it unset with `per_teacher`."""
    per_teacher: bool = False
    """Score each record with its own teacher of `generate.teachers` (the one named by the record: meta.teacher_name,
    else a teacher whose model is its `teacher` column) instead of `teacher` for all. The records are grouped by
    teacher, in the order of `generate.teachers`, and each group is scored by that teacher's engine alone (one
    engine at a time; its model, backend and engine options, under this section's other keys and backend rules), so
    output shards hold one teacher's records each: the first teacher's in input order, then the next one's. A record
    whose teacher is not among `generate.teachers` stops the stage with its id and teacher. Training then takes
    each record's labels as its `teacher` column's (the model that scored it)."""
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
        if not self.per_teacher and not load_scorer(self.teacher.backend).draws_sampled_labels:
            # (with per_teacher, RecipeConfig.score_for checks each teacher's engine instead)
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
