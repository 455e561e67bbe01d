"""Fallback backend: transformers `generate`, with top-k logprobs taken from the per-step logits.

It sees every step's whole distribution, so it is also the generate backend that draws sampled soft labels
(`sampling.soft_labels: sampled`: N exact draws per step, seeded by the request's seed and the sample's tokens).

Slower than vLLM (about half on CPU) and meant for machines without it. Sampling is seeded once per
call from the requests' seeds, so the same list of requests (one shard) gives the same samples.
`sampling.stop` is applied afterwards by the stage (`apply_stop`): this backend still decodes each
sample to EOS or max_tokens, then the text and ids are cut at the first stop string.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace

from distillkit.engines.base import GenRequest, PromptResult, Sample
from distillkit.errors import DistillkitError, require

log = logging.getLogger(__name__)


def load_teacher(teacher, path: str | None = None, key: str = "teacher"):
    """(model, tokenizer) of a TeacherConfig on transformers (the generate backend and the scorer share it).

    `teacher.vllm.dtype` doubles as this backend's dtype; "auto" means bf16 (fp32 runs ~10x slower on CPU through
    denormals unless they are flushed). `key` names the recipe key in the error."""
    torch = require("torch", "train", "the transformers backend needs torch")
    transformers = require("transformers", "train", "the transformers backend needs transformers")
    from distillkit.models import resolve_model

    path = path or resolve_model(teacher.model)
    name = teacher.vllm.dtype
    dtype = torch.bfloat16 if name == "auto" else getattr(torch, name)
    if dtype == torch.float32:
        torch.set_flush_denormal(True)
    try:
        tok = transformers.AutoTokenizer.from_pretrained(path)
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as e:
        raise DistillkitError(f"transformers could not load {key} {teacher.model!r} ({path}): {e}") from e
    return model, tok


class HFBackend:
    name = "transformers"
    skips_special_tokens = False  # decodes with skip_special_tokens=False (vLLM leaves them out)
    uses_vllm_engine = False
    supports_data_parallel = False
    draws_sampled_labels = True  # full logits at every step

    @classmethod
    def renders_prompt_locally(cls, teacher) -> bool:
        return True

    def __init__(self, model, tokenizer, model_id: str, logprobs_mode: str = "raw_logprobs", batch_size: int = 8):
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.logprobs_mode = logprobs_mode
        self.batch_size = batch_size

    @classmethod
    def from_config(cls, gen_cfg, model_path: str | None = None) -> "HFBackend":
        model, tok = load_teacher(gen_cfg.teacher, model_path, key="teacher")
        model.eval()
        return cls(model, tok, gen_cfg.teacher.model, gen_cfg.sampling.logprobs_mode)

    def generate(self, requests: list[GenRequest], sampling) -> list[PromptResult]:
        import torch

        if not requests:
            return []
        seeds = [r.seed for r in requests]
        if all(s is not None for s in seeds):
            torch.manual_seed(int.from_bytes(hashlib.sha256(repr(seeds).encode()).digest()[:8], "little") >> 1)
        results = []
        for i in range(0, len(requests), self.batch_size):
            results += self._generate_batch(requests[i:i + self.batch_size], sampling)
        return results

    def _generate_batch(self, requests: list[GenRequest], sampling) -> list[PromptResult]:
        import torch

        tok, n = self.tokenizer, sampling.n
        sampled = getattr(sampling, "soft_labels", "topk") == "sampled"
        k = 0 if sampled else sampling.topk_logprobs
        keep_steps = bool(k) or sampled
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        width = max(len(r.prompt_ids) for r in requests)
        # Left padding: every prompt ends at the same column, so new tokens line up.
        input_ids = torch.tensor([[pad_id] * (width - len(r.prompt_ids)) + list(r.prompt_ids) for r in requests])
        attention = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in requests])
        greedy = sampling.temperature == 0
        raw = self.logprobs_mode == "raw_logprobs"
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids, attention_mask=attention, max_new_tokens=sampling.max_tokens,
                do_sample=not greedy, temperature=None if greedy else sampling.temperature,
                top_p=None if greedy else sampling.top_p, top_k=0, num_return_sequences=n,
                pad_token_id=pad_id, return_dict_in_generate=True,
                output_logits=keep_steps and raw, output_scores=keep_steps and not raw,
            )
        new = out.sequences[:, width:]
        topk_ids = topk_lps = stacked = None
        if keep_steps:
            steps = out.logits if raw else out.scores  # tuple over steps of (B*n, V)
            stacked = torch.stack(steps, dim=1)
        if k:
            logprobs = torch.log_softmax(stacked.float(), dim=-1)
            top = logprobs.topk(k, dim=-1)
            topk_ids, topk_lps = top.indices.int().numpy(), top.values.numpy()
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else {tok.eos_token_id}
        results = []
        for b, req in enumerate(requests):
            samples = []
            for j in range(n):
                row = b * n + j
                ids = new[row].tolist()
                end = next((t for t, x in enumerate(ids) if x in eos_ids), None)
                # Like vLLM: the EOS token is part of token_ids but not of the text.
                length = end + 1 if end is not None else len(ids)
                ids = ids[:length]
                text = tok.decode(ids[:-1] if end is not None else ids, skip_special_tokens=False)
                sample = Sample(
                    text=text, token_ids=ids, finish_reason="stop" if end is not None else "length",
                    topk_ids=topk_ids[row, :length].copy() if k else None,
                    topk_logprobs=topk_lps[row, :length].copy() if k else None,
                )
                if sampled:
                    sample = _with_sampled_labels(sample, stacked[row, :length], req, sampling.soft_label_samples)
                samples.append(sample)
            results.append(PromptResult(prompt_tokens=len(req.prompt_ids), samples=samples))
        return results

    def close(self) -> None:
        self.model = None


def _with_sampled_labels(sample: Sample, logits, request: GenRequest, num_samples: int) -> Sample:
    """The sample with N exact draws per step from the distribution it was generated under (`logits` (T, V): raw, or
    processed by temperature/top-p with `logprobs_mode: processed_logprobs`), seeded by the request's seed and the
    prompt and sample tokens (`sample_seed`), so the same sample always carries the same draws."""
    import numpy as np

    from distillkit.softlabels.sampled import draw_sampled_labels, log_weights, sample_seed

    seed = sample_seed(request.seed or 0, list(request.prompt_ids or []) + list(sample.token_ids))
    ids, counts, tlp = draw_sampled_labels(logits, num_samples, seed=seed,
                                           tokens=np.asarray(sample.token_ids, dtype=np.int64))
    return replace(sample, topk_ids=ids, topk_logprobs=log_weights(counts, num_samples), token_logprobs=tlp)
