"""Cross-tokenizer soft labels: a teacher's stored top-k rows re-expressed on a student tokenizer's ids.

The teacher stored, for each of its completion tokens, its top-k candidates and their logprobs. A
student with another tokenizer cuts the same completion text into other tokens. Both token streams are
laid on the completion's UTF-8 *bytes* (not its str: byte-level BPEs cut Chinese characters and emoji
mid-sequence, and a lone token of such a cut decodes to U+FFFD), and

* positions: a student token gets a soft label only where it covers exactly the bytes of one teacher
  token (same start, same end). Then both models predicted it from the same text, so the teacher's
  distribution over "the next piece of text" is the one the student needs. Every other student position
  (one student token over several teacher tokens, or the reverse: digits are one token per digit in Qwen,
  up to three in Llama 3) is trained by cross-entropy only (`kd_mask` 0), and counted.
* candidates: each teacher candidate is turned into bytes and looked up in the student's vocabulary.
  A candidate that is exactly one student token maps to it (the teacher's EOS maps to the student's EOS:
  end-of-turn tokens are not text). A candidate that is several student tokens follows `MULTI_TOKEN_RULE`:

    "first"  its mass goes to its first student token (chosen). The student's probability of token x is the
             teacher's mass on every string whose student tokenization starts with x; exact matches give a
             lower bound of it, and adding the candidates that start with x tightens that bound instead of
             inventing mass. Measured (BENCHMARKS.md, "Cross-tokenizer soft labels"): with the real top-20
             of SmolLM2-135M and Gemma-3-270M over R1-style traces, 0.2-1.9% of the mass is such
             candidates, and "first" maps all of it where "tail" and "drop" lose it.
    "tail"   its mass is left to the `topk_tail` tail bucket (a looser lower bound).
    "drop"   it is removed and the teacher renormalized over the rest (overstates the mapped candidates).

  A candidate no student token spells (a special token, a partial UTF-8 sequence the student never
  produces alone, an id past the teacher's tokenizer) always goes to the tail. Candidates that land on
  the same student id are merged (their probabilities added): the loss assumes distinct ids per row.
  Unused slots of a row are id 0 with logprob -inf, which the loss reads as "no candidate".

Cost: the byte tables are built once, one pass over each vocabulary (152k entries: well under a second).
Per trace the work is numpy over the trace's tokens and its (T, k) rows; the multi-token rule tokenizes
each distinct unmapped candidate once (cached), never the vocabulary.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field, fields

import numpy as np

log = logging.getLogger(__name__)

MULTI_TOKEN_RULE = "first"
RULES = ("first", "tail", "drop")
_UNKNOWN = -2  # `first` entry not computed yet


@functools.lru_cache(maxsize=1)
def _byte_level_table() -> dict[int, int]:
    """GPT-2's byte <-> printable-character table, as a str.translate table char -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {c: b for b, c in zip(bs, cs)}


