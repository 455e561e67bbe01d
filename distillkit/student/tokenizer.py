"""The student's tokenizer in `student_init/`: the teacher's special tokens where both share a BPE, a
template that keeps the reasoning, EOS = the token that ends the assistant turn, a pad distinct from EOS.

Why the special tokens: R1-family teachers and their base students share a BPE but not the special
tokens above it. DeepSeek-R1-Distill-Qwen puts `<｜end▁of▁sentence｜>`, `<｜User｜>`, `<｜Assistant｜>`,
`<｜begin▁of▁sentence｜>`, `<|EOT|>`, `<think>`, `</think>` at ids 151643-151649, where Qwen2.5 has
`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, `<|object_ref_start|>`, `<|object_ref_end|>`,
`<|box_start|>`, `<|box_end|>`; R1-Distill-Llama renames Llama 3's reserved specials the same way. Every
trace holds `</think>`, so the teacher's ids (and the top-k soft labels on them) mean other tokens to
the student. DeepSeek's answer was to give its Qwen and Llama students its own tokenizer and template;
`choose_tokenizer` does the same: the student's tokenizer becomes the teacher's (identical ids for
every ordinary token, checked), and the embedding rows of the ids whose token changed are
re-initialised (`embedding_rows`): rows whose old and new token play the same role (end or begin of
text) are kept; the others start at the mean of the student's embeddings of the pieces its own BPE
splits the new token's text into (`<think>` = mean of `<`, `think`, `>`), in the input embedding
and, when untied, in the output head. LoRA/QLoRA students train those rows (PEFT's
`trainable_token_indices`), so the new tokens are learnt, not left at their initialisation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from distillkit.errors import DistillkitError
from distillkit.student.bpe import BPE_PROBES, _added_ids, base_vocab, shares_bpe  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

PAD_CANDIDATES = ("<|pad|>", "<|finetune_right_pad_id|>", "<|fim_pad|>", "<|endoftext|>", "<pad>")

# Tokens that end (or begin) a text in pretraining: a row that keeps one of these roles keeps its
# trained embedding when the token's name changes (Qwen2.5's <|endoftext|> -> R1's <｜end▁of▁sentence｜>).
END_OF_TEXT = {"<|endoftext|>", "<|end_of_text|>", "</s>", "<｜end▁of▁sentence｜>", "<|end▁of▁sentence|>"}
BEGIN_OF_TEXT = {"<|begin_of_text|>", "<s>", "<｜begin▁of▁sentence｜>", "<|begin▁of▁sentence|>"}

# Distinct words a template has no reason to produce (the same idea as preflight's checks).
_PROBE_USER = "What is 7 + 5?"
# Leading and trailing whitespace on purpose: traces have them, and a template that trims the content
# (Llama 3's `| trim`) would not render them verbatim.
_PROBE_TURN = " <think>\nSeven plus five makes twelve.\n</think>\n\nThe answer is \\boxed{12}.\n"


# ----------------------------------------------------------------------------------------- comparing


def special_differences(student, teacher) -> list[tuple[int, str | None, str]]:
    """(id, student's token or None, teacher's token) for every added token of the teacher whose id
    means something else (or nothing) to the student."""
    ids = sorted(teacher.added_tokens_decoder)
    size = len(student)
    theirs = [student.convert_ids_to_tokens(i) if i < size else None for i in ids]  # no get_vocab(): 0.5 s at 150k
    return [(i, was, teacher.added_tokens_decoder[i].content) for i, was in zip(ids, theirs)
            if was != teacher.added_tokens_decoder[i].content]


def _same_role(old: str | None, new: str) -> bool:
    return (old in END_OF_TEXT and new in END_OF_TEXT) or (old in BEGIN_OF_TEXT and new in BEGIN_OF_TEXT)


@dataclass
class RowInit:
    """How student_init sets one embedding row when the student adopts the teacher's tokens."""

    id: int
    was: str | None
    now: str
    pieces: list[int] = field(default_factory=list)
    """The student's own token ids of `now`'s text: the row becomes their mean. Empty: the row is kept."""

    def to_json(self) -> dict:
        """For distillkit_init.json and the manifest: {"id", "was", "now", "init"}."""
        how = f"mean of {len(self.pieces)} student token embeddings" if self.pieces else "kept (same role)"
        return {"id": self.id, "was": self.was, "now": self.now, "init": how}


