"""Cross-tokenizer soft labels: a teacher's stored top-k rows re-expressed on a student tokenizer's ids.

The teacher stored, for each of its completion tokens, its top-k candidates and their logprobs. A
student with another tokenizer cuts the same completion text into other tokens. Both token streams are
laid on the completion's UTF-8 *bytes* (not its str: byte-level BPEs cut Chinese characters and emoji
mid-sequence, and a lone token of such a cut decodes to U+FFFD), and

* positions: a student token that covers exactly the bytes of one teacher token (same start, same end) gets
  that teacher row, its candidates mapped as below: both models predicted it from the same text, so the
  teacher's distribution over "the next piece of text" is the one the student needs. Every other student
  token (one student token over several teacher tokens: Llama 3 writes "156" as one token where Qwen writes
  three digits; or several student tokens inside one teacher token: "</", "think", ">" against R1's
  "</think>"; or both, "}$" + "." against "}" + "$.") gets a *span label* built from the teacher rows along
  its bytes, GOLD-style (TRL's GOLDTrainer merges a teacher's probabilities over a token group by chaining
  the sampled path). Say the student token s covers bytes [a, b) of the text, teacher token t_u holds byte a
  (r = a - start(t_u) of its bytes already written before s) and t_v holds byte b - 1:

    own token   s gets the chained probability of the teacher's sampled path over the span,
                (1/Z) * p_u(t_u) * p_{u+1}(t_{u+1}) * ... * p_v(t_v), each factor read from that row's top-k.
                Z conditions row u on the r bytes already written (the sum over row u's candidates that agree
                with them); Z = 1 when s starts where t_u starts. "156" over Qwen's "1","5","6" is
                p(1) p(5|1) p(6|15).
    alternatives  every other candidate c of a row i on the path is a text the teacher could have written
                instead: w = (the span's bytes from a to the start of t_i) + bytes(c) (nothing for a special
                token: the text stops there), with the path's probability up to row i times p_i(c). Its mass
                goes to the student token that spells the longest prefix of w (the student's first token of
                that text: "157" for a "7" instead of "6" above, "15" for an EOS there, "5" for the "57" that
                Llama's "157" leaves after the "1" a Qwen student already wrote); under the "tail" and "drop"
                rules only a student token spelling all of w. Where s starts on a teacher boundary (r = 0)
                row u's candidates are mapped exactly like a one-to-one row (below), so a span label's first
                row and a matched row agree. Candidates that contradict the r bytes already
                written are conditioned away (they are outside Z); a candidate that ends inside them, or
                spells a text no student token starts, goes to the tail bucket, and so does the rest of the
                path's mass (the continuations that are not in a stored top-k). The paths are disjoint, so a
                span label sums to at most 1, like a stored row.
    what it misses  mass is moved to a student token by the text's first bytes, so a student that would merge
                further is over-credited with the short token: a teacher's "2" instead of "1" in "156" is
                credited to Llama's "2" though Llama would write "2xx" as one token (the same holds on
                one-to-one rows, "2" for "2"). A sampled token outside its row's stored top-k has no
                probability to chain: its position then keeps only the alternatives read before it, and the
                own token is left to the tail (`AlignmentStats.num_span_own_unknown` counts them).

  At most k student ids are kept per span label (the most probable; the others go to the tail). A student
  token gets no label only where the two texts differ (a U+FFFD the detokenizer wrote for a raw byte, a
  character cut at the end of a sample), or where nothing along its span maps (every candidate contradicts
  the bytes already written). `use_spans=False` gives the one-to-one labels alone. A span label's listed
  mass is often well under 1 (the own token's chain is a product): it is meant for `kd.teacher_probs:
  topk_tail`, whose tail bucket holds the rest; `topk_renorm` would scale the listed ids up to 1.
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
each distinct unmapped candidate once (cached), never the vocabulary. Span labels find "the student token
spelling the longest prefix of w" without building any w: polynomial hashes of every substring of the
trace's bytes and of the teacher's vocabulary (`_ByteHashes`, mod 2**64, one cumsum each) are looked up in
the sorted hashes of the student's vocabulary, one vectorised step per prefix length. The byte tables and the
hashes are distillkit/train/spelling.py; this module is the mapping itself, one idea (positions, candidates,
spans) kept in one file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields

import numpy as np

from distillkit.train.spelling import TokenBytes  # noqa: F401  (re-exported from its old home)
from distillkit.train.spelling import _ByteHashes, _common_prefix, _powers, token_bytes

log = logging.getLogger(__name__)

MULTI_TOKEN_RULE = "first"
RULES = ("first", "tail", "drop")
_UNKNOWN = -2  # `first` entry not computed yet


@dataclass
class AlignmentStats:
    """Counts of one or many traces: student positions and the teacher's top-k mass at labelled ones."""

    num_positions: int = 0  # student tokens that could carry a soft label (completion tokens, the EOS)
    num_labelled: int = 0  # of those, carrying a soft label (matched one-to-one with a teacher token, or a span)
    num_rows_cut: int = 0  # teacher tokens past the completion text (vLLM holds back a cut character)
    teacher_mass: float = 0.0  # the teacher's top-k probability summed over labelled rows
    mass_exact: float = 0.0  # of it, on candidates that are one student token
    mass_first: float = 0.0  # on multi-token candidates, moved to their first student token
    mass_dropped: float = 0.0  # on candidates removed by the "drop" rule
    num_candidates: int = 0  # candidate slots read at labelled rows
    num_slots_used: int = 0  # slots left after merging candidates that land on one student id
    # the teacher_mass / mass_* figures above are of one-to-one rows; span labels have their own
    num_span_labelled: int = 0  # of num_labelled, positions labelled from a span (see the module docstring)
    num_span_own_unknown: int = 0  # span positions whose own token's chain met a sampled token outside a top-k
    span_own_mass: float = 0.0  # the own token's chained probability, summed over span positions
    span_label_mass: float = 0.0  # a span label's mass on student ids (own token and alternatives), summed
    num_span_ids_cut: int = 0  # student ids past the k most probable of a span label (left to the tail)

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
                "mean_slots_used": round(self.num_slots_used / max(1, self.num_labelled), 2),
                "share_positions_span": round(self.num_span_labelled / max(1, self.num_positions), 4),
                "mean_span_own_prob": round(self.span_own_mass / max(1, self.num_span_labelled), 4),
                "mean_span_label_mass": round(self.span_label_mass / max(1, self.num_span_labelled), 4)}


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
    `use_spans` labels the student tokens that match no single teacher token from the rows along their bytes
    (the module docstring); False keeps the one-to-one labels only (the figure span labels are measured against).
    """

    def __init__(self, teacher, student, rule: str = MULTI_TOKEN_RULE, use_spans: bool = True):
        if rule not in RULES:
            raise ValueError(f"rule={rule!r} is unknown; choose one of {list(RULES)}")
        self.rule = rule
        self.use_spans = use_spans
        self.student = student
        self.t = token_bytes(teacher)
        self.s = token_bytes(student)
        self.t_len, self.s_len = self.t.lengths, self.s.lengths
        index: dict[bytes, int] = {}
        for i, b in enumerate(self.s.spelled):  # normal pieces first: "A" wins over its <0x41> fallback piece
            if b and i not in self.s.special and i not in self.s.byte_fallback:
                index.setdefault(b, i)
        for i in sorted(self.s.byte_fallback):
            index.setdefault(self.s.spelled[i], i)
        self._student_index = index
        self.exact = np.fromiter((-1 if i in self.t.special else index.get(b, -1) for i, b in enumerate(self.t.spelled)),
                                 dtype=np.int64, count=len(self.t.spelled))
        self.teacher_eos = getattr(teacher, "eos_token_id", None)
        self.student_eos = getattr(student, "eos_token_id", None)
        if self.teacher_eos is not None and self.student_eos is not None:
            self.exact[self.teacher_eos] = self.student_eos  # end of turn is not text: EOS means EOS
        self.first = np.where(self.exact >= 0, self.exact, _UNKNOWN)
        self._hashes = None  # span tables, built on the first span label

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

    def _targets(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(exact, target) student ids of in-vocabulary teacher candidates under the multi-token rule (-1: none)."""
        exact = self.exact[ids]
        if self.rule != "first":
            return exact, exact
        self._resolve_first(ids[exact < 0])
        return exact, self.first[ids]

    def map_rows(self, topk_ids, topk_logprobs) -> tuple[np.ndarray, np.ndarray, AlignmentStats]:
        """Teacher rows (n, k) -> student rows (n, k): ids int32, logprobs float32 (see the module docstring)."""
        ids = np.asarray(topk_ids, dtype=np.int64)
        lp = np.asarray(topk_logprobs, dtype=np.float64)
        n, k = ids.shape
        stats = AlignmentStats(num_labelled=n)
        present = np.isfinite(lp) & (ids >= 0)
        safe = np.where(present & (ids < len(self.exact)), ids, 0)
        present &= ids < len(self.exact)
        exact, target = self._targets(safe)
        exact, target = np.where(present, exact, -1), np.where(present, target, -1)
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
        out_ids, out_lp, num_groups, _ = self._merge(rows, target[rows, cols], lp[rows, cols], n, k)
        stats.num_slots_used = num_groups
        return out_ids, out_lp, stats

    def _merge(self, rows, targets, logprobs, n: int, k: int) -> tuple[np.ndarray, np.ndarray, int, int]:
        """(n, k) student rows from (row, student id, logprob) entries: entries on one id of a row are merged
        (probabilities add: the loss assumes distinct ids per row), the k most probable ids of a row kept and
        written in ascending id order; unused slots are id 0, logprob -inf. Returns the rows, the slots
        written and the ids left out past k."""
        out_ids = np.zeros((n, k), dtype=np.int32)
        out_lp = np.full((n, k), -np.inf, dtype=np.float32)
        if not len(rows):
            return out_ids, out_lp, 0, 0
        key = rows * (len(self.s.spelled) + 1) + (targets + 1)
        order = np.argsort(key, kind="stable")
        key_s, lp_s = key[order], logprobs[order]
        starts = np.flatnonzero(np.r_[True, key_s[1:] != key_s[:-1]])
        merged = np.logaddexp.reduceat(lp_s, starts)  # candidates on one student id: probabilities add
        g_rows, g_ids = rows[order][starts], targets[order][starts]
        by_mass = np.lexsort((-merged, g_rows))  # within a row, most probable first
        rank = np.arange(len(by_mass)) - np.searchsorted(g_rows[by_mass], g_rows[by_mass], side="left")
        kept = np.sort(by_mass[rank < k])  # groups are in (row, id) order: back to it
        cols = np.arange(len(kept)) - np.searchsorted(g_rows[kept], g_rows[kept], side="left")
        out_ids[g_rows[kept], cols] = g_ids[kept]
        out_lp[g_rows[kept], cols] = merged[kept]
        return out_ids, out_lp, len(kept), len(starts) - len(kept)

    # ----------------------------------------------------------------------------------- positions

    def _layout(self, teacher_ids, student_ids) -> "_Layout":
        """Both token streams laid on the completion's bytes, up to where their bytes first differ (a U+FFFD the
        detokenizer wrote where the teacher emitted a raw byte, or a held-back last character)."""
        t_raw = np.asarray(teacher_ids, dtype=np.int64)
        s_ids = np.asarray(student_ids, dtype=np.int64)
        t_ids = np.where((t_raw >= 0) & (t_raw < len(self.t_len)), t_raw, 0)  # ids past the vocabulary: cut below
        t_end = np.cumsum(self.t_len[t_ids])
        s_end = np.cumsum(self.s_len[s_ids])
        t_stream = b"".join(self.t.spelled[i] for i in t_ids.tolist())
        s_stream = b"".join(self.s.spelled[i] for i in s_ids.tolist())
        return _Layout(t_raw, s_ids, t_end - self.t_len[t_ids], t_end, s_end - self.s_len[s_ids], s_end, t_stream,
                       _common_prefix(t_stream, s_stream))

    def align(self, teacher_ids, student_ids) -> tuple[np.ndarray, int]:
        """For each student token, the index of the teacher token spanning exactly its bytes, else -1;
        and the number of teacher tokens past the common bytes (a trailing cut character)."""
        lay = self._layout(teacher_ids, student_ids)
        if not len(lay.t_ids):
            return np.full(len(lay.s_ids), -1, dtype=np.int64), 0
        return lay.one_to_one(), int((lay.t_end > lay.common).sum())

    def soft_labels(self, teacher_ids, topk_ids, topk_logprobs, student_ids) -> SoftLabels:
        """The student's (n_student, k) soft labels for one completion (no EOS on either side): one-to-one rows
        mapped by `map_rows`, the other positions (with `use_spans`) labelled from their spans."""
        k = np.asarray(topk_ids).shape[1] if len(topk_ids) else 0
        lay = self._layout(teacher_ids, student_ids)
        n = len(lay.s_ids)
        has_teacher = len(lay.t_ids) > 0
        pos = lay.one_to_one() if has_teacher else np.full(n, -1, dtype=np.int64)
        cut = int((lay.t_end > lay.common).sum()) if has_teacher else 0
        ids = np.zeros((n, k), dtype=np.int32)
        lps = np.full((n, k), -np.inf, dtype=np.float32)
        mask = (pos >= 0).astype(np.int8)
        hit = np.flatnonzero(pos >= 0)
        rows_ids, rows_lp = np.asarray(topk_ids), np.asarray(topk_logprobs)
        m_ids, m_lp, stats = (self.map_rows(rows_ids[pos[hit]], rows_lp[pos[hit]]) if len(hit)
                              else (ids[:0], lps[:0], AlignmentStats()))
        ids[hit], lps[hit] = m_ids, m_lp
        if self.use_spans and has_teacher and k:
            todo = np.flatnonzero((pos < 0) & (lay.s_end <= lay.common) & (lay.s_end > lay.s_start))
            if len(todo):
                sp_ids, sp_lp, labelled, sp_stats = self._span_labels(lay, todo, rows_ids, rows_lp, k)
                ids[todo], lps[todo], mask[todo] = sp_ids, sp_lp, labelled
                stats.add(sp_stats)
        stats.num_positions, stats.num_rows_cut = n, cut
        return SoftLabels(ids, lps, mask, stats)

    # ----------------------------------------------------------------------------------- span labels

    def _span_tables(self) -> tuple[_ByteHashes, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(hashes of the teacher's vocabulary bytes, each id's offset there, textless teacher ids (special or
        EOS), the student's spellings' hashes sorted, their ids): built once, on the first span label."""
        if self._hashes is None:
            t_off = np.r_[0, np.cumsum(self.t_len)[:-1]]
            t_hash = _ByteHashes(b"".join(self.t.spelled))
            textless = np.zeros(len(self.t_len), dtype=bool)
            textless[[i for i in self.t.special if i < len(textless)]] = True
            if self.teacher_eos is not None:
                textless[self.teacher_eos] = True
            # the same preference as the exact map: the id `_student_index` picked for each spelling
            s_ids = np.fromiter(self._student_index.values(), dtype=np.int64, count=len(self._student_index))
            s_off = np.r_[0, np.cumsum(self.s_len)[:-1]]
            s_keys = _ByteHashes(b"".join(self.s.spelled)).sub(s_off[s_ids], s_off[s_ids] + self.s_len[s_ids])
            order = np.argsort(s_keys, kind="stable")
            self._hashes = (t_hash, t_off, textless, s_keys[order], s_ids[order])
        return self._hashes

    def _student_prefix(self, text: _ByteHashes, pa, pb, ca, cl) -> np.ndarray:
        """For texts w = trace[pa:pb] + teacher_vocab_bytes[ca:ca + cl] (arrays), the student id spelling the
        longest prefix of w ("first" rule), or spelling all of w ("tail"/"drop"); -1 where none does."""
        t_hash, _, _, s_keys, s_ids = self._span_tables()
        n_p = pb - pa
        total = n_p + cl
        h_p = text.sub(pa, pb)
        out = np.full(len(pa), -1, dtype=np.int64)
        if not len(pa) or not len(s_keys):
            return out

        def look(q, length):  # student ids spelling w[:length] for the queries q
            in_p = length <= n_p[q]
            extra = np.maximum(length - n_p[q], 0)
            pw, _ = _powers(int(extra.max(initial=0)) + 1)
            h = np.where(in_p, text.sub(pa[q], pa[q] + np.minimum(length, n_p[q])),
                         h_p[q] * pw[extra] + t_hash.sub(ca[q], ca[q] + extra))
            at = np.minimum(np.searchsorted(s_keys, h), len(s_keys) - 1)
            found = np.where(s_keys[at] == h, s_ids[at], -1)
            return np.where((found >= 0) & (self.s_len[np.maximum(found, 0)] == length), found, -1)

        if self.rule != "first":
            q = np.flatnonzero(total > 0)
            out[q] = look(q, total[q])
            return out
        longest = int(self.s_len.max(initial=0))
        for length in range(1, int(min(total.max(initial=0), longest)) + 1):  # longer prefixes overwrite shorter
            q = np.flatnonzero(total >= length)
            found = look(q, np.full(len(q), length, dtype=np.int64))
            out[q[found >= 0]] = found[found >= 0]
        return out

    def _condition_on_written(self, lay: "_Layout", text: _ByteHashes, teacher: "_TeacherRows", u: np.ndarray,
                              r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For span positions starting r > 0 bytes into teacher token u: log(1/Z), Z being row u's mass on the
        candidates that agree with those r bytes (on their common length), and which of row u's slots agree.
        Positions with r = 0 get log(1/Z) = 0 and no agreeing slot."""
        t_hash, t_off, textless, _, _ = self._span_tables()
        cond = np.zeros(len(u))
        mid = np.flatnonzero(r > 0)
        consistent = np.zeros((len(u), teacher.cand.shape[1]), dtype=bool)
        if len(mid):
            cu, ru, su = teacher.cand[u[mid]], r[mid][:, None], lay.t_start[u[mid]][:, None]
            m = np.minimum(self.t_len[cu], ru)
            agree = t_hash.sub(t_off[cu], t_off[cu] + m) == text.sub(np.broadcast_to(su, m.shape), su + m)
            consistent[mid] = (teacher.present[u[mid]] & ~textless[cu] & agree) | teacher.own_hit[u[mid]]
            z = np.where(consistent[mid], np.exp(np.where(consistent[mid], teacher.lp[u[mid]], 0.0)), 0.0).sum(axis=1)
            cond[mid] = np.where(z > 0, -np.log(np.where(z > 0, z, 1.0)), -np.inf)
        return cond, consistent

    def _span_labels(self, lay: "_Layout", j: np.ndarray, topk_ids, topk_logprobs, k: int):
        """Span labels of student positions `j` (module docstring): ((J, k) ids, (J, k) logprobs, (J,) mask,
        stats). All positions' rows are expanded into one (N, k) table of (position, teacher row) pairs."""
        _, t_off, textless, _, _ = self._span_tables()
        text = _ByteHashes(lay.t_stream[:lay.common])
        teacher = _TeacherRows.of(lay, topk_ids, topk_logprobs, len(self.t_len))
        C, lp, present, own_hit = teacher.cand, teacher.lp, teacher.present, teacher.own_hit
        a, b = lay.s_start[j], lay.s_end[j]
        u = np.searchsorted(lay.t_end, a, side="right")  # the teacher token holding byte a
        v = np.searchsorted(lay.t_end, b - 1, side="right")  # ... and byte b - 1
        r = a - lay.t_start[u]
        J = len(j)
        cond, consistent = self._condition_on_written(lay, text, teacher, u, r)
        own_chain = cond + teacher.path(u, v + 1)

        # one flat row per (position, teacher row on its span)
        num_rows = v - u + 1
        jj = np.repeat(np.arange(J), num_rows)
        row_start = np.cumsum(num_rows) - num_rows
        ii = u[jj] + np.arange(len(jj)) - row_start[jj]
        is_first, is_last = ii == u[jj], ii == v[jj]
        cand, own = C[ii], own_hit[ii]
        mass = (cond[jj] + teacher.path(u[jj], ii))[:, None] + np.where(present[ii], lp[ii], -np.inf)
        use = present[ii] & np.isfinite(mass) & (~own | is_last[:, None])  # an own token inside the span: chained
        target = np.full(cand.shape, -1, dtype=np.int64)
        target[own & is_last[:, None]] = np.broadcast_to(lay.s_ids[j][jj][:, None], cand.shape)[own & is_last[:, None]]
        alt = use & ~own
        # s starts where t_u starts: row u's alternatives are mapped as on a one-to-one row
        on_boundary = alt & (is_first & (r[jj] == 0))[:, None]
        if on_boundary.any():
            target[on_boundary] = self._targets(cand[on_boundary])[1]
        # s starts inside t_u: row u's alternatives agreeing with the bytes written continue with their rest
        inside = alt & (is_first & (r[jj] > 0))[:, None]
        use &= ~(inside & ~consistent[jj])
        inside &= consistent[jj]
        # rows after u: the span's bytes up to t_i, then the candidate (a special token: nothing)
        later = alt & ~is_first[:, None]
        q_in, q_later = np.nonzero(inside), np.nonzero(later)
        c_in, c_later = cand[q_in], cand[q_later]
        rest = r[jj[q_in[0]]]
        pa = np.r_[np.zeros(len(c_in), dtype=np.int64), a[jj[q_later[0]]]]
        pb = np.r_[np.zeros(len(c_in), dtype=np.int64), lay.t_start[ii[q_later[0]]]]
        ca = np.r_[t_off[c_in] + np.minimum(rest, self.t_len[c_in]), t_off[c_later]]
        cl = np.r_[np.maximum(self.t_len[c_in] - rest, 0), np.where(textless[c_later], 0, self.t_len[c_later])]
        found = self._student_prefix(text, pa, pb, ca, cl)
        target[q_in], target[q_later] = found[:len(c_in)], found[len(c_in):]
        if self.rule != "drop":  # unmapped alternatives: the tail bucket (drop: id -1, renormalized away)
            use &= target >= 0
        rows, cols = np.nonzero(use)
        out_ids, out_lp, num_groups, num_cut = self._merge(jj[rows], target[rows, cols], mass[rows, cols], J, k)
        labelled = np.isfinite(out_lp).any(axis=1)
        on_ids = np.isfinite(out_lp) & (out_ids >= 0)
        stats = AlignmentStats(num_labelled=int(labelled.sum()), num_span_labelled=int(labelled.sum()),
                               num_span_own_unknown=int((labelled & ~np.isfinite(own_chain)).sum()),
                               span_own_mass=float(np.exp(own_chain[labelled]).sum()),
                               span_label_mass=float(np.exp(out_lp[on_ids]).sum()),
                               num_slots_used=num_groups, num_span_ids_cut=num_cut)
        return out_ids, out_lp, labelled.astype(np.int8), stats


@dataclass
class _TeacherRows:
    """One trace's teacher rows as span labels read them, (T, k) each: candidate ids (0 where a slot is empty or
    out of the vocabulary), logprobs, which slots hold a candidate, which slot is the token the teacher sampled;
    and the running sums that give the sampled path's probability over any run of rows."""

    cand: np.ndarray
    lp: np.ndarray
    present: np.ndarray
    own_hit: np.ndarray
    chain: np.ndarray  # (T + 1,): sum of the sampled tokens' logprobs on rows before i (unknown ones as 0)
    unknown: np.ndarray  # (T + 1,): how many rows before i hold no sampled token in their top-k

    @classmethod
    def of(cls, lay: "_Layout", topk_ids, topk_logprobs, vocab_size: int) -> "_TeacherRows":
        R = np.asarray(topk_ids, dtype=np.int64)
        lp = np.asarray(topk_logprobs, dtype=np.float64)
        present = np.isfinite(lp) & (R >= 0) & (R < vocab_size)
        own_hit = present & (R == lay.t_ids[:, None])
        own_lp = np.where(own_hit, lp, -np.inf).max(axis=1)  # the sampled token's logprob, -inf: not in the top-k
        known = np.isfinite(own_lp)
        return cls(np.where(present, R, 0), lp, present, own_hit, np.r_[0.0, np.cumsum(np.where(known, own_lp, 0.0))],
                   np.r_[0, np.cumsum(~known)])

    def path(self, first, stop) -> np.ndarray:
        """log prod of the sampled tokens' probabilities on rows [first, stop); -inf where one is not in its top-k."""
        return np.where(self.unknown[stop] == self.unknown[first], self.chain[stop] - self.chain[first], -np.inf)


@dataclass
class _Layout:
    """Token streams laid on a completion's bytes: [start, end) of each token, and the common byte prefix."""

    t_ids: np.ndarray  # the teacher's ids as given (out-of-vocabulary ids included)
    s_ids: np.ndarray
    t_start: np.ndarray
    t_end: np.ndarray
    s_start: np.ndarray
    s_end: np.ndarray
    t_stream: bytes
    common: int

    def one_to_one(self) -> np.ndarray:
        """For each student token, the teacher token with the same start and end inside the common bytes, else -1."""
        idx = np.clip(np.searchsorted(self.t_start, self.s_start), 0, len(self.t_ids) - 1)
        ok = ((self.t_start[idx] == self.s_start) & (self.t_end[idx] == self.s_end) & (self.s_end <= self.common)
              & (self.s_end > self.s_start))
        return np.where(ok, idx, -1)


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
