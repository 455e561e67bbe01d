"""The cards and the report of a run with several teachers (`generate.teachers`): each teacher's model, routing,
counts, filter funnel and scores. A run folder faked with manifests, as the other publish tests do."""

from __future__ import annotations

import json

import pytest

from distillkit.config import validate_recipe
from distillkit.publish import cards
from distillkit.publish.report import build_report
from distillkit.records import StageOutput, make_record, read_manifest, record_features
from distillkit.schemas.evaluate import EvalResults, ModelResult, Protocol, TaskScore
from distillkit.schemas.filter import FilterStats

TEACHERS = [{"name": "r1", "model": "org/reasoner", "sources": ["math"]},
            {"name": "chat", "model": "org/chat", "sources": ["general"], "reasoning": False,
             "sampling": {"n": 1, "temperature": 0.7}}]
FUNNEL = [{"step": "input", "in": 12, "rejected": 0, "out": 12},
          {"step": "truncation", "in": 12, "rejected": 1, "out": 11},
          {"step": "math", "in": 11, "rejected": 3, "out": 8}]
TEACHER_STATS = {
    "r1": {"records": 8, "passed_verifiers": 5, "pass_rate": 0.625, "kept": 5, "prompts": 4, "prompts_kept": 3,
           "rejections": {"math": {"wrong_answer": 3}}, "sources": ["math"]},
    "chat": {"records": 4, "passed_verifiers": 3, "pass_rate": 0.75, "kept": 3, "prompts": 4, "prompts_kept": 3,
             "rejections": {"truncation": {"truncated_at_max_tokens": 1}}, "sources": ["general"]}}


def _record(pid: str, k: int, teacher: str, model: str, source: str) -> dict:
    return make_record(prompt_id=pid, sample_index=k, problem=f"{pid}?", source=source, teacher=model,
                       completion="<think>\nx</think> \\boxed{1}", completion_tokens=10 + k,
                       meta=json.dumps({"teacher_name": teacher}))


def _run(tmp_path, generate_stats: bool):
    cfg = validate_recipe({
        "name": "two", "output_dir": str(tmp_path / "run"),
        "generate": {"teachers": TEACHERS, "prompts": {"builtin": "arith"}},
        "train": {"student": {"model": "builtin:smollm2-135m-instruct"}},
        "evaluate": {"tasks": ["distillkit_arith"], "backend": "hf", "num_samples": 4, "max_gen_toks": 64},
        "publish": {"dataset_repo": "someone/two-traces"},
    })
    gen = StageOutput(cfg.stage_dir("generate"), "generate", "g", config=cfg.generate.model_dump(mode="json"))
    gen.begin()
    recs = [_record(f"m{i}", k, "r1", "org/reasoner", "math") for i in range(4) for k in range(2)]
    recs += [_record(f"g{i}", 0, "chat", "org/chat", "general") for i in range(4)]
    gen.write_shard(0, recs, record_features())
    stats = {"teachers": {"r1": {"model": "org/reasoner", "prompts": 4, "samples": 8, "tokens": 900, "shards": 1},
                          "chat": {"model": "org/chat", "prompts": 4, "samples": 4, "tokens": 120, "shards": 1}}}
    gen.finish(counts={"records": 12, "prompts": 8}, stats=stats if generate_stats else {})
    filt = StageOutput(cfg.stage_dir("filter"), "filter", "f")
    filt.begin()
    filt.finish(counts={"input": 12, "kept": 8, "rejected": 4, "prompts_input": 8, "prompts_kept": 6},
                stats=FilterStats(funnel=FUNNEL, reasons={}, teachers=TEACHER_STATS).dump())
    score = TaskScore(task="distillkit_arith", metric="pass@1", filter="all_samples", num_questions=100,
                      num_samples=4, pass_at_1=0.4, stderr=0.05, pass_at_k=0.6)
    EvalResults(protocol=Protocol(backend="hf", num_samples=4, temperature=0.6, top_p=0.95, max_gen_toks=64),
                models={"teacher": ModelResult(model="org/reasoner", tasks={"distillkit_arith": score})},
                ).write(cfg.stage_dir("evaluate") / "results.json")
    return cfg


