"""On-policy distillation from served teachers routed per prompt (`generate.teachers` with `kd.teacher_probs:
served`): each prompt's samples go to the server of the teacher that wrote its record.

Two stand-in servers (test_served.py's ModelScorer: the tiny teacher in-process, scoring as the vLLM server would),
told apart by how much each sharpens the teacher's logits, so a label shows which server wrote it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_served import K, ModelScorer
from train_helpers import make_recipe

from distillkit.errors import ConfigError, DistillkitError

SHARPEN = {"a": 1.0, "b": 4.0}


def routed_records(records, names):
    """The records as a two-teacher run writes them: the teacher's model in `teacher`, its name in meta."""
    out = []
    for rec, name in zip(records, names):
        meta = json.loads(rec.get("meta") or "{}") | {"teacher_name": name}
        out.append({**rec, "teacher": f"org/{name}", "meta": json.dumps(meta)})
    return out


def routed_recipe(tmp_path, records, student, **train):
    from distillkit.config import validate_recipe

    cfg = make_recipe(tmp_path, records, student, learning_rate=1e-12,
                      on_policy={"enabled": True, "max_new_tokens": 8},
                      kd={"enabled": True, "alpha": 0.0, "teacher_probs": "served",
                          "teacher_server": {"topk": K, "openai": {"serve": True}}},
                      **train)
    data = cfg.model_dump(mode="json")
    data["train"]["kd"]["teacher_servers"] = {"b": {"openai": {"base_url": "http://127.0.0.1:9/v1"}, "topk": K}}
    data["generate"].pop("teacher")  # the first of generate.teachers is the run's teacher
    data["generate"]["teachers"] = [{"name": "a", "model": "org/a", "sources": ["math"]},
                                    {"name": "b", "model": "org/b"}]
    return validate_recipe(data)


@pytest.fixture
def two_servers(monkeypatch, tiny_qwen2):
    """ServerScorer.from_config -> a stand-in per teacher; records which key and model each was opened for."""
    from distillkit.engines import scorers

    made, opened = {}, []

    def from_config(teacher, topk, seed=0, key=None):
        name = teacher.model.removeprefix("org/")
        opened.append((name, key, teacher.openai.serve, teacher.openai.base_url))
        made[name] = ModelScorer(tiny_qwen2, sharpen=SHARPEN[name])
        return made[name]

    monkeypatch.setattr(scorers.ServerScorer, "from_config", staticmethod(from_config))
    return made, opened


def test_each_prompt_is_scored_by_its_own_teachers_server(tmp_path, tiny_llama, tiny_qwen2, tiny_records,
                                                          two_servers):
    """One prompt per step, learning rate ~0: each step's samples reach only their teacher's server, and the
    logged KL is the divergence to that server's rows (the two servers' rows differ: a swap would show)."""
    import torch

    from distillkit.student.build import load_student
    from distillkit.train.losses import kd_loss_from_logits
    from distillkit.train.stage import run_train

    names = ["a", "b", "b", "a"]
    records = routed_records(tiny_records[:4], names)
    cfg = routed_recipe(tmp_path, records, tiny_llama, per_device_train_batch_size=1)
    m = run_train(cfg)
    made, opened = two_servers
    # a: teacher_server's settings (a server started for its model); b: its own entry in teacher_servers
    assert sorted(opened) == [("a", "train.kd.teacher_server", True, "http://127.0.0.1:8000/v1"),
                              ("b", "train.kd.teacher_servers.b", False, "http://127.0.0.1:9/v1")]
    assert made["a"].closed and made["b"].closed
    problem_of = {r["problem"]: n for r, n in zip(records, names)}
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    for name, scorer in made.items():
        assert len(scorer.calls) == 2  # two prompts each
        for sequences, starts in scorer.calls:
            (seq,), (start,) = sequences, starts
            prompt = tok.decode(seq[:start])
            assert [p for p in problem_of if p in prompt] and all(problem_of[p] == name for p in problem_of if p in prompt)
    student, _ = load_student(cfg.train, cfg.stage_dir("train") / "student_init")
    calls = {tuple(c[0][0]): name for name, s in made.items() for c in s.calls}
    kls = {}
    for seq, name in calls.items():
        start = next(c[1][0] for c in made[name].calls if tuple(c[0][0]) == seq)
        rows = made[name].score([list(seq)], [start], K)[0]
        with torch.no_grad():
            logits = student(torch.tensor([list(seq)])).logits[:, start - 1:-1]
        _, _, kd = kd_loss_from_logits(logits, topk_ids=torch.from_numpy(rows[0]).long()[None],
                                       topk_logprobs=torch.from_numpy(rows[1])[None], alpha=0.0,
                                       kd_mask=torch.ones(1, logits.shape[1], dtype=torch.bool),
                                       teacher_probs="topk_tail")
        kls[seq] = kd.item()
    logged = sorted(p["kl"] for p in m.stats["loss_curve"])
    assert len(logged) == 4 and logged == pytest.approx(sorted(kls.values()), rel=1e-4)


