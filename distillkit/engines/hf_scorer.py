"""A scorer on transformers: one forward of the teacher per trace, full logits at every completion position.

vLLM's prompt logprobs give the top-k only; this scorer sees the whole distribution, so besides top-k rows
(`score`, the same as vLLM's raw logprobs up to numerics) it draws sampled soft labels exactly (`sample`: N draws
from softmax(logits / T) per position, `distillkit.softlabels.sampled`). Slower than vLLM for top-k (no paged
batching), and the only backend for `score.soft_labels: sampled`.

Memory: the backbone's hidden states of a batch are kept, the vocabulary projection runs `rows_per_pass` positions
at a time, so a (sequence, vocabulary) logits tensor is never built (32k tokens x 152k ids would be 19 GB in fp32).

    scorer.score(sequences, starts, k) -> [(ids (T, k) int32, logprobs (T, k) float32), ...]
    scorer.sample(sequences, starts, num_samples) -> [(ids (T, N) int32, log(count / N) (T, N) float32,
                                                      token_logprobs (T,) float32), ...]
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np


log = logging.getLogger(__name__)


class TransformersScorer:
    """The teacher as a transformers causal LM in this process; `seed` and `temperature` set the sampled draws."""

    name = "transformers"
    draws_sampled_labels = True  # full logits: `sample` draws soft labels exactly

    def __init__(self, model, tokenizer, max_len: int | None = None, seed: int = 0, temperature: float = 1.0,
                 batch_size: int = 8, rows_per_pass: int = 256):
        self.model = model
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.seed = seed
        self.temperature = temperature
        self.batch_size = batch_size
        self.rows_per_pass = rows_per_pass

    @classmethod
    def for_score(cls, score_cfg, seed: int = 0) -> "TransformersScorer":
        import torch

        from distillkit.engines.hf import load_teacher

        teacher = score_cfg.teacher
        model, tok = load_teacher(teacher, key="score.teacher")
        if torch.cuda.is_available():
            model.to("cuda")
        model.eval()
        max_len = teacher.vllm.max_model_len or getattr(model.config, "max_position_embeddings", None)
        return cls(model, tok, max_len, seed=seed, temperature=score_cfg.soft_label_temperature)

    # ------------------------------------------------------------------------------------- forward

    def _logits(self, sequences: list[list[int]], starts: list[int]) -> Iterator[tuple[int, object]]:
        """(index of the sequence, its completion positions' logits (T, V) float32 in row chunks) for every sequence:
        row t predicts `sequence[start + t]`, from the hidden state at `start + t - 1`."""
        import torch

        model = self.model
        device = next(model.parameters()).device
        backbone = getattr(model, model.base_model_prefix)
        head = model.get_output_embeddings()
        cap = getattr(model.config, "final_logit_softcapping", None)  # Gemma 2's: applied as its forward does
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for b in range(0, len(sequences), self.batch_size):
            batch = sequences[b:b + self.batch_size]
            width = max(len(s) for s in batch)
            # Right padding: real tokens keep positions 0..len-1, and a causal mask never lets them see the pad.
            ids = torch.tensor([list(s) + [pad] * (width - len(s)) for s in batch], device=device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch], device=device)
            with torch.inference_mode():
                hidden = backbone(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
                for j, (seq, start) in enumerate(zip(batch, starts[b:b + self.batch_size])):
                    if start < 1:
                        raise ValueError("a scored sequence needs a prompt token before its completion (start >= 1)")
                    rows = hidden[j, start - 1:len(seq) - 1]
                    chunks = []
                    for a in range(0, rows.shape[0], self.rows_per_pass):
                        z = head(rows[a:a + self.rows_per_pass]).float()
                        if cap:
                            z = torch.tanh(z / cap) * cap
                        chunks.append(z)
                    yield b + j, chunks
                del hidden

    # ------------------------------------------------------------------------------------- labels

    def score(self, sequences, starts, k):
        """Top-k rows of the raw distribution (temperature 1, as vLLM's raw logprobs), sorted by rank."""
        import torch

        out: list = [None] * len(sequences)
        for i, chunks in self._logits(sequences, starts):
            ids, lps = [], []
            for z in chunks:
                top = z.log_softmax(-1).topk(min(k, z.shape[-1]), dim=-1)
                ids.append(top.indices.int().cpu())
                lps.append(top.values.cpu())
            t = len(sequences[i]) - starts[i]
            out[i] = (torch.cat(ids).numpy() if ids else np.zeros((t, k), np.int32),
                      torch.cat(lps).numpy() if lps else np.zeros((t, k), np.float32))
        return out

    def sample(self, sequences, starts, num_samples):
        """Sampled soft labels: `num_samples` exact draws per position from softmax(logits / temperature), seeded by
        the run seed and the sequence's ids (`sample_seed`), so a rerun or a resumed run draws the same."""
        from distillkit.softlabels.sampled import draw_sampled_labels, log_weights, sample_seed

        out: list = [None] * len(sequences)
        for i, chunks in self._logits(sequences, starts):
            seq, start = sequences[i], starts[i]
            ids, counts, tlp = draw_sampled_labels(chunks, num_samples, self.temperature, sample_seed(self.seed, seq),
                                                   tokens=np.asarray(seq[start:], dtype=np.int64),
                                                   rows_per_pass=self.rows_per_pass)
            out[i] = (ids, log_weights(counts, num_samples), tlp)
        return out

    def close(self) -> None:
        self.model = None
