"""Task `refcoco` (OFA): visual grounding as 4 location tokens, metric `score` = Acc@0.5 (IoU >= 0.5)."""
from dataclasses import dataclass, field

import torch

from fairseq.tasks import register_task

from ..data.datasets.refcoco import RefcocoDataset
from ..data.locations import dequantize
from ..metrics.boxes import box_iou
from .ofa_task import OFAConfig, OFATask


@dataclass
class RefcocoConfig(OFAConfig):
    max_image_size: int = field(default=512, metadata={"help": "coordinate range of the location bins (pixels)"})
    eval_acc: bool = field(default=False, metadata={"help": "compute Acc@0.5 during validation"})
    eval_args: str = field(default="{}", metadata={"help": "generation args as JSON"})
    scst: bool = field(default=False, metadata={"help": "accepted for compatibility"})


class FourTokens:
    """Generation options with the length fixed to the 4 tokens of a box (`max_len_a` 0, `max_len_b` = `min_len` 4)."""

    def __init__(self, args):
        self._args = args

    def __getattr__(self, name):
        fixed = {"max_len_a": 0, "max_len_b": 4, "min_len": 4}
        return fixed[name] if name in fixed else getattr(self._args, name)


@register_task("refcoco", dataclass=RefcocoConfig)
class RefcocoTask(OFATask):
    dataset_class = RefcocoDataset
    column_names = ["uniq_id", "image", "text", "region"]

    def configure(self):
        super().configure()
        self.first_bin = len(self.tgt_dict) - self.cfg.num_bins

    def build_generator(self, models, args, *more, extra_gen_cls_kwargs=None, **kwargs):
        """`fairseq-generate` decodes exactly 4 location tokens, restricted to the bins unless `--constraint-range`
        says otherwise (the reference needed both on its command line)."""
        extra = {"constraint_range": self.cfg.constraint_range or (self.first_bin, len(self.tgt_dict)),
                 **(extra_gen_cls_kwargs or {})}
        return super().build_generator(models, FourTokens(args), *more, extra_gen_cls_kwargs=extra, **kwargs)

    def predict_boxes(self, model, sample) -> torch.Tensor:
        """Greedy/beam decoding restricted to the location tokens; boxes in original-image pixels `[B, 4]`."""
        gen_args = dict(self.gen_args, max_len_a=0, max_len_b=4, min_len=4)
        generator = self.sequence_generator([model], gen_args, constraint_range=(self.first_bin, len(self.tgt_dict)))
        hypos = self.inference_step(generator, [model], sample)
        return self.boxes(torch.stack([h[0]["tokens"][:4] for h in hypos]), sample["resize_ratios"])

    def boxes(self, tokens: torch.Tensor, resize_ratios: torch.Tensor) -> torch.Tensor:
        """`[B, 4]` location tokens -> `[B, 4]` boxes (x0, y0, x1, y1) in original-image pixels."""
        coords = dequantize(tokens.cpu() - self.first_bin, self.cfg.max_image_size, self.cfg.num_bins).float()
        return coords / resize_ratios.cpu().repeat(1, 2)

    def prediction_record(self, sample, row, hypo):
        box = self.boxes(hypo["tokens"][:4].view(1, 4), sample["resize_ratios"][row].view(1, 2))[0]
        return {"uniq_id": sample["uniq_ids"][row], "box": [round(float(v), 2) for v in box]}

    def add_valid_metrics(self, sample, model, logging_output):
        if not self.cfg.eval_acc:
            return
        iou = box_iou(self.predict_boxes(model, sample), sample["region_coords"].cpu().float())
        logging_output["_score_sum"] = float((iou >= 0.5).sum())
        logging_output["_score_cnt"] = len(iou)

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        self.log_ratio(logging_outputs, "score", "_score_sum", "_score_cnt")
