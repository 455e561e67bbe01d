"""Kept records -> tokenized training examples with loss labels and position-aligned soft labels.

One record becomes one chat: the prompt `messages` plus an assistant turn `prefill + completion`,
rendered with the *student's* chat template. The assistant turn is spliced from three parts:

    prefix   = template(messages, add_generation_prompt=True) + prefill      (tokenized here)
    body     = the teacher's `completion_ids`                                (used as they are)
    suffix   = what the template renders after the content, e.g. "<|im_end|>\\n"  (tokenized here)

Loss labels cover the prefill, the completion and the end-of-turn token (EOS), never the prompt nor
the template's trailing newline: the same tokens TRL's `assistant_only_loss` marks with
`{% generation %}`. A truncated completion (`finish_reason == "length"`) gets no EOS, so the student
is not taught to stop where the teacher was cut off.

Soft labels are stored *at token positions*, like `labels`: row `t` of `kd_ids`/`kd_logprobs` is the
teacher's top-k distribution over the token at position `t` (predicted from position `t - 1`), and
`kd_mask[t]` says whether that row is real. Completion tokens carry the teacher's rows; the prefill
carries none (the teacher was forced there); the EOS carries the teacher's row when the teacher's
`completion_ids` ended with it, otherwise none.

Stored formats. Records come with `topk_ids`/`topk_logprobs` arrays whichever format a shard holds: the readers of
`distillkit.records` decode packed-v1 shards (`soft_labels`, distillkit/softlabels/codec.py) a batch at a time as
they stream them, so the examples built here, and the trainer's batches, are the same for both formats.

Tokenizers. Soft labels are token ids of the teacher's vocabulary, so they are only usable when the
student tokenizes like the teacher. `check_same_tokenizer` decodes the records' `completion_ids` with
the student's tokenizer and compares with the stored text. When they match, `completion_ids` are used
directly (no re-tokenization drift). When they do not, the completion text is re-tokenized with the
student's tokenizer (SFT still works) and top-k KD is refused with a `DistillkitError` unless
`train.kd.cross_tokenizer` is set: then the teacher's rows are moved onto the student's tokens by
`distillkit.train.cross_tokenizer` (student tokens spanning exactly one teacher token's bytes get its
candidates mapped by spelling, the others a label chained along their span), and `info["cross_tokenizer"]`
reports how much was kept. With several teachers (`generate.teachers`) this is decided per teacher, each record's
labels mapped with its own teacher's tokenizer (distillkit/train/teachers.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillkit.errors import DistillkitError
from distillkit.tokenizer_checks import ids_spell
from distillkit.train.labels import (_first, check_label_kind, drop_row_padding, record_topk,  # noqa: F401
                                     soft_label_kind)
from distillkit.train.teachers import LabelTeachers, teacher_counts, teacher_figures, teacher_samples, teacher_source

if TYPE_CHECKING:
    from distillkit.student.special_map import SpecialMap

log = logging.getLogger(__name__)

IGNORE = -100
KD_COLUMNS = ("kd_ids", "kd_logprobs", "kd_mask")


# ----------------------------------------------------------------------------------------- chats


def record_to_messages(record: dict) -> list[dict[str, str]]:
    """The chat a record trains on: its prompt messages plus the assistant turn (prefill + completion)."""
    prompt = [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
    return prompt + [{"role": "assistant", "content": (record.get("prefill") or "") + record["completion"]}]


@dataclass
class TemplateParts:
    """How the student's template renders one record: text before the completion and after it."""

    prefix: str  # prompt rendered with the generation prompt, plus the prefill
    suffix: str  # what follows the assistant content (end-of-turn token, newline)


def split_template(tokenizer, record: dict) -> TemplateParts:
    """Render the record's chat and locate the assistant content inside it.

    Raises when the template does not reproduce the content verbatim, e.g. a Qwen template that strips
    `<think>...</think>` from assistant turns: the trained turn must keep its reasoning.
    """
    messages = record_to_messages(record)
    prefill = record.get("prefill") or ""
    prompt_text = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(messages, tokenize=False)
    content = messages[-1]["content"]
    if not full_text.startswith(prompt_text) or not full_text[len(prompt_text):].startswith(content):
        raise DistillkitError(
            "the student's chat template does not render the assistant turn verbatim after the generation "
            f"prompt (record {record.get('id')!r}); templates that strip reasoning from assistant turns lose "
            "the trace. distillkit installs a reasoning-keeping template for ChatML, Llama 3, DeepSeek-R1 and "
            "Gemma 3 students (train.student); for others set the tokenizer's chat_template to one that renders "
            "the assistant content unchanged (no `| trim`, <think> kept).")
    suffix = full_text[len(prompt_text) + len(content):]
    return TemplateParts(prefix=prompt_text + prefill, suffix=suffix)


