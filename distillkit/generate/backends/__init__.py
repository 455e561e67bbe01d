"""Deprecated alias: the teacher backends moved to `distillkit.engines` (generate and score share them).

Kept for one release because an install made before the move names `distillkit.generate.backends.fast_top_p` as
vLLM's plugin entry point until it is reinstalled (`pip install -e .`); the old module paths give the moved modules.
"""

import sys
import warnings

from distillkit.engines import fast_top_p, hf, openai_http, vllm

for _module in (fast_top_p, hf, openai_http, vllm):
    sys.modules[f"{__name__}.{_module.__name__.rpartition('.')[2]}"] = _module
warnings.warn("distillkit.generate.backends moved to distillkit.engines; the old path goes in the next release",
              DeprecationWarning, stacklevel=2)
