"""`filter:`: the verifier chain, dedup, decontamination, selection by difficulty, and where the work runs."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from distillkit.config.base import StrictModel


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
    source_verifiers: dict[str, list[VerifierSpec]] = Field(default_factory=dict)
    """A prompt source's own chain, replacing `verifiers` for records of that source (the records' `source`
    column), e.g. {general: [{kind: truncation}, {kind: language}, {kind: repetition}, {kind: length}]}: R1's
    non-reasoning data has no gold answer and no <think> block, so math and format would reject all of it.
    Steps share a funnel row with the same-named step of the other chains (`length` is one row)."""
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

    def chains(self) -> dict[Optional[str], list[VerifierSpec]]:
        """Every verifier chain: None -> `verifiers` (records of any other source), then each source's own."""
        return {None: list(self.verifiers), **self.source_verifiers}

    def chain_key(self, where: Optional[str], index: int) -> str:
        """The config key of one verifier, for messages: filter.verifiers[2], filter.source_verifiers.general[0]."""
        return f"filter.verifiers[{index}]" if where is None else f"filter.source_verifiers.{where}[{index}]"