def _row(text: str, name: str) -> list[str]:
    line = next(x for x in text.splitlines() if x.startswith(f"| {name} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_dataset_card_shows_each_teacher_with_its_counts_funnel_and_scores(tmp_path):
    cfg = _run(tmp_path, generate_stats=True)
    card = cards.render_dataset_card(cfg, read_manifest(cfg.stage_dir("generate")), read_manifest(cfg.stage_dir("filter")))
    text = card.text
    assert "## Teachers" in text and "**org/reasoner** (reasoning, math) and **org/chat** (non-reasoning, general)" in text
    r1, chat = _row(text, "r1"), _row(text, "chat")
    # teacher | model | backend | reasoning | sources | prefill | sampling | prompts | samples | tokens | kept | pass
    # rate | rejected by | evaluation
    assert r1[1:8] == ["`org/reasoner`", "vllm", "yes", "math", "inherited", "as generate.sampling", "4"]
    assert r1[8:] == ["8", "900", "5 (of 8)", "62.5%", "math: wrong_answer 3", "distillkit_arith 40.0 ± 5.0"]
    assert chat[3:7] == ["no", "general", "empty reasoning block", "n=1, temperature=0.7"]
    assert chat[8:] == ["4", "120", "3 (of 4)", "75.0%", "truncation: truncated_at_max_tokens 1", "not evaluated"]
    assert "the first of `generate.teachers` (r1, `org/reasoner`)" in text
    cards.validate_dataset_card(str(card))


def test_counts_come_from_the_records_when_the_manifest_has_none(tmp_path):
    cfg = _run(tmp_path, generate_stats=False)
    text = cards.render_dataset_card(cfg, read_manifest(cfg.stage_dir("generate")),
                                     read_manifest(cfg.stage_dir("filter"))).text
    assert _row(text, "r1")[7:10] == ["4", "8", str(sum(10 + k for _ in range(4) for k in range(2)))]
    assert _row(text, "chat")[7:10] == ["4", "4", "40"]


def test_model_card_names_the_teachers_and_which_one_was_scored(tmp_path):
    cfg = _run(tmp_path, generate_stats=True)
    text = cards.render_model_card(cfg, results=cards.load_eval_results(cfg),
                                   filter_manifest=read_manifest(cfg.stage_dir("filter"))).text
    assert "distilled from **org/reasoner** (reasoning, math) and **org/chat** (non-reasoning, general)" in text
    assert "| task | teacher (r1) |" in text
    assert "the first of `generate.teachers` (r1, `org/reasoner`)" in text and "not evaluated" in text
    assert _row(text, "chat")[1:] == ["`org/chat`", "no", "general", "n=1, temperature=0.7", "4", "120", "3 (of 4)",
                                      "truncation: truncated_at_max_tokens 1"]


def test_report_has_a_teachers_section(tmp_path):
    cfg = _run(tmp_path, generate_stats=True)
    html = build_report(cfg.run_dir).read_text()
    assert "<section id='teachers'>" in html
    section = html.split("<section id='teachers'>")[1].split("</section>")[0]
    assert "<td>r1</td><td><code>org/reasoner</code></td><td>yes</td><td>math</td>" in section
    assert "<td>5 of 8</td><td>62.5%</td><td>math: wrong_answer 3</td>" in section
    assert "not evaluated" in section


@pytest.mark.parametrize("kind", ["dataset", "model"])
def test_one_teacher_cards_have_no_teachers_section(tmp_path, kind):
    cfg = validate_recipe({"name": "one", "output_dir": str(tmp_path / "run"),
                           "generate": {"teacher": {"model": "org/reasoner"}}})
    text = (cards.render_dataset_card(cfg, None, None) if kind == "dataset" else cards.render_model_card(cfg)).text
    assert "Teachers" not in text and "**org/reasoner**" in text and "not evaluated" not in text


def test_one_teacher_report_has_no_teachers_section(tmp_path):
    cfg = validate_recipe({"name": "one", "output_dir": str(tmp_path / "run"),
                           "generate": {"teacher": {"model": "org/reasoner"}}})
    gen = StageOutput(cfg.stage_dir("generate"), "generate", "g", config=cfg.generate.model_dump(mode="json"))
    gen.begin()
    gen.write_shard(0, [_record("m0", 0, "r1", "org/reasoner", "math")], record_features())
    gen.finish(counts={"records": 1, "prompts": 1})
    html = build_report(cfg.run_dir).read_text()
    assert "<section id='summary'>" in html and "<section id='teachers'>" not in html
