"""Task `vqa_gen`: visual question answering generated as text, validated with `vqa_score`."""
from dataclasses import dataclass, field
from typing import Optional

from fairseq.tasks import register_task

from ..data.datasets.vqa import VqaGenDataset
from .answer_set import AnswerSetTask
from .ofa_task import OFAConfig


@dataclass
class VqaGenConfig(OFAConfig):
    max_object_length: int = field(default=30, metadata={"help": "max number of objects with --add-object"})
    ans2label_dict: str = field(default='{"no": 0, "yes": 1}', metadata={"help": "answer -> label JSON"})
    ans2label_file: Optional[str] = field(default=None, metadata={"help": "answer -> label pickle or JSON file"})
    unconstrained_training: bool = field(default=False, metadata={
        "help": "train and decode without the answer set (needs --val-inference-type beamsearch)"})
    add_object: bool = field(default=False, metadata={"help": "append ' object: ...' from the objects column"})
    valid_batch_size: int = field(default=20, metadata={"help": "answers scored per pass in allcand validation"})
    prompt_type: Optional[str] = field(default=None, metadata={"help": "decoder prompt: none, src or prev_output"})
    uses_ema: bool = field(default=False, metadata={"help": "validate with the EMA weights (--store-ema)"})
    val_inference_type: str = field(default="allcand", metadata={"help": "allcand or beamsearch"})
    eval_args: str = field(default='{"beam":5,"unnormalized":true,"temperature":1.0}', metadata={
        "help": "generation args (JSON) for beamsearch validation"})


@register_task("vqa_gen", dataclass=VqaGenConfig)
class VqaGenTask(AnswerSetTask):
    metric_name = "vqa_score"
    column_names = ["question_id", "image", "question", "answers", "objects"]
    prediction_keys = ("question_id", "answer")

    def configure(self):
        cfg = self.cfg
        if cfg.unconstrained_training and cfg.val_inference_type != "beamsearch":
            raise ValueError("--unconstrained-training needs --val-inference-type beamsearch (no answer set to score)")
        if cfg.val_inference_type not in ("allcand", "beamsearch"):
            raise ValueError(f"--val-inference-type must be allcand or beamsearch, got {cfg.val_inference_type!r}")
        super().configure()

    def is_constrained(self) -> bool:
        return not self.cfg.unconstrained_training

    def dataset_class(self, *args, **kwargs):
        return VqaGenDataset(*args, trie=self.trie, answers=set(self.answers) if self.answers else None, **kwargs)
