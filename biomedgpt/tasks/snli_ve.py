"""Task `snli_ve` (OFA): visual entailment answered yes / no / maybe, metric `snli_score`."""
from dataclasses import dataclass, field
from typing import Optional

from fairseq.tasks import register_task

from ..data.datasets.snli_ve import SnliVeDataset
from .answer_set import AnswerSetTask
from .ofa_task import OFAConfig


@dataclass
class SnliVeConfig(OFAConfig):
    ans2label_dict: str = field(default='{"no": 0, "yes": 1, "maybe": 2}', metadata={"help": "answer -> label JSON"})
    add_caption: bool = field(default=False, metadata={"help": "put the premise caption into the prompt"})
    valid_batch_size: int = field(default=20, metadata={"help": "answers scored per pass in validation"})
    prompt_type: Optional[str] = field(default="none", metadata={"help": "decoder prompt: none, src or prev_output"})
    uses_ema: bool = field(default=False, metadata={"help": "validate with the EMA weights (--store-ema)"})


@register_task("snli_ve", dataclass=SnliVeConfig)
class SnliVeTask(AnswerSetTask):
    metric_name = "snli_score"
    column_names = ["uniq_id", "image", "hypothesis", "caption", "label"]

    def dataset_class(self, *args, **kwargs):
        return SnliVeDataset(*args, trie=self.trie, **kwargs)
