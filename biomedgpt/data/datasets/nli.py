"""`mnli` rows (`sentence1, sentence2, label`; BiomedGPT's MedNLI) -> entailment samples answered yes/no/maybe."""
import torch

from ..ofa_dataset import OFADataset

PROMPT = ' can text1 " {} " imply text2 " {} "?'
LABEL_WORDS = {"0": "maybe", "1": "yes", "2": "no", "neutral": "maybe", "entailment": "yes", "contradiction": "no"}


class NLIDataset(OFADataset):
    """Premise/hypothesis in the NLI prompt. The decoder reads the `--prompt-type` prompt and predicts one
    answer token (` yes`, ` no`, ` maybe`) at its last position; every other target position is pad."""

    def __init__(self, *args, trie=None, answers=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.trie, self.answers = trie, answers

    def build_item(self, index, fields):
        if len(fields) < 3:
            raise self.field_error(index, len(fields),
                                   f"needs 3 columns (sentence1, sentence2, label), has {len(fields)}")
        words = self.cfg.max_src_length
        first = " ".join(self.require_text(index, fields, 0).lower().split()[:words])
        second = " ".join(self.require_text(index, fields, 1).lower().split()[:words])
        label = self.require_text(index, fields, 2).strip()
        answer = LABEL_WORDS.get(label.lower(), label.lower())
        if self.answers is not None and answer not in self.answers:
            raise self.field_error(index, 2, f"label {label!r} (answer {answer!r}) is not one of "
                                             f"{sorted(self.answers)}")
        answer_ids = self.encode(" " + answer)
        if len(answer_ids) != 1:
            raise self.field_error(index, 2, f"label {label!r} (answer {answer!r}) is not a single token")
        src = self.with_bos_eos(self.encode(PROMPT.format(first, second)))
        prev = self.decoder_prompt(src)
        target = torch.cat([prev[1:], answer_ids])
        target[:-1] = self.pad
        item = {"id": index, "source": src, "prev_output_tokens": prev, "target": target,
                "ref_dict": {answer: 1.0}, "decoder_prompt": prev}
        if self.trie is not None:
            mask = torch.zeros(len(target), len(self.dictionary), dtype=torch.bool)
            mask[-1, self.trie.next_tokens([self.bos])] = True
            item["constraint_mask"] = mask
        return item
