"""`fairseq-generate --scoring vqa_accuracy|accuracy|rouge|cider`: hand-computed scores and CLI parsing."""
import math
import pickle

import pytest
from fairseq import options, scoring
from fairseq.data import Dictionary
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

import biomedgpt.scoring  # noqa: F401  (registers the scorers)
from biomedgpt.metrics.text_metrics import CiderDocumentFrequency, cider_d
from biomedgpt.scoring import AccuracyScorer, CiderScorer, RougeScorer, VqaAccuracyScorer, parse_vqa_reference
from biomedgpt.scoring.scorers import CiderScorerConfig

SCORERS = {"vqa_accuracy": VqaAccuracyScorer, "accuracy": AccuracyScorer, "rouge": RougeScorer, "cider": CiderScorer}


def _build(name, extra=(), task="translation"):
    """Parse a `fairseq-generate` command line and build its scorer the way `fairseq_cli.generate` does."""
    args = options.parse_args_and_arch(options.get_generation_parser(),
                                       ["DATA", "--task", task, "--scoring", name, *extra])
    cfg = convert_namespace_to_omegaconf(args)
    return scoring.build_scorer(cfg.scoring, Dictionary())


def _scored(scorer, pairs):
    for ref, hyp in pairs:
        scorer.add_string(ref, hyp)  # generate's call: add_string(target_str, detok_hypo_str)
    return scorer


# --- vqa_accuracy -------------------------------------------------------------------------------------------------


def test_parse_vqa_reference():
    assert parse_vqa_reference("1.0|!+yes&&0.5|!+no") == {"yes": 1.0, "no": 0.5}
    assert parse_vqa_reference(" yes && no ") == {"yes": 1.0, "no": 1.0}
    assert parse_vqa_reference(" 0.3|!+ left lung &&0.9|!+left lung&&") == {"left lung": 0.9}
    with pytest.raises(ValueError, match="numeric"):
        parse_vqa_reference("high|!+yes")


def test_vqa_accuracy_uses_confidences():
    scorer = _scored(_build("vqa_accuracy"), [
        (" 1.0|!+yes&&0.5|!+no", " no"),          # 0.5 (BPE-decoded strings carry a leading space)
        ("1.0|!+yes&&0.5|!+no", "yes "),          # 1.0
        ("0.3|!+chest x-ray&&1.0|!+ct", "chest x-ray"),  # 0.3
        ("mri", "ct"),                            # 0
        ("mri", "mri"),                           # plain answer: 1.0
        ("1.0|!+yes", "Yes"),                     # exact match only: 0
    ])
    expected = 100.0 * (0.5 + 1.0 + 0.3 + 0 + 1.0 + 0) / 6  # 46.666...
    assert isinstance(scorer, VqaAccuracyScorer)
    assert scorer.score() == pytest.approx(expected)
    assert scorer.result_string() == "VQA accuracy = 46.67 (6 questions)"


def test_vqa_accuracy_two_of_three():
    scorer = _scored(_build("vqa_accuracy"), [("yes", "yes"), ("no", "no"), ("yes&&1.0|!+maybe", "no")])
    assert scorer.result_string() == "VQA accuracy = 66.67 (3 questions)"


# --- accuracy -----------------------------------------------------------------------------------------------------


def test_accuracy_exact_match_of_stripped_strings():
    scorer = _scored(_build("accuracy"), [
        (" entailment", "entailment "), ("contradiction", "neutral"), ("a b", "a  b"), ("yes", "yes")])
    assert isinstance(scorer, AccuracyScorer)
    assert scorer.score() == pytest.approx(50.0)
    assert scorer.result_string() == "Accuracy = 50.00 (4 sentences)"


def test_empty_scorers_score_zero():
    for name in SCORERS:
        scorer = _build(name)
        assert scorer.score() == 0.0
        assert "(0 " in scorer.result_string()


# --- rouge --------------------------------------------------------------------------------------------------------


def _f1(overlap, hyp_len, ref_len):
    if overlap == 0:
        return 0.0
    precision, recall = overlap / hyp_len, overlap / ref_len
    return 100.0 * 2 * precision * recall / (precision + recall)


