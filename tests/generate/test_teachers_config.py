"""`generate.teachers`: several teachers routed by prompt source (issue 34 item 3): validation, routing, each
teacher's merged section, and one-teacher runs keeping their stage hashes."""

import pytest

from distillkit.config import RecipeConfig
from distillkit.config.generate import EMPTY_THINK, GenerateConfig
from distillkit.stage_hash import stage_config_hash

TWO = {"teachers": [
    {"name": "r1", "model": "builtin:smollm2-135m-instruct", "sources": ["math", "code"]},
    {"name": "v3", "model": "org/general-model", "backend": "openai", "reasoning": False,
     "sampling": {"temperature": 0.3, "max_tokens": 512}},
]}


def test_routing_by_source_and_the_first_teacher_is_the_runs():
    g = GenerateConfig.model_validate(TWO)
    assert [g.route(s) for s in ("math", "code", "chat", "")] == ["r1", "r1", "v3", "v3"]
    assert g.teacher.model == "builtin:smollm2-135m-instruct"  # evaluate's "teacher", live KD's default
    assert GenerateConfig().route("math") is None


def test_each_teacher_gets_its_engine_prefill_and_sampling():
    g = GenerateConfig.model_validate({**TWO, "sampling": {"n": 2, "temperature": 0.6}})
    r1, v3 = g.for_teacher("r1"), g.for_teacher("v3")
    assert (r1.teacher.model, r1.prompts.prefill, r1.sampling.temperature, r1.sampling.n) == \
        ("builtin:smollm2-135m-instruct", "<think>\n", 0.6, 2)
    assert (v3.teacher.model, v3.teacher.backend, v3.prompts.prefill) == ("org/general-model", "openai", EMPTY_THINK)
    assert (v3.sampling.temperature, v3.sampling.max_tokens, v3.sampling.n) == (0.3, 512, 2)
    assert not r1.teachers and not v3.teachers
    explicit = GenerateConfig.model_validate({"teachers": [{"name": "a", "model": "m", "reasoning": False,
                                                            "prefill": None}]})
    assert explicit.for_teacher("a").prompts.prefill is None


def test_a_dumped_config_reloads_equal():
    g = GenerateConfig.model_validate(TWO)
    assert GenerateConfig.model_validate_json(g.model_dump_json()) == g


@pytest.mark.parametrize("teachers, message", [
    ([{"name": "a", "model": "m"}, {"name": "a", "model": "n", "sources": ["x"]}], "names must differ (a repeats)"),
    ([{"name": "a", "model": "m"}, {"name": "b", "model": "n"}], "a and b both leave `sources` empty"),
    ([{"name": "a", "model": "m", "sources": ["x"]}, {"name": "b", "model": "n", "sources": ["x"]}],
     "source 'x' is routed to both a and b"),
    ([{"name": "a", "model": "m", "sampling": {"temprature": 1.0}}], "unknown generate.sampling key(s) ['temprature']"),
    ([{"name": "a", "model": "m", "sampling": {"n": 0}}], "generate.teachers (a): sampling.n"),
    ([{"name": "a", "model": "m", "sampling": {"topk_logprobs": 5}}], "share one stored format"),
])
def test_mistakes_name_the_teacher_and_the_fix(teachers, message):
    with pytest.raises(ValueError) as e:
        GenerateConfig.model_validate({"teachers": teachers})
    assert message in str(e.value)


def test_teacher_and_teachers_together_is_refused():
    with pytest.raises(ValueError, match="remove generate.teacher"):
        GenerateConfig.model_validate({"teacher": {"model": "q"}, **TWO})


def test_teachers_change_the_hash():
    # one-teacher runs keep theirs: tests/test_stage_hashes.py pins them
    one = RecipeConfig.model_validate({"name": "x"})
    two = RecipeConfig.model_validate({"name": "x", "generate": TWO})
    assert stage_config_hash(two, "generate") != stage_config_hash(one, "generate")


def test_teacher_name_of_a_record():
    from distillkit.records import teacher_name

    assert teacher_name({"teacher": "org/m", "meta": '{"teacher_name": "r1", "seed": 3}'}) == "r1"
    assert teacher_name({"teacher": "org/m", "meta": "{}"}) == "org/m"  # one teacher: its model
    assert teacher_name({"teacher": "org/m", "meta": "not json"}) == "org/m"


def test_prefill_of_a_teacher_model():
    g = GenerateConfig.model_validate(TWO)
    assert g.prefill_of("builtin:smollm2-135m-instruct") == "<think>\n"
    assert g.prefill_of("org/general-model") == EMPTY_THINK  # the non-reasoning teacher's
    assert g.prefill_of("org/scorer") == "<think>\n" == GenerateConfig().prefill_of("anything")
