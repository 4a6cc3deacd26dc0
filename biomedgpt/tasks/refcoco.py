"""Task `refcoco` (OFA): visual grounding as 4 location tokens, metric `score` = Acc@0.5 (IoU >= 0.5)."""
from dataclasses import dataclass, field

import torch

from fairseq.tasks import register_task

from ..data.datasets.refcoco import RefcocoDataset, dequantize
from .ofa_task import OFAConfig, OFATask


@dataclass
class RefcocoConfig(OFAConfig):
    max_image_size: int = field(default=512, metadata={"help": "coordinate range of the location bins (pixels)"})
    eval_acc: bool = field(default=False, metadata={"help": "compute Acc@0.5 during validation"})
    eval_args: str = field(default="{}", metadata={"help": "generation args as JSON"})
    scst: bool = field(default=False, metadata={"help": "accepted for compatibility"})


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of matching rows of two `[N, 4]` (x0, y0, x1, y1) box tensors."""
    low = torch.max(a[:, :2], b[:, :2])
    high = torch.min(a[:, 2:], b[:, 2:])
    inter = (high - low).clamp(min=0).prod(1)
    area = lambda box: (box[:, 2:] - box[:, :2]).clamp(min=0).prod(1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


@register_task("refcoco", dataclass=RefcocoConfig)
class RefcocoTask(OFATask):
    dataset_class = RefcocoDataset
    column_names = ["uniq_id", "image", "text", "region"]

    def configure(self):
        super().configure()
        self.first_bin = len(self.tgt_dict) - self.cfg.num_bins

    def predict_boxes(self, model, sample) -> torch.Tensor:
        """Greedy/beam decoding restricted to the location tokens; boxes in original-image pixels `[B, 4]`."""
        gen_args = dict(self.gen_args, max_len_a=0, max_len_b=4, min_len=4)
        generator = self.sequence_generator([model], gen_args, constraint_range=(self.first_bin, len(self.tgt_dict)))
        hypos = self.inference_step(generator, [model], sample)
        tokens = torch.stack([h[0]["tokens"][:4] for h in hypos]).cpu()
        coords = dequantize(tokens - self.first_bin, self.cfg.max_image_size, self.cfg.num_bins).float()
        ratios = sample["resize_ratios"].cpu()
        return coords / ratios.repeat(1, 2)

    def add_valid_metrics(self, sample, model, logging_output):
        if not self.cfg.eval_acc:
            return
        iou = box_iou(self.predict_boxes(model, sample), sample["region_coords"].cpu().float())
        logging_output["_score_sum"] = float((iou >= 0.5).sum())
        logging_output["_score_cnt"] = len(iou)

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        self.log_ratio(logging_outputs, "score", "_score_sum", "_score_cnt")
