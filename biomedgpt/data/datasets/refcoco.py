"""`refcoco` rows (`uniq_id, image, text, "x0,y0,x1,y1"`) -> visual grounding samples (OFA task).

The image is resized to `P x P` (bicubic) and the box scaled with it; each coordinate becomes a location
token `<bin_k>` in resized pixels (`biomedgpt.data.locations`).
"""
import torch
from torchvision import transforms

from ..image import mean_std
from ..locations import box_to_bins
from ..ofa_dataset import OFADataset
from ..text import pre_caption

PROMPT = ' which region does the text " {} " describe?'


class RefcocoDataset(OFADataset):
    """Source: the referring expression in the grounding prompt; target: 4 `<bin_k>` tokens + eos."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        mean, std = mean_std(self.cfg.imagenet_default_mean_and_std)
        size = self.cfg.patch_image_size
        self.transform = transforms.Compose([
            transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor(), transforms.Normalize(mean=mean, std=std)])

    def build_item(self, index, fields):
        if len(fields) < 4:
            raise self.field_error(index, len(fields),
                                   f"needs 4 columns (uniq_id, image, text, region), has {len(fields)}")
        image = self.load_image(index, fields, 1)
        text = pre_caption(self.require_text(index, fields, 2), self.cfg.max_src_length)
        try:
            x0, y0, x1, y1 = (float(v) for v in fields[3].strip().split(","))
        except ValueError:
            raise self.field_error(index, 3, f"region {fields[3]!r} is not 'x0,y0,x1,y1'") from None
        width, height = image.size
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise self.field_error(index, 3, f"region {fields[3]!r} is not a box inside the {width}x{height} image")
        size, max_size, bins = self.cfg.patch_image_size, self.cfg.max_image_size, self.cfg.num_bins
        w_ratio, h_ratio = size / width, size / height
        box = [x0 * w_ratio, y0 * h_ratio, x1 * w_ratio, y1 * h_ratio]
        tgt = self.encode(box_to_bins(box, max_size, bins), use_bpe=False)
        src = self.with_bos_eos(self.encode(PROMPT.format(text)))
        return {"id": index, "uniq_id": fields[0], "source": src, "patch_image": self.transform(image),
                "patch_mask": True, "target": torch.cat([tgt, torch.tensor([self.eos])]),
                "prev_output_tokens": torch.cat([torch.tensor([self.bos]), tgt]),
                "region_coord": torch.tensor([x0, y0, x1, y1]), "resize_ratio": torch.tensor([w_ratio, h_ratio])}
