"""`publish:`: where the student and the kept traces are uploaded, and how."""

from __future__ import annotations

from typing import Literal, Optional

from distillkit.config.base import StrictModel


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
