"""resolve_model: folders, missing paths, Hub ids, builtin GGUF conversion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distillkit.errors import DistillkitError
from distillkit.models import resolve_model


def test_a_model_folder_is_used_as_is(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert resolve_model(str(tmp_path)) == str(tmp_path)


def test_a_folder_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(DistillkitError, match="without config.json; point to a model folder"):
        resolve_model(str(tmp_path))


@pytest.mark.parametrize("spec", ["./no/such/model", "/no/such/model", "~/no/such/model"])
def test_a_missing_path_is_a_clear_error(spec):
    with pytest.raises(DistillkitError, match=r"no such folder or file"):
        resolve_model(spec)


def test_a_missing_gguf_is_a_clear_error(tmp_path):
    with pytest.raises(DistillkitError, match="no such GGUF file"):
        resolve_model(str(tmp_path / "model.Q4_K_M.gguf"))


@pytest.mark.parametrize("spec", ["Qwen/Qwen2.5-Math-1.5B", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "gpt2"])
def test_a_hub_id_is_returned_unchanged(spec):
    assert resolve_model(spec) == spec


def test_an_unknown_builtin_lists_the_known_ones():
    expected = r"unknown builtin model 'nope'; choose one of \['smollm2-135m-instruct'\]"
    with pytest.raises(DistillkitError, match=expected):
        resolve_model("builtin:nope")


@pytest.mark.slow
def test_builtin_smollm2_converts_to_a_loadable_folder(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(smollm2_dir)
    assert (folder / ".complete").exists() and (folder / "config.json").exists()
    assert resolve_model("builtin:smollm2-135m-instruct") == smollm2_dir  # cached: same folder, no reconversion
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config  # saved as plain weights
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert config["num_hidden_layers"] == 30 and len(model.model.layers) == 30
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.eos_token == "<|im_end|>" and len(tok) == 49152


def test_concurrent_conversions_of_one_gguf_convert_once(tmp_path, monkeypatch):
    """Two processes (two runs, the ranks of one training job) resolving the same GGUF at once: one converts,
    the other waits on the lock and finds the folder done, instead of both writing the same temporary folder."""
    import threading
    import time

    from distillkit import models

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    calls = []

    def slow_convert(gguf_path, out, dtype):
        calls.append(out)
        time.sleep(0.5)  # long enough for the other caller to reach the lock
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        (out / ".complete").write_text("done\n")
        return out

    monkeypatch.setattr(models, "_convert_gguf", slow_convert)
    out_dir = tmp_path / "converted"
    results = []
    threads = [threading.Thread(target=lambda: results.append(models.convert_gguf(gguf, out_dir))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [out_dir, out_dir] and calls == [out_dir]