def _decoder_kind(tokenizer) -> tuple[str, bool]:
    """("byte_level" | "metaspace" | "other", byte_fallback) from the fast tokenizer's decoder."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is None:
        return "other", False
    state = json.loads(decoder.__getstate__())
    parts = state.get("decoders", [state]) if state.get("type") == "Sequence" else [state]
    types = {p.get("type") for p in parts}
    if "ByteLevel" in types:
        return "byte_level", False
    spaces = "Metaspace" in types or any(p.get("type") == "Replace" and "▁" in str(p.get("pattern")) for p in parts)
    return ("metaspace" if spaces else "other"), "ByteFallback" in types


@dataclass
class TokenBytes:
    """What each id of a tokenizer spells in decoded text, as bytes; `special` ids spell no text."""

    spelled: list[bytes]
    special: set[int]
    byte_fallback: set[int]  # sentencepiece <0xNN> pieces: used only when no normal piece spells the byte

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(b) for b in self.spelled), dtype=np.int64, count=len(self.spelled))


def token_bytes(tokenizer) -> TokenBytes:
    """Bytes of every id (added tokens included), from the vocabulary and the decoder's convention:
    byte-level BPE (Qwen, Llama 3, SmolLM2: `Ġ` is a space, every char one byte), sentencepiece-style
    (Gemma: `▁` is a space, `<0xNN>` pieces are raw bytes), otherwise `convert_tokens_to_string` per token.
    One pass over the vocabulary."""
    vocab = tokenizer.get_vocab()
    size = max(len(tokenizer), max(vocab.values(), default=-1) + 1)
    spelled = [b""] * size
    kind, fallback = _decoder_kind(tokenizer)
    table = _byte_level_table()
    byte_fallback: set[int] = set()
    for tok, i in vocab.items():
        if kind == "byte_level":
            try:
                spelled[i] = tok.translate(table).encode("latin-1")
            except UnicodeEncodeError:  # a char outside the byte alphabet: an added token, set below
                spelled[i] = tok.encode()
        elif kind == "metaspace":
            if fallback and len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
                spelled[i] = bytes([int(tok[3:5], 16)])
                byte_fallback.add(i)
            else:
                spelled[i] = tok.replace("▁", " ").encode()
        else:
            spelled[i] = tokenizer.convert_tokens_to_string([tok]).encode()
    special = set()
    for i, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        spelled[i] = added.content.encode()
        if added.special:
            special.add(i)
    return TokenBytes(spelled, special, byte_fallback)


@dataclass
class AlignmentStats:
    """Counts of one or many traces: student positions and the teacher's top-k mass at labelled ones."""

    num_positions: int = 0  # student tokens that could carry a soft label (completion tokens, the EOS)
    num_labelled: int = 0  # of those, matched one-to-one with a teacher token: they carry one
    num_rows_cut: int = 0  # teacher tokens past the completion text (vLLM holds back a cut character)
    teacher_mass: float = 0.0  # the teacher's top-k probability summed over labelled rows
    mass_exact: float = 0.0  # of it, on candidates that are one student token
    mass_first: float = 0.0  # on multi-token candidates, moved to their first student token
    mass_dropped: float = 0.0  # on candidates removed by the "drop" rule
    num_candidates: int = 0  # candidate slots read at labelled rows
    num_slots_used: int = 0  # slots left after merging candidates that land on one student id

    def add(self, other: "AlignmentStats") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def summary(self) -> dict:
        """The manifest's and preflight's figures: shares, not sums."""
        mass = self.teacher_mass or 1.0
        mapped = self.mass_exact + self.mass_first
        return {"rule": MULTI_TOKEN_RULE, "num_positions": self.num_positions, "num_labelled": self.num_labelled,
                "share_positions_labelled": round(self.num_labelled / max(1, self.num_positions), 4),
                "share_topk_mass_mapped": round(mapped / mass, 4),
                "share_topk_mass_exact": round(self.mass_exact / mass, 4),
                "share_topk_mass_first_token": round(self.mass_first / mass, 4),
                "mean_slots_used": round(self.num_slots_used / max(1, self.num_labelled), 2)}


@dataclass
class SoftLabels:
    """Student-position soft labels of one trace: (n, k) ids and logprobs, (n,) mask, and their counts."""

    ids: np.ndarray
    logprobs: np.ndarray
    mask: np.ndarray
    stats: AlignmentStats = field(default_factory=AlignmentStats)


