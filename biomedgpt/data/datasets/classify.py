"""`image_classify` rows (`image, label_name`; MedMNIST) -> classification-as-generation samples."""
import torch

from ..image import mean_std, resize_transform
from ..ofa_dataset import OFADataset

PROMPT = " what does the image describe?"


def train_transform(size: int, imagenet: bool):
    """timm's training augmentation of the reference (RandAugment m9 with magnitude noise, random erasing 0.25,
    bicubic).

    One change: the increasing-posterize op is capped at magnitude 9.9. At magnitude 10, which the noise can
    reach, it keeps 0 bits, and Pillow >= 10 rejects that (the reference's Pillow accepted it)."""
    from timm.data import create_transform
    from timm.data.auto_augment import RandAugment

    mean, std = mean_std(imagenet)
    transform = create_transform(input_size=size, is_training=True, color_jitter=0.4,
                                 auto_augment="rand-m9-mstd0.5-inc1", interpolation="bicubic", re_prob=0.25,
                                 re_mode="pixel", re_count=1, mean=mean, std=std)
    for step in transform.transforms:
        if isinstance(step, RandAugment):
            for op in step.ops:
                if op.name == "PosterizeIncreasing":
                    op.magnitude_max = 9.9
    return transform


class ImageClassifyDataset(OFADataset):
    """Target: the class name (` name` + eos) after `[bos]`; `constraint_mask` from the class-name trie."""

    def __init__(self, *args, trie=None, answers=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.trie, self.answers = trie, answers
        size, imagenet = self.cfg.patch_image_size, self.cfg.imagenet_default_mean_and_std
        self.transform = train_transform(size, imagenet) if self.split == "train" else resize_transform(size, imagenet)

    def build_item(self, index, fields):
        if len(fields) < 2:
            raise self.field_error(index, len(fields), f"needs 2 columns (image, label_name), has {len(fields)}")
        image = self.transform(self.load_image(index, fields, 0))
        label = self.require_text(index, fields, 1).strip()
        if self.answers is not None and label not in self.answers:
            raise self.field_error(index, 1, f"class {label!r} is not in the class set (--ans2label-*)")
        answer_ids = self.encode(" " + label)
        src = self.with_bos_eos(self.encode(PROMPT))
        item = {"id": index, "source": src, "patch_image": image, "patch_mask": True,
                "prev_output_tokens": torch.cat([torch.tensor([self.bos]), answer_ids]),
                "target": torch.cat([answer_ids, torch.tensor([self.eos])]), "ref_dict": {label: 1.0},
                "decoder_prompt": torch.tensor([self.bos])}
        if self.trie is not None:
            item["constraint_mask"] = self.trie.constraint_mask(answer_ids, self.bos, len(self.dictionary))
        return item
