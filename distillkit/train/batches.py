"""Tokenized examples -> training batches: `DistillCollator` pads (or concatenates) them with their soft-label columns
in the token layout of `distillkit.train.data`, and `describe_batch` / `format_batch_check` show which tokens of a
built batch carry loss."""

from __future__ import annotations

from dataclasses import dataclass

from distillkit.train.data import IGNORE, KD_COLUMNS


@dataclass
class DistillCollator:
    """Pads (or, padding-free, concatenates) examples; soft-label columns follow the token layout.

    Built on TRL's `DataCollatorForLanguageModeling`, so batches match what SFTTrainer feeds models
    (packed rows carry `position_ids`, and labels at each sequence start are ignored).
    """

    pad_token_id: int
    padding_free: bool = False
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict]) -> dict:
        import torch
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        base = DataCollatorForLanguageModeling(pad_token_id=self.pad_token_id, padding_free=self.padding_free,
                                               pad_to_multiple_of=self.pad_to_multiple_of)
        plain = [{k: v for k, v in ex.items() if k not in KD_COLUMNS} for ex in examples]
        batch = base(plain)
        if KD_COLUMNS[0] not in examples[0]:
            return batch
        width = batch["input_ids"].shape[1]
        if self.padding_free:
            cat = {c: [x for ex in examples for x in ex[c]] for c in KD_COLUMNS}
            seqs = {c: [cat[c]] for c in KD_COLUMNS}
        else:
            seqs = {c: [ex[c] for ex in examples] for c in KD_COLUMNS}
        widths = {len(row) for seq in seqs["kd_ids"] for row in seq}  # one width: top-k; several: ragged sampled rows
        k = max(widths, default=0) or 1
        rows = len(seqs["kd_mask"])
        ids = torch.zeros(rows, width, k, dtype=torch.long)
        lps = torch.zeros(rows, width, k, dtype=torch.float32)
        mask = torch.zeros(rows, width, dtype=torch.bool)
        if widths != {k}:
            lps.fill_(float("-inf"))  # the slots a ragged row does not fill: no draw, dropped by the loss
        for r in range(rows):
            n = len(seqs["kd_mask"][r])
            if n and widths == {k}:
                ids[r, :n] = torch.as_tensor(seqs["kd_ids"][r], dtype=torch.long)
                lps[r, :n] = torch.as_tensor(seqs["kd_logprobs"][r], dtype=torch.float32)
            elif n:
                _fill_ragged(ids[r], lps[r], seqs["kd_ids"][r], seqs["kd_logprobs"][r])
            if n:
                mask[r, :n] = torch.as_tensor(seqs["kd_mask"][r], dtype=torch.bool)
        mask &= batch["labels"] != IGNORE  # a packed sequence start is never a target
        batch.update(kd_ids=ids, kd_logprobs=lps, kd_mask=mask)
        return batch


def _fill_ragged(ids, lps, rows_ids: list, rows_lp: list) -> None:
    """Ragged rows (a list of T lists of any length <= k) into ids (width, k) and lps (width, k) from slot 0 on."""
    import itertools

    import torch

    lengths = torch.tensor([len(x) for x in rows_ids], dtype=torch.long)
    pos = torch.repeat_interleave(torch.arange(len(rows_ids)), lengths)
    slot = torch.arange(int(lengths.sum())) - torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
    ids[pos, slot] = torch.tensor(list(itertools.chain.from_iterable(rows_ids)), dtype=torch.long)
    lps[pos, slot] = torch.tensor(list(itertools.chain.from_iterable(rows_lp)), dtype=torch.float32)


def describe_batch(batch: dict, tokenizer, row: int = 0) -> list[dict]:
    """Which tokens of a built batch carry loss: one dict per token of `row`.

    Each entry: position, token id, token text, `loss` (CE label present), `kd` (soft label present).
    This is the "check of the built batches": print it, or assert on it in tests.
    """
    ids = batch["input_ids"][row].tolist()
    labels = batch["labels"][row].tolist()
    kd = batch["kd_mask"][row].tolist() if "kd_mask" in batch else [False] * len(ids)
    return [{"pos": i, "id": t, "text": tokenizer.decode([t]), "loss": l != IGNORE, "kd": bool(m)}
            for i, (t, l, m) in enumerate(zip(ids, labels, kd))]


def format_batch_check(batch: dict, tokenizer, row: int = 0) -> str:
    """`describe_batch` as text: trained tokens in [brackets], soft-labelled ones marked with *."""
    out = []
    for tok in describe_batch(batch, tokenizer, row):
        text = tok["text"]
        out.append(f"[{text}{'*' if tok['kd'] else ''}]" if tok["loss"] else text)
    return "".join(out)
