"""The dedup keys' fast paths against their plain definitions, on texts made to hit every branch."""

import hashlib
import random
import string

import numpy as np
import pytest

from distillkit.verify import dedup as D

_ALPHABET = (string.ascii_letters + string.digits + string.punctuation + " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"
             + "_")
_UNICODE = "éÉßİΣσ中文\u00a0\u2009\u200a\u200b\u3000\u2028\x85，。！😀"


def _texts(seed: int, n: int, unicode: bool) -> list[str]:
    rng = random.Random(seed)
    chars = _ALPHABET + (_UNICODE if unicode else "")
    out = ["", " ", "\x1c\x1f", "A", "  Hello,\tWORLD!\n\n", "a_b c-d", "x\x1cy"]
    for _ in range(n):
        words = ["".join(rng.choice(chars) for _ in range(rng.randint(0, 9))) for _ in range(rng.randint(0, 40))]
        out.append("".join(w + rng.choice([" ", "  ", "\n", "\t ", "", ".", "\x1e"]) for w in words))
    return out


def _word_hash(word: str) -> int:
    """The documented hash of one word: sum (b_i + 1) P^(len-1-i) mod 2^64 over its UTF-8 bytes, then mixed."""
    h = 0
    for byte in word.encode():
        h = (h * D._P + byte + 1) % (1 << 64)
    return int(D._mix(np.array([h], np.uint64))[0])


@pytest.mark.parametrize("unicode", [False, True])
def test_exact_key_is_the_hash_of_the_normalized_text(unicode):
    for text in _texts(1, 300, unicode):
        want = hashlib.blake2b(" ".join(text.lower().split()).encode(), digest_size=16).digest()
        assert D.exact_key(text) == want, repr(text)
    assert D.exact_key("The  answer\tIS 4\n") == D.exact_key("the answer is 4")
    assert D.exact_key("the answer is 4.") != D.exact_key("the answer is 4")


@pytest.mark.parametrize("unicode", [False, True])
def test_word_hashes_hash_each_word(unicode):
    for text in _texts(2, 300, unicode):
        got = D.word_hashes(text).tolist()
        assert got == [_word_hash(w) for w in D.words(text)], repr(text)


def test_signature_is_the_minimum_of_each_permutation():
    hasher = D.MinHasher(num_perm=32, ngram=3)
    text = " ".join(f"w{i % 50}" for i in range(9000))  # more shingles than one 4,096 block
    h = hasher.shingle_hashes(text).astype(np.uint64)
    want = [int(((int(a) * h + int(b)) % (1 << 32)).min()) for a, b in zip(hasher.a, hasher.b)]
    assert hasher.signature(text).tolist() == want


def test_minhash_estimates_jaccard():
    rng = random.Random(3)
    vocab = [f"w{i}" for i in range(400)]
    base = [rng.choice(vocab) for _ in range(1500)]
    other = list(base)
    for i in rng.sample(range(len(other)), 60):
        other[i] = rng.choice(vocab)
    a, b = " ".join(base), " ".join(other)
    true = len(D.shingles(a, 5) & D.shingles(b, 5)) / len(D.shingles(a, 5) | D.shingles(b, 5))
    hasher = D.MinHasher(num_perm=256, ngram=5)
    est = np.mean(hasher.signature(a) == hasher.signature(b))
    assert abs(est - true) < 0.08, (est, true)
