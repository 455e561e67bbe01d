"""Checks of one tokenizer and its chat template, each returning a `Finding`: preflight runs them on the teacher and
the student before a stage, the train stage on the student it built (student_init). The table of checks is in
`distillkit.preflight`'s docstring; `raise_on_fatal` turns error findings into one DistillkitError.

Also `ids_spell`: whether stored token ids are a tokenizer's spelling of a text (train asks it of the teacher's ids
before using them as the student's, score of the ids it is given)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Literal, Optional

from distillkit.errors import DistillkitError

Severity = Literal["error", "warning", "ok"]

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# Distinct words that a template has no reason to produce, so finding them in a render is proof.
REASONING_TEXT = "Preflight reasoning: seven plus five makes twelve."
HISTORY_REASONING_TEXT = "Preflight earlier reasoning: two plus two makes four."
ANSWER_TEXT = "The answer is \\boxed{12}."
GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")
TEMPLATE_FIX = ("install a template that keeps reasoning, e.g. "
                "`tokenizer.chat_template = distillkit.models.CHATML_REASONING_TEMPLATE` for a ChatML model "
                "(the train stage installs it, or TRL's training template for known families, when the "
                "student's template has no generation markers), then save the tokenizer")


@dataclass(frozen=True)
class Finding:
    """One preflight result. `error` stops the stage; `warning` is printed; `ok` is shown by `preflight`."""

    check: str
    """Stable snake_case name of the check (see the module docstring)."""
    severity: Severity
    message: str
    """What was found, starting with the model it concerns."""
    fix: str = ""
    """What to do about it (empty for `ok`)."""
    subject: str = ""
    """Whom it concerns: preflight() sets teacher, student or teacher/student."""

    def __str__(self) -> str:
        return f"{self.check} [{self.severity}]: {self.message}" + (f" Fix: {self.fix}" if self.fix else "")


# ----------------------------------------------------------------------------------------- checks


def _render(tokenizer, messages: list[dict[str, str]], **kwargs) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


def _reasoning_turn(reasoning: str, answer: str = ANSWER_TEXT) -> str:
    return f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n\n{answer}"


def _conversation() -> list[dict[str, str]]:
    """Two turns; both assistant turns carry reasoning, the last one is the trained turn."""
    return [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": _reasoning_turn(HISTORY_REASONING_TEXT, "The answer is \\boxed{4}.")},
        {"role": "user", "content": "What is 7 + 5?"},
        {"role": "assistant", "content": _reasoning_turn(REASONING_TEXT)},
    ]


def check_chat_template(tokenizer, subject: str = "tokenizer") -> Finding:
    """The tokenizer has a chat template."""
    if not getattr(tokenizer, "chat_template", None):
        return Finding("chat_template", "error", f"{subject} has no chat template.",
                       "use an instruct/chat model, or " + TEMPLATE_FIX, subject)
    return Finding("chat_template", "ok", f"{subject} has a chat template.", subject=subject)


def check_reasoning_rendered(tokenizer, subject: str = "tokenizer") -> Optional[Finding]:
    """Render a chat whose last (trained) assistant turn has <think> reasoning; the reasoning must appear.

    Templates that strip reasoning only from *earlier* assistant turns (Qwen3) pass: the trained turn
    is the last one. None when there is no template (check_chat_template reports that).
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        text = _render(tokenizer, _conversation())
    except Exception as e:  # jinja errors, raise_exception() in the template
        return Finding("reasoning_rendered", "error", f"{subject}'s chat template fails to render a "
                       f"two-turn chat with reasoning: {type(e).__name__}: {e}", TEMPLATE_FIX, subject)
    if REASONING_TEXT not in text:
        return Finding("reasoning_rendered", "error",
                       f"{subject}'s chat template drops the reasoning of the trained (last) assistant turn: "
                       "the <think>...</think> text is missing from the rendered chat, so the student "
                       "would learn answers without reasoning.", TEMPLATE_FIX, subject)
    history = "" if HISTORY_REASONING_TEXT in text else " (it strips reasoning from earlier turns, " \
                                                        "which is fine: only the last turn is trained)"
    return Finding("reasoning_rendered", "ok",
                   f"{subject}'s chat template keeps the trained turn's reasoning{history}.", subject=subject)