# ----------------------------------------------------------------------------------------- tokenizers


def check_same_tokenizer(tokenizer, records, num_checked: int = 64, min_match: float = 0.9) -> bool:
    """Whether the records' `completion_ids` decode to their `completion` text with `tokenizer`.

    A teacher of another family decodes to garbage (or to ids beyond the vocabulary). vLLM's detokenizer
    holds back the bytes of a character cut by the end of a sample, where a full decode writes U+FFFD:
    trailing U+FFFD are ignored on both sides. A few other mismatches are tolerated.
    """
    checked = matched = 0
    for rec in records:
        ids = rec.get("completion_ids")
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids or [])
        if not ids:
            continue
        checked += 1
        matched += ids_spell(tokenizer, ids, rec["completion"])
        if checked >= num_checked:
            break
    return checked > 0 and matched / checked >= min_match


# ----------------------------------------------------------------------------------------- examples


def tokenize_record(tokenizer, record: dict, use_teacher_ids: bool, topk: int, cross=None, cross_stats=None) -> dict:
    """One record -> {"input_ids", "labels"} and, when `topk` > 0, {"kd_ids", "kd_logprobs", "kd_mask"}.

    All columns have one entry per token. With `use_teacher_ids` the completion is the teacher's ids
    (and its top-k rows are aligned to them); otherwise it is re-tokenized and carries no soft labels,
    unless `cross` (a `CrossTokenizerMap` from the teacher's tokenizer to this one) moves the teacher's
    rows onto the re-tokenized completion; its counts are added to `cross_stats` (an `AlignmentStats`).
    Untruncated: `build_train_dataset` cuts to `train.max_length` (keeping the start) and counts the cuts.
    """
    parts = split_template(tokenizer, record)
    eos = tokenizer.eos_token_id
    prefix_ids = tokenizer(parts.prefix, add_special_tokens=False)["input_ids"]
    prefill = record.get("prefill") or ""
    # Tokens of the prefill inside the prefix (trained with CE: the student must emit "<think>" itself).
    prompt_only = tokenizer(parts.prefix[: len(parts.prefix) - len(prefill)], add_special_tokens=False)["input_ids"]
    num_prompt = len(prompt_only) if prefix_ids[: len(prompt_only)] == prompt_only else len(prefix_ids)

    body, rows_ids, rows_lp, as_arrays = _completion(tokenizer, record, use_teacher_ids, topk)
    mapped = None
    if cross is not None and topk > 0 and not use_teacher_ids and record.get("topk_ids") is not None \
            and record.get("completion_ids") is not None and len(record["completion_ids"]):
        mapped = _cross_rows(cross, record, body)
        as_arrays = True

    finished = record.get("finish_reason", "stop") != "length"
    ended_with_eos = bool(body) and body[-1] == eos
    eos_row = None
    if ended_with_eos:  # the template's suffix renders the EOS again: keep one, with the teacher's row
        body = body[:-1]
        if rows_ids is not None:
            eos_row = (rows_ids[-1], rows_lp[-1])
            rows_ids, rows_lp = rows_ids[:-1], rows_lp[:-1]
    suffix_ids, num_suffix_trained = _turn_end(tokenizer, parts.suffix, finished)

    input_ids = prefix_ids + body + suffix_ids
    labels = ([IGNORE] * num_prompt + prefix_ids[num_prompt:] + body
              + suffix_ids[:num_suffix_trained] + [IGNORE] * (len(suffix_ids) - num_suffix_trained))
    out: dict[str, Any] = {"input_ids": input_ids, "labels": labels}
    n_pre, n_body, n_suf = len(prefix_ids), len(body), len(suffix_ids)
    if topk > 0 and as_arrays:
        out.update(_kd_arrays(topk, n_pre, n_body, n_suf, rows_ids, rows_lp, mapped, eos_row, finished, cross_stats))
    elif topk > 0:
        out.update(_kd_lists(topk, n_pre, n_body, n_suf, rows_ids, rows_lp, eos_row, finished))
    return out


