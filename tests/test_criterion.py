"""The `adjust_label_smoothed_cross_entropy` criterion (REFERENCE.md §2.1) against hand-computed numbers.

A fake model returns fixed logits (a parameter) for the rows named in `net_input["src_tokens"]`, plus an offset that
grows with the row's position in the batch, so the two halves of an R-Drop batch give different predictions. Every
expected value is computed here token by token with plain torch ops, not with the criterion's helpers.
"""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fairseq.data import Dictionary
from fairseq.logging import metrics

import biomedgpt.criterions  # noqa: F401  (registers the criterion)
from biomedgpt.criterions.adjust_label_smoothed_cross_entropy import (
    AdjustLabelSmoothedCrossEntropyCriterion as Criterion,
    duplicate_batch,
)

PAD, EOS = 1, 2
V = 10


def make_task():
    d = Dictionary()  # <s>=0 <pad>=1 </s>=2 <unk>=3
    for sym in "abcdef":
        d.add_symbol(sym)
    assert len(d) == V and d.pad() == PAD and d.eos() == EOS
    return SimpleNamespace(target_dictionary=d, source_dictionary=d)


class FakeModel(torch.nn.Module):
    def __init__(self, logits, noise=0.0):
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone())
        self.noise = noise
        self.pattern = torch.randn(logits.shape[1:], generator=torch.Generator().manual_seed(7))
        self.calls = []
        self.last_output = None

    def forward(self, src_tokens, **kwargs):
        self.calls.append(kwargs)
        position = torch.arange(src_tokens.size(0), dtype=torch.float).view(-1, 1, 1)
        out = self.logits[src_tokens] + self.noise * position * self.pattern
        self.last_output = out
        return out, {"attn": None}

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        logits = net_output[0].float()
        return F.log_softmax(logits, -1) if log_probs else F.softmax(logits, -1)


def make_criterion(**kwargs):
    kwargs.setdefault("sentence_avg", False)
    kwargs.setdefault("label_smoothing", 0.1)
    return Criterion(make_task(), **kwargs)


LOGITS = torch.randn(2, 4, V, generator=torch.Generator().manual_seed(0))
TARGET = torch.tensor([[5, 6, 7, EOS], [8, 9, EOS, PAD]])


def make_sample(target=TARGET, conf=None, masks=None, **extra):
    return {
        "id": np.arange(target.size(0)) + 100,
        "net_input": {"src_tokens": torch.arange(target.size(0))},
        "target": target,
        "ntokens": int(target.ne(PAD).sum()),
        "nsentences": target.size(0),
        "conf": conf,
        "constraint_masks": masks,
        **extra,
    }


def expected(logits, target, eps, allowed=None, conf=None, prefix=0):
    """Per-token (loss, nll) lists, written out token by token; `allowed` is a [B, T, V] bool mask or None."""
    losses, nlls = [], []
    for b in range(target.size(0)):
        for t in range(prefix, target.size(1)):
            if target[b, t] == PAD:
                continue
            ok = allowed[b, t] if allowed is not None else torch.ones(V, dtype=torch.bool)
            row = logits[b, t][ok]
            lp_allowed = row - torch.logsumexp(row, 0)
            weight = 1.0 if conf is None else float(conf[b])
            lp_allowed = lp_allowed * weight
            ids = ok.nonzero().flatten().tolist()
            nll = -float(lp_allowed[ids.index(int(target[b, t]))])
            smooth = -float(lp_allowed.sum())
            n_allowed = len(ids)
            eps_i = eps / (n_allowed - 1 + (1e-6 if allowed is not None else 0.0))
            losses.append((1 - eps - eps_i) * nll + eps_i * smooth)
            nlls.append(nll)
    return losses, nlls


def test_plain_label_smoothing():
    model = FakeModel(LOGITS)
    loss, sample_size, log = make_criterion()(model, make_sample())
    losses, nlls = expected(LOGITS, TARGET, 0.1)
    assert loss.item() == pytest.approx(sum(losses), rel=1e-5)
    assert log["nll_loss"].item() == pytest.approx(sum(nlls), rel=1e-5)
    assert sample_size == 7 and log["sample_size"] == 7
    assert log["ntokens"] == 7 and log["nsentences"] == 2
    assert "n_correct" not in log


def test_sentence_avg_sample_size_is_the_number_of_rows():
    _, sample_size, log = make_criterion(sentence_avg=True)(FakeModel(LOGITS), make_sample())
    assert sample_size == 2 and log["sample_size"] == 2


