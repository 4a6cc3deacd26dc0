"""`unify_task` rows -> pretraining samples (REFERENCE §3.8): a pair of sample lists per row.

Vision-language rows (`uniq_id, image, caption, question, refs, gt_objects, dataset_name, type`) give the
image-text samples: captioning, VQA, visual grounding + grounded captioning, and in training an image-text
matching example (positive or negative, 50/50). Every 8th row (by index) also gives the extra samples: two text
infilling examples (`text.tsv`: `id, text`), one masked image infilling example predicting VQ-GAN codes
(`image.tsv`: `id, image, codes`) and one detection example (`detection.tsv`: `id, image,
"x0,y0,x1,y1,cat_id,name&&..."`), each with confidence 2.0. The collater returns `(image-text batch, extra
batch)`, or the image-text batch alone when no row of the batch had extras.

Unlike the reference (which read the files sequentially), every random choice - which extra rows, crops,
augmentation, masking, negatives - is a function of (seed, epoch, row index), so resume and `--num-workers`
give the same batches.
"""
import random
from contextlib import contextmanager
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torchvision import transforms

from ..answers import parse_answer_confidences
from ..box_transforms import (center_crop, horizontal_flip, keep_visible, large_scale_jitter,
                              object_center_crop, random_resize)
from ..collate import collate
from ..errors import DataError
from ..image import HALF_MEAN_STD, decode_image
from ..locations import box_to_bins
from ..ofa_dataset import OFADataset
from ..span_masking import mask_spans
from ..text import pre_caption, pre_question

EXTRA_EVERY = 8  # rows whose index is a multiple of this also give the extra samples
EXTRA_CONF = 2.0
EXTRA_IMAGE_SIZE = 256  # text / image infilling and detection images (the reference's fixed size)
LARGEST_RESIZE, MAX_RESIZE = 480, 672  # RandomResize(range(P, 481), max_size=672)
TEXT_TOKENS = (512, 256)  # infilling text: BPE ids capped at 512, then the last 256 kept
AUGMENT_OPS = ("AutoContrast", "Equalize", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel",
               "TranslateYRel", "Rotate")

CAPTION = " what does the image describe?"
GROUNDING = ' which region does the text " {} " describe?'
REGION_CAPTION = "  what does the region describe? region:"
ITM_CAPTION = ' does the image describe " {} "?'
ITM_ANSWER = ' what is the answer to question " {} ". is " {} "?'
TEXT_INFILLING = (' what is the complete text of "', ' "?')
IMAGE_INFILLING = " what is the image in the middle part?"
DETECTION = " what are the objects in the image?"


@contextmanager
def seeded_global_random(seed: int):
    """Seed Python's and numpy's global generators (used inside timm's RandAugment), restoring them after."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def augmentation():
    """The reference's RandomAugment(2, 7): two of the geometric/contrast ops, each applied with p 0.5."""
    from timm.data.auto_augment import AugmentOp, RandAugment

    hparams = {"img_mean": (128, 128, 128)}
    return RandAugment([AugmentOp(name, prob=0.5, magnitude=7, hparams=hparams) for name in AUGMENT_OPS],
                       num_layers=2)


