"""Student loading: layer-pruned initialization (`student_init/`), template and pad fix-ups, full/LoRA/QLoRA.

The student is always trained from `student_init/`, a plain HF folder written here once per run:
the resolved student model with only the kept decoder layers (`train.student.keep_layers`) and a
tokenizer whose template keeps the reasoning and whose pad token differs from EOS. Evaluation loads
the same folder as "student before", so before/after compare exactly the model that was trained.

Size: every change made to the student before training (layers, tokens and their embedding rows, template,
context, loading for full/LoRA/QLoRA) is here, in the order `build_student_init` applies them.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path

from distillkit.errors import DistillkitError, require
from distillkit.student.tokenizer import MAP_NOTE
from distillkit.student.tokenizer import fix_tokenizer  # noqa: F401  (re-exported: preflight and tests use it)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- layers


def parse_keep_layers(spec: str | list[int] | None, num_layers: int) -> list[int]:
    """ "every_other" | "first:N" | "last:N" | [indices] -> sorted layer indices to keep.

    "every_other" keeps 0, 2, 4, ... and always the last layer (it writes the residual stream the
    final norm and LM head were trained on).
    """
    if spec is None:
        return list(range(num_layers))
    if isinstance(spec, list):
        bad = [i for i in spec if not 0 <= int(i) < num_layers]
        if bad or not spec:
            raise DistillkitError(f"train.student.keep_layers={spec}: indices must be in [0, {num_layers - 1}] "
                                  "and not empty")
        return sorted({int(i) for i in spec})
    if spec == "every_other":
        keep = list(range(0, num_layers, 2))
        return keep if keep[-1] == num_layers - 1 else keep + [num_layers - 1]
    kind, _, n = spec.partition(":")
    if kind == "auto":
        raise DistillkitError(f"train.student.keep_layers={spec!r} is chosen by measurement on kept traces "
                              "(build_student_init with records)")
    if kind in ("first", "last") and n.isdigit() and 0 < int(n) <= num_layers:
        n = int(n)
        return list(range(n)) if kind == "first" else list(range(num_layers - n, num_layers))
    raise DistillkitError(f"train.student.keep_layers={spec!r} is not understood; use \"every_other\", "
                          f"\"first:N\", \"last:N\", \"auto:N\" (1 <= N <= {num_layers}) or a list of layer indices")


def prune_layers(model, keep: list[int]):
    """A new model of the same class with only decoder layers `keep` (weights copied, layer indices renumbered)."""
    torch = require("torch", "train")
    config = copy.deepcopy(model.config)
    old_n = config.num_hidden_layers
    if keep == list(range(old_n)):
        return model
    config.num_hidden_layers = len(keep)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep]
    if getattr(config, "max_window_layers", None) is not None:
        config.max_window_layers = min(config.max_window_layers, len(keep))
    new_index = {old: new for new, old in enumerate(keep)}

    def renamed(name: str, index: dict[int, int]) -> str | None:
        parts = name.split(".")
        if "layers" in parts:
            at = parts.index("layers") + 1
            if int(parts[at]) not in index:
                return None
            parts[at] = str(index[int(parts[at])])
        return ".".join(parts)

    state = {new: tensor for name, tensor in model.state_dict().items()
             if (new := renamed(name, new_index)) is not None}
    with torch.device("meta"):
        pruned = type(model)(config)
    pruned.load_state_dict(state, assign=True, strict=True)
    # Non-persistent buffers (rotary inv_freq) are not in the state dict: take them from the source model.
    old_buffers, old_index = dict(model.named_buffers()), dict(enumerate(keep))
    for name, buf in list(pruned.named_buffers()):
        if buf.is_meta:
            module, _, attr = name.rpartition(".")
            pruned.get_submodule(module)._buffers[attr] = old_buffers[renamed(name, old_index)].clone()
    if getattr(config, "tie_word_embeddings", False):
        pruned.tie_weights()
    pruned.generation_config = model.generation_config
    return pruned


# ----------------------------------------------------------------------------------------- init


def auto_keep(spec) -> int | None:
    """N of `keep_layers: "auto:N"`, else None."""
    if isinstance(spec, str) and spec.startswith("auto:"):
        n = spec.partition(":")[2]
        if not n.isdigit():
            raise DistillkitError(f"train.student.keep_layers={spec!r}: auto:N takes a number of layers, e.g. auto:24")
        return int(n)
    return None


def build_student_init(student_cfg, out_dir: str | Path, dtype: str = "bfloat16", records=None,
                       teacher: str | None = None) -> dict:
    """Resolve the student, keep the asked layers, fix the tokenizer, save all to `out_dir`.

    Written to a temporary folder and renamed, so an existing `out_dir` is always whole. With every
    layer kept the weights are linked, not rewritten (`_link_whole_student`; only a shard holding
    changed embedding rows is rewritten). `keep_layers: auto:N` chooses the layers on `records` (kept
    traces; `distillkit.student.layers`). `teacher` (a model argument) is the source of special tokens
    for `student.tokenizer` auto/teacher (`distillkit.student.tokenizer`). The context overrides
    (`rope_theta`, `rope_scaling`, `max_position_embeddings`) go into the saved config. Returns {"path",
    "source", "num_layers", "kept_layers", "num_params", "tokenizer_changes", "weights": "linked" |
    "written", "adopted_rows", "context"} (+ "layer_choice": the rounds of an auto choice; "special_map": the
    teacher->student pairs when the student keeps its tokens and the teacher's are mapped, `special_map.py`).
    """
    require("torch", "train")  # the install hint now, before the tokenizer work
    transformers = require("transformers", "train")
    from distillkit.models import resolve_model

    out_dir = Path(out_dir)
    info_path = out_dir / "distillkit_init.json"
    if info_path.exists():
        return json.loads(info_path.read_text())
    source = resolve_model(student_cfg.model)
    original = transformers.AutoTokenizer.from_pretrained(source)
    chosen, rows, note = student_tokenizer(student_cfg, original, teacher)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    auto = auto_keep(student_cfg.keep_layers)
    tokenizer = copy.deepcopy(chosen)  # fixed in place by either path below
    info = None if auto else _link_whole_student(source, tokenizer, rows, note, tmp, student_cfg)
    if info is None:
        tokenizer = chosen  # unfixed: the fix below may resize the model
        info = _write_pruned_student(source, tokenizer, rows, note, tmp, student_cfg, dtype, records, auto)
    info = {"path": str(out_dir), "source": source, **info}
    if note.startswith(MAP_NOTE):  # the pairs as the fixed student sees them (its EOS is its end of turn now)
        from distillkit.models import load_tokenizer_and_config
        from distillkit.student.special_map import build_special_map

        special_map = build_special_map(load_tokenizer_and_config(teacher)[0], tokenizer, teacher, student_cfg.model)
        info["special_map"] = special_map.to_json()
        info["tokenizer_changes"] = [f"{note}: {special_map.summary()}", *info["tokenizer_changes"][1:]]
    (tmp / "distillkit_init.json").write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)  # the folder appears whole or not at all
    log.info("student_init: %d of %d layers, %.1fM params, weights %s -> %s", len(info["kept_layers"]),
             info["num_layers"], info["num_params"] / 1e6, info["weights"], out_dir)
    for change in info["tokenizer_changes"]:
        log.info("student_init: %s", change)
    return info


def _write_pruned_student(source: str, tokenizer, rows, note: str, tmp: Path, student_cfg, dtype: str, records,
                          auto: int | None) -> dict:
    """Load the student, set the adopted embedding rows, keep the asked layers (chosen on `records` for auto:N),
    fix `tokenizer` in place, apply the context overrides, and save model and tokenizer to `tmp`; returns the
    init info without "path" and "source"."""
    torch = require("torch", "train")
    transformers = require("transformers", "train")

    # An auto choice runs the model: in float32 where bf16 is not native (and slow), cast when saved.
    load_dtype = torch.float32 if auto and not resolve_bf16(None) else getattr(torch, dtype)
    model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=load_dtype)
    num_layers = model.config.num_hidden_layers
    set_embedding_rows(model, rows, len(tokenizer))
    choice = None
    if auto:
        if records is None:
            raise DistillkitError("train.student.keep_layers=auto:N measures the layers on the filter stage's "
                                  "kept traces, which this run does not train on (train.sources); list the "
                                  "layers to keep instead")
        from distillkit.student.layers import choose_layers

        keep, choice = choose_layers(model, tokenizer, records, auto)
    else:
        keep = parse_keep_layers(student_cfg.keep_layers, num_layers)
    model = prune_layers(model, keep).to(getattr(torch, dtype))
    changes = ([note] if note else []) + fix_tokenizer(tokenizer, model)
    context = apply_context(model.config, student_cfg)
    info = {"num_layers": num_layers, "kept_layers": keep,
            "num_params": sum(p.numel() for p in model.parameters()), "tokenizer_changes": changes,
            "weights": "written", "adopted_rows": [r.to_json() for r in rows], "context": context,
            **({"layer_choice": choice} if choice else {})}
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return info


def student_tokenizer(student_cfg, original, teacher: str | None):
    """(tokenizer before the fix-ups, embedding rows to set, note) for `train.student.tokenizer`."""
    from distillkit.student.tokenizer import choose_tokenizer

    policy = getattr(student_cfg, "tokenizer", "own")
    teacher_tok = None
    if teacher is not None and policy != "own":
        from distillkit.models import load_tokenizer_and_config

        try:
            teacher_tok, _ = load_tokenizer_and_config(teacher)
        except DistillkitError as e:
            if policy in ("teacher", "map"):
                raise
            log.info("student_init: the teacher's tokenizer is not available (%s); the student keeps its own", e)
    chosen, rows, note = choose_tokenizer(policy, original, teacher_tok)
    return copy.deepcopy(chosen) if chosen is original else chosen, rows, note  # `original` stays as loaded


def init_rows(weight, rows) -> None:
    """Set rows of an embedding (or untied output head) matrix (V, H) in place: each to the mean of
    the rows of its pieces (`RowInit.pieces`); rows with no pieces keep their values."""
    torch = require("torch", "train")
    with torch.no_grad():
        for r in rows:
            if r.pieces:
                weight[r.id] = weight[torch.as_tensor(r.pieces)].float().mean(0).to(weight.dtype)


def set_embedding_rows(model, rows, num_tokens: int) -> None:
    """`init_rows` on the model's input embedding and, when untied, its output head (grown first
    when the adopted tokenizer has more tokens than the model has rows)."""
    if not rows:
        return
    if num_tokens > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(num_tokens)
    init_rows(model.get_input_embeddings().weight.data, rows)
    head = model.get_output_embeddings()
    if head is not None and head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
        init_rows(head.weight.data, rows)


def apply_context(config, student_cfg) -> dict:
    """Apply `train.student.rope_theta` / `rope_scaling` / `max_position_embeddings` to a model config;
    returns {"max_position_embeddings": [old, new], "rope": [old, new]} for what changed (the card
    records it). transformers >= 5 keeps RoPE settings in `rope_parameters`; older versions in
    `rope_theta` / `rope_scaling`."""
    changes: dict = {}
    theta, scaling = getattr(student_cfg, "rope_theta", None), getattr(student_cfg, "rope_scaling", None)
    if theta is not None or scaling:
        if hasattr(config, "rope_parameters"):
            old = dict(config.rope_parameters or {})
            new = {**old, **({"rope_theta": theta} if theta is not None else {}), **(scaling or {})}
            config.rope_parameters = new
        else:
            old = {"rope_theta": getattr(config, "rope_theta", None), "rope_scaling": getattr(config, "rope_scaling", None)}
            if theta is not None:
                config.rope_theta = theta
            if scaling:
                config.rope_scaling = dict(scaling)
            new = {"rope_theta": config.rope_theta, "rope_scaling": config.rope_scaling}
        changes["rope"] = [old, new]
    positions = getattr(student_cfg, "max_position_embeddings", None)
    if positions is not None and positions != config.max_position_embeddings:
        changes["max_position_embeddings"] = [config.max_position_embeddings, positions]
        config.max_position_embeddings = positions
    return changes


def _link_whole_student(source: str, tokenizer, rows, note: str, tmp: Path, student_cfg) -> dict | None:
    """student_init without loading the model, when the layers stay: every layer kept, the source a
    folder of safetensors files, and no new token that would grow the embeddings. The weight files are
    hard-linked (symlinked across filesystems) next to the fixed tokenizer and config, so a 32B/70B
    student costs neither a copy on disk nor its size in CPU memory; a shard holding embedding rows
    that change (adopted tokens) is rewritten alone. Returns the info dict, or None when the model
    must be loaded (layer pruning, a resized vocabulary, .bin weights)."""
    import os

    transformers = require("transformers", "train")
    src = Path(source)
    config = transformers.AutoConfig.from_pretrained(source)
    num_layers = config.num_hidden_layers
    keep = parse_keep_layers(student_cfg.keep_layers, num_layers)
    weights = _safetensors_files(src)
    if keep != list(range(num_layers)) or not weights:
        return None
    if rows and max(r.id for r in rows) >= config.vocab_size:
        return None  # the adopted tokenizer needs more rows than the model has
    try:
        generation = transformers.GenerationConfig.from_pretrained(source)
    except OSError:  # the source has no generation_config.json
        generation = None
    old_eos = tokenizer.eos_token_id
    changes = fix_tokenizer(tokenizer)
    if len(tokenizer) > config.vocab_size:
        return None  # a new pad token needs a bigger embedding: load, resize, save
    tmp.mkdir(parents=True)
    patched = _patch_embedding_files(weights, rows, tmp)
    for f in [*weights, *src.glob("model.safetensors.index.json")]:
        if f.name in patched:
            continue
        target = f.resolve()  # Hub cache snapshots are symlinks into blobs/
        try:
            os.link(target, tmp / f.name)
        except OSError:  # another filesystem: a symlink (the source must stay where it is)
            os.symlink(target, tmp / f.name)
    from distillkit.student.tokenizer import update_model_config

    update_model_config(config, generation, tokenizer, old_eos)
    context = apply_context(config, student_cfg)
    config.save_pretrained(tmp)
    if generation is not None:
        generation.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return {"num_layers": num_layers, "kept_layers": keep, "num_params": _safetensors_numel(weights),
            "tokenizer_changes": ([note] if note else []) + changes, "adopted_rows": [r.to_json() for r in rows],
            "context": context, "weights": "linked" + (f" ({len(patched)} shard(s) with new rows written)"
                                                       if patched else "")}


EMBEDDING_SUFFIXES = ("embed_tokens.weight", "lm_head.weight", "wte.weight")


def _patch_embedding_files(weights: list[Path], rows, tmp: Path) -> set[str]:
    """Write (into `tmp`) each safetensors file holding an embedding or output-head matrix, with
    `rows` set by `init_rows`; returns the names of the files written. Other files are untouched."""
    if not any(r.pieces for r in rows):
        return set()
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    written = set()
    for f in weights:
        with safe_open(str(f), framework="pt") as st:
            targets = [k for k in st.keys() if k.endswith(EMBEDDING_SUFFIXES)]
            metadata = st.metadata()
        if not targets:
            continue
        tensors = load_file(str(f))
        for name in targets:
            init_rows(tensors[name], rows)
        save_file(tensors, str(tmp / f.name), metadata=metadata or {"format": "pt"})
        written.add(f.name)
    return written


def _safetensors_files(folder: Path) -> list[Path]:
    """The weight files transformers loads from `folder`: the index's shards, else model.safetensors
    (a folder may also hold other .safetensors files, such as Mistral's consolidated weights)."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        return [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    return [folder / "model.safetensors"] if (folder / "model.safetensors").exists() else []


def _safetensors_numel(files: list[Path]) -> int:
    """Parameter count from safetensors headers (nothing loaded); tied weights are stored once."""
    from safetensors import safe_open

    total = 0
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                n = 1
                for d in st.get_slice(key).get_shape():
                    n *= d
                total += n
    return total


# ----------------------------------------------------------------------------------------- loading


def resolve_bf16(bf16: bool | None) -> bool:
    """`train.bf16`: None means bf16 mixed precision where the hardware computes in bf16: a GPU that
    supports it, or a CPU with AVX512-BF16/AMX; fp32 on other CPUs.

    On CPU, Trainer's bf16 is autocast over fp32 master weights. Without native bf16 it measured 12x
    *slower* than fp32 (one 512-token forward+backward of an 8-layer SmolLM2 on an AVX2 CPU: 215 s vs
    17 s, torch 2.13); with AVX512-BF16 it is 2x faster (24-layer SmolLM2, 512 tokens: 1.27 vs 2.55 s
    per step). fp32 with flush-denormal (set by the train stage) is the fast path on the others.
    """
    torch = require("torch", "train")
    if bf16 is not None:
        return bf16
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    from distillkit import hardware

    return hardware.cpu_has_fast_bf16()


def load_student(train_cfg, init_dir: str | Path):
    """Load the student from `init_dir` for `train_cfg.method`: returns (model, tokenizer).

    full: all weights trainable, fp32 master weights (bf16 autocast comes from the trainer).
    lora: frozen base (bf16 when training in bf16, else fp32) + PEFT LoRA adapters (fp32) on
          `lora.target_modules`.
    qlora: base quantized to 4-bit by bitsandbytes (NF4 + double quantization by default), LoRA on top,
           compute in `qlora.compute_dtype`.
    """
    torch = require("torch", "train")
    transformers = require("transformers", "train")
    tokenizer = transformers.AutoTokenizer.from_pretrained(init_dir)
    method = train_cfg.method
    kwargs = {"dtype": torch.float32}
    if method == "lora" and resolve_bf16(train_cfg.bf16):
        # The frozen base only runs forward (and backward through it) under autocast: bf16 weights give the
        # same compute at half the memory (a 7B LoRA student at 16k tokens: ~46 GiB with an fp32 base,
        # BENCHMARKS.md "Training memory"). PEFT keeps the trained adapters in fp32.
        kwargs["dtype"] = torch.bfloat16
    if method == "qlora":
        require("bitsandbytes", "qlora", "train.method=qlora needs bitsandbytes")
        q = train_cfg.qlora
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=q.quant_type, bnb_4bit_use_double_quant=q.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, q.compute_dtype))
        kwargs["dtype"] = getattr(torch, q.compute_dtype)
        if torch.cuda.is_available():
            kwargs["device_map"] = {"": torch.cuda.current_device()}
    model = transformers.AutoModelForCausalLM.from_pretrained(init_dir, **kwargs)
    model.config.use_cache = False
    if method == "full":
        return model, tokenizer
    peft = require("peft", "train", "train.method=lora/qlora needs peft")
    if method == "qlora":
        model = peft.prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=train_cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    lc = train_cfg.lora
    # LoRA's A matrices are drawn at random: seed first, so one recipe always starts from the same adapter.
    transformers.set_seed(train_cfg.seed)
    # Embedding rows of adopted special tokens (`</think>`, `<｜Assistant｜>`, ...) start from an
    # initialisation; LoRA alone never changes them, so PEFT trains exactly those rows.
    new_rows = adopted_row_ids(init_dir)
    config = peft.LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                             target_modules=lc.target_modules, task_type="CAUSAL_LM",
                             trainable_token_indices=new_rows or None)
    model = peft.get_peft_model(model, config)
    return model, tokenizer


def adopted_row_ids(init_dir: str | Path) -> list[int]:
    """Ids whose embedding rows student_init re-initialised (adopted tokens), from distillkit_init.json."""
    info = Path(init_dir) / "distillkit_init.json"
    if not info.exists():
        return []
    rows = json.loads(info.read_text()).get("adopted_rows", [])
    return [r["id"] for r in rows if r["init"].startswith("mean")]


def save_merged(init_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Merge a LoRA/QLoRA adapter into the unquantized `student_init` weights and save a plain model.

    QLoRA trains against 4-bit weights; merging into the full-precision base (not the dequantized
    4-bit one) is what PEFT and most QLoRA recipes do, and gives a model any loader reads.
    """
    torch = require("torch", "train")
    transformers = require("transformers", "train")
    peft = require("peft", "train")
    base = transformers.AutoModelForCausalLM.from_pretrained(init_dir, dtype=torch.bfloat16)
    merged = peft.PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    out_dir = Path(out_dir)
    merged.save_pretrained(out_dir)
    transformers.AutoTokenizer.from_pretrained(init_dir).save_pretrained(out_dir)
    return out_dir
