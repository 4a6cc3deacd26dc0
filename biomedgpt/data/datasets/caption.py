"""`caption` rows (`uniq_id, image, caption`) -> image captioning samples."""
import torch

from ..image import resize_transform
from ..ofa_dataset import OFADataset
from ..text import strip_punctuation

PROMPT = " what does the image describe?"


class CaptionDataset(OFADataset):
    """Training targets: the caption without punctuation, first `max_tgt_length` words. Other splits keep every
    `&&`-separated reference (punctuation removed) in `target_str` for CIDEr."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.transform = resize_transform(self.cfg.patch_image_size, self.cfg.imagenet_default_mean_and_std)

    def build_item(self, index, fields):
        if len(fields) < 3:
            raise self.field_error(index, len(fields), f"needs 3 columns (uniq_id, image, caption), has {len(fields)}")
        uniq_id = fields[0]
        image = self.transform(self.load_image(index, fields, 1))
        caption = self.require_text(index, fields, 2)
        if self.split == "train":
            words = strip_punctuation(caption).split()
            target_text = " ".join(words[: self.cfg.max_tgt_length])
        else:
            references = [strip_punctuation(ref) for ref in " ".join(caption.split()).split("&&")]
            target_text = "&&".join(references)
        src = self.with_bos_eos(self.encode(PROMPT))
        tgt = self.encode(" " + target_text)
        return {"id": index, "uniq_id": uniq_id, "source": src, "patch_image": image, "patch_mask": True,
                "target": torch.cat([tgt, torch.tensor([self.eos])]),
                "prev_output_tokens": torch.cat([torch.tensor([self.bos]), tgt]), "target_str": target_text}
