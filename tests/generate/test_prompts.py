"""Prompt loading: file formats, malformed rows named by file and row, dedup, chat + prefill rendering."""

from __future__ import annotations

import json

import pytest

from distillkit.config import PromptsConfig
from distillkit.engines.base import render_prompt
from distillkit.errors import DistillkitError
from distillkit.generate.prompts import BadRowError, derive_prompt_id, load_prompts


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


ROWS = [
    {"id": "a", "problem": "What is 2 plus 3?", "answer": 5},
    {"id": "b", "problem": 7},                               # wrong type
    {"id": "c", "question": "no problem column"},            # missing column
    "{not json",                                             # unparsable line
    {"id": "d", "problem": "   "},                           # empty
    {"id": "e", "problem": "What is  2 plus 3?"},            # duplicate of a (whitespace differs)
    {"problem": "What is 4 times 4?", "tests": [{"type": "assert", "code": "x"}], "source": "mine"},
    {"id": "a", "problem": "A different problem with a reused id"},
]


def test_bad_rows_are_reported_with_file_and_row_and_counted(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", ROWS)
    ps = load_prompts(PromptsConfig(path=str(path)))
    assert [p.prompt_id for p in ps.prompts] == ["a", derive_prompt_id("What is 4 times 4?")]
    assert ps.num_rows == 8 and ps.num_duplicates == 1
    assert [(b.file, b.row) for b in ps.bad_rows] == [(str(path), 2), (str(path), 3), (str(path), 4),
                                                       (str(path), 5), (str(path), 8)]
    reasons = [b.reason for b in ps.bad_rows]
    assert "must be a string, got int" in reasons[0]
    assert "missing column 'problem'" in reasons[1]
    assert reasons[2].startswith("invalid JSON")
    assert "is empty" in reasons[3]
    assert "repeats an earlier row's id" in reasons[4]
    a, second = ps.prompts
    assert a.answer == "5" and a.source == "p" and a.tests is None
    assert json.loads(second.tests) == [{"type": "assert", "code": "x"}] and second.source == "mine"
    assert second.messages == [{"role": "user", "content": "What is 4 times 4?\nPlease reason step by step, "
                                                             "and put your final answer within \\boxed{}."}]


def test_bad_rows_stop_the_run_when_asked(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", ROWS)
    with pytest.raises(BadRowError) as e:
        load_prompts(PromptsConfig(path=str(path), on_bad_row="error"))
    assert "5 malformed prompt row(s)" in str(e.value)
    assert f"{path}: row 2: column 'problem' must be a string" in str(e.value)


def test_dedup_off_limit_columns_and_system_prompt(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"q": "x one", "key": 1}, {"q": "x one", "key": 2}, {"q": "x two", "key": 3}])
    cfg = PromptsConfig(path=str(path), dedup=False, columns={"id": "key", "problem": "q"},
                        system_prompt="Be brief.", template="Q: {problem}", limit=2)
    ps = load_prompts(cfg)
    assert [p.prompt_id for p in ps.prompts] == ["1", "2"]
    assert ps.prompts[0].messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q: x one"}]


def test_parquet_json_and_builtin(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["p1", "p2"], "problem": ["one", None]}), tmp_path / "p.parquet")
    ps = load_prompts(PromptsConfig(path=str(tmp_path / "p.parquet")))
    assert [p.prompt_id for p in ps.prompts] == ["p1"] and ps.bad_rows[0].row == 2
    (tmp_path / "p.json").write_text(json.dumps({"data": [{"problem": "one"}]}))
    assert len(load_prompts(PromptsConfig(path=str(tmp_path / "p.json"))).prompts) == 1
    ps = load_prompts(PromptsConfig(builtin="arith", builtin_args={"num": 7, "seed": 3}))
    assert len(ps.prompts) == 7 and all(p.prompt_id.startswith("arith-train-") and p.answer for p in ps.prompts)


def test_missing_sources_are_clear_errors(tmp_path):
    with pytest.raises(DistillkitError, match="no such file"):
        load_prompts(PromptsConfig(path=str(tmp_path / "nope.jsonl")))
    with pytest.raises(DistillkitError, match="could not load generate.prompts.hub_dataset='nobody/nothing'"):
        load_prompts(PromptsConfig(hub_dataset="nobody/nothing"))  # offline in tests: fails fast
    with pytest.raises(DistillkitError, match="set one of path, hub_dataset or builtin"):
        load_prompts(PromptsConfig())


def test_render_appends_prefill_unless_the_template_adds_it(tiny_qwen2):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    msgs = [{"role": "user", "content": "hi"}]
    text, ids, in_template = render_prompt(tok, msgs, "<think>\n")
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n" and not in_template
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids[-2])== "<think>"
    # An R1-style template that opens the reasoning block itself: nothing is appended twice.
    tok.chat_template = tok.chat_template.replace("'<|im_start|>assistant\\n'", "'<|im_start|>assistant\\n<think>\\n'")
    text2, _, in_template2 = render_prompt(tok, msgs, "<think>\n")
    assert text2 == text and in_template2
    text3, _, _ = render_prompt(tok, msgs, "")
    assert text3.endswith("<think>\n")
