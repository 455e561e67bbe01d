"""keep_layers auto:N: answer tokens found in traces, in-place layer subsets equal pruned models, greedy choice."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def four_layers(tmp_path_factory, tiny_qwen2):
    from distillkit.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("four"), num_layers=4, tokenizer_dir=tiny_qwen2, seed=3)


def test_answer_positions_spell_the_gold_answer(tiny_qwen2):
    from transformers import AutoTokenizer

    from distillkit.student.layers import answer_positions

    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    text = "first add 17 and 25. 17 + 25 = 42.</think> so the answer is \\boxed{42}"
    ids, spans = answer_positions(tok, text, "42")
    assert tok.decode([ids[i] for i in spans]).strip() == "42"
    assert tok.decode(ids[:spans[0]]).rstrip().endswith("17 + 25 =")  # the first statement of the answer
    assert answer_positions(tok, "no number here", "42") is None and answer_positions(tok, text, "") is None


def test_answer_nll_of_a_layer_subset_equals_the_pruned_model(four_layers, tiny_qwen2):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distillkit.student.build import prune_layers
    from distillkit.student.layers import AnswerBatch, answer_nll, answer_traces
    from train_helpers import teacher_records

    tok = AutoTokenizer.from_pretrained(four_layers)
    model = AutoModelForCausalLM.from_pretrained(four_layers, dtype=torch.float32).eval()
    traces = answer_traces(tok, teacher_records(tiny_qwen2, num=4), max_traces=3)
    assert len(traces) == 3
    batch = AnswerBatch(traces, "cpu")
    for keep in ([0, 1, 2, 3], [0, 2, 3], [0, 3]):
        pruned = prune_layers(AutoModelForCausalLM.from_pretrained(four_layers, dtype=torch.float32), keep).eval()
        with torch.no_grad():
            logp = pruned(input_ids=batch.ids, attention_mask=batch.mask).logits.log_softmax(-1)
        direct = -sum(float(logp[r, c - 1, batch.ids[r, c]]) for r, c in zip(batch.rows.tolist(), batch.cols.tolist()))
        assert answer_nll(model, batch, keep) == pytest.approx(direct / len(batch.rows), rel=1e-5)
    assert len(model.model.layers) == model.config.num_hidden_layers == 4  # restored


def test_choose_layers_drops_the_cheapest_layer_each_round(four_layers, tiny_qwen2):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distillkit.errors import DistillkitError
    from distillkit.student.layers import AnswerBatch, answer_nll, answer_traces, choose_layers
    from train_helpers import teacher_records

    tok = AutoTokenizer.from_pretrained(four_layers)
    model = AutoModelForCausalLM.from_pretrained(four_layers, dtype=torch.float32)
    records = teacher_records(tiny_qwen2, num=4)
    keep, rounds = choose_layers(model, tok, records, num_keep=2)
    assert keep == [0, 3]  # first and last always stay
    assert [r["dropped"] for r in rounds][0] is None and sorted(r["dropped"] for r in rounds[1:]) == [1, 2]
    batch = AnswerBatch(answer_traces(tok, records), "cpu")
    first = rounds[1]["dropped"]
    other = ({1, 2} - {first}).pop()
    assert answer_nll(model, batch, [i for i in range(4) if i != first]) <= \
        answer_nll(model, batch, [i for i in range(4) if i != other])
    assert rounds[1]["answer_nll"] == pytest.approx(answer_nll(model, batch, [i for i in range(4) if i != first]),
                                                    abs=1e-4)
    with pytest.raises(DistillkitError, match="none of these records"):
        choose_layers(model, tok, [{**r, "gold_answer": "not in the text"} for r in records], num_keep=2)
    with pytest.raises(DistillkitError, match="between 2 and 4"):
        choose_layers(model, tok, records, num_keep=1)


def test_student_init_auto_keeps_the_chosen_layers(tmp_path, four_layers, tiny_qwen2):
    from transformers import AutoModelForCausalLM

    from distillkit.errors import DistillkitError
    from distillkit.student.build import build_student_init
    from train_helpers import teacher_records

    cfg = type("S", (), {"model": str(four_layers), "keep_layers": "auto:3"})()
    info = build_student_init(cfg, tmp_path / "init", dtype="float32", records=teacher_records(tiny_qwen2, num=4))
    assert len(info["kept_layers"]) == 3 and info["kept_layers"][0] == 0 and info["kept_layers"][-1] == 3
    assert info["weights"] == "written" and info["layer_choice"][1]["dropped"] not in info["kept_layers"]
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "init").config.num_hidden_layers == 3
    with pytest.raises(DistillkitError, match="train.sources"):
        build_student_init(cfg, tmp_path / "init2", dtype="float32")
    with pytest.raises(DistillkitError, match="auto:24"):
        build_student_init(type("S", (), {"model": str(four_layers), "keep_layers": "auto:x"})(), tmp_path / "i3")
