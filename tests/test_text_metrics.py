"""Text metrics: CIDEr-D (pycocoevalcap), ROUGE (rouge-score) and the caption / Gigaword normalisations."""
import math
import pickle
import re
import string
from collections import Counter, defaultdict

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider

from biomedgpt.metrics import (
    CiderDocumentFrequency,
    bioclean,
    cider_d,
    fix_tokenization,
    gigaword_hypothesis,
    load_cider_document_frequency,
    rouge_scores,
    strip_punctuation,
)

# --- CIDEr-D ------------------------------------------------------------------------------------------------------


def cider_d_formula(hyp, refs, df, num_docs, sigma=6.0):
    """CIDEr-D written out directly: tf-idf n-gram vectors (n = 1..4), clipped cosine per n, Gaussian penalty on
    the length difference (counted in bigrams, the pycocoevalcap / reference convention), mean over n, mean over
    references, times 10."""
    log_docs = math.log(num_docs)

    def vectors(text):
        words = text.split()
        counts = Counter(tuple(words[i:i + k]) for k in range(1, 5) for i in range(len(words) - k + 1))
        vecs = [{} for _ in range(4)]
        for gram, tf in counts.items():
            vecs[len(gram) - 1][gram] = tf * (log_docs - math.log(max(1.0, df.get(gram, 0.0))))
        return vecs, max(len(words) - 1, 0)

    hyp_vecs, hyp_len = vectors(hyp)
    total = 0.0
    for ref in refs:
        ref_vecs, ref_len = vectors(ref)
        penalty = math.exp(-((hyp_len - ref_len) ** 2) / (2 * sigma ** 2))
        per_n = []
        for h, r in zip(hyp_vecs, ref_vecs, strict=True):
            dot = sum(min(w, r.get(g, 0.0)) * r.get(g, 0.0) for g, w in h.items())
            norm_h, norm_r = math.sqrt(sum(w * w for w in h.values())), math.sqrt(sum(w * w for w in r.values()))
            per_n.append((dot / (norm_h * norm_r) if norm_h and norm_r else 0.0) * penalty)
        total += sum(per_n) / 4
    return 10.0 * total / len(refs)


def test_cider_d_identical_and_disjoint_references_by_hand():
    # vs "a b": cosine 1 for unigrams and bigrams, no 3-/4-grams -> mean over n = 0.5; vs "x y": 0.
    # (0.5 + 0) / 2 references * 10 = 2.5 whatever the (non-degenerate) document frequencies.
    df = CiderDocumentFrequency.from_counts({("a",): 3, ("x",): 1}, ref_len=10)
    mean, per_sample = cider_d(["a b"], [["a b", "x y"]], df)
    assert per_sample.tolist() == pytest.approx([2.5])
    assert mean == pytest.approx(2.5)


