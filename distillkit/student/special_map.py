"""Same BPE, different special tokens: the teacher's special ids mapped by role onto the student's own.

`train.student.tokenizer: map`. Qwen3 shares Qwen2.5's (and R1-Distill-Qwen's) BPE, but its added tokens
differ: Qwen3 has `<think>` 151667 and `</think>` 151668, R1-Distill-Qwen has them at 151648/151649, which
Qwen3 calls `<|box_start|>`/`<|box_end|>`. Adopting the teacher's tokens (`tokenizer: teacher`, right for
base Qwen2.5 / Llama 3 students, which have no reasoning tokens of their own) would throw away a Qwen3
student's trained thinking tokens. Here the student keeps its tokens and template, and every teacher id is
moved onto the student token that plays the same role:

    role         found in a tokenizer as
    think_open   an added token named like a reasoning tag (`<think>`, `<thinking>`, `<seed:think>`,
    think_close  `<|begin_of_thought|>`/`<|end_of_thought|>`, `<|START_THINKING|>`/`<|END_THINKING|>`), paired
                 with its closing tag; the pair the chat template writes wins when there are several
    turn_end     the added token the chat template writes right after an assistant answer (R1: its EOS
                 `<｜end▁of▁sentence｜>`; Qwen3/ChatML: `<|im_end|>`; Llama 3: `<|eot_id|>`); else the EOS
    bos          the tokenizer's BOS
    pad          the tokenizer's pad, when it is not its EOS or end of turn

Roles are read from each tokenizer's files and template, never from model names, so other pairs work the
same way. After the roles, a teacher token whose text the student also has (`<|quad_start|>` in both) maps to
it; every other added id of the teacher (R1's `<｜User｜>`, its BOS when the student has none, padded
embedding rows past the tokenizer) has no counterpart. Ordinary BPE ids stay as they are.

Where the map applies:
- stored soft labels (`map_topk`): top-k ids of generate/score records (packed-v1 and fp16 shards both decode
  to `topk_ids`); a candidate without a counterpart is dropped (id 0, logprob -inf: the loss renormalises
  over the rest, distillkit/train/losses.py);
- the trained token ids (`map_record`): a trace's `completion_ids` (the teacher's `</think>`, its EOS) become
  the student's, so the student trains on its own `</think>` and stops with its own end of turn. A trace
  holding a teacher special without a counterpart (rare: a hallucinated `<｜User｜>`) is re-tokenised from
  its text and trains without soft labels;
- live and served teachers (`live_projection`, `teacher_ids`, `MappedScorer`): the teacher reads the
  student's sequence with the student's specials moved to the teacher's (`permutation`, a bijection that
  also pairs the specials without a counterpart on either side, in id order, so every student id gets one
  teacher logit), and its logits or top-k come back on the student's ids. The prompt is the student's
  rendering of the chat (ChatML for Qwen3): a specials-for-specials approximation of the teacher's own
  prompt; stored labels, generated with the teacher's template, have no such approximation.

A pair whose roles cannot be matched (the teacher writes `</think>` as one token and the student has none,
or the reverse) is refused with the role, both tokenizers and the fix (`check_roles`); preflight runs that
check before generation.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from distillkit.errors import DistillkitError

log = logging.getLogger(__name__)

ROLES = ("think_open", "think_close", "turn_end", "bos", "pad")
REQUIRED_ROLES = ("think_open", "think_close", "turn_end")
"""Roles that occur in traces: a teacher token of one of these without a student counterpart breaks training."""

_REASONING_NAME = re.compile(r"think|thought|reason", re.IGNORECASE)
# (pattern of an opening tag, how to spell its closing tag from the match)
_TAG_PAIRS = (
    (re.compile(r"<([A-Za-z][\w:.-]*)>"), lambda m: f"</{m.group(1)}>"),
    (re.compile(r"<\|(begin|start)_of_(\w+)\|>"), lambda m: f"<|end_of_{m.group(2)}|>"),
    (re.compile(r"<\|(\w+)_(begin|start)\|>"), lambda m: f"<|{m.group(1)}_end|>"),
    (re.compile(r"<\|(BEGIN|START)_(\w+)\|>"), lambda m: f"<|END_{m.group(2)}|>"),
)
_PROBE_USER = "What is 7 + 5?"
_PROBE_ANSWER = "The answer is 12."


# ----------------------------------------------------------------------------------------- roles


def added_tokens(tokenizer) -> dict[int, str]:
    """id -> text of every added (special or user-defined) token."""
    return {i: t.content for i, t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items()}


def _template_text(tokenizer) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one
        template = template.get("default") or next(iter(template.values()), "")
    return template if isinstance(template, str) else ""


def think_tags(tokenizer) -> tuple[str, str] | None:
    """The reasoning tags (open, close) that are single added tokens of `tokenizer`, or None."""
    texts = set(added_tokens(tokenizer).values())
    pairs = []
    for text in sorted(texts):
        for pattern, close in _TAG_PAIRS:
            m = pattern.fullmatch(text)
            if m and _REASONING_NAME.search(text) and close(m) in texts:
                pairs.append((text, close(m)))
    if not pairs:
        return None
    template = _template_text(tokenizer)
    in_template = [p for p in pairs if p[0] in template and p[1] in template]
    return (in_template or pairs)[0]


def turn_end(tokenizer) -> str | None:
    """The added token the chat template writes right after an assistant answer; else the EOS.

    An answer without reasoning is rendered, so templates that drop reasoning (R1-Distill's as shipped) or
    re-space it (Qwen3's) still show what closes the turn."""
    added = added_tokens(tokenizer)
    if _template_text(tokenizer):
        chat = [{"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": _PROBE_ANSWER}]
        try:
            full = tokenizer.apply_chat_template(chat, tokenize=False)
        except Exception:  # jinja errors, raise_exception(): fall back to the EOS
            full = ""
        at = full.rfind(_PROBE_ANSWER)
        if at >= 0:
            suffix = full[at + len(_PROBE_ANSWER):]
            ids = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
            if ids and ids[0] in added:
                return added[ids[0]]
    return tokenizer.eos_token


def special_roles(tokenizer) -> dict[str, str]:
    """role -> token text for the roles `tokenizer` has as single tokens (see the module docstring)."""
    roles: dict[str, str] = {}
    tags = think_tags(tokenizer)
    if tags:
        roles["think_open"], roles["think_close"] = tags
    end = turn_end(tokenizer)
    if end is not None:
        roles["turn_end"] = end
    if tokenizer.bos_token is not None:
        roles["bos"] = tokenizer.bos_token
    if tokenizer.pad_token is not None and tokenizer.pad_token not in (tokenizer.eos_token, end):
        roles["pad"] = tokenizer.pad_token
    return roles


# ----------------------------------------------------------------------------------------- the map


@dataclass(frozen=True)
class MappedToken:
    teacher_id: int
    teacher_token: str
    student_id: int
    student_token: str
    how: str
    """The role that matched ("think_close", "turn_end", ...) or "same text"."""


@dataclass
class SpecialMap:
    """Teacher ids -> student ids for a pair that shares a BPE (see the module docstring).

    `teacher_size` is the teacher tokenizer's length: ids at or above it (padded embedding rows) and teacher
    added ids not in `pairs` have no counterpart; every other id is an ordinary BPE token, the same for both."""

    pairs: list[MappedToken]
    unmatched: list[tuple[int, str]]
    """Teacher added ids without a student counterpart (id, text)."""
    teacher_size: int
    teacher_roles: dict[str, str] = field(default_factory=dict)
    student_roles: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self._special = {p.teacher_id: p.student_id for p in self.pairs}
        self._special.update({i: -1 for i, _ in self.unmatched})
        self._lut = None

    def same_mapping(self, other: "SpecialMap") -> bool:
        """Whether `other` moves every teacher id where this map does (two teachers of one family)."""
        return (self._special, self.teacher_size) == (other._special, other.teacher_size)

    # ---- ids

    def lut(self):
        """int64 array over the teacher's tokens: teacher id -> student id, -1 where there is no counterpart
        (ids past its end, padded embedding rows, have none either)."""
        import numpy as np

        if self._lut is None:
            lut = np.arange(max(self.teacher_size, max(self._special, default=-1) + 1), dtype=np.int64)
            lut[self.teacher_size:] = -1
            for t, s in self._special.items():
                lut[t] = s
            self._lut = lut
        return self._lut

    def map_ids(self, ids):
        """Teacher ids (any shape, list or array) -> student ids as an int64 array, -1 where unmatched."""
        import numpy as np

        ids = np.asarray(ids, dtype=np.int64)
        lut = self.lut()
        inside = (ids >= 0) & (ids < len(lut))
        return np.where(inside, lut[np.where(inside, ids, 0)], -1)

    def map_topk(self, ids, logprobs):
        """Stored top-k rows (T, k) on the teacher's ids -> the same rows on the student's ids. A candidate without
        a counterpart becomes id 0 with logprob -inf, the loss's "no candidate" (its mass is renormalised away)."""
        import numpy as np

        mapped = self.map_ids(ids)
        lps = np.asarray(logprobs, dtype=np.float32)
        gone = mapped < 0
        if gone.any():
            lps = np.where(gone, -np.inf, lps).astype(np.float32)
            mapped = np.where(gone, 0, mapped)
        return mapped.astype(np.int32), lps

    def map_record(self, record: dict) -> dict:
        """A trace record with its completion ids and top-k ids on the student's ids (a shallow copy).

        A completion holding a teacher special without a counterpart keeps its text only (`completion_ids` and
        soft labels None, `special_map_unmatched` True): the train stage re-tokenises it and gives it no soft label."""
        ids = record.get("completion_ids")
        if ids is None or len(ids) == 0:
            return record
        out = dict(record)
        mapped = self.map_ids(ids)
        if (mapped < 0).any():
            out.update(completion_ids=None, topk_ids=None, topk_logprobs=None, special_map_unmatched=True)
            return out
        out["completion_ids"] = mapped
        if record.get("topk_ids") is not None:
            out["topk_ids"], out["topk_logprobs"] = self.map_topk(record["topk_ids"], record["topk_logprobs"])
        return out

    # ---- live and served teachers

    def permutation(self, size: int):
        """A bijection teacher id -> student id on [0, size): the role/text pairs, the identity on BPE ids, and the
        specials without a counterpart on either side paired in id order (so every student id has one teacher id)."""
        import numpy as np

        perm = np.arange(size, dtype=np.int64)
        mapped = {t: s for t, s in self._special.items() if 0 <= s < size and t < size}
        # ids that are not an ordinary BPE id on both sides: the teacher's specials, its padded rows, the targets
        loose = ({i for i in self._special if i < size} | set(range(min(size, self.teacher_size), size))
                 | set(mapped.values()))
        free_t = sorted(loose - set(mapped))  # teacher ids without a target yet
        free_s = sorted(loose - set(mapped.values()))  # student ids no teacher id reaches yet (as many: the map is 1:1)
        for t, s in mapped.items():
            perm[t] = s
        for t, s in zip(free_t, free_s):
            perm[t] = s
        return perm

    def teacher_ids(self, student_ids, size: int):
        """Student ids (a tensor) -> the ids the teacher reads (the inverse of `permutation(size)`)."""
        import numpy as np
        import torch

        inverse = np.empty(size, dtype=np.int64)
        inverse[self.permutation(size)] = np.arange(size, dtype=np.int64)
        table = torch.as_tensor(inverse, device=student_ids.device)
        return table[student_ids.clamp(0, size - 1)]

    def live_projection(self, projection, size: int):
        """Wrap the teacher's output projection: hidden (N, H) -> teacher logits re-indexed to the student's ids,
        (N, size). `projection` is a (V, H) weight or a callable, as `distillkit.train.losses` takes them."""
        import numpy as np
        import torch

        inverse = np.empty(size, dtype=np.int64)
        inverse[self.permutation(size)] = np.arange(size, dtype=np.int64)
        index = torch.as_tensor(inverse)

        def project(h):
            if callable(projection) and not isinstance(projection, torch.Tensor):
                logits = projection(h)
            else:
                logits = h.to(projection.dtype) @ projection.t()
            return logits[..., :size].index_select(-1, index.to(logits.device))

        return project

    # ---- reporting

    def pair_for(self, role: str) -> MappedToken | None:
        return next((p for p in self.pairs if p.how == role), None)

    def summary(self) -> str:
        """One line for logs, notes and preflight: the role pairs, then counts."""
        moved = [p for p in self.pairs if p.teacher_id != p.student_id]
        shown = ", ".join(f"{p.teacher_token!r} {p.teacher_id}->{p.student_id}" + (f" {p.student_token!r}"
                          if p.student_token != p.teacher_token else "") for p in moved[:6])
        return (f"{len(moved)} teacher special id(s) moved by role ({shown}{' ...' if len(moved) > 6 else ''}); "
                f"{len(self.pairs) - len(moved)} kept; {len(self.unmatched)} without a counterpart dropped "
                f"({', '.join(repr(t) for _, t in self.unmatched[:4])}{' ...' if len(self.unmatched) > 4 else ''})")

    def to_json(self) -> dict:
        """For distillkit_init.json, the train manifest and the model card."""
        return {"pairs": [{"teacher_id": p.teacher_id, "teacher": p.teacher_token, "student_id": p.student_id,
                           "student": p.student_token, "how": p.how} for p in self.pairs],
                "unmatched": [{"teacher_id": i, "teacher": t} for i, t in self.unmatched],
                "teacher_size": self.teacher_size, "teacher_roles": self.teacher_roles,
                "student_roles": self.student_roles}


def _name(tokenizer, given: str | None) -> str:
    return given or getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def role_problems(teacher, student, teacher_name: str | None = None, student_name: str | None = None,
                  t_roles: dict | None = None, s_roles: dict | None = None) -> list[tuple[str, str]]:
    """Why `map` cannot be applied to this pair: (problem, fix) per direction of unmatched required roles (empty:
    it can). Each problem names both tokenizers, the roles and their tokens."""
    t_roles = special_roles(teacher) if t_roles is None else t_roles
    s_roles = special_roles(student) if s_roles is None else s_roles
    tn, sn = _name(teacher, teacher_name), _name(student, student_name)
    student_lacks = [r for r in REQUIRED_ROLES if t_roles.get(r) is not None and s_roles.get(r) is None]
    teacher_lacks = [r for r in REQUIRED_ROLES if s_roles.get(r) is not None and t_roles.get(r) is None]
    problems = []
    if student_lacks:
        named = ", ".join(f"{r} {t_roles[r]!r} (id {teacher.convert_tokens_to_ids(t_roles[r])}, "
                          f"{len(student(t_roles[r], add_special_tokens=False)['input_ids'])} pieces for the student)"
                          for r in student_lacks)
        problems.append((f"the teacher {tn} has single tokens the student {sn} has no token for: {named}",
                         "train.student.tokenizer: teacher or auto (the student adopts the teacher's special tokens, "
                         "as DeepSeek's Qwen2.5/Llama students did; it has none of its own to keep)"))
    if teacher_lacks:
        named = ", ".join(f"{r} {s_roles[r]!r} (id {student.convert_tokens_to_ids(s_roles[r])})" for r in teacher_lacks)
        problems.append((f"the student {sn} has single tokens the teacher {tn} has no token for: {named}; the "
                         "teacher's traces spell them in BPE pieces, so ids cannot be mapped one to one",
                         "train.student.tokenizer: own with train.kd.cross_tokenizer: true (soft labels mapped by "
                         "spelling), or train.kd.enabled: false (SFT on the teacher's text)"))
    return problems


def roles_error(problems: list[tuple[str, str]]) -> str:
    """`role_problems` as one error message."""
    return "train.student.tokenizer=map cannot match the special-token roles: " + "; ".join(
        f"{problem}. Fix: {fix}" for problem, fix in problems)


def build_special_map(teacher, student, teacher_name: str | None = None,
                      student_name: str | None = None) -> SpecialMap:
    """The map from `teacher`'s special ids to `student`'s (the student's tokenizer as student_init/ holds it, so its
    EOS is its end of turn). Raises DistillkitError (naming both tokenizers, the role and the fix) when the two
    split text differently or a required role has no counterpart."""
    from distillkit.student.bpe import shares_bpe

    tn, sn = _name(teacher, teacher_name), _name(student, student_name)
    if not shares_bpe(student, teacher):
        raise DistillkitError(f"train.student.tokenizer=map needs a teacher and student with the same BPE; {tn} and "
                              f"{sn} split ordinary text differently. Fix: train.kd.cross_tokenizer: true (stored "
                              "soft labels mapped by spelling) with train.student.tokenizer: own, or "
                              "train.kd.enabled: false")
    t_roles, s_roles = special_roles(teacher), special_roles(student)
    problems = role_problems(teacher, student, tn, sn, t_roles, s_roles)
    if problems:
        raise DistillkitError(roles_error(problems))
    t_added, s_added = added_tokens(teacher), added_tokens(student)
    s_by_text = {text: i for i, text in s_added.items()}
    t_vocab = {text: i for i, text in t_added.items()}
    pairs: list[MappedToken] = []
    taken_t: set[int] = set()
    taken_s: set[int] = set()

    def add(t_id: int, s_id: int, how: str) -> None:
        if t_id in taken_t or s_id in taken_s:
            return  # one role per token: the first (highest-priority) match wins
        pairs.append(MappedToken(t_id, t_added.get(t_id, teacher.convert_ids_to_tokens(t_id)), s_id,
                                 s_added.get(s_id, student.convert_ids_to_tokens(s_id)), how))
        taken_t.add(t_id)
        taken_s.add(s_id)

    for role in ROLES:
        t_tok, s_tok = t_roles.get(role), s_roles.get(role)
        if t_tok in t_vocab and s_tok in s_by_text:
            add(t_vocab[t_tok], s_by_text[s_tok], role)
    for t_id, text in sorted(t_added.items()):
        if t_id not in taken_t and text in s_by_text:
            add(t_id, s_by_text[text], "same text")
    unmatched = [(i, t) for i, t in sorted(t_added.items()) if i not in taken_t]
    return SpecialMap(sorted(pairs, key=lambda p: p.teacher_id), unmatched, len(teacher), t_roles, s_roles)


# ----------------------------------------------------------------------------------------- records


class MappedScorer:
    """A teacher scorer (`distillkit.engines.scorers`) seen through a SpecialMap: it is sent the student's sequences
    with the student's specials moved to the teacher's ids, and its top-k rows come back on the student's ids."""

    def __init__(self, scorer, special_map: SpecialMap, size: int):
        self.scorer, self.special_map, self.size = scorer, special_map, size
        self.tokenizer = getattr(scorer, "tokenizer", None)

    def score(self, sequences, starts, k):
        import numpy as np

        inverse = np.empty(self.size, dtype=np.int64)
        inverse[self.special_map.permutation(self.size)] = np.arange(self.size, dtype=np.int64)
        moved = [inverse[np.clip(np.asarray(s, dtype=np.int64), 0, self.size - 1)].tolist() for s in sequences]
        rows = self.scorer.score(moved, starts, k)
        return [self.special_map.map_topk(ids, lps) for ids, lps in rows]

    def close(self) -> None:
        self.scorer.close()