def check_trained_turn(tokenizer, subject: str = "tokenizer") -> Optional[Finding]:
    """The trained turn renders verbatim after the generation prompt and is closed by the EOS token.

    This is what the train stage needs to splice prompt, completion and end-of-turn (train/data.py).
    None when there is no template.
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    prompt = [{"role": "user", "content": "What is 7 + 5?"}]
    content = _reasoning_turn(REASONING_TEXT)
    try:
        head = _render(tokenizer, prompt, add_generation_prompt=True)
        full = _render(tokenizer, prompt + [{"role": "assistant", "content": content}])
    except Exception as e:
        return Finding("trained_turn", "error", f"{subject}'s chat template fails to render a one-turn chat: "
                       f"{type(e).__name__}: {e}", TEMPLATE_FIX, subject)
    if not full.startswith(head) or not full[len(head):].startswith(content):
        return Finding("trained_turn", "error",
                       f"{subject}'s chat template does not render the assistant turn verbatim after the "
                       f"generation prompt (generation prompt ends {head[-40:]!r}; the chat continues "
                       f"{full[len(head):len(head) + 60]!r}), so the train stage cannot place the completion.",
                       TEMPLATE_FIX, subject)
    suffix = full[len(head) + len(content):]
    eos = tokenizer.eos_token
    if eos and not suffix.startswith(eos):
        return Finding("trained_turn", "error",
                       f"{subject}'s chat template ends the assistant turn with {suffix[:30]!r}, not with the "
                       f"EOS token {eos!r}: the student would not learn to stop.",
                       "set tokenizer.eos_token to the template's end-of-turn token (e.g. '<|im_end|>' for "
                       "ChatML) or fix the template", subject)
    return Finding("trained_turn", "ok", f"{subject}'s chat template renders the trained turn verbatim, "
                   f"closed by {eos!r}.", subject=subject)


def _config_eos_ids(config) -> list[int]:
    eos = getattr(config, "eos_token_id", None) if config is not None else None
    return [] if eos is None else list(eos) if isinstance(eos, (list, tuple)) else [eos]


def check_eos(tokenizer, config=None, is_eos_trained: bool = True, subject: str = "tokenizer") -> Finding:
    """EOS is defined; when EOS is a training target, pad differs from it."""
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos_id is None:
        return Finding("eos_pad", "error", f"{subject} defines no EOS token: generation never stops and the "
                       "student cannot learn to stop.",
                       "set tokenizer.eos_token to the template's end-of-turn token and save the tokenizer", subject)
    if is_eos_trained and pad_id == eos_id:
        return Finding("eos_pad", "error",
                       f"{subject}'s pad token {tokenizer.pad_token!r} is its EOS token (id {eos_id}): the EOS "
                       "label is masked out with the padding, so the student never learns to stop.",
                       "give the tokenizer a distinct pad token (e.g. '<|pad|>' or '<|endoftext|>'); the train "
                       "stage does this for the student", subject)
    config_eos = _config_eos_ids(config)
    if config_eos and eos_id not in config_eos:
        return Finding("eos_pad", "warning",
                       f"{subject}'s tokenizer EOS {tokenizer.eos_token!r} (id {eos_id}) is not among the model "
                       f"config's eos_token_id {config_eos}: generation may not stop at the end of the turn.",
                       "make config.json / generation_config.json eos_token_id include the tokenizer's EOS id",
                       subject)
    pad = "no pad token (the train stage adds one)" if pad_id is None else f"pad {tokenizer.pad_token!r}"
    return Finding("eos_pad", "ok", f"{subject} has EOS {tokenizer.eos_token!r} and {pad}.", subject=subject)


def _special_ids(tokenizer) -> set[int]:
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return {i for i, t in decoder.items() if getattr(t, "special", False)} | set(tokenizer.all_special_ids)


def check_think_tokens(tokenizer, subject: str = "tokenizer", severity: Severity = "error") -> Finding:
    """<think> and </think> survive encode -> decode, with and without skip_special_tokens."""
    text = _reasoning_turn(REASONING_TEXT)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    lost = []
    for skip in (False, True):
        decoded = tokenizer.decode(ids, skip_special_tokens=skip)
        lost += [f"{tag} (skip_special_tokens={skip})" for tag in (THINK_OPEN, THINK_CLOSE) if tag not in decoded]
    if lost:
        vocab = tokenizer.get_vocab()
        special = [t for t in (THINK_OPEN, THINK_CLOSE) if vocab.get(t) in _special_ids(tokenizer)]
        why = f"{' and '.join(special)} {'is' if len(special) == 1 else 'are'} registered as special tokens, so " \
              "decoding with skip_special_tokens=True (vLLM's default, lm-eval) drops them" if special else \
              "the tokenizer does not reproduce them"
        return Finding("think_tokens", severity,
                       f"{subject} loses {', '.join(lost)} on encode/decode: {why}; traces lose their reasoning "
                       "tags and the format verifier rejects them.",
                       "register <think>/</think> as normal added tokens: "
                       "tokenizer.add_tokens(['<think>', '</think>'], special_tokens=False) on a tokenizer that "
                       "does not list them as special (edit `special` in tokenizer.json's added_tokens)", subject)
    single = all(t in tokenizer.get_vocab() for t in (THINK_OPEN, THINK_CLOSE))
    how = "single tokens" if single else "several tokens each"
    return Finding("think_tokens", "ok", f"{subject} keeps <think>/</think> through encode/decode ({how}).",
                   subject=subject)


def check_generation_markers(tokenizer, subject: str = "tokenizer") -> Optional[Finding]:
    """The template marks assistant tokens with {% generation %} and the mask covers the reasoning."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    fix = ("the train stage installs a template with markers for the student (distillkit.models."
           "CHATML_REASONING_TEMPLATE for ChatML models, TRL's training template for known families); "
           "elsewhere set tokenizer.chat_template to one with {% generation %} ... {% endgeneration %}")
    if not isinstance(template, str) or not GENERATION_MARKER.search(template):
        return Finding("generation_markers", "warning",
                       f"{subject}'s chat template has no {{% generation %}} markers: TRL's assistant_only_loss "
                       "cannot tell assistant tokens from the prompt.", fix, subject)
    messages = [{"role": "user", "content": "What is 7 + 5?"},
                {"role": "assistant", "content": _reasoning_turn(REASONING_TEXT)}]
    try:
        out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
    except Exception as e:
        return Finding("generation_markers", "warning", f"{subject}'s generation markers could not be "
                       f"evaluated: {type(e).__name__}: {e}", fix, subject)
    marked = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    if REASONING_TEXT not in tokenizer.decode(marked):
        return Finding("generation_markers", "warning",
                       f"{subject}'s {{% generation %}} markers do not cover the assistant's reasoning.",
                       fix, subject)
    return Finding("generation_markers", "ok",
                   f"{subject}'s chat template marks the assistant turn (reasoning included) for the loss.",
                   subject=subject)