def test_rouge_hand_computed():
    # Words of <= 3 letters, so the Porter stemmer leaves them alone; rouge_score lowercases and drops punctuation.
    pairs = [
        (" the cat sat on the mat", "The cat on the mat. "),
        ("the dog", "a pig"),
    ]
    # 1: ref unigrams the x2, cat, sat, on, mat (6); hyp the x2, cat, on, mat (5): overlap 5.
    #    ref bigrams the-cat cat-sat sat-on on-the the-mat (5); hyp the-cat cat-on on-the the-mat (4): overlap 3.
    #    LCS "the cat on the mat" = 5.
    r1 = [_f1(5, 5, 6), 0.0]
    r2 = [_f1(3, 4, 5), 0.0]
    rl = [_f1(5, 5, 6), 0.0]
    assert r1[0] == pytest.approx(100 * 10 / 11) and r2[0] == pytest.approx(100 * 2 / 3)
    scorer = _scored(_build("rouge"), pairs)
    assert isinstance(scorer, RougeScorer)

    def mean(xs):
        return sum(xs) / len(xs)

    assert scorer.score() == pytest.approx(mean(rl))
    assert scorer.result_string() == (
        f"ROUGE-1 = {mean(r1):.2f}, ROUGE-2 = {mean(r2):.2f}, ROUGE-L = {mean(rl):.2f} (2 sentences)")
    assert scorer.result_string() == "ROUGE-1 = 45.45, ROUGE-2 = 33.33, ROUGE-L = 45.45 (2 sentences)"


# --- cider --------------------------------------------------------------------------------------------------------


def test_cider_identical_captions_score_ten():
    # Two images with disjoint vocabularies: every n-gram has document frequency 1 of 2, so idf = log 2 > 0 and a
    # hypothesis equal to its reference has cosine 1 for every n it has n-grams of (penalty exp(0) = 1).
    # CIDEr-D = 10 * mean over n = 1..4: 4 words -> 10, 3 words (no 4-gram) -> 7.5.
    scorer = _scored(_build("cider"), [
        ("one two three four", " one two three four "),
        ("red blue green", "red blue green"),
    ])
    assert isinstance(scorer, CiderScorer)
    assert scorer.score() == pytest.approx((10.0 + 7.5) / 2)
    assert scorer.result_string() == "CIDEr = 8.750 (2 sentences)"


def test_cider_lowercases_strips_punctuation_and_splits_references():
    # Several references per image ("&&", split before punctuation is removed); each equals the normalised hypothesis.
    scorer = _scored(_build("cider"), [
        ("One two, three four.&& one TWO three four !&&", "one two three four"),
        ("red blue green", "Red, blue; green!"),
    ])
    assert scorer.score() == pytest.approx((10.0 + 7.5) / 2)
    assert scorer.references("One two, three four.&& one TWO three four !&&") == ["one two three four"] * 2


def test_cider_matches_cider_d_on_hand_built_references():
    pairs = [
        ("a man riding a horse&&a person on a horse", "A man on a horse."),
        ("two dogs playing in snow", "a dog in the snow"),
        ("a plate of food&&food on a table", "a table with food"),
    ]
    expected, _ = cider_d(
        ["a man on a horse", "a dog in the snow", "a table with food"],
        [["a man riding a horse", "a person on a horse"], ["two dogs playing in snow"],
         ["a plate of food", "food on a table"]])
    assert _scored(_build("cider"), pairs).score() == pytest.approx(expected)
    assert expected > 0

    kept, _ = cider_d(
        ["A man on a horse", "a dog in the snow", "a table with food"],
        [["a man riding a horse", "a person on a horse"], ["two dogs playing in snow"],
         ["a plate of food", "food on a table"]])
    assert kept != pytest.approx(expected)
    assert _scored(_build("cider", ["--cider-keep-case"]), pairs).score() == pytest.approx(kept)


