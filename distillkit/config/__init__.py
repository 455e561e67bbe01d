"""The recipe: one validated config tree (a sub-model per stage), loaded from YAML with dotted overrides.

Every model forbids unknown keys, so a typo is an error that names the key and the closest valid
one. `load_recipe` collects *all* mistakes of a file before raising one `ConfigError`.

A module per section, each key documented where it is defined: `base` (StrictModel, stage names), `teacher`
(shared by generate and score), `generate`, `filter`, `sources` (training mixture and chat columns), `train`,
`score`, `evaluate`, `publish`, and `recipe` (the root, `RecipeConfig`). `explain` words the errors, `loading`
reads YAML, applies overrides and validates. Every name is importable from `distillkit.config`. Stage hashes live
in stage_hash.py.
"""

from distillkit.config.base import (
    DEFAULT_STAGES,
    R1_PROMPT,
    SOFT_LABEL_SAMPLES,
    STAGES,
    DivergenceName,
    StrictModel,
    TeacherBackendName,
)
from distillkit.config.evaluate import EvaluateConfig
from distillkit.config.filter import (
    BenchmarkSource,
    DecontaminateConfig,
    DedupConfig,
    FilterConfig,
    FilterExecutorConfig,
    NearDedupConfig,
    SelectionConfig,
    VerifierSpec,
)
from distillkit.config.generate import (
    ColumnsConfig,
    GenerateConfig,
    PrescreenConfig,
    PromptsConfig,
    ResampleConfig,
    SamplingConfig,
)
from distillkit.config.loading import (
    BUILTIN_RECIPES,
    apply_overrides,
    load_recipe,
    parse_override,
    resolve_recipe_path,
    validate_recipe,
)
from distillkit.config.publish import PublishConfig
from distillkit.config.recipe import CompareConfig, HardwareConfig, RecipeConfig
from distillkit.config.score import ScoreConfig
from distillkit.config.sources import DATA_SUFFIXES, MIXTURE_STAGES, MixtureSourceConfig, SourceColumnsConfig
from distillkit.config.teacher import OpenAIEndpointConfig, TeacherConfig, VllmConfig
from distillkit.config.train import (
    KDConfig,
    LoraConfig,
    OnPolicyConfig,
    QloraConfig,
    ServedTeacherConfig,
    StudentConfig,
    TrainConfig,
)

__all__ = [
    "BUILTIN_RECIPES", "DATA_SUFFIXES", "DEFAULT_STAGES", "MIXTURE_STAGES", "R1_PROMPT", "SOFT_LABEL_SAMPLES", "STAGES",
    "BenchmarkSource", "ColumnsConfig", "CompareConfig", "DecontaminateConfig", "DedupConfig", "DivergenceName",
    "EvaluateConfig", "FilterConfig", "FilterExecutorConfig", "GenerateConfig", "HardwareConfig", "KDConfig",
    "LoraConfig", "MixtureSourceConfig", "NearDedupConfig", "OnPolicyConfig", "OpenAIEndpointConfig",
    "PrescreenConfig", "PromptsConfig", "PublishConfig", "QloraConfig", "RecipeConfig", "ResampleConfig",
    "SamplingConfig", "ScoreConfig", "SelectionConfig", "ServedTeacherConfig", "SourceColumnsConfig", "StrictModel",
    "StudentConfig", "TeacherBackendName", "TeacherConfig", "TrainConfig", "VerifierSpec", "VllmConfig",
    "apply_overrides", "load_recipe", "parse_override", "resolve_recipe_path", "validate_recipe",
]
