"""`vqa_gen` rows (`question_id, image, question, answers[, objects]`) -> visual question answering samples."""
import torch

from ..answers import parse_answer_confidences
from ..image import resize_transform
from ..ofa_dataset import OFADataset
from ..text import pre_question


class VqaGenDataset(OFADataset):
    """Question as the source (optionally with ` object: ...`); target the most confident answer + eos after the
    `--prompt-type` decoder prompt. With an answer trie, `constraint_mask` rows list the allowed next tokens."""

    def __init__(self, *args, trie=None, answers=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.trie = trie
        self.answers = answers
        self.transform = resize_transform(self.cfg.patch_image_size, self.cfg.imagenet_default_mean_and_std)

    def build_item(self, index, fields):
        if len(fields) < 4:
            raise self.field_error(index, len(fields),
                                   f"needs at least 4 columns (question_id, image, question, answers), "
                                        f"has {len(fields)}")
        image = self.transform(self.load_image(index, fields, 1))
        question = pre_question(self.require_text(index, fields, 2), self.cfg.max_src_length)
        question = question if question.endswith("?") else question + "?"
        try:
            ref_dict = parse_answer_confidences(fields[3])
        except ValueError as exc:
            raise self.field_error(index, 3, str(exc)) from None
        answer, conf = max(ref_dict.items(), key=lambda item: item[1])
        if self.split == "train" and self.answers is not None and answer not in self.answers:
            raise self.field_error(index, 3, f"answer {answer!r} is not in the answer set (--ans2label-*); use "
                                             f"--unconstrained-training to train on open answers")
        src_ids = self.encode(" " + question)
        if getattr(self.cfg, "add_object", False) and len(fields) > 4 and fields[4].strip():
            objects = fields[4].strip().split("&&")[: self.cfg.max_object_length]
            src_ids = torch.cat([src_ids, self.encode(" object: " + " ".join(objects))])
        src = self.with_bos_eos(src_ids)
        answer_ids = self.encode(" " + answer, length=self.cfg.max_tgt_length)
        return {"id": index, "uniq_id": fields[0], "source": src, "patch_image": image, "patch_mask": True,
                "conf": conf, "ref_dict": ref_dict, **self.answer_after_prompt(src, answer_ids, self.trie)}