def _completion(tokenizer, record: dict, use_teacher_ids: bool, topk: int):
    """(completion token ids, the teacher's top-k id rows, its logprob rows, whether the rows are numpy arrays) for
    `tokenize_record`: the teacher's ids and rows as stored, or the text re-tokenized with no rows."""
    rows_ids = rows_lp = None
    as_arrays = False  # soft labels as numpy (T, k) arrays (records streamed from shards) or lists of rows
    if use_teacher_ids:
        ids = record["completion_ids"]
        body = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        if topk > 0 and record.get("topk_ids") is not None:
            as_arrays = hasattr(record["topk_ids"], "shape")
            rows_ids = record["topk_ids"] if as_arrays else [list(r) for r in record["topk_ids"]]
            rows_lp = record["topk_logprobs"] if as_arrays else [list(r) for r in record["topk_logprobs"]]
            if len(rows_ids) != len(body):
                raise DistillkitError(f"record {record.get('id')!r}: {len(rows_ids)} top-k rows for "
                                      f"{len(body)} completion tokens; the generate output is inconsistent")
    else:
        body = tokenizer(record["completion"], add_special_tokens=False)["input_ids"]
    return body, rows_ids, rows_lp, as_arrays


def _turn_end(tokenizer, suffix: str, finished: bool) -> tuple[list[int], int]:
    """(the tokens the template renders after the assistant's content, how many of them are trained): the EOS, not
    the newline after it; nothing for a truncated completion, so the student is not taught to stop there."""
    suffix_ids = tokenizer(suffix, add_special_tokens=False)["input_ids"] if finished else []
    num_suffix_trained = 0
    if finished:
        if not suffix_ids or suffix_ids[0] != tokenizer.eos_token_id:
            raise DistillkitError(f"the student's chat template ends the assistant turn with {suffix!r}, "
                                  f"which does not start with the EOS token {tokenizer.eos_token!r}; fix the "
                                  "tokenizer's eos_token or template (distillkit preflight checks this)")
        num_suffix_trained = 1  # the EOS; the newline after it is formatting, not a target
    return suffix_ids, num_suffix_trained


def _kd_arrays(topk: int, n_pre: int, n_body: int, n_suf: int, rows_ids, rows_lp, mapped, eos_row, finished: bool,
               cross_stats) -> dict:
    """The soft-label columns of `tokenize_record` as numpy arrays (rows streamed from shards, or mapped across
    tokenizers: `mapped` from `_cross_rows`, whose EOS row replaces `eos_row`): rows on the completion's positions,
    the EOS row on the EOS of a finished completion, nothing on the prefix and suffix."""
    import numpy as np

    total = n_pre + n_body + n_suf
    kd_ids = np.zeros((total, topk), dtype=np.int32)
    kd_lp = np.zeros((total, topk), dtype=np.float32)
    kd_mask = np.zeros(total, dtype=np.int8)
    if mapped is not None:
        labels_, eos_row = mapped
        kd_ids[n_pre:n_pre + n_body], kd_lp[n_pre:n_pre + n_body] = labels_.ids, labels_.logprobs
        kd_mask[n_pre:n_pre + n_body] = labels_.mask
        if cross_stats is not None:
            cross_stats.add(labels_.stats)
    else:
        kd_ids[n_pre:n_pre + n_body], kd_lp[n_pre:n_pre + n_body] = rows_ids, rows_lp
        kd_mask[n_pre:n_pre + n_body] = 1
    if eos_row is not None and finished:
        kd_ids[n_pre + n_body], kd_lp[n_pre + n_body] = eos_row
        kd_mask[n_pre + n_body] = 1
    return {"kd_ids": kd_ids, "kd_logprobs": kd_lp, "kd_mask": kd_mask}


def _kd_lists(topk: int, n_pre: int, n_body: int, n_suf: int, rows_ids, rows_lp, eos_row, finished: bool) -> dict:
    """The soft-label columns of `tokenize_record` as lists of rows (records held in memory as lists); zero rows,
    masked out, where there is no label (a completion without stored rows among labelled ones)."""
    zeros_i, zeros_f = [0] * topk, [0.0] * topk
    kd_ids = [zeros_i] * n_pre + (rows_ids or [zeros_i] * n_body) + [zeros_i] * n_suf
    kd_lp = [zeros_f] * n_pre + (rows_lp or [zeros_f] * n_body) + [zeros_f] * n_suf
    kd_mask = [0] * n_pre + [1 if rows_ids is not None else 0] * n_body + [0] * n_suf
    if eos_row is not None and finished:
        kd_ids[n_pre + n_body], kd_lp[n_pre + n_body] = eos_row
        kd_mask[n_pre + n_body] = 1
    return {"kd_ids": kd_ids, "kd_logprobs": kd_lp, "kd_mask": kd_mask}