class UnifyDataset(OFADataset):
    def __init__(self, *args, text_tsv=None, image_tsv=None, detection_tsv=None, negatives=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.text_tsv, self.image_tsv, self.detection_tsv = text_tsv, image_tsv, detection_tsv
        self.negatives = negatives
        self.augment = augmentation()
        self.to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize(*HALF_MEAN_STD)])
        self.first_code = len(self.dictionary) - self.cfg.code_dict_size - self.cfg.num_bins
        self.mask_id = self.dictionary.index("<mask>")

    # ------------------------------------------------------------------ rows -> samples
    def build_item(self, index, fields) -> Tuple[List[Dict], List[Dict]]:
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        with seeded_global_random(int(rng.integers(2 ** 31))):
            pairs = self.pair_samples(index, fields, rng)
            extras = self.extra_samples(index, rng) if self.split == "train" and index % EXTRA_EVERY == 0 else []
        return pairs, extras

    def collater(self, samples):
        rows = [s for s in samples if s is not None]
        pairs = [p for pair, _ in rows for p in pair]
        extras = [e for _, extra in rows for e in extra]
        v1 = collate(pairs, self.pad, self.eos)
        return (v1, collate(extras, self.pad, self.eos)) if extras else v1

    def sample(self, index, src_ids, tgt_ids, image, conf=1.0, patch_mask=True, code_mask=None) -> Dict:
        """One sample: `[bos] src [eos]`, target `tgt [eos]` after `[bos]`."""
        item = {"id": index, "source": self.with_bos_eos(src_ids), "patch_image": image, "patch_mask": patch_mask,
                "target": torch.cat([tgt_ids, torch.tensor([self.eos])]),
                "prev_output_tokens": torch.cat([torch.tensor([self.bos]), tgt_ids]), "conf": conf}
        if code_mask is not None:
            item["code_mask"] = code_mask
        return item

    def pair_samples(self, index, fields, rng) -> List[Dict]:
        if len(fields) < 8:
            raise self.field_error(index, len(fields), "needs 8 columns (uniq_id, image, caption, question, refs, "
                                                       f"gt_objects, dataset_name, type), has {len(fields)}")
        kind = fields[7].strip()
        if kind not in ("caption", "qa", "visual_grounding"):
            raise self.field_error(index, 7, f"type {kind!r} is not caption, qa or visual_grounding")
        image = self.load_image(index, fields, 1)
        size = self.cfg.patch_image_size
        if kind == "visual_grounding":
            return self.grounding_samples(index, fields, image, rng)
        image, _ = random_resize(image, np.zeros((0, 4)), size, max(size, LARGEST_RESIZE), MAX_RESIZE, rng)
        patch = self.to_tensor(self.augment(center_crop(image, size)))
        if kind == "caption":
            caption = pre_caption(self.require_text(index, fields, 2), self.cfg.max_tgt_length)
            main = self.sample(index, self.encode(CAPTION), self.encode(" " + caption), patch)
            if fields[6].strip() == "cc12m":  # the reference leaves the first two target tokens out of the loss
                main["target"][:2] = self.pad
            objects = [o.strip() for o in fields[5].split("&&")]
            positive = ITM_CAPTION.format(caption)

            def negative():
                other = self.negatives.negative_caption(caption, objects, rng)
                return None if other is None else ITM_CAPTION.format(other)
        else:
            question = pre_question(self.require_text(index, fields, 3), self.cfg.max_src_length)
            try:
                answers = parse_answer_confidences(fields[4])
            except ValueError as exc:
                raise self.field_error(index, 4, str(exc)) from None
            if not answers:
                raise self.field_error(index, 4, "no answer")
            answer, conf = max(answers.items(), key=lambda item: item[1])
            main = self.sample(index, self.encode(" " + question), self.encode(" " + answer), patch, conf=conf)
            positive = ITM_ANSWER.format(question, answer)

            def negative():
                other = self.negatives.negative_answer(answer, rng)
                return None if other is None else ITM_ANSWER.format(question, other)
        samples = [main]
        if self.split == "train":
            samples.append(self.matching_sample(index, patch, positive, negative, rng))
        return samples

    def matching_sample(self, index, patch, positive: str, negative: Callable[[], Optional[str]], rng) -> Dict:
        """Image-text matching: the positive prompt -> ` yes`, or (p 0.5) a negative one -> ` no` (positive
        when no negative exists, e.g. a single caption in the data)."""
        prompt = negative() if rng.random() >= 0.5 else None
        if prompt is None:
            return self.sample(index, self.encode(positive), self.encode(" yes"), patch)
        return self.sample(index, self.encode(prompt), self.encode(" no"), patch)

    def grounding_samples(self, index, fields, image, rng) -> List[Dict]:
        size, max_size, bins = self.cfg.patch_image_size, self.cfg.max_image_size, self.cfg.num_bins
        caption = pre_caption(self.require_text(index, fields, 2), self.cfg.max_src_length)
        try:
            box = np.array([[float(v) for v in fields[4].strip().split(",")]])
        except ValueError:
            box = np.zeros((1, 0))
        width, height = image.size
        if box.shape != (1, 4) or not (0 <= box[0, 0] < box[0, 2] <= width and 0 <= box[0, 1] < box[0, 3] <= height):
            raise self.field_error(index, 4, f"region {fields[4]!r} is not a box 'x0,y0,x1,y1' inside the "
                                             f"{width}x{height} image")
        image, box = random_resize(image, box, size, max(size, LARGEST_RESIZE), MAX_RESIZE, rng)
        image, box = object_center_crop(image, box, size)
        patch = self.to_tensor(image)
        region = self.encode(box_to_bins(box[0], max_size, bins), use_bpe=False)
        return [self.sample(index, self.encode(GROUNDING.format(caption)), region, patch),
                self.sample(index, torch.cat([self.encode(REGION_CAPTION), region]), self.encode(" " + caption), patch)]

    # ------------------------------------------------------------------ extra samples
    def extra_samples(self, index, rng) -> List[Dict]:
        extras = []
        if self.text_tsv is not None and len(self.text_tsv):
            first = int(rng.integers(len(self.text_tsv)))
            extras += [self.text_infilling(index, (first + k) % len(self.text_tsv), rng) for k in range(2)]
        if self.image_tsv is not None and len(self.image_tsv):
            extras.append(self.image_infilling(index, int(rng.integers(len(self.image_tsv)))))
        if self.detection_tsv is not None and len(self.detection_tsv):
            extras.append(self.detection(index, int(rng.integers(len(self.detection_tsv))), rng))
        return extras

    def extra_fields(self, tsv, row: int, count: int, names: str) -> List[str]:
        fields = tsv[row]
        if len(fields) < count:
            raise tsv.error(row, f"needs {count} columns ({names}), has {len(fields)}", len(fields))
        return fields

    def blank_image(self) -> torch.Tensor:
        return torch.zeros(3, EXTRA_IMAGE_SIZE, EXTRA_IMAGE_SIZE)

    def text_infilling(self, index, row, rng) -> Dict:
        fields = self.extra_fields(self.text_tsv, row, 2, "id, text")
        if not fields[1].strip():
            raise self.text_tsv.error(row, "empty text", 1)
        cfg = self.cfg
        ids = self.encode(" " + fields[1].strip().lower(), length=TEXT_TOKENS[0])[-TEXT_TOKENS[1]:]
        starts = [self.text.bpe.is_beginning_of_word(self.dictionary[i]) for i in ids.tolist()]
        masked = mask_spans(ids, starts, self.mask_id, rng, cfg.mask_ratio, cfg.poisson_lambda, cfg.mask_length,
                            cfg.replace_length, cfg.random_ratio, cfg.keep_ratio, (4, self.first_code))
        src = torch.cat([self.encode(TEXT_INFILLING[0]), masked, self.encode(TEXT_INFILLING[1])])
        return self.sample(index, src, ids, self.blank_image(), EXTRA_CONF, patch_mask=False, code_mask=False)

    def extra_image(self, tsv, row: int):
        try:
            return decode_image(tsv[row][1], tsv.path, tsv.line_number(row), tsv.column_name(1))
        except DataError as exc:
            raise tsv.error(row, exc.problem, 1) from None

    def image_infilling(self, index, row) -> Dict:
        fields = self.extra_fields(self.image_tsv, row, 3, "id, image, codes")
        side = self.cfg.code_image_size // 8
        try:
            codes = torch.tensor([int(c) for c in fields[2].split()], dtype=torch.long)
        except ValueError:
            raise self.image_tsv.error(row, "codes are not space-separated integers", 2) from None
        if codes.numel() != side * side or int(codes.min()) < 0 or int(codes.max()) >= self.cfg.code_dict_size:
            raise self.image_tsv.error(row, f"needs {side * side} codes in [0, {self.cfg.code_dict_size}) "
                                            f"(--code-image-size {self.cfg.code_image_size}), got {codes.numel()}", 2)
        image = self.extra_image(self.image_tsv, row).resize((EXTRA_IMAGE_SIZE, EXTRA_IMAGE_SIZE))
        patch = self.to_tensor(image)
        low, high = EXTRA_IMAGE_SIZE // 4, EXTRA_IMAGE_SIZE * 3 // 4
        patch[:, low:high, low:high] = 0
        return self.sample(index, self.encode(IMAGE_INFILLING), codes + self.first_code, patch, EXTRA_CONF,
                           code_mask=True)

    def detection(self, index, row, rng) -> Dict:
        fields = self.extra_fields(self.detection_tsv, row, 3, "id, image, boxes")
        boxes, names = parse_detections(fields[2], lambda problem: self.detection_tsv.error(row, problem, 2))
        image = self.extra_image(self.detection_tsv, row)
        image, boxes = horizontal_flip(image, boxes, rng)
        image, boxes = large_scale_jitter(image, boxes, EXTRA_IMAGE_SIZE, 1.0, 1.5, rng)
        boxes, names = keep_visible(boxes, names)
        pieces = []
        for box, name in zip(boxes, names):
            pieces += [self.encode(box_to_bins(box, self.cfg.max_image_size, self.cfg.num_bins), use_bpe=False),
                       self.encode(" " + name)]
        target = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)
        return self.sample(index, self.encode(DETECTION), target, self.to_tensor(image), EXTRA_CONF,
                           code_mask=False)


def parse_detections(text: str, error) -> Tuple[np.ndarray, List[str]]:
    """`"x0,y0,x1,y1,cat_id,name&&..."` -> boxes `[N, 4]` and names; `error(problem)` builds the exception."""
    boxes, names = [], []
    for item in text.strip().split("&&"):
        parts = item.split(",", 5)
        try:
            box = [float(v) for v in parts[:4]]
        except ValueError:
            box = []
        if len(parts) < 6 or len(box) != 4 or not parts[5].strip():
            raise error(f"detection {item!r} is not 'x0,y0,x1,y1,category_id,category_name'")
        boxes.append(box)
        names.append(parts[5].strip())
    return np.array(boxes, dtype=float).reshape(-1, 4), names
