"""`snli_ve` rows (`uniq_id, image, hypothesis, caption, label`) -> visual entailment samples (OFA task)."""
from ..image import resize_transform
from ..ofa_dataset import OFADataset
from ..text import pre_caption

LABEL_WORDS = {"contradiction": "no", "entailment": "yes", "neutral": "maybe"}


class SnliVeDataset(OFADataset):
    """Does the image entail the hypothesis? Answered yes / no / maybe after the `--prompt-type` prompt."""

    def __init__(self, *args, trie=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.trie = trie
        self.transform = resize_transform(self.cfg.patch_image_size, self.cfg.imagenet_default_mean_and_std)

    def build_item(self, index, fields):
        if len(fields) < 5:
            raise self.field_error(index, len(fields), f"needs 5 columns (uniq_id, image, hypothesis, caption, label), "
                                        f"has {len(fields)}")
        image = self.transform(self.load_image(index, fields, 1))
        hypothesis = pre_caption(self.require_text(index, fields, 2), self.cfg.max_src_length)
        label = fields[4].strip().lower()
        if label not in LABEL_WORDS and label not in LABEL_WORDS.values():
            raise self.field_error(index, 4, f"label {label!r} is not contradiction, entailment or neutral")
        answer = LABEL_WORDS.get(label, label)
        if getattr(self.cfg, "add_caption", False):
            caption = pre_caption(fields[3], self.cfg.max_src_length)
            prompt_text = f' can image and text1 " {caption} " imply text2 " {hypothesis} "?'
        else:
            prompt_text = f' does the image describe " {hypothesis} "?'
        src = self.with_bos_eos(self.encode(prompt_text))
        answer_ids = self.encode(" " + answer)
        return {"id": index, "uniq_id": fields[0], "source": src, "patch_image": image, "patch_mask": True,
                "ref_dict": {answer: 1.0}, **self.answer_after_prompt(src, answer_ids, self.trie)}
