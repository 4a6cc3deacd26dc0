"""The plugin generator: BOS start, trie and id-range constraints before the softmax, decoder prompts,
beam 1 = greedy, and agreement with all-candidate scoring."""
from argparse import Namespace

import pytest
import torch

from biomedgpt.generation.sequence_generator import OFASequenceGenerator
from conftest import build

SMALL = ["--encoder-layers=1", "--decoder-layers=1", "--encoder-embed-dim=64", "--decoder-embed-dim=64",
         "--encoder-ffn-embed-dim=128", "--decoder-ffn-embed-dim=128", "--encoder-attention-heads=2",
         "--decoder-attention-heads=2", "--patch-image-size=32"]
ANSWERS = '{"red": 0, "green": 1, "light blue": 2, "dark green leaf": 3}'


@pytest.fixture(scope="module")
def vqa():
    torch.manual_seed(0)
    model, task, _ = build("ofa_tiny", SMALL + ["--task=vqa_gen", "--ans2label-dict", ANSWERS,
                                                 "--prompt-type", "prev_output"])
    return model.eval(), task


def batch(task, questions=("what colour?", "is it green or red?"), prompt=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = task.text
    src = [torch.cat([torch.tensor([text.bos]), text.encode(" " + q), torch.tensor([text.eos])]) for q in questions]
    from fairseq.data import data_utils

    src_tokens = data_utils.collate_tokens(src, text.pad)
    sample = {"net_input": {"src_tokens": src_tokens, "src_lengths": src_tokens.ne(text.pad).sum(1),
                            "patch_images": torch.randn(len(src), 3, 32, 32, generator=g),
                            "patch_masks": torch.ones(len(src), dtype=torch.bool)}}
    if prompt:  # prev_output prompt: bos + question
        prompts = [s[:-1] for s in src]
        sample["decoder_prompts"] = [p.tolist() for p in prompts]
        sample["prefix_tokens"] = data_utils.collate_tokens(prompts, text.pad)[:, 1:]
    return sample


def generator(task, model, **kwargs):
    args = dict(beam=4, max_len_b=10, unnormalized=True)
    args.update(kwargs)
    return task.build_generator([model], Namespace(**{**vars(default_generation_args()), **args}))


def default_generation_args():
    from fairseq import options

    parser = options.get_generation_parser()
    return options.parse_args_and_arch(parser, input_args=["x", "--task", "vqa_gen", "--path", "x.pt"])


def test_trie_constrained_generation_only_emits_listed_answers(vqa):
    model, task = vqa
    gen = generator(task, model, nbest=4)
    hypos = task.inference_step(gen, [model], batch(task))
    answers = set(task.answers)
    for row in hypos:
        assert len(row) == 4
        for hypo in row:
            assert int(hypo["tokens"][-1]) == task.tgt_dict.eos()
            assert task.text.decode(hypo["tokens"]) in answers


def test_constraint_range_only_emits_tokens_in_range(vqa):
    model, task = vqa
    task.answer_trie, trie = None, task.answer_trie
    try:
        gen = OFASequenceGenerator([model], task.tgt_dict, beam_size=3, max_len_b=6, min_len=3,
                                   constraint_range="58457,59457")
        hypos = gen.generate([model], batch(task, prompt=False))
    finally:
        task.answer_trie = trie
    for row in hypos:
        for hypo in row:
            body = hypo["tokens"][:-1] if int(hypo["tokens"][-1]) == task.tgt_dict.eos() else hypo["tokens"]
            assert len(body) >= 2 and all(58457 <= int(t) < 59457 for t in body), hypo["tokens"]


def test_beam_one_equals_greedy_incremental_decoding(vqa):
    model, task = vqa
    sample = batch(task, prompt=False)
    gen = OFASequenceGenerator([model], task.tgt_dict, beam_size=1, max_len_b=6, min_len=1)
    hypos = gen.generate([model], sample)
    d = task.tgt_dict
    with torch.no_grad():
        encoder_out = model.encoder(**sample["net_input"])
        for row in range(2):
            enc = model.encoder.reorder_encoder_out(encoder_out, torch.tensor([row]))
            tokens, state = torch.tensor([[d.bos()]]), {}
            for step in range(7):
                logits, _ = model.decoder(tokens, encoder_out=enc, incremental_state=state)
                lprobs = torch.log_softmax(logits[0, -1].float(), -1)
                lprobs[d.pad()] = float("-inf")
                if step < 1:
                    lprobs[d.eos()] = float("-inf")
                if step == 6:
                    lprobs[:] = float("-inf")
                    lprobs[d.eos()] = 0
                nxt = int(lprobs.argmax())
                tokens = torch.cat([tokens, torch.tensor([[nxt]])], dim=1)
                if nxt == d.eos():
                    break
            assert hypos[row][0]["tokens"].tolist() == tokens[0, 1:].tolist()


def test_all_candidate_scoring_agrees_with_exhaustive_constrained_beam(vqa):
    """With a beam as wide as the answer set, unnormalised scores and the same trie masks, beam search finds
    the answer that all-candidate scoring ranks first, with the same log-probability."""
    model, task = vqa
    for seed in range(3):
        sample = batch(task, seed=seed)
        scores = task.scorer.scores(model, sample)
        gen = generator(task, model, beam=len(task.answers), nbest=1)
        hypos = task.inference_step(gen, [model], sample)
        for row in range(2):
            best = int(scores[row].argmax())
            assert task.text.decode(hypos[row][0]["tokens"]) == task.answers[best]
            # the prompt is stripped from the hypothesis: its positional scores are the answer + eos log-probs
            assert float(hypos[row][0]["positional_scores"].sum()) == pytest.approx(float(scores[row, best]), abs=1e-4)


def test_generate_uses_the_models_it_is_given(vqa):
    model, task = vqa
    import copy

    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    sample = batch(task, prompt=False)
    gen = OFASequenceGenerator([model], task.tgt_dict, beam_size=2, max_len_b=5)
    mine = [h[0]["tokens"].tolist() for h in gen.generate([model], sample)]
    theirs = [h[0]["tokens"].tolist() for h in gen.generate([other], sample)]
    fresh = [h[0]["tokens"].tolist() for h in OFASequenceGenerator(
        [other], task.tgt_dict, beam_size=2, max_len_b=5).generate([other], sample)]
    assert theirs == fresh and theirs != mine  # decoded with `other`, not with the model it was built with
    assert mine == [h[0]["tokens"].tolist() for h in OFASequenceGenerator(
        [model], task.tgt_dict, beam_size=2, max_len_b=5).generate([model], sample)]


def test_zero_shot_masks_after_the_softmax(vqa):
    """Zero-shot: the same answers are allowed, but probabilities are not renormalised over them."""
    model, task = vqa
    sample = batch(task, prompt=False)
    args = dict(beam_size=2, max_len_b=8, normalize_scores=False)
    normal = OFASequenceGenerator([model], task.tgt_dict, constraint_trie=task.answer_trie, **args)
    zero = OFASequenceGenerator([model], task.tgt_dict, constraint_trie=task.answer_trie, zero_shot=True, **args)
    for row_normal, row_zero in zip(normal.generate([model], sample), zero.generate([model], sample)):
        assert task.text.decode(row_zero[0]["tokens"]) in task.answers
        assert float(row_zero[0]["score"]) < float(row_normal[0]["score"])
