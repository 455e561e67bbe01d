"""What token ids spell, as bytes, for laying two tokenizers' token streams on one text (train/cross_tokenizer.py).

`token_bytes` reads every id's bytes from a tokenizer's vocabulary and its decoder's convention (byte-level BPE,
sentencepiece-style, other); `_ByteHashes` hashes any substring of a byte string in O(1) (polynomial hashes mod
2**64), so the span labels can look texts up in a vocabulary without building them.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import numpy as np

_HASH_BASE = 0x100000001B3  # odd (FNV's 64-bit prime), so it has an inverse mod 2**64
_POWERS = [np.ones(1, dtype=np.uint64), np.ones(1, dtype=np.uint64)]  # B**i and B**-i mod 2**64, grown on demand


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(B**i, B**-i) mod 2**64 for i < n at least. uint64 products wrap around: that wrap is the modulus."""
    if len(_POWERS[0]) < n:
        m = max(n, 2 * len(_POWERS[0]))
        for j, base in enumerate((_HASH_BASE, pow(_HASH_BASE, -1, 1 << 64))):
            steps = np.full(m, base, dtype=np.uint64)
            steps[0] = 1
            _POWERS[j] = np.cumprod(steps, dtype=np.uint64)
    return _POWERS[0], _POWERS[1]


class _ByteHashes:
    """Hashes of every substring of one byte string, each in O(1): h(x) = sum_j (x_j + 1) B**(len-1-j) mod 2**64
    (the +1 keeps leading zero bytes from vanishing). From prefix hashes H: h(data[a:b]) = H[b] - H[a] B**(b-a),
    and h(x + y) = h(x) B**len(y) + h(y). Two different token-length texts collide with probability ~2**-64
    per pair (a polynomial hash mod 2**64 is only attackable with strings thousands of bytes long)."""

    def __init__(self, data: bytes):
        x = np.frombuffer(data, dtype=np.uint8).astype(np.uint64) + np.uint64(1)
        n = len(x)
        pw, ipw = _powers(n + 1)
        self.prefix = np.zeros(n + 1, dtype=np.uint64)
        # H[i] = B**i * sum_{j<i} x_j B**-(j+1): one cumsum instead of a sequential recurrence
        self.prefix[1:] = pw[1:n + 1] * np.cumsum(x * ipw[1:n + 1], dtype=np.uint64)

    def sub(self, a, b) -> np.ndarray:
        """Hashes of data[a:b] (arrays of offsets, a <= b)."""
        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        pw, _ = _powers(int(np.max(b - a, initial=0)) + 1)
        return self.prefix[b] - self.prefix[a] * pw[b - a]


@functools.lru_cache(maxsize=1)
def _byte_level_table() -> dict[int, int]:
    """GPT-2's byte <-> printable-character table, as a str.translate table char -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {c: b for b, c in zip(bs, cs)}


def _decoder_kind(tokenizer) -> tuple[str, bool]:
    """("byte_level" | "metaspace" | "other", byte_fallback) from the fast tokenizer's decoder."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is None:
        return "other", False
    state = json.loads(decoder.__getstate__())
    parts = state.get("decoders", [state]) if state.get("type") == "Sequence" else [state]
    types = {p.get("type") for p in parts}
    if "ByteLevel" in types:
        return "byte_level", False
    spaces = "Metaspace" in types or any(p.get("type") == "Replace" and "▁" in str(p.get("pattern")) for p in parts)
    return ("metaspace" if spaces else "other"), "ByteFallback" in types


@dataclass
class TokenBytes:
    """What each id of a tokenizer spells in decoded text, as bytes; `special` ids spell no text."""

    spelled: list[bytes]
    special: set[int]
    byte_fallback: set[int]  # sentencepiece <0xNN> pieces: used only when no normal piece spells the byte

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(b) for b in self.spelled), dtype=np.int64, count=len(self.spelled))


def token_bytes(tokenizer) -> TokenBytes:
    """Bytes of every id (added tokens included), from the vocabulary and the decoder's convention:
    byte-level BPE (Qwen, Llama 3, SmolLM2: `Ġ` is a space, every char one byte), sentencepiece-style
    (Gemma: `▁` is a space, `<0xNN>` pieces are raw bytes), otherwise `convert_tokens_to_string` per token.
    One pass over the vocabulary."""
    vocab = tokenizer.get_vocab()
    size = max(len(tokenizer), max(vocab.values(), default=-1) + 1)
    spelled = [b""] * size
    kind, fallback = _decoder_kind(tokenizer)
    table = _byte_level_table()
    byte_fallback: set[int] = set()
    for tok, i in vocab.items():
        if kind == "byte_level":
            try:
                spelled[i] = tok.translate(table).encode("latin-1")
            except UnicodeEncodeError:  # a char outside the byte alphabet: an added token, set below
                spelled[i] = tok.encode()
        elif kind == "metaspace":
            if fallback and len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
                spelled[i] = bytes([int(tok[3:5], 16)])
                byte_fallback.add(i)
            else:
                spelled[i] = tok.replace("▁", " ").encode()
        else:
            spelled[i] = tokenizer.convert_tokens_to_string([tok]).encode()
    special = set()
    for i, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        spelled[i] = added.content.encode()
        if added.special:
            special.add(i)
    return TokenBytes(spelled, special, byte_fallback)


def _common_prefix(a: bytes, b: bytes) -> int:
    """Length of the longest common prefix of two byte strings (numpy, not a Python loop over bytes)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    diff = np.frombuffer(a[:n], dtype=np.uint8) != np.frombuffer(b[:n], dtype=np.uint8)
    return int(np.argmax(diff))
