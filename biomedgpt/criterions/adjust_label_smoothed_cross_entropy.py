"""`adjust_label_smoothed_cross_entropy`: OFA's label-smoothed cross-entropy (REFERENCE.md §2.1).

On top of stock fairseq's `label_smoothed_cross_entropy` it supports
- per-sample confidence weights (`sample["conf"]`, [B] floats or None) multiplying the log-probabilities;
- constrained vocabularies: per-position masks (`sample["constraint_masks"]`, [B, T, V] bool or None) and/or a
  global `--constraint-range start,end` (ids 0-3 and [start, end) allowed); the smoothing mass goes to allowed ids only;
- `--ignore-prefix-size` and `--ignore-eos`;
- drop-worst: after `--drop-worst-after` updates only the `1 - --drop-worst-ratio` share of target tokens with the
  smallest loss is kept (per token, not per sentence: quirk 7, kept);
- R-Drop (`--use-rdrop`): the batch is duplicated, run through the model once, and `reg_alpha` times the symmetric KL
  between the two halves' predictions is added;
- pretraining batches given as a pair (image-text batch, second batch) whose size-normalised losses are summed.

Deliberate deviations from the reference (REFERENCE.md §10):
- quirk 4: `--report-accuracy` works (the reference crashes); accuracy = argmax == target over the scored tokens.
- quirk 6: `ppl` is e^nll, consistent with `loss` / `nll_loss` being logged in nats (the reference logs 2^nll).
- quirks 11 and 14: R-Drop tiles every per-row value (numpy `id` arrays included, so ids stay aligned) and keeps
  None and other objects instead of raising (see `duplicate_batch`).
- logits are masked out of place (BiomedGPT masks the model output in place), the caller's batch is never modified,
  and the R-Drop KL gives 0 (not nan) for vocabulary entries masked to -inf in both halves.
"""
import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from fairseq import utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics
from omegaconf import II

NUM_SPECIAL_IDS = 4  # <s> <pad> </s> <unk>: always allowed under --constraint-range
COUNT_KEYS = ("ntokens", "nsentences")  # the only integers of a batch that R-Drop doubles


@dataclass
class AdjustLabelSmoothedCrossEntropyCriterionConfig(FairseqDataclass):
    label_smoothing: float = field(default=0.0, metadata={"help": "epsilon for label smoothing, 0 means none"})
    report_accuracy: bool = field(default=False, metadata={"help": "report token accuracy"})
    ignore_prefix_size: int = field(default=0, metadata={"help": "ignore the first N target positions"})
    ignore_eos: bool = field(default=False, metadata={"help": "ignore the eos target positions"})
    sentence_avg: bool = II("optimization.sentence_avg")
    drop_worst_ratio: float = field(default=0.0, metadata={
        "help": "share of target tokens with the largest loss left out of the loss"})
    drop_worst_after: int = field(default=0, metadata={"help": "apply --drop-worst-ratio after this many updates"})
    use_rdrop: bool = field(default=False, metadata={"help": "R-Drop: add the symmetric KL of two dropout passes"})
    reg_alpha: float = field(default=1.0, metadata={"help": "weight of the R-Drop KL term"})
    sample_patch_num: int = field(default=196, metadata={
        "help": "image patches sampled for the image-text half of a pretraining batch pair (0: all)"})
    constraint_range: Optional[str] = field(default=None, metadata={
        "help": "'start,end': restrict predicted ids to this range (plus specials)"})