def embedding_rows(student, teacher, differences=None) -> list[RowInit]:
    """The rows that change when `student` (its original tokenizer) adopts `teacher`'s tokens."""
    rows = []
    for i, was, now in differences if differences is not None else special_differences(student, teacher):
        pieces = [] if _same_role(was, now) else student(now, add_special_tokens=False)["input_ids"]
        rows.append(RowInit(i, was, now, pieces))
    return rows


MAP_NOTE = "kept the student's special tokens; the teacher's special ids are mapped onto them by role"


def keeps_own_specials(student, teacher) -> bool:
    """Whether a student with the teacher's BPE has reasoning tokens of its own to keep (Qwen3's <think> 151667),
    and the teacher has single tokens to map onto them: `auto` then maps instead of adopting."""
    from distillkit.student.special_map import think_tags

    return think_tags(student) is not None and think_tags(teacher) is not None


def choose_tokenizer(policy: str, student, teacher) -> tuple[object, list[RowInit], str]:
    """Apply `train.student.tokenizer` ("auto" | "own" | "teacher" | "map"): (tokenizer, rows, note).

    auto adopts the teacher's tokens when the two share a BPE and differ in special tokens, which is
    the R1 pair (DeepSeek's students carry DeepSeek's tokenizer), unless the student has reasoning tokens of
    its own (Qwen3): then it maps, as `map` does (the student keeps its tokenizer; the teacher's special ids
    are moved onto the student's by role at train time, distillkit/student/special_map.py). Otherwise the
    student keeps its own. `teacher` may be None (not loadable, e.g. a served model): the student keeps its own
    tokenizer. The tokenizer returned is `student` or `teacher` itself, not a copy: copy it before changing it if
    the caller still needs the original (a deep copy of a 150k-token tokenizer takes seconds).
    Raises when `teacher`/`map` is asked for and the BPEs differ, or `map` finds a role it cannot match.
    """
    if policy == "own" or teacher is None:
        if policy in ("teacher", "map"):
            raise DistillkitError(f"train.student.tokenizer={policy}: the teacher's tokenizer could not be loaded")
        return student, [], ""
    differences = special_differences(student, teacher)
    if policy == "auto" and not differences:
        return student, [], ""
    if not shares_bpe(student, teacher):
        if policy == "auto":
            return student, [], ""
        raise DistillkitError(f"train.student.tokenizer={policy} needs a student whose BPE is the teacher's "
                              "(the same ids for ordinary text); these two split text differently. Use "
                              "train.student.tokenizer: own with train.kd.cross_tokenizer: true (soft labels mapped "
                              "by spelling) or train.kd.enabled: false")
    if policy == "map" or (policy == "auto" and keeps_own_specials(student, teacher)):
        from distillkit.student.special_map import role_problems, roles_error

        problems = role_problems(teacher, student)
        if problems and policy == "map":
            raise DistillkitError(roles_error(problems))
        if not problems:
            return student, [], MAP_NOTE
    tokenizer, rows = teacher, embedding_rows(student, teacher, differences)
    note = (f"adopted the teacher's special tokens ({len(rows)} ids change meaning; "
            f"{sum(1 for r in rows if r.pieces)} rows re-initialised)")
    return tokenizer, rows, note


# ----------------------------------------------------------------------------------------- template


def render_turn(tokenizer, template: str | None = None) -> tuple[bool, str]:
    """(the trained turn renders verbatim after the generation prompt, what follows it)."""
    kwargs = {"chat_template": template} if template else {}
    prompt = [{"role": "user", "content": _PROBE_USER}]
    try:
        head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False, **kwargs)
        full = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": _PROBE_TURN}],
                                             tokenize=False, **kwargs)
    except Exception:  # jinja errors, raise_exception(), no template at all
        return False, ""
    ok = full.startswith(head) and full[len(head):].startswith(_PROBE_TURN)
    return ok, full[len(head) + len(_PROBE_TURN):] if ok else ""


