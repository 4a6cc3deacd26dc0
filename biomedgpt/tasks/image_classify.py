"""Task `image_classify`: image classification by generating the class name (MedMNIST), metric `score`."""
from dataclasses import dataclass, field
from typing import Optional

from fairseq.tasks import register_task

from ..data.datasets.classify import ImageClassifyDataset
from .answer_set import AnswerSetTask
from .ofa_task import OFAConfig


@dataclass
class ImageClassifyConfig(OFAConfig):
    ans2label_dict: str = field(default='{"no": 0, "yes": 1}', metadata={"help": "class name -> label JSON"})
    ans2label_file: Optional[str] = field(default=None, metadata={"help": "class name -> label pickle or JSON"})
    valid_batch_size: int = field(default=20, metadata={"help": "classes scored per pass in validation"})
    uses_ema: bool = field(default=False, metadata={"help": "validate with the EMA weights (--store-ema)"})


@register_task("image_classify", dataclass=ImageClassifyConfig)
class ImageClassifyTask(AnswerSetTask):
    metric_name = "score"
    column_names = ["image", "label_name"]

    def dataset_class(self, *args, **kwargs):
        return ImageClassifyDataset(*args, trie=self.trie, answers=set(self.answers), **kwargs)