def duplicate_batch(sample):
    """The doubled batch R-Drop runs: every per-row value repeated as [row_1..row_B, row_1..row_B] (a new dict).

    - tensors: tiled along dim 0 (`x.repeat(2, 1, ...)`); a 0-dim tensor is doubled under `ntokens` / `nsentences`
      and otherwise kept.
    - numpy arrays (`id`, object arrays such as `ref_dict`): tiled too. The reference repeated them element-wise
      ([a, a, b, b]), which misaligns `id` with the tiled tensors (quirk 11).
    - lists / tuples (per-row Python values such as `target_strs`, `decoder_prompts`): tiled (`x + x`).
    - dicts (`net_input`): duplicated key by key.
    - integers under `ntokens` / `nsentences`: doubled. Other integers (e.g. `net_input["sample_patch_num"]`) are
      settings, not counts, and are kept (the reference doubled every int).
    - None and any other object (strings, floats, bools): kept. The reference raised NotImplementedError on them,
      e.g. on image_classify's `conf=None` or unconstrained VQA's `constraint_masks=None` (quirk 14).
    """
    return _duplicate(None, sample)


def _duplicate(key, value):
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            return value * 2 if key in COUNT_KEYS else value
        return value.repeat(2, *([1] * (value.dim() - 1)))
    if isinstance(value, np.ndarray):
        return np.concatenate([value, value]) if value.ndim > 0 else value
    if isinstance(value, dict):
        return {k: _duplicate(k, v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return value + value
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and key in COUNT_KEYS:
        return value * 2
    return value


def symmetric_kl(p, q):
    """`(KL(q || p) + KL(p || q)) / 2` summed over all entries, for log-probabilities `p`, `q` of the same shape.

    Equal to the reference's `(kl_div(p, q.exp(), "sum") + kl_div(q, p.exp(), "sum")) / 2`, except that entries that
    are -inf in both (masked vocabulary) contribute 0 instead of nan, with finite gradients.
    """
    both_masked = torch.isneginf(p) & torch.isneginf(q)
    p, q = p.masked_fill(both_masked, 0.0), q.masked_fill(both_masked, 0.0)
    p_prob, q_prob = p.exp().masked_fill(both_masked, 0.0), q.exp().masked_fill(both_masked, 0.0)
    return ((q_prob * (q - p)).sum() + (p_prob * (p - q)).sum()) / 2


@register_criterion("adjust_label_smoothed_cross_entropy", dataclass=AdjustLabelSmoothedCrossEntropyCriterionConfig)
class AdjustLabelSmoothedCrossEntropyCriterion(FairseqCriterion):
    def __init__(self, task, sentence_avg, label_smoothing, ignore_prefix_size=0, ignore_eos=False,
                 report_accuracy=False, drop_worst_ratio=0.0, drop_worst_after=0, use_rdrop=False,
                 reg_alpha=1.0, sample_patch_num=196, constraint_range=None):
        super().__init__(task)
        self.padding_idx = task.target_dictionary.pad()
        self.eos_idx = task.target_dictionary.eos()
        self.sentence_avg = sentence_avg
        self.eps = label_smoothing
        self.ignore_prefix_size = ignore_prefix_size
        self.ignore_eos = ignore_eos
        self.report_accuracy = report_accuracy
        self.drop_worst_ratio = drop_worst_ratio
        self.drop_worst_after = drop_worst_after
        self.use_rdrop = use_rdrop
        self.reg_alpha = reg_alpha
        self.sample_patch_num = sample_patch_num
        self.constraint_range = None
        if constraint_range is not None:
            start, end = (int(x) for x in constraint_range.split(","))
            self.constraint_range = (start, end)

    def _range_mask(self, vocab_size, device):
        """[V] bool: the ids `--constraint-range` allows (0-3 and [start, end))."""
        start, end = self.constraint_range
        allowed = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        allowed[:NUM_SPECIAL_IDS] = True
        allowed[start:end] = True
        return allowed

    def forward(self, model, sample, update_num=0, reduce=True):
        """Returns `(loss, sample_size, logging_output)`; `sample` is a batch dict or a (v1, v2) list / tuple."""
        if isinstance(sample, (list, tuple)):
            return self._forward_pair(model, sample, update_num, reduce)
        if self.use_rdrop:
            if not reduce:
                raise ValueError("--use-rdrop needs reduce=True (the KL term is a batch total)")
            sample = duplicate_batch(sample)
        net_output = model(**sample["net_input"])
        loss, nll_loss, ntokens, n_correct, total = self.compute_loss(model, net_output, sample, update_num, reduce)
        sample_size = sample["target"].size(0) if self.sentence_avg else ntokens
        logging_output = {
            "loss": loss.data,
            "nll_loss": nll_loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["nsentences"],
            "sample_size": sample_size,
        }
        if self.report_accuracy:
            logging_output["n_correct"] = n_correct
            logging_output["total"] = total
        return loss, sample_size, logging_output

    def _forward_pair(self, model, sample, update_num, reduce):
        """Pretraining (`unify_task`): an image-text batch and a second batch, each normalised by its own size."""
        if len(sample) != 2:
            raise ValueError(f"expected a pair of batches, got {len(sample)}")
        if not reduce:
            raise ValueError("a pair of batches needs reduce=True (each loss is normalised by its own size)")
        v1, v2 = sample
        if self.sample_patch_num > 0:  # image patches are subsampled in the image-text batch only (copy, not in place)
            v1 = dict(v1, net_input=dict(v1["net_input"], sample_patch_num=self.sample_patch_num))
        loss_v1, ss_v1, log_v1 = self.forward(model, v1, update_num, reduce)
        loss_v2, ss_v2, log_v2 = self.forward(model, v2, update_num, reduce)
        # max(., 1): a batch without any scored token adds 0 instead of 0/0 = nan (the reference divides by ss as is)
        d1, d2 = max(ss_v1, 1), max(ss_v2, 1)
        loss = loss_v1 / d1 + loss_v2 / d2
        logging_output = {
            "loss": loss.data,
            "loss_v1": log_v1["loss"],
            "loss_v2": log_v2["loss"],
            "nll_loss": log_v1["nll_loss"] / d1 + log_v2["nll_loss"] / d2,
            "ntokens": log_v1["ntokens"] + log_v2["ntokens"],
            "nsentences": log_v1["nsentences"] + log_v2["nsentences"],
            "sample_size": 1,
            "sample_size_v1": ss_v1,
            "sample_size_v2": ss_v2,
        }
        if self.report_accuracy:
            logging_output["n_correct"] = log_v1["n_correct"] + log_v2["n_correct"]
            logging_output["total"] = log_v1["total"] + log_v2["total"]
        return loss, 1, logging_output

    def get_lprobs_and_target(self, model, net_output, sample):
        """Scored positions only: log-probs [N, V] (constrained, times `conf`), targets [N], allowed-id masks [N, V]
        (None without constraint masks). Pads, the ignored prefix and (with --ignore-eos) eos positions are removed."""
        logits = net_output[0]
        masks = sample.get("constraint_masks")
        allowed = self._range_mask(logits.size(-1), logits.device) if self.constraint_range is not None else None
        if masks is not None:  # with both constraints, only ids allowed by both count as allowed
            masks = masks.bool() if allowed is None else masks.bool() & allowed
        disallowed = ~masks if masks is not None else (~allowed if allowed is not None else None)
        if disallowed is not None:
            logits = logits.masked_fill(disallowed, -math.inf)  # out of place: the model output is left intact
        lprobs = model.get_normalized_probs((logits, *net_output[1:]), log_probs=True)
        conf = sample.get("conf")
        if conf is not None:
            lprobs = lprobs * conf[:, None, None]
        target = sample["target"]
        if self.ignore_prefix_size > 0:
            lprobs, target = lprobs[:, self.ignore_prefix_size:], target[:, self.ignore_prefix_size:]
            masks = masks[:, self.ignore_prefix_size:] if masks is not None else None
        keep = target.ne(self.padding_idx)
        if self.ignore_eos:  # every eos position is dropped (the reference assumed exactly one per row)
            keep &= target.ne(self.eos_idx)
        return lprobs[keep], target[keep], (masks[keep] if masks is not None else None)

    def compute_loss(self, model, net_output, sample, update_num=0, reduce=True):
        """Returns `(loss, nll_loss, ntokens kept, n_correct, total)`; the last two are None without accuracy."""
        lprobs, target, masks = self.get_lprobs_and_target(model, net_output, sample)
        nll = -lprobs.gather(-1, target[:, None]).squeeze(-1)
        if masks is not None:
            smooth = -lprobs.masked_fill(~masks, 0.0).sum(-1)
            eps_i = self.eps / (masks.sum(-1) - 1 + 1e-6)
        elif self.constraint_range is not None:
            allowed = self._range_mask(lprobs.size(-1), lprobs.device)
            smooth = -lprobs[:, allowed].sum(-1)
            eps_i = self.eps / (int(allowed.sum()) - 1 + 1e-6)
        else:
            smooth = -lprobs.sum(-1)
            eps_i = self.eps / (lprobs.size(-1) - 1)
        loss = (1.0 - self.eps - eps_i) * nll + eps_i * smooth

        n_correct = total = None
        if self.report_accuracy:  # over every scored token, before drop-worst (which would flatter the accuracy)
            n_correct = utils.item(lprobs.argmax(-1).eq(target).sum())
            total = target.numel()

        if self.drop_worst_ratio > 0 and update_num > self.drop_worst_after:
            rows = loss.size(0) // 2 if self.use_rdrop else loss.size(0)  # R-Drop: choose on the first copy
            kept = torch.topk(loss[:rows].detach(), k=int(rows * (1 - self.drop_worst_ratio)), largest=False).indices
            if self.use_rdrop:
                kept = torch.cat([kept, kept + rows])  # ... and keep the same tokens of the second copy
            loss, nll, lprobs = loss[kept], nll[kept], lprobs[kept]
        ntokens = loss.numel()
        if reduce:
            loss, nll = loss.sum(), nll.sum()

        if self.use_rdrop:
            half = lprobs.size(0) // 2
            p, q = lprobs[:half], lprobs[half:]
            if self.constraint_range is not None:
                allowed = self._range_mask(lprobs.size(-1), lprobs.device)
                p, q = p[:, allowed], q[:, allowed]  # no renormalisation, like the reference
            loss = loss + self.reg_alpha * symmetric_kl(p, q)
        return loss, nll, ntokens, n_correct, total

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        """Aggregate logging outputs (of all workers). Losses are in nats (no division by ln 2, as the reference)."""
        def total(key):
            return utils.item(sum(log.get(key, 0) for log in logging_outputs))

        sample_size = total("sample_size")
        ntokens = total("ntokens")
        metrics.log_scalar("loss", total("loss") / max(sample_size, 1), sample_size, round=3)
        metrics.log_scalar("nll_loss", total("nll_loss") / max(sample_size, 1), ntokens, round=3)
        # quirk 6 fixed: nll_loss is in nats, so the perplexity is e^nll (the reference used fairseq's base 2).
        metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg, base=math.e))
        metrics.log_scalar("ntokens", ntokens, 1, round=3)
        metrics.log_scalar("nsentences", total("nsentences"), 1, round=3)
        metrics.log_scalar("sample_size", sample_size, 1, round=3)
        for part in ("v1", "v2"):  # pretraining batch pairs only
            if any(f"sample_size_{part}" in log for log in logging_outputs):
                part_size = total(f"sample_size_{part}")
                metrics.log_scalar(f"loss_{part}", total(f"loss_{part}") / max(part_size, 1), max(part_size, 1),
                                   round=3)
                metrics.log_scalar(f"sample_size_{part}", part_size, 1, round=3)

        n_total = total("total")
        if n_total > 0:
            metrics.log_scalar("total", n_total)
            metrics.log_scalar("n_correct", total("n_correct"))
            metrics.log_derived(
                "accuracy",
                lambda meters: round(meters["n_correct"].sum * 100.0 / meters["total"].sum, 3)
                if meters["total"].sum > 0 else float("nan"),
            )

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