def _cross_rows(cross, record: dict, body: list[int]):
    """(SoftLabels on the student's completion tokens, the mapped EOS row or None) for `tokenize_record`.

    The teacher's EOS row, when its completion ended with EOS, goes to the student's EOS (the template's
    end of turn), its candidates mapped like any other row (the teacher's EOS id to the student's)."""
    import numpy as np

    t_ids = np.asarray(record["completion_ids"])
    rows_ids, rows_lp = np.asarray(record["topk_ids"]), np.asarray(record["topk_logprobs"])
    if len(rows_ids) != len(t_ids):
        raise DistillkitError(f"record {record.get('id')!r}: {len(rows_ids)} top-k rows for "
                              f"{len(t_ids)} completion tokens; the generate output is inconsistent")
    eos_row = None
    if cross.teacher_eos is not None and t_ids[-1] == cross.teacher_eos:
        ids, lps, stats = cross.map_rows(rows_ids[-1:], rows_lp[-1:])
        eos_row = (ids[0], lps[0])
        t_ids, rows_ids, rows_lp = t_ids[:-1], rows_ids[:-1], rows_lp[:-1]
    labels = cross.soft_labels(t_ids, rows_ids, rows_lp, body)
    if record.get("finish_reason", "stop") != "length":  # the student's EOS is trained: it could carry a row
        labels.stats.num_positions += 1
        if eos_row is not None:
            labels.stats.add(stats)
    return labels, eos_row


def build_train_dataset(records, tokenizer, max_length: int | None, use_kd: bool, packing: bool,
                        seed: int = 0, require_topk: bool = True, cache_dir: str | Path | None = None,
                        teacher_tokenizer=None, teacher_probs: str | None = None,
                        teachers: LabelTeachers | None = None):
    """Tokenize kept records into a `datasets.Dataset` ready for `DistillTrainer` (packed when asked).

    `records` is a `datasets.Dataset`, a list of records, or a `StageRecords` view streaming a stage
    output shard by shard; a record without `completion_ids` (a chat row of a training mixture) is
    tokenized from its text and carries no soft labels. Examples are written to an Arrow file in
    `cache_dir` (a temporary folder by default) as they are made, and the dataset memory-maps it, so
    neither the records nor their soft labels are ever all in memory (16-32k-token traces with top-20
    labels are ~2-4 MB each as training columns).

    `teacher_tokenizer` (set with `train.kd.cross_tokenizer`) is the tokenizer of the soft labels' ids: when
    the student's differs, the labels are mapped onto the student's tokens instead of refused. `teachers` (a run with
    `generate.teachers`): each record's labels are its own teacher's, decided and mapped per teacher (the record's
    `teacher` column; `distillkit.train.teachers`), and `teacher_tokenizer` is not used.
    `teacher_probs` (`train.kd.teacher_probs`): the stored labels must be of the kind it reads (`check_label_kind`).
    Sampled labels travel as top-k rows do: `kd_ids` the ids drawn, `kd_logprobs` log(count / N), width N.

    Returns (dataset, info) where info holds the counts the manifest reports: examples, tokens, loss
    tokens, soft-labelled tokens, dropped examples, examples cut at `max_length` (keeping their start)
    and the tokens cut, whether the teacher's ids were used, with packing the number of packed rows
    and how full they are, with a cross-tokenizer map its alignment figures (`cross_tokenizer`), and with `teachers`
    each teacher's figures (`teachers`: {model: {examples, kd_tokens, teacher_ids_used[, cross_tokenizer]}}).
    """
    from datasets import Dataset

    topk, of, sources = _soft_label_source(records, tokenizer, use_kd, require_topk, teacher_tokenizer, teacher_probs,
                                           teachers)
    bytes_per_token = _bytes_per_token(topk)
    path = _fresh_folder(cache_dir) / "examples.arrow"
    info = {"num_examples": 0, "num_dropped": 0, "num_truncated": 0, "num_tokens_cut": 0, "topk": topk,
            "teacher_ids_used": all(s.same for s in sources.values()), "num_tokens": 0, "num_loss_tokens": 0,
            "num_kd_tokens": 0}
    if topk > 0 and getattr(records, "soft_label_format", None):  # a stage folder: which format was decoded
        info["soft_label_format"] = records.soft_label_format
    if not _write_examples(records, tokenizer, path, max_length, topk, of, sources, info):
        raise DistillkitError(f"no trainable example among {len(records)} records (max_length={max_length} "
                              "may be shorter than the prompts)")
    teacher_figures(sources, teachers is not None, topk, info)
    if info["num_truncated"]:
        log.info("train: %d of %d examples longer than train.max_length=%d were cut (%d tokens), keeping their start",
                 info["num_truncated"], info["num_examples"] + info["num_dropped"], max_length, info["num_tokens_cut"])
    ds = Dataset.from_file(str(path))
    if packing:
        ds = _pack(ds, max_length, seed, bytes_per_token, info)
    return ds, info


