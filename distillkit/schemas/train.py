"""The train stage's manifest `stats`, defined once: the train stage writes them through `TrainStats`, and the
model card and the report read them through it (tests read the manifest's JSON, which is this, dumped).

    loss_curve     [{"step", "loss", "ce"?, "kl"? | "kl_sampled"?, "learning_rate"?, "num_input_tokens_seen"?}]  every
                   log; kl_sampled with sampled labels: KL(counts / N || student), above the KL by a teacher-set gap
    tokens_seen, tokens_per_s, train_seconds, global_steps, resumed_from, final_train_loss
    peak_memory    {"cpu_max_rss_bytes", "cuda_max_allocated_bytes"?}
    data           what the dataset builder reports (examples, tokens, soft-labelled tokens, truncation)
    mixture        {source: composition} with train.sources
    student_init   what student_init/ changed (layers, tokens and rows, template, context)
    method, bf16, kd (the KD config when on), num_processes, trainable_params, files {"model"|"adapter": folder}
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field


class LossPoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: int
    loss: float
    ce: Optional[float] = None
    kl: Optional[float] = None
    kl_sampled: Optional[float] = None
    """With `train.kd.teacher_probs: sampled`, instead of kl: KL(counts / N || student), biased up by a gap that does
    not depend on the student (distillkit/train/divergences.py)."""
    learning_rate: Optional[float] = None
    num_input_tokens_seen: Optional[int] = None


class TrainStats(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens_seen: int
    tokens_per_s: Optional[float]
    train_seconds: float
    global_steps: int
    resumed_from: Optional[str] = None
    final_train_loss: float
    loss_curve: list[LossPoint] = Field(default_factory=list)
    peak_memory: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    mixture: Optional[dict[str, Any]] = None
    student_init: dict[str, Any] = Field(default_factory=dict)
    method: str
    bf16: bool
    kd: Optional[dict[str, Any]] = None
    num_processes: int = 1
    distributed: Optional[dict[str, Any]] = None
    """What ran (distillkit.train.distributed.describe): type (NO, MULTI_CPU, MULTI_GPU, FSDP, DEEPSPEED),
    num_processes, mixed_precision, fsdp_version, sharded (share of trainable parameters held as shards)."""
    trainable_params: int
    files: dict[str, str] = Field(default_factory=dict)

    def dump(self) -> dict[str, Any]:
        """As written into the manifest (unset optional keys left out, as before this model existed)."""
        out = self.model_dump(mode="json")
        for key in ("mixture", "distributed"):
            if out[key] is None:
                out.pop(key)
        out["loss_curve"] = [{k: v for k, v in p.items() if v is not None} for p in out["loss_curve"]]
        return out

    @classmethod
    def of(cls, manifest) -> Optional["TrainStats"]:
        """The stats of a train manifest (None when there is none)."""
        return cls.model_validate(manifest.stats) if manifest is not None and manifest.stats else None