def test_cider_d_length_penalty_by_hand():
    # ref_len = e, no document counts: every n-gram weighs tf * (log e - log 1) = tf.
    # unigrams: (1 + 1) / (sqrt 2 * sqrt 3); bigrams: 1 / (1 * sqrt 2); no trigram in the hypothesis.
    # lengths in bigrams: 1 vs 2 -> penalty exp(-1 / (2 * 36)).
    df = CiderDocumentFrequency.from_counts({}, ref_len=math.e)
    expected = 10 * (2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4 * math.exp(-1 / 72)
    _, per_sample = cider_d(["a b"], [["a b c"]], df)
    assert per_sample[0] == pytest.approx(expected, rel=1e-12)


def test_cider_d_one_hypothesis_two_references_explicit_df():
    hyp = "a man riding a horse on the beach"
    refs = ["a man rides a horse on a beach", "a person on a brown horse near the sea"]
    counts = {("a",): 7, ("man",): 3, ("horse",): 2, ("on",): 4, ("the",): 6, ("beach",): 1, ("a", "man"): 2,
              ("a", "horse"): 2, ("horse", "on"): 1, ("on", "the"): 2, ("the", "beach"): 1, ("riding",): 1}
    df = CiderDocumentFrequency.from_counts(counts, ref_len=8)
    mean, per_sample = cider_d([hyp], [refs], df)
    expected = cider_d_formula(hyp, refs, counts, 8)
    assert 0 < expected < 10
    assert per_sample[0] == pytest.approx(expected, rel=1e-12)
    assert mean == pytest.approx(expected, rel=1e-12)
    assert len(df.document_frequency) == len(counts)  # unseen n-grams are not inserted into the cache


def test_cider_d_corpus_mode_is_pycocoevalcap_cider():
    hyps = ["a dog runs on grass", "two cats sleep", "a red car on the road"]
    refs = [["a dog running on the grass", "dog on grass"], ["two cats are sleeping", "cats sleeping on a bed"],
            ["a red car parked on a road", "a car on the street"]]
    mean, per_sample = cider_d(hyps, refs)
    coco_mean, coco_scores = Cider().compute_score({i: r for i, r in enumerate(refs)},
                                                   {i: [h] for i, h in enumerate(hyps)})
    assert per_sample == pytest.approx(coco_scores, rel=1e-12)
    assert mean == pytest.approx(coco_mean, rel=1e-12)
    df = Counter(g for r in refs for g in {tuple(w.split()[i:i + k]) for w in r for k in range(1, 5)
                                           for i in range(len(w.split()) - k + 1)})
    assert per_sample[1] == pytest.approx(cider_d_formula(hyps[1], refs[1], df, len(refs)), rel=1e-12)


def test_cider_d_single_image_corpus_is_zero():
    assert cider_d(["a b"], [["a b"]])[1].tolist() == [0.0]  # every n-gram occurs in every document: idf 0


def test_load_cider_document_frequency(tmp_path):
    counts = defaultdict(float, {("a",): 2.0, ("a", "b"): 1.0})
    path = tmp_path / "words.p"
    with open(path, "wb") as f:
        pickle.dump({"document_frequency": counts, "ref_len": 5}, f, protocol=2)
    df = load_cider_document_frequency(str(path))
    assert df.ref_len == 5.0 and dict(df.document_frequency) == dict(counts)
    assert df.document_frequency[("never", "seen")] == 0.0
    hyps, refs = ["a b c", "b a"], [["a b d", "c"], ["b a"]]
    assert cider_d(hyps, refs, df)[1] == pytest.approx(cider_d(hyps, refs, CiderDocumentFrequency.from_counts(
        dict(counts), 5))[1])
    assert cider_d(hyps, refs, df)[1][1] == pytest.approx(cider_d_formula(hyps[1], refs[1], counts, 5), rel=1e-12)

    with open(tmp_path / "bad.p", "wb") as f:
        pickle.dump({"ref_len": 5}, f)
    with pytest.raises(ValueError, match="document_frequency"):
        load_cider_document_frequency(str(tmp_path / "bad.p"))


def test_cider_d_input_checks():
    assert cider_d([], []) == (0.0, pytest.approx(np.zeros(0)))
    with pytest.raises(ValueError, match="2 hypotheses but 1"):
        cider_d(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="non-empty list"):
        cider_d(["a"], [[]])
    with pytest.raises(ValueError, match="non-empty list"):
        cider_d(["a"], ["a"])


# --- ROUGE --------------------------------------------------------------------------------------------------------


def f1(p, r):
    return 2 * p * r / (p + r) if p + r else 0.0


def test_rouge_by_hand():
    hyps = ["the cat sat", "a b c d", "running dogs"]
    refs = ["the cat sat on the mat", "a c b d", "dogs running quickly"]
    s = rouge_scores(hyps, refs)
    # 1) unigrams 3/3 of hyp, 3/6 of ref; bigrams "the cat", "cat sat": 2/2, 2/5; LCS 3
    # 2) unigrams 4/4, 4/4; no common bigram; LCS("a b c d", "a c b d") = 3
    # 3) Porter stems: run dog | dog run quickli -> unigrams 2/2, 2/3; no common bigram; LCS 1: 1/2, 1/3
    expected = {
        "rouge1": [(1, 3 / 6), (1, 1), (1, 2 / 3)],
        "rouge2": [(1, 2 / 5), (0, 0), (0, 0)],
        "rougeL": [(1, 3 / 6), (3 / 4, 3 / 4), (1 / 2, 1 / 3)],
    }
    for key, pr in expected.items():
        assert s[f"{key}_recall"] == pytest.approx([100 * r for _, r in pr])
        assert s[f"{key}_f1"] == pytest.approx([100 * f1(p, r) for p, r in pr])
        assert s[f"{key}_recall_mean"] == pytest.approx(sum(100 * r for _, r in pr) / 3)
        assert s[f"{key}_f1_mean"] == pytest.approx(sum(100 * f1(p, r) for p, r in pr) / 3)
    assert s["rouge2_f1"][0] == pytest.approx(100 * 4 / 7)


def test_rouge_empty_and_mismatch():
    s = rouge_scores([], [])
    assert s["rougeL_f1"] == [] and s["rougeL_f1_mean"] == 0.0
    with pytest.raises(ValueError):
        rouge_scores(["a"], [])


# --- normalisation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ('he said " hello " .', "he said `` hello '' ."),
    ("i don ' t know", "i do n't know"),
    ("it ' s what he ' d say , they ' ll see", "it 's what he 'd say , they 'll see"),
    ("' quoted ' text", "` quoted ' text"),
    ("( a ) [ b ] { c }", "-lrb- a -rrb- -lsb- b -rsb- -lcb- c -rcb-"),
    ("a & b < c > d [UNK]", "a &amp; b &lt; c &gt; d UNK"),
    ("wait . . . what", "wait ... what"),
    ("$ 3 , 000 , 000 and 3 . 03 percent", "$ 3,000,000 and 3.03 percent"),
    ("the U . N . and U . S . A . say", "the U.N. and U.S.A. say"),
    ("a well - known state - of - the - art idea", "a well-known state-of-the-art idea"),
    ("a - - b", "a -- b"),
    ("- start end -", "- start end -"),
    ("x - ( y", "x - -lrb- y"),
    ("  spaced   out  ", "spaced out"),
    ("", ""),
])
def test_fix_tokenization(text, expected):
    assert fix_tokenization(text) == expected


