"""Preflight: check the teacher's and student's tokenizers, chat templates and vocabularies before a stage runs.

These are the silent failures of reasoning distillation: each one lets a run finish and produce a
useless model. A check returns a `Finding`; `error` findings stop the stage (`raise_on_fatal`), the
others are printed as warnings.

    check               what goes wrong when it fails
    chat_template       no template: prompts cannot be rendered, the trained turn has no shape
    reasoning_rendered  the template drops <think>...</think> from the trained turn (QwQ/R1-style
                        templates strip reasoning from assistant turns): the student learns answers only
    trained_turn        the trained turn is not rendered verbatim after the generation prompt, or is
                        not closed by the EOS token: the train stage cannot place the loss labels
    eos_pad             no EOS, or pad == EOS while EOS is a training target: the EOS label is masked
                        out with the padding and the student never learns to stop
    think_tokens        <think>/</think> registered as *special* tokens: decode(skip_special_tokens=True)
                        (vLLM's default, lm-eval's) silently drops them from every trace
    generation_markers  no {% generation %} in the template: TRL's assistant_only_loss cannot mask
    vocab_compat        teacher and student vocabularies differ: token-level KL compares unrelated tokens
    tokenizer_load      the tokenizer (or model config) could not be loaded at all
    distributed         train.accelerate_config cannot run as it says on this machine (DeepSpeed missing or without
                        a GPU, FSDP1 on CPU processes): accelerate would fall back to DDP or fail late
    task_name           an evaluate.tasks name no task folder defines: the run would fail after training
    task_dataset        a task's dataset is gated without access, missing, or lacks the columns it reads

Only tokenizers and model configs are loaded, never weights. For a GGUF model the cached converted
folder is used when it exists, else the tokenizer and config are read from the GGUF metadata.

Size: one function per check in the table above, each with its message and fix; they share the loading
and the rendering helpers.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Literal, Optional

from distillkit.errors import DistillkitError
from distillkit.http import hub_offline, hub_unreachable

log = logging.getLogger(__name__)

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


# ----------------------------------------------------------------------------------------- loading


def load_tokenizer_and_config(spec: str) -> tuple[Any, Any]:
    """(tokenizer, model config or None) for a model argument, without loading or converting weights.

    Raises DistillkitError when the tokenizer cannot be loaded.
    """
    from transformers import AutoConfig, AutoTokenizer

    from distillkit.models import builtin_gguf, converted_folder, resolve_model

    gguf: Optional[Path] = None
    if spec.startswith("builtin:"):
        gguf = builtin_gguf(spec.split(":", 1)[1])
    elif spec.endswith(".gguf"):
        gguf = Path(spec).expanduser()
        if not gguf.exists():
            raise DistillkitError(f"{gguf}: no such GGUF file")
    kwargs: dict[str, Any] = {}
    if gguf is not None:
        folder = converted_folder(gguf)
        if (folder / ".complete").exists():
            path = str(folder)
        else:  # reading the GGUF metadata is slow but never touches the weights
            path, kwargs = str(gguf.parent), {"gguf_file": gguf.name}
    else:
        path = resolve_model(spec)
    unreachable = None
    if path == spec and not Path(spec).expanduser().exists() and not hub_offline():  # a Hub id
        unreachable = hub_unreachable()
        if unreachable:  # the cache may still have it; else fail now, not after the loaders' retries
            kwargs["local_files_only"] = True
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    except Exception as e:  # OSError (missing/offline), ValueError (unknown class), ...
        from distillkit.faults import HUB_HINT, EnvironmentFault, network_reason

        reason = (unreachable, None) if unreachable else network_reason(e)
        if hub_offline():
            raise EnvironmentFault("network", f"could not load the tokenizer of {spec!r}: HF_HUB_OFFLINE is set and "
                                   "it is not in the local Hugging Face cache", "download it where there is network "
                                   f"(`huggingface-cli download {spec}`) and copy ~/.cache/huggingface here, or give "
                                   "a local folder instead of a Hub name") from e
        if reason is not None or "couldn't connect" in str(e):
            why = reason[0] if reason else "could not connect"
            raise EnvironmentFault("network", f"could not load the tokenizer of {spec!r}: the Hugging Face Hub is "
                                   f"not reachable ({why})", HUB_HINT) from e
        raise DistillkitError(f"could not load the tokenizer of {spec!r}: {e}") from e
    try:
        config = AutoConfig.from_pretrained(path, **kwargs)
    except Exception as e:  # a tokenizer-only repo, or a hosted model name
        log.info("no model config for %s (%s); vocab sizes are taken from the tokenizer", spec, e)
        config = None
    return tokenizer, config


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


# ----------------------------------------------------------------------------------------- pair


def _id_to_token(tokenizer) -> dict[int, str]:
    return {i: t for t, i in tokenizer.get_vocab().items()}


def sample_trace(teacher, prefill: Optional[str] = "<think>\n") -> tuple[str, list[int]]:
    """(completion text, the teacher's completion ids with its EOS) of an R1-style trace, rendered as the
    generate stage would: after the teacher's generation prompt and `prefill`, the completion closes
    the reasoning block, answers, and ends with EOS."""
    opened = bool(prefill) and THINK_OPEN in prefill
    text = ("" if opened else f"{THINK_OPEN}\n") + f"{REASONING_TEXT}\n{THINK_CLOSE}\n\n{ANSWER_TEXT}"
    ids = teacher(text, add_special_tokens=False)["input_ids"]
    return text, ids + ([teacher.eos_token_id] if teacher.eos_token_id is not None else [])


def check_pair(teacher, student, teacher_config=None, student_config=None,
               subject: str = "teacher/student", prefill: Optional[str] = "<think>\n",
               fix: str = "") -> tuple[Finding, Optional[int]]:
    """Whether token-level KL between teacher and student is meaningful; returns (finding, shared range).

    Compatible: the same token at every id both tokenizers define. Model vocab sizes may still differ
    by padding (Qwen2.5: 151,936 for <= 3B vs 152,064 for 7B+, over the same 151,665 tokens); logits are
    then compared over the shared range `[0, shared)`, shared = the smaller config vocab_size (the
    smaller tokenizer length without configs). `shared` is None when the pair is incompatible.

    A few differing added tokens are harmless only if traces never hold them: a sample trace is
    rendered with the teacher's tokenizer (`sample_trace`), and a differing id in it is an error
    (`</think>` is in every R1 trace). `fix` replaces the default advice.
    """
    t_map, s_map = _id_to_token(teacher), _id_to_token(student)
    t_len, s_len = max(t_map, default=-1) + 1, max(s_map, default=-1) + 1
    t_vocab = getattr(teacher_config, "vocab_size", None) or t_len
    s_vocab = getattr(student_config, "vocab_size", None) or s_len
    shared = min(t_vocab, s_vocab)
    common = min(t_len, s_len)
    mismatched = [i for i in range(common) if t_map.get(i) != s_map.get(i)]
    fix = fix or ("use a student from the teacher's tokenizer family (e.g. Qwen2.5 teacher -> Qwen2.5 student), "
                  "or set train.kd.enabled: false (SFT on the teacher's text works across tokenizers)")
    examples = ", ".join(f"id {i}: {t_map.get(i)!r} vs {s_map.get(i)!r}" for i in mismatched[:3])
    if mismatched:
        added = set(getattr(teacher, "added_tokens_decoder", {})) | set(getattr(student, "added_tokens_decoder", {}))
        if len(mismatched) > max(8, common // 100) or not set(mismatched) <= added:
            return Finding("vocab_compat", "error",
                           f"{subject} vocabularies differ at {len(mismatched):,} of {common:,} shared ids "
                           f"({examples}): token-level KL would compare unrelated tokens.", fix, subject), None
    beyond = [t_map[i] for i in range(s_vocab, t_len) if i in t_map]
    if beyond:
        return Finding("vocab_compat", "error",
                       f"the teacher's tokenizer has {len(beyond):,} token(s) at ids >= the student's vocab_size "
                       f"{s_vocab:,} (e.g. {beyond[0]!r}): the student has no logit for them.", fix, subject), None
    sizes = f"vocab_size {t_vocab:,} vs {s_vocab:,}" if t_vocab != s_vocab else f"vocab_size {t_vocab:,}"
    occurring = sorted(set(mismatched) & set(sample_trace(teacher, prefill)[1]))
    if occurring:
        named = ", ".join(f"{t_map[i]!r} (id {i}) is {s_map.get(i)!r} for the student" for i in occurring)
        return Finding("vocab_compat", "error",
                       f"{subject} differ at {len(mismatched)} added token id(s), and traces hold them: {named}. "
                       "The stored soft labels and the teacher's token ids would train the student on other "
                       "tokens.", fix, subject), None
    if mismatched:
        return Finding("vocab_compat", "warning",
                       f"{subject} share a vocabulary except {len(mismatched)} added token(s) ({examples}); "
                       f"KL over the shared range [0, {shared:,}) ({sizes}); a sample trace holds none of them.",
                       "harmless unless those tokens occur in traces; " + fix, subject), shared
    if t_len != s_len:
        return Finding("vocab_compat", "warning",
                       f"{subject} tokenizers agree on ids [0, {common:,}) but hold {t_len:,} vs {s_len:,} tokens; "
                       f"KL over the shared range [0, {shared:,}) ({sizes}).",
                       "fine if the extra tokens never occur in traces; " + fix, subject), shared
    return Finding("vocab_compat", "ok",
                   f"{subject} use the same tokenizer ({t_len:,} tokens); {sizes}; KL over the shared range "
                   f"[0, {shared:,}).", subject=subject), shared


# ----------------------------------------------------------------------------------------- recipe


def _teacher_needs_tokenizer(cfg) -> bool:
    """vLLM/transformers backends and the OpenAI `completions` api render prompts locally."""
    teacher = cfg.generate.teacher
    return teacher.backend != "openai" or teacher.openai.api == "completions"


def student_after_init(student_cfg, tokenizer, teacher=None):
    """(tokenizer, changes) as student_init/ will hold them: the teacher's special tokens when
    `train.student.tokenizer` adopts them, then `fix_tokenizer`. Raises DistillkitError when the policy
    cannot be applied (teacher asked, other BPE). Without the train extra: the tokenizer unchanged."""
    import copy

    try:
        from distillkit.train.tokenizer import choose_tokenizer, fix_tokenizer
    except ImportError:  # the train extra is missing; the stage itself will say so
        return tokenizer, []
    chosen, rows, note = choose_tokenizer(student_cfg.tokenizer, tokenizer, teacher)
    chosen = copy.deepcopy(chosen)  # both originals are checked again below
    changes = fix_tokenizer(chosen)
    if rows:
        moved = ", ".join(f"{r.id} {r.was!r}->{r.now!r}" for r in rows[:8]) + (" ..." if len(rows) > 8 else "")
        note += f": {moved}"
    return chosen, ([note] if note else []) + changes


def _after_train_fixes(raw: list[Finding], fixed, changes: list[str], subject: str) -> list[Finding]:
    """The student's checks as they stand after student_init (`fixed`, from `student_after_init`).

    Problems the train stage repairs (pad == EOS, EOS that is not the end of turn, a template that drops
    reasoning or lacks generation markers) become warnings that say so; the rest keep their severity.
    """
    if not changes:
        return raw
    after = {f.check: f for f in check_tokenizer(fixed, None, subject=subject)}
    out = []
    for f in raw:
        new = after.get(f.check)
        if f.severity != "ok" and new is not None and new.severity == "ok":
            # name the change that helped: eos/pad fixes for eos_pad and the trained turn's EOS
            which = ("pad_token", "eos_token") if f.check == "eos_pad" else ("chat_template", "eos_token", "adopted")
            done = [c for c in changes if c.startswith(which)] or changes
            f = Finding(f.check, "warning", f"{f.message} The train stage fixes this in student_init/ "
                        f"({'; '.join(done)}).", f.fix, subject)
        elif new is not None and new.severity != "ok" and f.severity == "ok":
            f = replace(new, message=f"after student_init's changes ({'; '.join(changes)}): {new.message}")
        out.append(f)
    return out


REPORT_TO_PACKAGES = {"azure_ml": "azureml-core", "flyte": "flytekit", "neptune": "neptune"}


def check_report_to(report_to: Iterable[str]) -> Optional[Finding]:
    """`train.report_to` names loggers transformers knows and that are installed (else the Trainer fails
    only after the earlier stages ran). None when nothing is asked for."""
    names = [n for n in report_to if n != "none"]
    if not names:
        return None
    from transformers.integrations.integration_utils import (INTEGRATION_TO_CALLBACK,
                                                             get_available_reporting_integrations)

    unknown = [n for n in names if n != "all" and n not in INTEGRATION_TO_CALLBACK]
    if unknown:
        return Finding("report_to", "error", f"train.report_to names {unknown}, which transformers does not know.",
                       f"use some of {sorted(INTEGRATION_TO_CALLBACK)} (or none)")
    available = set(get_available_reporting_integrations())
    missing = [n for n in names if n != "all" and n not in available]
    if missing:
        pkgs = " ".join(REPORT_TO_PACKAGES.get(n, n) for n in missing)
        return Finding("report_to", "error", f"train.report_to asks for {missing}, which {'is' if len(missing) == 1 else 'are'} "
                       "not installed.", f"pip install {pkgs}, or remove {'it' if len(missing) == 1 else 'them'} "
                       "from train.report_to")
    return Finding("report_to", "ok", f"train.report_to: {', '.join(names)} installed.")


def preflight(cfg, stages: Optional[Iterable[str]] = None) -> list[Finding]:
    """All findings for the stages about to run (default: the recipe's `stages`).

    generate: the teacher's template, EOS and think tokens (when the backend renders prompts locally;
    an OpenAI endpoint applies its own template, so an unavailable tokenizer is only a warning).
    train: the student's template, trained turn, EOS/pad, think tokens, generation markers, judged
    after the fixes the train stage applies; with KD or on-policy distillation, vocab compatibility.
    """
    stages = list(cfg.stages if stages is None else stages)
    findings: list[Finding] = []
    loaded: dict[str, Any] = {}

    def load(spec: str, subject: str, severity: Severity, why: str):
        if spec not in loaded:
            try:
                loaded[spec] = load_tokenizer_and_config(spec)
            except DistillkitError as e:
                loaded[spec] = e
        result = loaded[spec]
        if isinstance(result, DistillkitError):
            findings.append(Finding("tokenizer_load", severity, f"{subject} {spec!r}: {getattr(result, 'what', result)} "
                                    f"{why}".rstrip(), getattr(result, "fix", None)
                                    or "check the model name/path (and network access for a Hub id)", subject))
            return None, None
        return result

    teacher_spec = cfg.generate.teacher.model
    if "generate" in stages:
        needs = _teacher_needs_tokenizer(cfg)
        why = "" if needs else ("The OpenAI endpoint applies its own template, so the teacher's template and "
                                "think-token checks are skipped.")
        tok, config = load(teacher_spec, "teacher", "error" if needs else "warning", why)
        if tok is not None:
            subject = f"teacher {teacher_spec}"
            own = [check_chat_template(tok, subject), check_eos(tok, config, is_eos_trained=False, subject=subject),
                   # the hf backend decodes with skip_special_tokens=False, vLLM and servers with True
                   check_think_tokens(tok, subject, "warning" if cfg.generate.teacher.backend == "transformers"
                                      else "error")]
            if not needs:  # the server renders the prompt: a missing local template does not matter
                own = [Finding(f.check, "warning", f.message, f.fix, f.subject) if f.severity == "error"
                       and f.check == "chat_template" else f for f in own]
            findings += [replace(f, subject="teacher") for f in own]

    if "train" in stages:
        report = check_report_to(cfg.train.report_to)
        if report is not None:
            findings.append(replace(report, subject="train"))
        findings += check_distributed(cfg.train)
        student_spec = cfg.train.student.model
        subject = f"student {student_spec}"
        s_tok, s_config = load(student_spec, "student", "error", "")
        needs_teacher = cfg.train.kd.enabled or cfg.train.on_policy.enabled
        # whose ids the soft labels are on: the scoring teacher with a score stage, a served teacher's model
        kd = cfg.train.kd
        label_spec = (kd.teacher_server.model if kd.teacher_probs == "served" and kd.teacher_server.model
                      else cfg.label_teacher.model)
        t_tok = t_config = None
        if needs_teacher:
            t_tok, t_config = load(label_spec, "teacher", "warning",
                                   "Vocab compatibility for KD cannot be checked before training.")
        elif cfg.train.student.tokenizer != "own":  # only to see whether the student adopts its tokens
            if label_spec not in loaded:
                try:
                    loaded[label_spec] = load_tokenizer_and_config(label_spec)
                except DistillkitError as e:
                    loaded[label_spec] = e
            if isinstance(loaded[label_spec], tuple):
                t_tok, t_config = loaded[label_spec]
        fixed = None
        mapped = False  # the student keeps its special tokens; the teacher's are mapped onto them by role
        if s_tok is not None:
            raw = check_tokenizer(s_tok, s_config, subject=subject, is_trained=True)
            try:
                fixed, changes = student_after_init(cfg.train.student, s_tok, t_tok)
            except DistillkitError as e:
                if cfg.train.student.tokenizer == "map" and t_tok is not None:
                    findings += check_tokenizer_mode(cfg, t_tok, s_tok, None, label_spec, student_spec)
                else:
                    findings.append(Finding("student_tokens", "error", f"{subject}: {e}",
                                            "train.student.tokenizer: own", "student"))
            else:
                if t_tok is not None:
                    from distillkit.train.tokenizer import MAP_NOTE

                    mapped = any(c.startswith(MAP_NOTE) for c in changes)
                    findings += check_tokenizer_mode(cfg, t_tok, s_tok, fixed, label_spec, student_spec, mapped)
                findings += [replace(f, subject="student") for f in _after_train_fixes(raw, fixed, changes, subject)]
                adopted = [c for c in changes if c.startswith("adopted")]
                if adopted:
                    findings.append(Finding("student_tokens", "warning", f"{subject} {adopted[0]}.",
                                            "nothing to do (train.student.tokenizer: own keeps the student's "
                                            "tokens, with train.kd.enabled: false)", "student"))
        if needs_teacher and fixed is not None and t_tok is not None and not mapped:
            pair = f"teacher {label_spec} and student {student_spec}"
            fix = ("train.student.tokenizer: teacher (or auto) lets a student with the teacher's BPE adopt its "
                   "special tokens, or map keeps the student's own and maps the teacher's onto them by role; with "
                   "another BPE set train.kd.cross_tokenizer: true (stored top-k mapped onto "
                   "the student's tokens by spelling) or train.kd.enabled: false (SFT on the teacher's text "
                   "works across tokenizers)")
            finding, _shared = check_pair(t_tok, fixed, t_config, s_config, subject=pair,
                                          prefill=cfg.generate.prompts.prefill, fix=fix)
            stored = cfg.train.kd.enabled and cfg.train.kd.teacher_probs != "live"  # labels on the teacher's ids
            crossed = finding.severity == "error" and stored and cfg.train.kd.cross_tokenizer
            if crossed:
                finding = Finding("vocab_compat", "ok", f"{pair} tokenize differently; train.kd.cross_tokenizer "
                                  "maps the stored top-k onto the student's tokens.", subject="teacher/student")
                findings.append(check_cross_tokenizer(cfg, t_tok, fixed, pair))
            findings.append(replace(finding, subject="teacher/student"))
            if finding.severity != "error" and stored and not crossed:
                findings.append(check_trace_roundtrip(t_tok, fixed, cfg.generate.prompts.prefill, pair, fix))
        findings += check_context(cfg, stages, s_config, t_config if t_tok is not None and label_spec == teacher_spec
                                  else _config_only(loaded, teacher_spec))
        soft = check_soft_labels(cfg, stages)
        if soft is not None:
            findings.append(soft)
    elif "generate" in stages:
        findings += check_context(cfg, stages, None, _config_only(loaded, teacher_spec))
    if "evaluate" in stages:
        findings += check_eval_tasks(cfg.evaluate)
    for f in findings:
        # the caller shows the findings (the CLI prints them once); the debug log keeps a record
        log.debug("preflight %s", f)
    return findings


def check_tokenizer_mode(cfg, teacher, student, fixed, teacher_spec: str, student_spec: str,
                         mapping: bool = False) -> list[Finding]:
    """Which `train.student.tokenizer` mode the pair needs (`tokenizer_mode`, ok), and, when the student keeps its
    tokens with the teacher's mapped by role (`mapping`: `map`, or `auto` for a Qwen3-like student), whether every
    role matches and a sample trace survives the map (`special_roles`). `fixed`: the student as student_init/ will
    hold it; None when `map` was refused. Both tokenizers are read from their files and templates.

        same BPE, same special tokens         exact KD on the teacher's ids (nothing to do)
        same BPE, other specials, the student
          has reasoning tokens of its own     map (auto picks it): its <think>/</think> and end of turn are kept
        same BPE, other specials, none of
          its own                             teacher (auto picks it): the student adopts the teacher's
        other BPE                             train.kd.cross_tokenizer: true (or SFT only)
    """
    from distillkit.train.special_map import build_special_map, role_problems
    from distillkit.train.tokenizer import keeps_own_specials, shares_bpe, special_differences

    pair = f"teacher {teacher_spec} and student {student_spec}"
    if not shares_bpe(student, teacher):
        need = ("they split text differently (another BPE): token-level KD needs train.kd.cross_tokenizer: true "
                "(stored top-k mapped by spelling); SFT works on the text")
    elif not special_differences(student, teacher):
        need = "same BPE and the same special tokens: exact KD on the teacher's ids, nothing to map"
    elif keeps_own_specials(student, teacher):
        need = ("same BPE, other special tokens, and the student has reasoning tokens of its own: "
                "train.student.tokenizer: map (auto picks it) keeps them and maps the teacher's special ids by role")
    else:
        need = ("same BPE, other special tokens, none of the student's own to keep: train.student.tokenizer: "
                "teacher (auto picks it) adopts the teacher's")
    findings = [Finding("tokenizer_mode", "ok", f"{pair}: {need}. The recipe says train.student.tokenizer: "
                        f"{cfg.train.student.tokenizer}.", subject="teacher/student")]
    if fixed is None:  # `map` refused by student_init's choice: say why, with the fix
        problems = role_problems(teacher, student, teacher_spec, student_spec)
        if not problems:  # another BPE: student_after_init's message says so
            return findings
        return findings + [Finding("special_roles", "error",
                                   f"train.student.tokenizer=map: {'; '.join(p for p, _ in problems)}.",
                                   "; or ".join(dict.fromkeys(f for _, f in problems)), "teacher/student")]
    if not mapping:
        return findings
    try:
        special_map = build_special_map(teacher, fixed, teacher_spec, student_spec)
    except DistillkitError as e:
        return findings + [Finding("special_roles", "error", str(e), "train.student.tokenizer: teacher",
                                   "teacher/student")]
    text, ids = sample_trace(teacher, cfg.generate.prompts.prefill)
    mapped = special_map.map_ids(ids)
    decoded = fixed.decode(mapped[:-1].tolist(), skip_special_tokens=False) if (mapped >= 0).all() else None
    if decoded != text or int(mapped[-1]) != fixed.eos_token_id:
        return findings + [Finding("special_roles", "error",
                                   f"{pair}: a sample trace mapped onto the student's ids does not read back as its "
                                   f"text ending with the student's EOS {fixed.eos_token!r} (got {decoded!r}, last id "
                                   f"{int(mapped[-1])}).", "train.student.tokenizer: teacher", "teacher/student")]
    if cfg.train.on_policy.enabled and cfg.train.kd.teacher_probs != "served":
        return findings + [Finding("special_roles", "error",
                                   f"{pair}: on-policy training with a live teacher (TRL's trainers) compares logits id "
                                   "by id, and this student keeps its own special tokens.",
                                   "train.kd.teacher_probs: served (its top-k is mapped onto the student's ids), or "
                                   "train.student.tokenizer: teacher", "teacher/student")]
    return findings + [Finding("special_roles", "ok", f"{pair}: the student keeps its special tokens; "
                               f"{special_map.summary()}. A sample trace maps onto the student's ids and ends with "
                               f"its EOS {fixed.eos_token!r}.", subject="teacher/student")]


def check_eval_tasks(ecfg) -> list[Finding]:
    """evaluate.tasks: every name exists and its dataset is readable (gated access, local files, columns),
    read from the task YAMLs without building a task or loading a model (`distillkit.evaluate.task_checks`)."""
    try:
        from distillkit.evaluate.task_checks import check_tasks
    except ImportError:  # lm-eval not installed: the evaluate stage says which extra to install
        return []
    try:
        results = check_tasks(list(ecfg.tasks), ecfg.include_path)
    except DistillkitError as e:
        return [Finding("task_name", "error", str(e), "fix evaluate.include_path", "evaluate")]
    return [Finding(check, severity, message, fix, "evaluate") for check, severity, message, fix in results]


def check_trace_roundtrip(teacher, student, prefill: Optional[str], subject: str, fix: str) -> Finding:
    """The train stage's own test (`train.data.check_same_tokenizer`) on a sample trace: the teacher's
    completion ids decode to the completion text with the student's tokenizer. When they do not, the
    train stage refuses stored soft labels, after the whole generation ran."""
    text, ids = sample_trace(teacher, prefill)
    body = ids[:-1] if ids and ids[-1] == student.eos_token_id else ids
    decoded = student.decode(body, skip_special_tokens=False, clean_up_tokenization_spaces=False) \
        if max(body, default=0) < len(student) else None
    if decoded != text:
        at = next((i for i, (x, y) in enumerate(zip(text, decoded or "")) if x != y), min(len(text), len(decoded or "")))
        return Finding("trace_roundtrip", "error",
                       f"{subject}: the teacher's token ids of a sample trace do not decode to its text with the "
                       f"student's tokenizer ({text[max(0, at - 10):at + 20]!r} decodes as "
                       f"{(decoded or '')[max(0, at - 10):at + 30]!r}); the train stage would refuse the stored "
                       "soft labels after generation.", fix, "teacher/student")
    return Finding("trace_roundtrip", "ok", f"{subject}: the teacher's ids of a sample trace decode to the same "
                   "text with the student's tokenizer.", subject="teacher/student")


CROSS_TOKENIZER_SAMPLE = 32  # records measured by check_cross_tokenizer


def check_cross_tokenizer(cfg, teacher, student, subject: str) -> Finding:
    """`train.kd.cross_tokenizer`: the measured alignment, on the first traces of the training input when they
    exist (share of student positions with a soft label, share of the teacher's top-k mass that maps), else
    on preflight's sample trace (positions only: a sample trace has no top-k). A warning below half of the
    positions: most of the student's tokens would then train on CE only."""
    from distillkit.records import StageRecords
    from distillkit.train.cross_tokenizer import AlignmentStats, CrossTokenizerMap, measure_alignment

    cmap = CrossTokenizerMap(teacher, student)
    src = cfg.records_dir
    try:
        records = StageRecords(src).head(CROSS_TOKENIZER_SAMPLE) if src.is_dir() else []
    except Exception:  # an unreadable or half-written folder: measured at train time instead
        records = []
    stats = measure_alignment(cmap, records, student)
    if stats.num_positions:
        fig = stats.summary()
        where = (f"on {len(records)} traces of {src}: {100 * fig['share_positions_labelled']:.1f}% of student "
                 f"positions get a soft label, {100 * fig['share_topk_mass_mapped']:.1f}% of the teacher's top-k "
                 "mass maps to student ids")
    else:
        text, ids = sample_trace(teacher, cfg.generate.prompts.prefill)
        ids = ids[:-1] if ids and ids[-1] == teacher.eos_token_id else ids
        body = student(text, add_special_tokens=False)["input_ids"]
        stats = AlignmentStats()
        stats.add(cmap.soft_labels(ids, [[i] for i in ids], [[0.0]] * len(ids), body).stats)
        fig = stats.summary()
        where = (f"on preflight's sample trace (no traces yet): {100 * fig['share_positions_labelled']:.1f}% of "
                 "student positions get a soft label; the top-k mass that maps is measured on the traces at "
                 "train time (train manifest: stats.data.cross_tokenizer)")
    low = fig["share_positions_labelled"] < 0.5
    return Finding("cross_tokenizer", "warning" if low else "ok", f"{subject}: cross-tokenizer soft labels {where}; "
                   "other positions train on CE only.",
                   "most tokens would get no soft label: a student closer to the teacher's tokenizer, or "
                   "train.kd.enabled: false" if low else "", "teacher/student")


def check_soft_labels(cfg, stages: list[str]) -> Optional[Finding]:
    """KD on stored soft labels needs this run's generation to store them (the train stage refuses
    records without top-k, after generation). None when it does not apply."""
    t = cfg.train
    if not (t.kd.enabled and t.kd.teacher_probs.startswith("topk") and not t.sources and "generate" in stages):
        return None
    if "score" in cfg.stages:
        return Finding("soft_labels", "ok", f"the score stage adds {cfg.score.teacher.model}'s top-{cfg.score.topk} "
                       "logprobs for train.kd.", subject="train")
    if cfg.generate.sampling.topk_logprobs > 0:
        return Finding("soft_labels", "ok", f"the teacher's top-{cfg.generate.sampling.topk_logprobs} logprobs "
                       "are stored for train.kd.", subject="train")
    return Finding("soft_labels", "error", "train.kd is enabled on stored soft labels (kd.teacher_probs="
                   f"{t.kd.teacher_probs}) but generate.sampling.topk_logprobs is 0: the traces would carry none.",
                   "set generate.sampling.topk_logprobs: 20, or add the `score` stage, or "
                   "train.kd.teacher_probs: live, or train.kd.enabled: false", "train")


def _config_only(loaded: dict, spec: str):
    result = loaded.get(spec)
    return result[1] if isinstance(result, tuple) else None


def _positions(config) -> Optional[int]:
    return getattr(config, "max_position_embeddings", None) if config is not None else None


def check_context(cfg, stages: list[str], s_config, t_config) -> list[Finding]:
    """Lengths fit the models' positions: train.max_length (and the students' evaluation budget) within
    the student's `max_position_embeddings` after `train.student` overrides; the teacher's
    `max_model_len` and `max_tokens` within its own. vLLM refuses a longer engine at start; training
    past the positions a RoPE model was made for runs but degrades, so both are errors here."""
    findings: list[Finding] = []
    st = cfg.train.student
    student_positions = st.max_position_embeddings or _positions(s_config)
    rope_fix = ("extend the student's context: train.student.rope_theta: 300000 and "
                "train.student.max_position_embeddings: 32768 (open-r1 trains Qwen2.5-Math-7B at 32k as "
                "open-r1/Qwen2.5-Math-7B-RoPE-300k), or train.student.rope_scaling: {rope_type: yarn, factor: 4.0, "
                f"original_max_position_embeddings: {student_positions}}}; or lower ")
    if "train" in stages and student_positions:
        if cfg.train.max_length and cfg.train.max_length > student_positions:
            findings.append(Finding(
                "context", "error", f"train.max_length={cfg.train.max_length:,} exceeds student {st.model}'s "
                f"max_position_embeddings {student_positions:,}.", rope_fix + f"train.max_length to {student_positions:,}",
                "student"))
        students = [m for m in cfg.evaluate.models if m.startswith("student")]
        if "evaluate" in stages and students and cfg.evaluate.max_gen_toks >= student_positions:
            findings.append(Finding(
                "context", "error", f"evaluate.max_gen_toks={cfg.evaluate.max_gen_toks:,} does not fit student "
                f"{st.model}'s {student_positions:,} positions (with the prompt).",
                rope_fix + f"evaluate.max_gen_toks below {student_positions:,}", "student"))
    teacher_positions = _positions(t_config)
    if "generate" in stages and teacher_positions and cfg.generate.teacher.backend == "vllm":
        asked = cfg.generate.teacher.vllm.max_model_len
        if asked and asked > teacher_positions:
            findings.append(Finding(
                "context", "error", f"generate.teacher.vllm.max_model_len={asked:,} exceeds teacher "
                f"{cfg.generate.teacher.model}'s max_position_embeddings {teacher_positions:,}; vLLM refuses it.",
                f"lower it to {teacher_positions:,}, or extend the teacher's RoPE through "
                "generate.teacher.vllm.engine_kwargs: {hf_overrides: {...}}", "teacher"))
        if cfg.generate.sampling.max_tokens >= (asked or teacher_positions):
            findings.append(Finding(
                "context", "error", f"generate.sampling.max_tokens={cfg.generate.sampling.max_tokens:,} leaves no "
                f"room for the prompt in the teacher's {asked or teacher_positions:,}-token context.",
                "raise generate.teacher.vllm.max_model_len or lower generate.sampling.max_tokens", "teacher"))
    return findings


SEVERITY_MARK = {"error": "error  ", "warning": "warning", "ok": "ok     "}


def format_finding(f: Finding, width: int = 80) -> str:
    """One finding as text for a terminal of `width` columns: "severity check (subject): message", wrapped
    under itself, then "fix: ..." indented the same way. Never a line longer than `width`."""
    import textwrap

    indent = " " * (len(SEVERITY_MARK["warning"]) + 1)
    head = f"{SEVERITY_MARK.get(f.severity, f.severity)} {f.check}" + (f" ({f.subject})" if f.subject else "")
    width = max(width, 40)
    lines = textwrap.wrap(f"{head}: {f.message}", width=width, subsequent_indent=indent,
                          break_long_words=True, break_on_hyphens=False)
    if f.fix:
        lines += textwrap.wrap(f"fix: {f.fix}", width=width, initial_indent=indent, subsequent_indent=indent + "     ",
                               break_long_words=True, break_on_hyphens=False)
    return "\n".join(lines)


def check_distributed(train_cfg) -> list[Finding]:
    """An accelerate config that cannot run as it says here (DeepSpeed missing or without a GPU, FSDP1 on CPU) stops
    now: accelerate would otherwise fall back to plain DDP, or fail after the data is prepared."""
    if not train_cfg.accelerate_config:
        return []
    import torch

    from distillkit.train.launch import distributed_problems

    try:
        problems = distributed_problems(train_cfg, has_gpu=torch.cuda.is_available())
    except DistillkitError as e:  # a missing or unreadable config file
        problems = [(str(e), "fix train.accelerate_config")]
    return [Finding("distributed", "error", problem, fix, "train") for problem, fix in problems]


def raise_on_fatal(findings: Iterable[Finding]) -> None:
    """Raise one DistillkitError listing every error finding with its fix; return when there are none."""
    errors = [f for f in findings if f.severity == "error"]
    if not errors:
        return
    lines = [f"preflight found {len(errors)} fatal problem{'s' if len(errors) != 1 else ''}:"]
    for f in errors:
        lines += [f"  - {f.check}: {f.message}", f"    fix: {f.fix}"]
    raise DistillkitError("\n".join(lines))