def _soft_label_source(records, tokenizer, use_kd: bool, require_topk: bool, teacher_tokenizer, teacher_probs,
                       teachers: LabelTeachers | None = None):
    """(k of the stored soft labels, 0 without KD on them; `of(record)` -> the record's teacher; {teacher:
    `TeacherSource`}: whether its ids are the student's, else its `CrossTokenizerMap` and `AlignmentStats` when a
    tokenizer maps them). Without `teachers` one source (key "") for every record, mapped with `teacher_tokenizer`;
    with them one per teacher (`distillkit.train.teachers`). Refuses labels that are missing, of the other kind than
    `teacher_probs` reads, or on another vocabulary with no map."""
    topk = record_topk(records) if use_kd else 0
    if use_kd and require_topk and topk == 0:
        raise DistillkitError(f"train.kd is enabled with stored soft labels (kd.teacher_probs="
                              f"{teacher_probs or 'topk_*'}), but the records have no topk_ids; regenerate with "
                              "generate.sampling.topk_logprobs > 0 or add the `score` stage, or set "
                              "train.kd.teacher_probs: live")
    if topk > 0 and teacher_probs is not None:
        check_label_kind(records, teacher_probs)
    if teachers is None:
        same = check_same_tokenizer(tokenizer, records)
        return topk, lambda rec: "", {"": teacher_source(same, tokenizer, records, topk, lambda: teacher_tokenizer)}
    counts = teacher_counts(records, teachers.of)
    samples = teacher_samples(records, teachers.of, counts)
    sources = {}
    for spec, sample in samples.items():
        load = (lambda spec=spec: teachers.tokenizer(spec)) if teachers.cross_tokenizer else (lambda: None)
        same = check_same_tokenizer(tokenizer, sample)
        sources[spec] = teacher_source(same, tokenizer, sample, topk, load, spec if len(samples) > 1 else None)
    return topk, teachers.of, sources


def _bytes_per_token(topk: int) -> int:
    """Bytes an example takes per token: int32 ids and labels, and with soft labels k int32 ids, k float32 logprobs
    and an int8 mask."""
    return 8 + (8 * topk + 1 if topk > 0 else 0)


