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

One function per check in the table above, each with its message and fix, in a module per subject: `pair`
(vocab_compat, trace_roundtrip, cross_tokenizer), `student` (the student as student_init/ will hold it,
tokenizer_mode, special_roles), `context`, `settings` (report_to, distributed, soft_labels, task_name,
task_dataset); `run` holds `preflight`, which runs them for the stages about to run, and `formatting` prints a
finding. The single-model checks (chat_template to generation_markers) are in `distillkit.tokenizer_checks`,
tokenizer loading in `distillkit.models`: the train stage runs them too, and a stage imports nothing from here.
Every name is importable from `distillkit.preflight`, those two modules' checks included.
"""

from distillkit.models import load_tokenizer_and_config
from distillkit.preflight.context import check_context
from distillkit.preflight.formatting import SEVERITY_MARK, format_finding
from distillkit.preflight.pair import (
    CROSS_TOKENIZER_SAMPLE,
    check_cross_tokenizer,
    check_pair,
    check_trace_roundtrip,
    sample_trace,
)
from distillkit.preflight.run import preflight
from distillkit.preflight.settings import (
    REPORT_TO_PACKAGES,
    check_distributed,
    check_eval_tasks,
    check_report_to,
    check_soft_labels,
)
from distillkit.preflight.student import check_tokenizer_mode, student_after_init

# the single-model checks live with their Finding type, below the stages (train runs them on student_init);
# they stay importable from here, as preflight's checks
from distillkit.tokenizer_checks import (
    ANSWER_TEXT,
    REASONING_TEXT,
    THINK_CLOSE,
    THINK_OPEN,
    Finding,
    Severity,
    check_chat_template,
    check_eos,
    check_generation_markers,
    check_reasoning_rendered,
    check_think_tokens,
    check_tokenizer,
    check_trained_turn,
    raise_on_fatal,
)

__all__ = [
    "ANSWER_TEXT", "CROSS_TOKENIZER_SAMPLE", "REASONING_TEXT", "REPORT_TO_PACKAGES", "SEVERITY_MARK", "THINK_CLOSE",
    "THINK_OPEN", "Finding", "Severity", "check_chat_template", "check_context", "check_cross_tokenizer",
    "check_distributed", "check_eos", "check_eval_tasks", "check_generation_markers", "check_pair",
    "check_reasoning_rendered", "check_report_to", "check_soft_labels", "check_think_tokens", "check_tokenizer",
    "check_tokenizer_mode", "check_trace_roundtrip", "check_trained_turn", "format_finding",
    "load_tokenizer_and_config", "preflight", "raise_on_fatal", "sample_trace", "student_after_init",
]