def test_constraint_masks_restrict_softmax_and_smoothing_without_touching_the_model_output():
    masks = torch.rand(2, 4, V, generator=torch.Generator().manual_seed(3)) > 0.4
    masks.scatter_(-1, TARGET[..., None], True)  # the target is always allowed
    model = FakeModel(LOGITS)
    loss, _, log = make_criterion()(model, make_sample(masks=masks))
    losses, nlls = expected(LOGITS, TARGET, 0.1, allowed=masks)
    assert loss.item() == pytest.approx(sum(losses), rel=1e-5)
    assert log["nll_loss"].item() == pytest.approx(sum(nlls), rel=1e-5)
    assert torch.isfinite(model.last_output).all()  # masked out of place
    assert torch.equal(model.last_output, LOGITS)


def test_constraint_range_allows_specials_and_the_range():
    allowed_ids = [0, 1, 2, 3, 6, 7, 8]
    allowed = torch.zeros(2, 4, V, dtype=torch.bool)
    allowed[..., allowed_ids] = True
    target = torch.tensor([[6, 7, 8, EOS], [8, 6, EOS, PAD]])
    model = FakeModel(LOGITS)
    loss, _, log = make_criterion(constraint_range="6,9")(model, make_sample(target))
    losses, nlls = expected(LOGITS, target, 0.1, allowed=allowed)
    assert loss.item() == pytest.approx(sum(losses), rel=1e-5)
    assert log["nll_loss"].item() == pytest.approx(sum(nlls), rel=1e-5)
    assert torch.equal(model.last_output, LOGITS)


def test_conf_multiplies_the_log_probabilities():
    conf = torch.tensor([0.5, 2.0])
    loss, _, log = make_criterion()(FakeModel(LOGITS), make_sample(conf=conf))
    losses, nlls = expected(LOGITS, TARGET, 0.1, conf=conf)
    assert loss.item() == pytest.approx(sum(losses), rel=1e-5)
    assert log["nll_loss"].item() == pytest.approx(sum(nlls), rel=1e-5)


def test_ignore_prefix_size_skips_the_first_positions():
    loss, sample_size, log = make_criterion(ignore_prefix_size=1)(FakeModel(LOGITS), make_sample())
    losses, nlls = expected(LOGITS, TARGET, 0.1, prefix=1)
    assert loss.item() == pytest.approx(sum(losses), rel=1e-5)
    assert log["nll_loss"].item() == pytest.approx(sum(nlls), rel=1e-5)
    assert sample_size == 5 and log["ntokens"] == 7  # logged ntokens is the batch's own count


def test_ignore_eos_skips_eos_targets():
    loss, sample_size, _ = make_criterion(ignore_eos=True)(FakeModel(LOGITS), make_sample())
    no_eos = TARGET.masked_fill(TARGET.eq(EOS), PAD)
    losses, _ = expected(LOGITS, no_eos, 0.1)
    assert loss.item() == pytest.approx(sum(losses), rel=1e-5) and sample_size == 5


def test_drop_worst_keeps_the_smallest_token_losses_only_after_drop_worst_after():
    criterion = make_criterion(drop_worst_ratio=0.3, drop_worst_after=5)
    losses, nlls = expected(LOGITS, TARGET, 0.1)
    loss, sample_size, _ = criterion(FakeModel(LOGITS), make_sample(), update_num=5)
    assert sample_size == 7 and loss.item() == pytest.approx(sum(losses), rel=1e-5)

    loss, sample_size, log = criterion(FakeModel(LOGITS), make_sample(), update_num=6)
    k = int(7 * (1 - 0.3))
    order = sorted(range(7), key=lambda i: losses[i])[:k]
    assert sample_size == k == 4
    assert loss.item() == pytest.approx(sum(losses[i] for i in order), rel=1e-5)
    assert log["nll_loss"].item() == pytest.approx(sum(nlls[i] for i in order), rel=1e-5)


def rdrop_halves(model, target):
    """Log-probs [N, V] of the scored tokens of each R-Drop half, from the fake model's formula."""
    b = target.size(0)
    position = torch.arange(2 * b, dtype=torch.float).view(-1, 1, 1)
    logits = torch.cat([LOGITS, LOGITS]) + model.noise * position * model.pattern
    keep = target.ne(PAD)
    return logits[:b], logits[b:], F.log_softmax(logits[:b], -1)[keep], F.log_softmax(logits[b:], -1)[keep]