def check_tokenizer(tokenizer, config=None, subject: str = "tokenizer", is_trained: bool = True) -> list[Finding]:
    """Every single-model check. `is_trained`: the model is the student (trained turn, EOS, markers)."""
    findings = [check_chat_template(tokenizer, subject)]
    if is_trained:
        findings += [check_reasoning_rendered(tokenizer, subject), check_trained_turn(tokenizer, subject)]
    findings.append(check_eos(tokenizer, config, is_eos_trained=is_trained, subject=subject))
    findings.append(check_think_tokens(tokenizer, subject))
    if is_trained:
        findings.append(check_generation_markers(tokenizer, subject))
    return [f for f in findings if f is not None]


def raise_on_fatal(findings: Iterable[Finding]) -> None:
    """Raise one DistillkitError listing every error finding with its fix; return when there are none."""
    errors = [f for f in findings if f.severity == "error"]
    if not errors:
        return
    lines = [f"preflight found {len(errors)} fatal problem{'s' if len(errors) != 1 else ''}:"]
    for f in errors:
        lines += [f"  - {f.check}: {f.message}", f"    fix: {f.fix}"]
    raise DistillkitError("\n".join(lines))


def ids_spell(tokenizer, ids: list[int], text: str) -> bool:
    """Whether token `ids` (a trailing EOS aside) decode to `text` with `tokenizer`: ids of another vocabulary
    (beyond this one, or decoding to other text) do not. vLLM's detokenizer holds back the bytes of a
    character cut by the end of a sample, where a full decode writes U+FFFD: trailing U+FFFD are ignored."""
    if ids and ids[-1] == tokenizer.eos_token_id:
        ids = ids[:-1]
    if max(ids, default=0) >= len(tokenizer):
        return False
    out = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return out.rstrip("\ufffd") == text.rstrip("\ufffd")