def test_rows_come_back_in_sample_order():
    from distillkit.train.served import score_routed

    class Tagged:
        def __init__(self, tag):
            self.tag, self.calls = tag, []

        def score(self, sequences, starts, k):
            self.calls.append(list(sequences))
            return [(np.full((1, k), self.tag), np.full((1, k), float(s[0]))) for s in sequences]

    a, b = Tagged(0), Tagged(1)
    rows = score_routed([a, b], [[10], [11], [12], [13]], [0, 0, 0, 0], [1, 0, 1, 1], 2)
    assert a.calls == [[[11]]] and b.calls == [[[10], [12], [13]]]
    assert [(int(ids[0, 0]), float(lps[0, 0])) for ids, lps in rows] == [(1, 10.0), (0, 11.0), (1, 12.0), (1, 13.0)]


def test_unknown_teacher_and_other_vocabulary_are_refused(tmp_path, tiny_llama, tiny_records, smollm2_dir,
                                                          monkeypatch):
    from transformers import AutoTokenizer

    from distillkit.engines import scorers
    from distillkit.train.stage import run_train

    class TokenizerOnly:
        def __init__(self, tokenizer):
            self.tokenizer, self.closed = tokenizer, False

        def close(self):
            self.closed = True

    own, smol = AutoTokenizer.from_pretrained(tiny_llama), AutoTokenizer.from_pretrained(smollm2_dir)
    made = []

    def from_config(teacher, topk, seed=0, key=None):
        made.append(TokenizerOnly(smol if teacher.model == "org/b" and vocab["b_other"] else own))
        return made[-1]

    vocab = {"b_other": False}
    monkeypatch.setattr(scorers.ServerScorer, "from_config", staticmethod(from_config))
    records = routed_records(tiny_records[:2], ["a", "c"])
    cfg = routed_recipe(tmp_path / "unknown", records, tiny_llama, per_device_train_batch_size=1)
    with pytest.raises(DistillkitError, match=r"record 'p1#0' has teacher 'c'; the served teachers are "
                                              r"generate.teachers \(a, b\)"):
        run_train(cfg)
    assert made == []  # refused before any server starts
    vocab["b_other"] = True
    cfg = routed_recipe(tmp_path / "vocab", routed_records(tiny_records[:2], ["a", "b"]), tiny_llama,
                        per_device_train_batch_size=1)
    with pytest.raises(DistillkitError, match="kd.teacher_probs=served needs a teacher with the student's vocabulary; "
                                              "org/b tokenizes differently"):
        run_train(cfg)
    assert len(made) == 2 and all(s.closed for s in made)  # a opened, b refused: both closed


def test_routing_config_errors():
    from distillkit.config import validate_recipe

    teachers = [{"name": "a", "model": "org/a", "sources": ["math"]}, {"name": "b", "model": "org/b"}]
    served = {"enabled": True, "teacher_probs": "served"}
    base = {"generate": {"teachers": teachers}, "train": {"on_policy": {"enabled": True}}}

    def recipe(kd):
        return validate_recipe({**base, "train": {**base["train"], "kd": {**served, **kd}}})

    with pytest.raises(ConfigError, match="teachers a, b would all be scored by the server at http://127.0.0.1:8000/v1"):
        recipe({})
    with pytest.raises(ConfigError, match="teacher_servers: z is not a teacher of generate.teachers \\(a, b\\)"):
        recipe({"teacher_server": {"openai": {"serve": True}}, "teacher_servers": {"z": {}}})
    with pytest.raises(ConfigError, match="teacher_servers.b.topk differs from train.kd.teacher_server.topk \\(20\\)"):
        recipe({"teacher_server": {"openai": {"serve": True}}, "teacher_servers": {"b": {"topk": 5}}})
    with pytest.raises(ConfigError, match="teacher_server.model \\(org/x\\) serves every prompt"):
        recipe({"teacher_server": {"model": "org/x"}, "teacher_servers": {"b": {}}})
    cfg = recipe({"teacher_server": {"openai": {"serve": True}},
                  "teacher_servers": {"b": {"openai": {"base_url": "http://h:1/v1"}}}})
    routes = cfg.served_teachers()
    assert {n: (s.model, s.openai.serve, s.openai.base_url) for n, s in routes.items()} == {
        "a": ("org/a", True, "http://127.0.0.1:8000/v1"), "b": ("org/b", False, "http://h:1/v1")}
    # one server for every prompt: teacher_server.model set, or one teacher
    assert recipe({"teacher_server": {"model": "org/x"}}).served_teachers() == {}