class CrossTokenizerMap:
    """Teacher ids -> student ids by spelling, built once per (teacher, student) pair.

    `exact[t]` is the student id spelling exactly what teacher id `t` spells (-1: none); `first[t]` the first
    student token of a multi-token spelling (computed on demand for the candidates that occur).
    """

    def __init__(self, teacher, student, rule: str = MULTI_TOKEN_RULE):
        if rule not in RULES:
            raise ValueError(f"rule={rule!r} is unknown; choose one of {list(RULES)}")
        self.rule = rule
        self.student = student
        self.t = token_bytes(teacher)
        self.s = token_bytes(student)
        self.t_len, self.s_len = self.t.lengths, self.s.lengths
        index: dict[bytes, int] = {}
        for i, b in enumerate(self.s.spelled):  # normal pieces first: "A" wins over its <0x41> fallback piece
            if b and i not in self.s.special and i not in self.s.byte_fallback:
                index.setdefault(b, i)
        for i in self.s.byte_fallback:
            index.setdefault(self.s.spelled[i], i)
        self.exact = np.fromiter((-1 if i in self.t.special else index.get(b, -1) for i, b in enumerate(self.t.spelled)),
                                 dtype=np.int64, count=len(self.t.spelled))
        self.teacher_eos = getattr(teacher, "eos_token_id", None)
        self.student_eos = getattr(student, "eos_token_id", None)
        if self.teacher_eos is not None and self.student_eos is not None:
            self.exact[self.teacher_eos] = self.student_eos  # end of turn is not text: EOS means EOS
        self.first = np.where(self.exact >= 0, self.exact, _UNKNOWN)

    # ----------------------------------------------------------------------------------- candidates

    def _resolve_first(self, ids: np.ndarray) -> None:
        """Fill `first` for these teacher ids: the student's first token of the candidate's text, when that
        token spells a prefix of the candidate's bytes; else -1 (partial UTF-8, special, empty)."""
        todo = np.unique(ids[self.first[ids] == _UNKNOWN])
        if not len(todo):
            return
        texts, keep = [], []
        for t in todo.tolist():
            try:
                texts.append(self.t.spelled[t].decode("utf-8"))
                keep.append(t)
            except UnicodeDecodeError:
                pass
            self.first[t] = -1
        if not texts:
            return
        encoded = self.student(texts, add_special_tokens=False)["input_ids"]
        for t, text, enc in zip(keep, texts, encoded):
            if text and enc and enc[0] not in self.s.special and self.s.spelled[enc[0]] \
                    and self.t.spelled[t].startswith(self.s.spelled[enc[0]]):
                self.first[t] = enc[0]

    def map_rows(self, topk_ids, topk_logprobs) -> tuple[np.ndarray, np.ndarray, AlignmentStats]:
        """Teacher rows (n, k) -> student rows (n, k): ids int32, logprobs float32 (see the module docstring)."""
        ids = np.asarray(topk_ids, dtype=np.int64)
        lp = np.asarray(topk_logprobs, dtype=np.float64)
        n, k = ids.shape
        stats = AlignmentStats(num_labelled=n)
        present = np.isfinite(lp) & (ids >= 0)
        safe = np.where(present & (ids < len(self.exact)), ids, 0)
        present &= ids < len(self.exact)
        exact = np.where(present, self.exact[safe], -1)
        if self.rule == "first":
            self._resolve_first(safe[present & (exact < 0)])
            target = np.where(present, self.first[safe], -1)
        else:
            target = exact
        p = np.where(present, np.exp(np.where(present, lp, 0.0)), 0.0)
        stats.teacher_mass = float(p.sum())
        stats.mass_exact = float(p[exact >= 0].sum())
        stats.mass_first = float(p[(exact < 0) & (target >= 0)].sum())
        stats.num_candidates = int(present.sum())
        keep = present & (target >= 0)
        if self.rule == "drop":  # id -1 is outside the vocabulary: the loss conditions the teacher on the rest
            keep = present
            stats.mass_dropped = float(p[present & (target < 0)].sum())
        rows, cols = np.nonzero(keep)
        out_ids = np.zeros((n, k), dtype=np.int32)
        out_lp = np.full((n, k), -np.inf, dtype=np.float32)
        if len(rows):
            tgt = target[rows, cols]
            key = rows * (len(self.s.spelled) + 1) + (tgt + 1)
            order = np.argsort(key, kind="stable")
            key_s, lp_s = key[order], lp[rows, cols][order]
            starts = np.flatnonzero(np.r_[True, key_s[1:] != key_s[:-1]])
            merged = np.logaddexp.reduceat(lp_s, starts)  # candidates on one student id: probabilities add
            g_rows = rows[order][starts]
            g_ids = tgt[order][starts]
            row_first = np.searchsorted(g_rows, g_rows, side="left")
            g_cols = np.arange(len(starts)) - row_first
            out_ids[g_rows, g_cols] = g_ids
            out_lp[g_rows, g_cols] = merged
            stats.num_slots_used = len(starts)
        return out_ids, out_lp, stats

    # ----------------------------------------------------------------------------------- positions

    def align(self, teacher_ids, student_ids) -> tuple[np.ndarray, int]:
        """For each student token, the index of the teacher token spanning exactly its bytes, else -1;
        and the number of teacher tokens past the common bytes (a trailing cut character).

        Both sequences spell the same completion; alignment stops where their bytes first differ (a
        U+FFFD the detokenizer wrote where the teacher emitted a raw byte, or a held-back last character).
        """
        t_ids = np.asarray(teacher_ids, dtype=np.int64)
        s_ids = np.asarray(student_ids, dtype=np.int64)
        if not len(t_ids):
            return np.full(len(s_ids), -1, dtype=np.int64), 0
        t_ids = np.where((t_ids >= 0) & (t_ids < len(self.t_len)), t_ids, 0)  # ids past the vocabulary: cut below
        t_end = np.cumsum(self.t_len[t_ids])
        s_end = np.cumsum(self.s_len[s_ids])
        t_start, s_start = t_end - self.t_len[t_ids], s_end - self.s_len[s_ids]
        t_stream = b"".join(self.t.spelled[i] for i in t_ids.tolist())
        s_stream = b"".join(self.s.spelled[i] for i in s_ids.tolist())
        common = _common_prefix(t_stream, s_stream)
        idx = np.clip(np.searchsorted(t_start, s_start), 0, len(t_ids) - 1)
        ok = (t_start[idx] == s_start) & (t_end[idx] == s_end) & (s_end <= common) & (s_end > s_start)
        return np.where(ok, idx, -1), int((t_end > common).sum())

    def soft_labels(self, teacher_ids, topk_ids, topk_logprobs, student_ids) -> SoftLabels:
        """The student's (n_student, k) soft labels for one completion (no EOS on either side)."""
        k = np.asarray(topk_ids).shape[1] if len(topk_ids) else 0
        pos, cut = self.align(teacher_ids, student_ids)
        n = len(pos)
        ids = np.zeros((n, k), dtype=np.int32)
        lps = np.full((n, k), -np.inf, dtype=np.float32)
        mask = (pos >= 0).astype(np.int8)
        hit = np.flatnonzero(pos >= 0)
        rows_ids, rows_lp = np.asarray(topk_ids), np.asarray(topk_logprobs)
        m_ids, m_lp, stats = (self.map_rows(rows_ids[pos[hit]], rows_lp[pos[hit]]) if len(hit)
                              else (ids[:0], lps[:0], AlignmentStats()))
        ids[hit], lps[hit] = m_ids, m_lp
        stats.num_positions, stats.num_rows_cut = n, cut
        return SoftLabels(ids, lps, mask, stats)