def test_rdrop_adds_the_symmetric_kl_between_the_two_halves():
    model = FakeModel(LOGITS, noise=0.5)
    criterion = make_criterion(label_smoothing=0.0, use_rdrop=True, reg_alpha=0.7)
    sample = make_sample()
    loss, sample_size, log = criterion(model, sample)
    first, second, p, q = rdrop_halves(model, TARGET)
    kl = (F.kl_div(p, q.exp(), reduction="sum") + F.kl_div(q, p.exp(), reduction="sum")) / 2
    assert kl.item() > 1e-2
    nll = sum(expected(first, TARGET, 0.0)[1]) + sum(expected(second, TARGET, 0.0)[1])
    assert log["nll_loss"].item() == pytest.approx(nll, rel=1e-5)
    assert loss.item() == pytest.approx(nll + 0.7 * kl.item(), rel=1e-5)
    assert sample_size == 14 and log["ntokens"] == 14 and log["nsentences"] == 4
    assert sample["ntokens"] == 7 and sample["id"].tolist() == [100, 101]  # the caller's batch is untouched


def test_rdrop_with_drop_worst_selects_on_the_first_half_and_mirrors():
    model = FakeModel(LOGITS, noise=0.5)
    criterion = make_criterion(use_rdrop=True, reg_alpha=0.5, drop_worst_ratio=0.5, drop_worst_after=0)
    loss, sample_size, _ = criterion(model, make_sample(), update_num=1)
    first, second, p, q = rdrop_halves(model, TARGET)
    l1, _ = expected(first, TARGET, 0.1)
    l2, _ = expected(second, TARGET, 0.1)
    kept = sorted(range(7), key=lambda i: l1[i])[:3]
    p, q = p[kept], q[kept]
    kl = (F.kl_div(p, q.exp(), reduction="sum") + F.kl_div(q, p.exp(), reduction="sum")) / 2
    assert sample_size == 6
    assert loss.item() == pytest.approx(sum(l1[i] + l2[i] for i in kept) + 0.5 * kl.item(), rel=1e-5)


def test_rdrop_accepts_none_values_and_masked_vocabularies():
    model = FakeModel(LOGITS, noise=0.5)
    criterion = make_criterion(use_rdrop=True)
    loss, _, _ = criterion(model, make_sample(conf=None, masks=None))
    assert torch.isfinite(loss)
    masks = torch.ones(2, 4, V, dtype=torch.bool)
    masks[..., 4] = False  # masked in both halves: no nan from 0 * log 0
    loss, _, _ = criterion(model, make_sample(masks=masks, conf=torch.tensor([1.0, 0.5])))
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(model.logits.grad).all()


def test_duplicate_batch_tiles_rows_and_keeps_settings():
    sample = make_sample(target_strs=["x", "y"], ref_dict=np.array([{"a": 1}, {"b": 1}], dtype=object))
    sample["net_input"]["sample_patch_num"] = 196
    doubled = duplicate_batch(sample)
    assert doubled["id"].tolist() == [100, 101, 100, 101]  # tiled like the tensors (quirk 11 fixed)
    assert doubled["net_input"]["src_tokens"].tolist() == [0, 1, 0, 1]
    assert torch.equal(doubled["target"], torch.cat([TARGET, TARGET]))
    assert doubled["target_strs"] == ["x", "y", "x", "y"]
    assert [list(d) for d in doubled["ref_dict"]] == [["a"], ["b"], ["a"], ["b"]]
    assert doubled["ntokens"] == 14 and doubled["nsentences"] == 4
    assert doubled["net_input"]["sample_patch_num"] == 196
    assert doubled["conf"] is None and doubled["constraint_masks"] is None
    assert sample["ntokens"] == 7 and len(sample["target_strs"]) == 2