def _training_template(tokenizer) -> str | None:
    """A reasoning-keeping template with generation markers for this tokenizer, or None when its own
    template should stay. DeepSeek's family always gets distillkit's (TRL's patch pre-fills `<think>`
    inside the generation prompt, which the prefill handling does not expect); known templates get
    TRL's training patch; other broken or missing templates get their family's template."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    from distillkit.models import REASONING_TEMPLATES, is_qwen3_template, template_family, vocab_family

    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    has_markers = bool(template) and has_generation_markers(template)
    keeps_turn = bool(template) and render_turn(tokenizer)[0]
    if has_markers and keeps_turn:
        return None
    family = template_family(template) if template else vocab_family(tokenizer)
    if family == "deepseek":
        return REASONING_TEMPLATES["deepseek"]
    if is_qwen3_template(template):  # keeps Qwen3's enable_thinking and history; TRL's patch re-spaces the trace
        return REASONING_TEMPLATES["qwen3"]
    if template:
        try:
            patched = get_training_chat_template(tokenizer)
        except Exception:  # unknown family: TRL raises rather than returning None
            patched = None
        if patched is not None and render_turn(tokenizer, patched)[0]:
            return patched
    if family == "chatml" or (family is None and not template):
        return REASONING_TEMPLATES["chatml"]  # also for markers only: the ChatML students so far
    if family is not None and not keeps_turn:
        return REASONING_TEMPLATES[family]
    return None


def turn_end_token(tokenizer) -> str | None:
    """The token that closes the assistant turn in the template, when it is a single added token."""
    ok, suffix = render_turn(tokenizer)
    if not ok or not suffix:
        return None
    ids = tokenizer(suffix, add_special_tokens=False)["input_ids"]
    if not ids or ids[0] not in _added_ids(tokenizer):
        return None
    return tokenizer.convert_ids_to_tokens(ids[0])


def fix_tokenizer(tokenizer, model=None) -> list[str]:
    """Make the tokenizer trainable for reasoning SFT; returns what was changed (for the manifest).

    - a template that drops the reasoning, does not render the trained turn verbatim, is missing or has
      no `{% generation %}` markers: a reasoning-keeping one (`_training_template`);
    - EOS is not the token that closes the template's assistant turn (Qwen2.5 base: EOS
      `<|endoftext|>`, turns end with `<|im_end|>`; Llama 3.1 base: `<|end_of_text|>` vs `<|eot_id|>`):
      that token becomes EOS, in the tokenizer and (with `model`) in its config and generation config,
      which also keeps the old EOS as a stop token. TRL's `SFTConfig.eos_token` does the same for the
      tokenizer; the train stage passes it too;
    - pad == EOS (SmolLM2) or no pad: a distinct pad token, because EOS is a training target and a
      pad masked out of the loss would hide it (students that never stop).
    """
    changes = []
    patched = _training_template(tokenizer)
    if patched is not None:
        tokenizer.chat_template = patched
        changes.append("chat_template: installed a template with generation markers that keeps reasoning")
    old_eos, old_eos_id = tokenizer.eos_token, tokenizer.eos_token_id
    end = turn_end_token(tokenizer)
    if end is not None and end != old_eos:
        tokenizer.eos_token = end
        changes.append(f"eos_token: {end!r}, the template's end of turn (was {old_eos!r})")
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        vocab = tokenizer.get_vocab()
        choice = next((t for t in PAD_CANDIDATES if t in vocab and vocab[t] != tokenizer.eos_token_id), None)
        if choice is None:
            tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
            choice = "<|pad|>"
            if model is not None and len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
                model.resize_token_embeddings(len(tokenizer))
        else:
            tokenizer.pad_token = choice
        changes.append(f"pad_token: {choice!r} (was equal to eos {tokenizer.eos_token!r} or unset)")
    if model is not None:
        update_model_config(model.config, model.generation_config, tokenizer, old_eos_id)
    return changes


def update_model_config(config, generation_config, tokenizer, old_eos_id: int | None = None) -> None:
    """Point the model's and generation config's bos/eos/pad at the tokenizer's; generation also stops at
    the old EOS (a base model's end of text) when it changed."""
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    if tokenizer.bos_token_id is not None:
        config.bos_token_id = tokenizer.bos_token_id
    if generation_config is None:
        return
    generation_config.pad_token_id = tokenizer.pad_token_id
    shipped = generation_config.eos_token_id
    shipped = shipped if isinstance(shipped, list) else [shipped]
    stops = list(dict.fromkeys(i for i in [tokenizer.eos_token_id, *shipped, old_eos_id] if i is not None))
    generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    if tokenizer.bos_token_id is not None:
        generation_config.bos_token_id = tokenizer.bos_token_id
