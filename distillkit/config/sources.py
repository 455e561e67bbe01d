"""Where records come from besides this run's stages: a source of the training mixture (`train.sources`) and the
columns of a chat-format file or Hub dataset (`score.columns` too)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, NonNegativeFloat, NonNegativeInt, model_validator

from distillkit.config.base import StrictModel


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
