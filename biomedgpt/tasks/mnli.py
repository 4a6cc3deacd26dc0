"""Task `mnli`: natural-language inference answered with one constrained token (BiomedGPT's MedNLI)."""
from dataclasses import dataclass, field
from typing import Optional

import torch

from fairseq.tasks import register_task

from ..data.datasets.nli import NLIDataset
from .answer_set import AnswerSetTask
from .ofa_task import OFAConfig


@dataclass
class MNLIConfig(OFAConfig):
    ans2label_dict: str = field(default='{"maybe": 0, "yes": 1, "no": 2}', metadata={"help": "answer -> label JSON"})
    prompt_type: Optional[str] = field(default="none", metadata={"help": "decoder prompt: none, src or prev_output"})


@register_task("mnli", dataclass=MNLIConfig)
class MNLITask(AnswerSetTask):
    metric_name = "acc"
    column_names = ["sentence1", "sentence2", "label"]

    def dataset_class(self, *args, **kwargs):
        return NLIDataset(*args, trie=self.trie, answers=set(self.answers), **kwargs)

    def predict(self, model, sample):
        """Answer per row: the constrained argmax at the last non-pad decoder position (one forward pass)."""
        logits, _ = model(**sample["net_input"])
        masks = sample.get("constraint_masks")
        if masks is not None:
            logits = logits.masked_fill(~masks, float("-inf"))
        last = sample["net_input"]["prev_output_tokens"].ne(self.tgt_dict.pad()).sum(1) - 1
        best = logits[torch.arange(logits.size(0), device=logits.device), last].argmax(-1)
        return [self.text.decode([token]) for token in best.tolist()]