def test_cider_cached_document_frequency(tmp_path):
    path = tmp_path / "train-words.p"
    with open(path, "wb") as f:
        pickle.dump({"document_frequency": {}, "ref_len": 10.0}, f)
    pairs = [("one two three four", "one two three four")]
    # Without a cache the only document makes every idf log(1/1) = 0; with it every n-gram is unseen (idf log 10 > 0)
    # and the identical caption scores 10.
    assert _scored(_build("cider"), pairs).score() == 0.0
    scorer = _scored(_build("cider", ["--cider-cached-tokens", str(path)]), pairs)
    assert isinstance(scorer.document_frequency, CiderDocumentFrequency)
    assert scorer.document_frequency.ref_len == 10.0
    assert scorer.score() == pytest.approx(10.0)
    assert scorer.result_string() == "CIDEr = 10.000 (1 sentences)"
    # A partial match (4 of 6 words, length penalty on): the scorer agrees with the library with the same cache.
    partial = [("one two three four five six", "one two three four")]
    expected, _ = cider_d(["one two three four"], [["one two three four five six"]],
                          CiderDocumentFrequency.from_counts({}, 10.0))
    assert _scored(_build("cider", ["--cider-cached-tokens", str(path)]), partial).score() == pytest.approx(expected)
    assert 0 < expected < 10


def test_cider_missing_cache_file_fails_at_build(tmp_path):
    with pytest.raises(FileNotFoundError):
        CiderScorer(CiderScorerConfig(cider_cached_tokens=str(tmp_path / "missing.p")))


# --- command line -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["translation", "caption", "vqa_gen", "gigaword", "snli_ve", "mnli"])
@pytest.mark.parametrize("name", sorted(SCORERS))
def test_generation_parser_builds_each_scorer(name, task):
    """The scorer's flags join fairseq-generate's without clashing with fairseq's or the plugin tasks' options."""
    scorer = _build(name, task=task)
    assert type(scorer) is SCORERS[name]
    assert hasattr(scorer, "add_string")  # generate then passes strings, not token tensors
    assert isinstance(scorer.score(), float) and not math.isnan(scorer.score())


def test_cider_flags_reach_the_config(tmp_path):
    path = tmp_path / "df.p"
    with open(path, "wb") as f:
        pickle.dump({"document_frequency": {("a",): 1.0}, "ref_len": 3}, f)
    args = options.parse_args_and_arch(options.get_generation_parser(), [
        "DATA", "--task", "caption", "--scoring", "cider", "--cider-cached-tokens", str(path), "--cider-keep-case"])
    cfg = convert_namespace_to_omegaconf(args)
    assert cfg.scoring._name == "cider"
    assert cfg.scoring.cider_cached_tokens == str(path) and cfg.scoring.cider_keep_case is True
    scorer = scoring.build_scorer(cfg.scoring, Dictionary())
    assert scorer.lowercase is False and scorer.document_frequency.ref_len == 3.0
    defaults = convert_namespace_to_omegaconf(options.parse_args_and_arch(
        options.get_generation_parser(), ["DATA", "--scoring", "cider"])).scoring
    assert defaults.cider_cached_tokens is None and defaults.cider_keep_case is False


def test_default_bleu_scorer_is_untouched():
    from fairseq.scoring.bleu import Scorer as BleuScorer

    assert isinstance(_build("bleu"), BleuScorer)


def test_box_accuracy_counts_iou_at_least_one_half():
    from biomedgpt.scoring.scorers import BoxAccuracyScorer, BoxAccuracyScorerConfig, parse_bin_box

    assert parse_bin_box("<bin_1> <bin_2> <bin_30> <bin_40> <bin_9>") == [1, 2, 30, 40]
    assert parse_bin_box("<bin_1> <bin_2> red") is None
    scorer = BoxAccuracyScorer(BoxAccuracyScorerConfig())
    ref = "<bin_0> <bin_0> <bin_10> <bin_10>"
    scorer.add_string(ref, "<bin_0> <bin_0> <bin_10> <bin_10>")  # IoU 1
    scorer.add_string(ref, "<bin_0> <bin_0> <bin_10> <bin_5>")  # IoU 50/100 = 0.5 -> counts
    scorer.add_string(ref, "<bin_5> <bin_0> <bin_15> <bin_10>")  # IoU 50/150 = 1/3
    scorer.add_string(ref, "red")  # no box
    assert scorer.score() == pytest.approx(50.0)
    assert scorer.result_string() == "Acc@0.5 = 50.00 (4 regions)"
    with pytest.raises(ValueError, match="4 <bin_k>"):
        scorer.add_string("no box here", ref)
