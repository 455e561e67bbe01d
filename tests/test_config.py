"""The recipe tree: all mistakes reported at once, with paths, values and fixes; overrides; renames."""

import pytest

from distillkit.config import RecipeConfig, apply_overrides, load_recipe, validate_recipe
from distillkit.errors import ConfigError, DistillkitError
from distillkit.pipeline import stage_config_hash

THREE_MISTAKES = """\
name: demo
trian:                      # typo of train
  method: lora
generate:
  sampling:
    temperature: hot        # wrong type
train:
  lora_r: 8                 # renamed key
"""


def test_three_mistakes_all_reported_with_paths(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(THREE_MISTAKES)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    problems = info.value.problems
    assert len(problems) == 3
    text = "\n".join(problems)
    assert "trian: unknown key; did you mean `train`?" in text
    assert "generate.sampling.temperature='hot': Input should be a valid number" in text
    assert "train.lora_r: this key was renamed; use `train.lora.r` instead" in text
    assert str(path) in str(info.value) and "3 problems" in str(info.value)


def test_unknown_verifier_lists_known_ones():
    with pytest.raises(ConfigError) as info:
        validate_recipe({"filter": {"verifiers": [{"kind": "math"}, {"kind": "maths"}]}})
    (problem,) = info.value.problems
    assert problem.startswith("filter.verifiers[1]")
    assert "unknown verifier 'maths'; choose one of" in problem and "'math'" in problem


def test_literal_and_range_errors_name_allowed_values():
    with pytest.raises(ConfigError) as info:
        validate_recipe({"train": {"method": "qlorra", "lora": {"r": 0}}})
    text = "\n".join(info.value.problems)
    assert "train.method='qlorra'" in text and "'full', 'lora' or 'qlora'" in text
    assert "train.lora.r=0: Input should be greater than 0" in text


def test_cross_field_error_names_the_fix():
    with pytest.raises(ConfigError) as info:
        validate_recipe({"train": {"kd": {"enabled": True, "alpha": 1.0}}})
    assert "lower kd.alpha or disable kd" in info.value.problems[0]


def test_dotted_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nfilter:\n  verifiers:\n    - kind: math\n    - kind: length\n")
    cfg = load_recipe(path, ["train.lora.r=32", "generate.sampling.n=8", "name=other",
                             "filter.verifiers.1.kind=repetition", "evaluate.tasks=[a, b]"])
    assert cfg.train.lora.r == 32 and cfg.generate.sampling.n == 8 and cfg.name == "other"
    assert [v.kind for v in cfg.filter.verifiers] == ["math", "repetition"]
    assert cfg.evaluate.tasks == ["a", "b"]
    assert str(cfg.run_dir) == "runs/other"


def test_bad_override_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        apply_overrides({}, ["train.lora.r"])
    with pytest.raises(ConfigError) as info:
        load_recipe(None, ["train.lora.rank=4"])
    assert "train.lora.rank: unknown key" in info.value.problems[0]


def test_bad_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ntrain: [\n")
    with pytest.raises(DistillkitError, match=r"broken.yaml: invalid YAML at line 3"):
        load_recipe(path)


def test_missing_recipe_lists_builtins():
    with pytest.raises(DistillkitError, match="built-in recipes .*quickstart"):
        load_recipe("no/such/recipe.yaml")


def test_r1_sampling_defaults():
    s = RecipeConfig().generate.sampling
    assert (s.temperature, s.top_p, s.max_tokens) == (0.6, 0.95, 32768)
    p = RecipeConfig().generate.prompts
    assert p.system_prompt is None and p.prefill == "<think>\n"
    assert "Please reason step by step, and put your final answer within \\boxed{}." in p.template


def test_stage_hash_changes_with_upstream_only():
    a, b = RecipeConfig(), RecipeConfig()
    b.train.lora.r = 64
    assert stage_config_hash(a, "filter") == stage_config_hash(b, "filter")
    assert stage_config_hash(a, "train") != stage_config_hash(b, "train")
    c = RecipeConfig()
    c.generate.sampling.n = 2
    assert stage_config_hash(a, "train") != stage_config_hash(c, "train")


def test_resume_and_worker_counts_do_not_change_the_hash():
    a, b = RecipeConfig(), RecipeConfig()
    b.train.resume = True
    b.filter.num_workers = 7
    assert stage_config_hash(a, "train") == stage_config_hash(b, "train")


def test_mixture_source_mistakes_name_the_source_and_the_fix():
    with pytest.raises(ConfigError) as info:
        validate_recipe({"train": {"sources": [
            {"path": "stage:filter", "weight": 1, "count": 5},
            {"path": "chat.jsonl", "count": -3},
            {"path": "stage:train", "weight": 1},
            {"path": "org/chat", "weight": 1, "reasoning_format": "empty"},
            {"path": "qa.jsonl", "weight": 1, "kind": "non_reasoning", "columns": {"prompt": "q"}},
        ]}})
    text = "\n".join(info.value.problems)
    assert len(info.value.problems) == 5
    assert "train.sources[0]=" in text and "set exactly one of `weight` (a share of the mixture) or `count`" in text
    assert "train.sources[1].count=-3: Input should be greater than or equal to 0" in text
    assert "names no stage with records; use stage:generate or stage:filter" in text
    assert "reasoning_format applies to kind: non_reasoning only; remove it" in text
    assert "train.sources[4].columns=" in text and "set both `prompt` and `response`" in text


def test_mixture_weights_summing_to_zero_and_impossible_sizes_are_errors():
    def problem(train):
        with pytest.raises(ConfigError) as info:
            validate_recipe({"train": train})
        (p,) = info.value.problems
        return p

    zero = problem({"sources": [{"path": "stage:filter", "weight": 0}, {"path": "c.jsonl", "weight": 0.0}]})
    assert zero.startswith("train.sources=") and "weights of ['filter', 'c'] sum to 0; give at least one" in zero
    assert "more than train.mixture_size=5" in problem(
        {"mixture_size": 5, "sources": [{"path": "stage:filter", "count": 6}, {"path": "c.jsonl", "weight": 1}]})
    assert "distinct `name`" in problem({"sources": [{"path": "stage:filter", "count": 1},
                                                     {"path": "x/filter.jsonl", "count": 1}]})
    assert "add sources or remove mixture_size" in problem({"mixture_size": 10})
    cfg = validate_recipe({"train": {"sources": [
        {"path": "stage:filter", "weight": 0.8},
        {"path": "HuggingFaceTB/smoltalk", "config": "all", "kind": "non_reasoning", "weight": 0.2}]}})
    (a, b) = cfg.train.sources
    assert (a.label, b.label) == ("filter", "HuggingFaceTB/smoltalk:all")
    assert b.answer_prefix == "<think>\n\n</think>\n\n" and a.answer_prefix == ""


def test_mixture_sources_are_part_of_the_train_hash():
    a = validate_recipe({"train": {"sources": [{"path": "stage:filter", "weight": 1}]}})
    b = validate_recipe({"train": {"sources": [{"path": "stage:filter", "weight": 1},
                                               {"path": "c.jsonl", "kind": "non_reasoning", "weight": 1}]}})
    c = validate_recipe({"train": {"sources": [{"path": "stage:filter", "weight": 1}], "mixture_size": 10}})
    hashes = {stage_config_hash(x, "train") for x in (RecipeConfig(), a, b, c)}
    assert len(hashes) == 4
    assert stage_config_hash(a, "filter") == stage_config_hash(b, "filter")
