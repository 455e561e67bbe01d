"""Fixtures for evaluation tests: a tiny model that answers "3" often, and small local lm-eval tasks."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

TASK_UTILS = '''
import json
from pathlib import Path

import datasets

from distillkit.evaluate.scoring import keep_all_samples, process_math_samples, score_math  # noqa: F401


def load_docs(**kwargs):
    rows = [json.loads(x) for x in Path(__file__).with_name("docs.jsonl").read_text().splitlines()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def process_one(doc, results):
    """Built-in style: one response per question, a 0/1 metric (like lm-eval's aime24)."""
    return {"exact_match": int(bool(score_math(results[0], doc["answer"])))}
'''

NATIVE_TASK = """
task: toy_native
custom_dataset: !function utils.load_docs
output_type: generate_until
test_split: test
doc_to_text: "{{problem}}"
doc_to_target: "{{answer}}"
generation_kwargs: {until: [], do_sample: true, temperature: 0.6, top_p: 0.95, max_gen_toks: 8}
repeats: 2
filter_list:
  - name: all_samples
    filter:
      - function: custom
        filter_fn: !function utils.keep_all_samples
process_results: !function utils.process_math_samples
metric_list:
  - {metric: "pass@1", aggregation: mean, higher_is_better: true}
metadata: {version: 1.0}
"""

BUILTIN_STYLE_TASK = """
task: toy_builtin_style
custom_dataset: !function utils.load_docs
output_type: generate_until
test_split: test
doc_to_text: "Question: {{problem}}\\nAnswer:"
doc_to_target: "{{answer}}"
generation_kwargs: {until: ["Question:"], do_sample: false, temperature: 0.0, max_gen_toks: 8}
repeats: 1
process_results: !function utils.process_one
metric_list:
  - {metric: exact_match, aggregation: mean, higher_is_better: true}
metadata: {version: 1.0}
"""


@pytest.fixture(scope="session")
def toy_tasks(tmp_path_factory) -> Path:
    """A folder with two local tasks over 6 questions: gold "3" for four, "4" for two."""
    folder = tmp_path_factory.mktemp("toy_tasks")
    (folder / "utils.py").write_text(TASK_UTILS)
    (folder / "toy_native.yaml").write_text(NATIVE_TASK)
    (folder / "toy_builtin_style.yaml").write_text(BUILTIN_STYLE_TASK)
    docs = [{"id": f"q{i}", "problem": f"Question {i}: what is the answer?", "answer": a}
            for i, a in enumerate(["3", "3", "3", "3", "4", "4"])]
    (folder / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    return folder


@pytest.fixture(scope="session")
def answering_model(tiny_qwen2, tmp_path_factory) -> Path:
    """tiny_qwen2 rewired so that its next token is "3" or end-of-turn with about equal odds.

    Layer 0's attention adds a constant 1000*u to every position (zero value weights, value bias
    1000*u, identity output projection), so the final hidden state is ~u whatever the input. The
    (tied) embeddings of "3" and <|im_end|> are put along u, giving both a logit of ~4.8 and every
    other token ~0: at T=0.6 samples are "", "3", "33", "3 <word>"... , a mix of right and wrong.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("answering_model")
    for p in Path(tiny_qwen2).iterdir():
        if p.is_file() and not p.name.endswith((".safetensors", ".bin")):
            shutil.copy(p, out / p.name)
    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.float32)
    hidden = model.config.hidden_size
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(hidden, 2, generator=g))
    v1, v2 = q[:, 0], q[:, 1]
    u = (v1 + v2) / math.sqrt(2)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[tok.convert_tokens_to_ids("3")] = 0.6 * v1
        emb[tok.eos_token_id] = 0.6 * v2
        attn = model.model.layers[0].self_attn
        attn.v_proj.weight.zero_()
        attn.v_proj.bias.copy_(1000 * u)
        attn.o_proj.weight.copy_(torch.eye(hidden))
    model.save_pretrained(out)
    return out
