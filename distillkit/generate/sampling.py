"""Prompts -> teacher requests -> trace records: the sampling step that the generate stage and its curation
(pre-screen, resampling) share."""

from __future__ import annotations

import json

from distillkit.engines.base import Backend, GenRequest, PromptResult, apply_stop, prompt_seed, render_prompt
from distillkit.errors import DistillkitError
from distillkit.generate.prompts import Prompt
from distillkit.records import make_record, split_reasoning


def build_requests(prompts: list[Prompt], gen_cfg, tokenizer, salt: str = "") -> list[GenRequest]:
    """One request per prompt; `salt` makes other seeds for the same prompts (a resampling round, the pre-screen)."""
    prefill = gen_cfg.prompts.prefill or ""
    requests = []
    for p in prompts:
        text = ids = None
        in_template = False
        if tokenizer is not None:
            text, ids, in_template = render_prompt(tokenizer, p.messages, prefill)
        requests.append(GenRequest(p.prompt_id, p.messages, prefill, in_template, text, ids,
                                   prompt_seed(gen_cfg.sampling.seed, p.prompt_id + salt)))
    return requests


def to_records(prompts: list[Prompt], requests: list[GenRequest], results: list[PromptResult], gen_cfg,
               backend: Backend, first_index: int = 0) -> list[dict]:
    """One record per sample, soft labels as numpy arrays (the writer turns them into Arrow buffers); sample
    indices start at `first_index` (a resampling round continues after the earlier rounds' samples)."""
    sampling_json = json.dumps(gen_cfg.sampling.model_dump(mode="json"), sort_keys=True)
    k = gen_cfg.label_width
    tokenizer = backend.tokenizer
    eos_ids = [tokenizer.eos_token_id] if tokenizer is not None and tokenizer.eos_token_id is not None else []
    skip_special = backend.skips_special_tokens  # cut stop strings on text decoded as the backend decoded it
    rows = []
    for p, req, res in zip(prompts, requests, results, strict=True):
        if len(res.samples) != gen_cfg.sampling.n:
            raise DistillkitError(f"the {backend.name} backend returned {len(res.samples)} samples for prompt "
                                  f"{p.prompt_id!r}, expected sampling.n={gen_cfg.sampling.n}")
        for j, s in enumerate(res.samples):
            s = apply_stop(s, gen_cfg.sampling.stop, tokenizer, eos_ids, skip_special_tokens=skip_special)
            reasoning, response, closed = split_reasoning(s.text, req.prefill)
            rec = make_record(
                prompt_id=p.prompt_id, sample_index=first_index + j, source=p.source, problem=p.problem, gold_answer=p.answer,
                tests=p.tests, messages=p.messages, teacher=backend.model_id, sampling=sampling_json,
                prefill=req.prefill, completion=s.text, completion_ids=s.token_ids, reasoning=reasoning,
                response=response, reasoning_closed=closed, prompt_tokens=res.prompt_tokens,
                completion_tokens=len(s.token_ids), finish_reason=s.finish_reason,
                meta=json.dumps({"backend": backend.name, "seed": req.seed, **res.meta}, sort_keys=True),
            )
            if k:
                if s.topk_ids is None or len(s.topk_ids) != len(s.token_ids):
                    raise DistillkitError(f"the {backend.name} backend returned soft labels for "
                                          f"{0 if s.topk_ids is None else len(s.topk_ids)} of {len(s.token_ids)} "
                                          f"tokens (prompt {p.prompt_id!r}, sample {j})")
                rec["topk_ids"], rec["topk_logprobs"] = s.topk_ids, s.topk_logprobs
                if s.token_logprobs is not None:  # sampled labels
                    rec["token_logprobs"] = s.token_logprobs
            rows.append(rec)
    return rows