@pytest.mark.parametrize("container", [list, tuple])
def test_batch_pairs_sum_size_normalised_losses(container):
    model = FakeModel(LOGITS)
    target_v2 = torch.tensor([[4, 5, EOS, PAD], [6, EOS, PAD, PAD]])
    v1, v2 = make_sample(), make_sample(target_v2)
    criterion = make_criterion(sample_patch_num=7, report_accuracy=True)
    loss, sample_size, log = criterion(model, container([v1, v2]))
    l1, n1 = expected(LOGITS, TARGET, 0.1)
    l2, n2 = expected(LOGITS, target_v2, 0.1)
    assert sample_size == 1 and log["sample_size"] == 1
    assert loss.item() == pytest.approx(sum(l1) / 7 + sum(l2) / 5, rel=1e-5)
    assert log["nll_loss"].item() == pytest.approx(sum(n1) / 7 + sum(n2) / 5, rel=1e-5)
    assert log["loss_v1"].item() == pytest.approx(sum(l1), rel=1e-5)
    assert log["loss_v2"].item() == pytest.approx(sum(l2), rel=1e-5)
    assert (log["sample_size_v1"], log["sample_size_v2"]) == (7, 5)
    assert (log["ntokens"], log["nsentences"], log["total"]) == (12, 4, 12)
    assert model.calls == [{"sample_patch_num": 7}, {}]  # only the image-text batch subsamples patches
    assert "sample_patch_num" not in v1["net_input"]  # ... without modifying the caller's batch

    model.calls.clear()
    make_criterion(sample_patch_num=0)(model, container([v1, v2]))
    assert model.calls == [{}, {}]


def test_report_accuracy_counts_argmax_hits_over_scored_tokens():
    best = torch.tensor([[4, 5, 6, 7], [8, 9, 4, 5]])
    logits = (0.1 * LOGITS).scatter(-1, best[..., None], 5.0)
    target = best.clone()
    target[0, 1], target[1, 0], target[1, 3] = 9, 4, PAD  # two misses, one pad
    _, _, log = make_criterion(report_accuracy=True)(FakeModel(logits), make_sample(target))
    assert (log["n_correct"], log["total"]) == (5, 7)
    _, _, log = make_criterion(report_accuracy=True, ignore_prefix_size=1)(FakeModel(logits), make_sample(target))
    assert (log["n_correct"], log["total"]) == (4, 5)  # drops a hit (0, 0) and a miss (1, 0)


def test_reduce_metrics_reports_nats_and_e_based_perplexity():
    logs = [
        {"loss": torch.tensor(6.0), "nll_loss": torch.tensor(4.0), "ntokens": 5, "nsentences": 2, "sample_size": 5,
         "n_correct": 3, "total": 5},
        {"loss": torch.tensor(3.0), "nll_loss": torch.tensor(2.0), "ntokens": 3, "nsentences": 1, "sample_size": 3,
         "n_correct": 1, "total": 3},
    ]
    with metrics.aggregate() as agg:
        Criterion.reduce_metrics(logs)
    values = agg.get_smoothed_values()
    assert values["loss"] == pytest.approx(9.0 / 8, abs=1e-3)
    assert values["nll_loss"] == pytest.approx(6.0 / 8, abs=1e-3)
    assert values["ppl"] == pytest.approx(math.exp(0.75), abs=1e-2)  # e^nll, not 2^nll
    assert (values["ntokens"], values["nsentences"], values["sample_size"]) == (8, 3, 8)
    assert values["accuracy"] == pytest.approx(50.0)
    assert "loss_v1" not in values


def test_reduce_metrics_of_batch_pairs():
    logs = [{"loss": torch.tensor(2.0), "loss_v1": torch.tensor(8.0), "loss_v2": torch.tensor(3.0),
             "nll_loss": torch.tensor(1.5), "ntokens": 12, "nsentences": 4, "sample_size": 1,
             "sample_size_v1": 4, "sample_size_v2": 2}]
    with metrics.aggregate() as agg:
        Criterion.reduce_metrics(logs)
    values = agg.get_smoothed_values()
    assert values["loss"] == pytest.approx(2.0) and values["nll_loss"] == pytest.approx(1.5)
    assert values["loss_v1"] == pytest.approx(2.0) and values["loss_v2"] == pytest.approx(1.5)
    assert (values["sample_size_v1"], values["sample_size_v2"]) == (4, 2)
    assert Criterion.logging_outputs_can_be_summed()


def test_constraint_range_flag_is_shared_by_task_and_criterion():
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        "DATA", "--task", "ofa", "--arch", "ofa_tiny", "--criterion", "adjust_label_smoothed_cross_entropy",
        "--constraint-range", "58457,59457", "--label-smoothing", "0.1", "--use-rdrop"])
    cfg = convert_namespace_to_omegaconf(args)
    assert cfg.task.constraint_range == cfg.criterion.constraint_range == "58457,59457"
    assert cfg.criterion.use_rdrop and cfg.criterion.label_smoothing == 0.1
    assert cfg.criterion.sample_patch_num == 196 and cfg.criterion.sentence_avg is False
    assert sum("--constraint-range" in a.option_strings for a in parser._actions) == 1
