"""Whether two tokenizers share a BPE (the same base vocabulary at the same ids, the same splits of probe texts):
what decides between exact KD (same ids), a special-token map, and cross-tokenizer labels. Used by
`student.tokenizer` and `student.special_map`."""

from __future__ import annotations


def _added_ids(tokenizer) -> set[int]:
    return set(getattr(tokenizer, "added_tokens_decoder", {}) or {})


def base_vocab(tokenizer) -> dict[str, int]:
    """The BPE's own vocabulary: every token except the added (special or user-defined) ones."""
    added = _added_ids(tokenizer)
    return {t: i for t, i in tokenizer.get_vocab().items() if i not in added}


# Text that exercises what a BPE decides: digits and numbers, LaTeX, code, whitespace runs, CJK,
# accents, emoji. Two tokenizers with the same base vocabulary that split these the same way share
# merges and pre-tokenizer for practical purposes (comparing the merge lists costs seconds at 150k).
BPE_PROBES = (
    "Hello world! The answer is $\\boxed{\\frac{12}{7}}$ and 3.14159, 1,234,567 or 2024-12-01.",
    "def f(x):\n    return x ** 2  # square\n\n\n\tif a != b: print('ok')",
    "   leading spaces, trailing tabs\t\t and\r\nwindows lines   ",
    "因此，答案是 12。让我们一步一步地思考。 数学 ist schön, café naïve — 😀 ok",
    "Reasoning here.\n\n**Final answer:** x = -\\sqrt{2} < 3 > 1 </> <|x|>",
)  # no added token of any family (<think>, <|im_end|>): those may differ on purpose


def shares_bpe(a, b) -> bool:
    """Whether two tokenizers split ordinary text identically: the same base vocabulary at the same ids
    and the same ids for probe texts (`BPE_PROBES`); added tokens may differ."""
    if base_vocab(a) != base_vocab(b):
        return False
    return all(a(t, add_special_tokens=False)["input_ids"] == b(t, add_special_tokens=False)["input_ids"]
               for t in BPE_PROBES)
