"""Task `mnli`: natural-language inference answered with one constrained token (BiomedGPT's MedNLI)."""
from dataclasses import dataclass, field
from typing import Optional

import torch

from fairseq.tasks import register_task

from ..data.datasets.nli import NLIDataset
from ..generation.trie import Trie
from .ofa_task import OFAConfig, OFATask, parse_json_arg


@dataclass
class MNLIConfig(OFAConfig):
    ans2label_dict: str = field(default='{"maybe": 0, "yes": 1, "no": 2}', metadata={"help": "answer -> label JSON"})
    prompt_type: Optional[str] = field(default="none", metadata={"help": "decoder prompt: none, src or prev_output"})


@register_task("mnli", dataclass=MNLIConfig)
class MNLITask(OFATask):
    column_names = ["sentence1", "sentence2", "label"]

    def __init__(self, cfg, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        self.answers = list(parse_json_arg(cfg.ans2label_dict, "ans2label_dict"))
        self.trie = Trie(tgt_dict.eos())
        for answer in self.answers:
            self.trie.insert([tgt_dict.bos()] + self.text.encode(" " + answer).tolist() + [tgt_dict.eos()])

    def dataset_class(self, *args, **kwargs):
        return NLIDataset(*args, trie=self.trie, **kwargs)

    def predict(self, model, sample):
        """Answer per row: the constrained argmax at the last non-pad decoder position."""
        logits, _ = model(**sample["net_input"])
        masks = sample.get("constraint_masks")
        if masks is not None:
            logits = logits.masked_fill(~masks, float("-inf"))
        last = sample["net_input"]["prev_output_tokens"].ne(self.tgt_dict.pad()).sum(1) - 1
        best = logits[torch.arange(logits.size(0), device=logits.device), last].argmax(-1)
        return [self.text.decode([token]) for token in best.tolist()]

    def add_valid_metrics(self, sample, model, logging_output):
        predictions = self.predict(model, sample)
        logging_output["_acc_sum"] = sum(ref.get(p, 0.0) for p, ref in zip(predictions, sample["ref_dict"]))
        logging_output["_acc_cnt"] = len(predictions)

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        self.log_ratio(logging_outputs, "acc", "_acc_sum", "_acc_cnt")
