"""The evaluate stage's output, `evaluate/results.json` (and `results/<model>.json`), defined once.

The stage writes it through these models and every reader (comparison.md, the model card, the HTML
report, publish) reads it through `EvalResults.read`: a field renamed here is renamed for all of them,
and a file in another shape fails loudly instead of showing "nothing" somewhere.

    {"protocol": Protocol, "models": {"teacher" | "student_before" | "student_after": ModelResult},
     "baselines": {task: Baseline}}
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import fmean, stdev
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from distillkit.errors import DistillkitError

MODEL_ORDER = ("teacher", "student_before", "student_after")
MODEL_LABELS = {"teacher": "teacher", "student_before": "student (before)", "student_after": "student (after)"}


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskScore(_Schema):
    """pass@1 of one task for one model (`protocol.summarize_samples` computes it from lm-eval's logged samples)."""

    task: str
    metric: str
    """The task's metric reported as pass@1."""
    filter: str
    num_questions: int
    num_samples: int
    """k: samples per question."""
    pass_at_1: float
    stderr: Optional[float]
    """Standard error of pass@1 over questions; None with fewer than 2 questions."""
    pass_at_k: Optional[float]
    """Share of questions with at least one correct sample (binary metrics only), else None."""
    per_question: dict[str, float] = Field(default_factory=dict)
    """doc_id -> that question's pass rate over its k samples (used for paired differences)."""

    def percent(self, pm: str = " ± ") -> str:
        """pass@1 in % ± its standard error, as comparison.md, the card and the report write it."""
        mean = f"{100 * self.pass_at_1:.1f}"
        return mean if self.stderr is None else f"{mean}{pm}{100 * self.stderr:.1f}"


class TaskInfo(_Schema):
    """What a task's numbers mean (`harness.describe_task`): two runs compare where these are equal."""

    version: Any = None
    source: Optional[str] = None
    dataset: Optional[str] = None
    dataset_config: Optional[str] = None
    split: Optional[str] = None
    num_fewshot: int = 0
    prompt: str = ""
    extraction: str = ""
    scored_text: str = ""
    metric: str = ""


class ModelResult(_Schema):
    """One evaluated model: its path, a score per task, and lm-eval's own aggregate (kept for reference)."""

    model: str
    tasks: dict[str, TaskScore]
    task_info: dict[str, TaskInfo] = Field(default_factory=dict)
    lm_eval: dict[str, Any] = Field(default_factory=dict)


class Protocol(_Schema):
    """How every model was evaluated (the R1 protocol's settings as run)."""

    backend: str
    num_samples: int
    temperature: float
    top_p: float
    max_gen_toks: int
    limit: Optional[int] = None
    chat_template: bool = True
    gen_prefix: Optional[str] = None
    seed: int = 0
    tasks: list[str] = Field(default_factory=list)
    task_info: dict[str, TaskInfo] = Field(default_factory=dict)


class Baseline(_Schema):
    """Always answering the most common gold answer of the questions (chosen in hindsight)."""

    answer: str
    pass_at_1: float
    num_questions: int


class EvalResults(_Schema):
    protocol: Protocol
    models: dict[str, ModelResult]
    baselines: dict[str, Baseline] = Field(default_factory=dict)

    def model_keys(self) -> list[str]:
        """The evaluated models in table order (teacher, student before, student after)."""
        return [m for m in MODEL_ORDER if m in self.models] + [m for m in self.models if m not in MODEL_ORDER]

    def task_names(self) -> list[str]:
        return list(dict.fromkeys(t for m in self.model_keys() for t in self.models[m].tasks))

    def score(self, model: str, task: str) -> Optional[TaskScore]:
        result = self.models.get(model)
        return result.tasks.get(task) if result else None

    def write(self, path: Path) -> None:
        from distillkit.records import atomic_write_text

        atomic_write_text(Path(path), self.model_dump_json(indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> Optional["EvalResults"]:
        """The results at `path` (a results.json or the evaluate folder); None when the stage has not written it."""
        path = Path(path)
        if path.is_dir():
            path = path / "results.json"
        if not path.exists():
            return None
        try:
            return cls.model_validate_json(path.read_text())
        except ValidationError as e:
            raise DistillkitError(f"{path} is not an evaluate results file this distillkit reads ({e.error_count()} "
                                  f"problems, first: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}); rerun "
                                  "`distillkit evaluate --overwrite`") from e


# ---------------------------------------- how every report reads them: comparison.md, the model card, the HTML report


def mean_and_stderr(values: list[float]) -> tuple[float, float | None]:
    """Mean and its standard error std(ddof=1)/sqrt(n); stderr is None for n < 2."""
    if not values:
        return math.nan, None
    mean = fmean(values)
    return mean, (stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None)


def paired_difference(after: TaskScore, before: TaskScore) -> tuple[float, float | None, int]:
    """Mean of per-question differences (after - before) over shared questions, its stderr, and n.

    Pairing by question removes the between-question variance both models share, so this stderr
    is usually much smaller than combining the two unpaired ones.
    """
    shared = sorted(set(after.per_question) & set(before.per_question))
    diffs = [after.per_question[q] - before.per_question[q] for q in shared]
    mean, se = mean_and_stderr(diffs)
    return mean, se, len(diffs)


def paired_text(after: TaskScore | None, before: TaskScore | None, pm: str = " ± ") -> str:
    """after − before in points ± its paired standard error, or "–" without two scores on shared questions."""
    diff, se, n = paired_difference(after, before) if before and after else (0.0, None, 0)
    return "–" if not n else f"{100 * diff:+.1f}" + (f"{pm}{100 * se:.1f}" if se is not None else "")


def task_lines(task_info: dict[str, TaskInfo]) -> list[str]:
    """"Tasks:" and one line per task: version, data, shots, prompt, what was scored and how (Markdown)."""
    if not task_info:
        return []
    lines = ["", "Tasks (two runs' numbers compare only where these lines are equal):"]
    for name, t in task_info.items():
        data = t.dataset or "?"
        if t.dataset_config and t.dataset_config != "default":
            data += f" ({t.dataset_config})"
        if t.split:
            data += f", split {t.split}"
        lines.append(f"- `{name}` v{t.version} ({t.source}): {data}; {t.num_fewshot}-shot; prompt: {t.prompt}; "
                     f"scored on {t.scored_text}; answer: {t.extraction}")
    return lines