def _fresh_folder(cache_dir: str | Path | None) -> Path:
    """An empty folder for the examples: `cache_dir` emptied, or a new temporary folder."""
    import tempfile

    folder = Path(cache_dir) if cache_dir is not None else Path(tempfile.mkdtemp(prefix="distillkit-train-"))
    if folder.exists():  # a former build's examples and packing caches (datasets keys them by path, not content)
        import shutil

        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def _write_examples(records, tokenizer, path: Path, max_length: int | None, topk: int, of, sources: dict,
                    info: dict) -> bool:
    """Tokenize the records one at a time into an Arrow file at `path`, each with its teacher's `TeacherSource`
    (`sources[of(record)]`), cut to `max_length`, counting into `info` and the sources; returns whether any example
    was written (a record whose whole assistant turn was cut is dropped)."""
    import numpy as np
    from datasets import Features, List, Value
    from datasets.arrow_writer import ArrowWriter

    feats = {"input_ids": List(Value("int32")), "labels": List(Value("int32"))}
    ragged = topk > 0 and soft_label_kind(records) == "sampled"  # rows cut to their drawn ids: see drop_row_padding
    if topk > 0:
        row = {} if ragged else {"length": topk}
        feats.update(kd_ids=List(List(Value("int32"), **row)), kd_logprobs=List(List(Value("float32"), **row)),
                     kd_mask=List(Value("int8")))
    bytes_per_token = _bytes_per_token(topk)
    writer = None
    try:
        for rec in records:
            if rec.get("special_map_unmatched"):  # a teacher special without a student counterpart: text only
                info["special_map_unmatched"] = info.get("special_map_unmatched", 0) + 1
            ids = rec.get("completion_ids")
            src = sources[of(rec)]
            ex = tokenize_record(tokenizer, rec, use_teacher_ids=src.same and ids is not None and len(ids) > 0,
                                 topk=topk, cross=src.cross, cross_stats=src.stats)
            n = len(ex["input_ids"])
            if max_length is not None and n > max_length:  # keep the start: the prompt and the beginning of the trace
                ex = {k: v[:max_length] for k, v in ex.items()}
                info["num_truncated"] += 1
                info["num_tokens_cut"] += n - max_length
            if all(x == IGNORE for x in ex["labels"]):
                info["num_dropped"] += 1  # max_length cut the whole assistant turn
                continue
            if topk > 0 and not isinstance(ex["kd_ids"], np.ndarray):
                # a record without stored labels among streamed ones (numpy rows): Arrow needs one type per batch
                ex = {**ex, "kd_ids": np.asarray(ex["kd_ids"], np.int32),
                      "kd_logprobs": np.asarray(ex["kd_logprobs"], np.float32), "kd_mask": np.asarray(ex["kd_mask"], np.int8)}
            if ragged:
                ex = drop_row_padding(ex)
            if writer is None:  # ~64 MB of examples per Arrow record batch
                batch = max(1, min(1000, (64 << 20) // max(1, len(ex["input_ids"]) * bytes_per_token)))
                writer = ArrowWriter(features=Features(feats), path=str(path), writer_batch_size=batch)
            writer.write(ex)
            info["num_examples"] += 1
            info["num_tokens"] += len(ex["input_ids"])
            info["num_loss_tokens"] += sum(x != IGNORE for x in ex["labels"])
            kd_tokens = int(np.sum(ex["kd_mask"], dtype=np.int64)) if topk > 0 else 0  # int8: no builtin sum
            info["num_kd_tokens"] += kd_tokens
            src.examples += 1
            src.kd_tokens += kd_tokens
    finally:
        if writer is not None:
            writer.finalize()
            writer.close()
    return writer is not None


def _pack(ds, max_length: int | None, seed: int, bytes_per_token: int, info: dict):
    """The examples shuffled and packed into rows of `max_length` tokens (TRL's BFD), the rows' count and fill
    recorded in `info`."""
    if max_length is None:
        raise DistillkitError("train.packing needs train.max_length (the length of a packed row)")
    from trl.data_utils import pack_dataset

    # BFD packs within each map batch: a few hundred MB of examples at a time, not the whole dataset.
    mean_tokens = info["num_tokens"] / info["num_examples"]
    batch = int(max(16, min(1000, (256 << 20) // max(1, mean_tokens * bytes_per_token))))
    ds = pack_dataset(ds.shuffle(seed=seed), max_length, strategy="bfd",
                      map_kwargs={"batch_size": batch, "writer_batch_size": batch})
    # Batches of packed rows are concatenated padding-free (no pad token reaches the model); what
    # packing can waste is the unfilled end of each row, i.e. more rows and steps than needed.
    # The last row holds the leftovers, so the fill is reported over the other rows.
    lengths = sorted((len(x) for x in ds["input_ids"]), reverse=True)
    info["num_packed_rows"] = len(lengths)
    info["packed_row_fill"] = (sum(lengths[:-1]) / ((len(lengths) - 1) * max_length)
                               if len(lengths) > 1 else lengths[0] / max_length)
    return ds


# ----------------------------------------------------------------------------------------- special map


class MappedRecords:
    """A view of training records (a list, a `datasets.Dataset` or a `StageRecords`) whose records come out through
    `SpecialMap.map_record`; length, `head` and the stage attributes (`soft_label_format`, ...) pass through."""

    def __init__(self, records, special_map: SpecialMap):
        self.records, self.special_map = records, special_map

    def __len__(self) -> int:
        return len(self.records)

    @property
    def topk(self) -> int:
        """Width of the stored soft labels (mapping keeps it)."""
        return record_topk(self.records)

    def __iter__(self):
        for rec in self.records:
            yield self.special_map.map_record(rec)

    def head(self, n: int) -> list[dict]:
        if hasattr(self.records, "head"):
            first = self.records.head(n)
        elif isinstance(self.records, list):
            first = self.records[:n]
        else:
            first = list(self.records.select(range(min(n, len(self.records)))))
        return [self.special_map.map_record(r) for r in first]

    def __getattr__(self, name):
        if name in ("records", "special_map"):
            raise AttributeError(name)
        return getattr(self.records, name)