def _common_prefix(a: bytes, b: bytes) -> int:
    """Length of the longest common prefix of two byte strings (numpy, not a Python loop over bytes)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    diff = np.frombuffer(a[:n], dtype=np.uint8) != np.frombuffer(b[:n], dtype=np.uint8)
    return int(np.argmax(diff))


def measure_alignment(cmap: CrossTokenizerMap, records, student) -> AlignmentStats:
    """Alignment counts over records with stored top-k (preflight's sample, the benchmark): each completion
    re-tokenized by `student`, the teacher's trailing EOS row left out (positions are completion tokens)."""
    stats = AlignmentStats()
    for rec in records:
        t_ids = rec.get("completion_ids")
        if rec.get("topk_ids") is None or t_ids is None or not len(t_ids):
            continue
        t_ids, rows, lps = np.asarray(t_ids), np.asarray(rec["topk_ids"]), np.asarray(rec["topk_logprobs"])
        if cmap.teacher_eos is not None and t_ids[-1] == cmap.teacher_eos:
            t_ids, rows, lps = t_ids[:-1], rows[:-1], lps[:-1]
        body = student(rec["completion"], add_special_tokens=False)["input_ids"]
        stats.add(cmap.soft_labels(t_ids, rows, lps, body).stats)
    return stats
