"""The filter stage's manifest `stats`, defined once: the filter writes them through `FilterStats`, and the
CLI funnel, the dataset card and the report read them through it.

    funnel    [{"step", "in", "rejected", "out"}]   a record counts at the first step that rejects it
    reasons   {step: {reason: count}}               every verdict given, passes included
    outcomes  {step: {"rejected" | "passed" | "cannot_judge": {reason: count}}}   the same, by outcome
    sources   {source: SourceStats}
    teachers  {teacher: TeacherStats}                the same per teacher (records.teacher_name: a routed
                                                    teacher's name, else the model), with its sources
    verifiers {step: {...}}                         usage of verifiers that report it (the judge's requests,
                                                    cache hits, tokens); empty when none does
    warnings  [str]                                 verifiers that could not judge too many records
    pass_rates {prompts, mean, never, always, histogram}  the teacher's pass rate per prompt
    selection {prompts_in, prompts_out, rules: {reason: {prompts, traces}}}  what each selection rule removed
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

OUTCOMES = ("rejected", "passed", "cannot_judge")


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class FunnelStep(_Schema):
    step: str
    in_: int = Field(alias="in")
    rejected: int
    out: int


class SourceStats(_Schema):
    records: int
    passed_verifiers: int
    """Records no verifier rejected (decontamination, dedup and selection aside)."""
    pass_rate: float
    kept: int
    prompts: int
    prompts_kept: int
    rejections: dict[str, dict[str, int]] = Field(default_factory=dict)
    """{step: {reason: records}}: each rejected record counted once, at the first step that rejected it (as in
    the funnel); dedup and selection included. Empty in manifests written before it existed."""


class TeacherStats(SourceStats):
    sources: list[str] = Field(default_factory=list)
    """The prompt sources of its records."""


class FilterStats(_Schema):
    funnel: list[FunnelStep]
    reasons: dict[str, dict[str, int]]
    outcomes: dict[str, dict[str, dict[str, int]]] = Field(default_factory=dict)
    sources: dict[str, SourceStats] = Field(default_factory=dict)
    teachers: dict[str, TeacherStats] = Field(default_factory=dict)
    """Per teacher (several with `generate.teachers`, else the one), as `sources`; empty in older manifests."""
    verifiers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    """Verifiers that could not judge more than `filter.warn_cannot_judge` of their records."""
    pass_rates: dict[str, Any] = Field(default_factory=dict)
    """Per-prompt teacher pass rates: {prompts, mean, never, always, histogram {rate: prompts}}."""
    selection: dict[str, Any] = Field(default_factory=dict)
    """Prompts with a candidate trace before and after selection, and per rule (reason) the traces it
    removed and the prompts it removed whole."""

    def dump(self) -> dict[str, Any]:
        """As written into the manifest."""
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def of(cls, manifest) -> Optional["FilterStats"]:
        """The stats of a filter manifest (None when there is none)."""
        return cls.model_validate(manifest.stats) if manifest is not None and manifest.stats else None

    def counts(self, step: str, outcome: str) -> dict[str, int]:
        """{reason: count} of one step's verdicts with this outcome ("rejected", "passed", "cannot_judge")."""
        return dict(self.outcomes.get(step, {}).get(outcome, {}))