def test_gigaword_hypothesis_replaces_every_1_by_hash():
    assert gigaword_hypothesis("The U.S. Won 1 - 0 ( <unk> ) in 2011 ") == "the u.s. won #-0 -lrb-  unk -rrb- in 20##"
    assert gigaword_hypothesis("10 or 21 but not 2 or 3") == "#0 or 2# but not 2 or 3"
    # kept for parity: the reference (unchanged) keeps its digits, so a '1' in the hypothesis can never match
    assert rouge_scores([gigaword_hypothesis("1 dose")], ["1 dose"])["rouge1_recall"] == [50.0]


def test_strip_punctuation():
    assert strip_punctuation(" A man, riding a horse! ") == "A man riding a horse"
    assert strip_punctuation("it's (fine).") == "its fine"
    assert strip_punctuation(string.punctuation) == ""


def test_bioclean():
    assert bioclean(' The "left" lung/ (normal): x-ray; <b>! ') == "the left lung normal x-ray b"
    assert bioclean("a .  b") == "a   b"  # inner whitespace is not re-joined
    assert bioclean("Dr. O'Neil's 50% {approx.}") == "dr oneils 50 approx"


def test_bioclean_matches_the_reference_character_class():
    # metric_caption.py: re.sub('[.,?;*!%^&_+():-\[\]{}]', '', ...) after deleting " / \ ' and lowercasing
    reference = re.compile("[.,?;*!%^&_+():-\\[\\]{}]")
    for code in range(0x3000):
        ch = chr(code)
        expected = reference.sub("", ch.replace('"', "").replace("/", "").replace("\\", "").replace("'", "")
                                 .strip().lower())
        assert bioclean(ch) == expected, repr(ch)
