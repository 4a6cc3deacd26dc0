"""Task `gigaword`: text summarisation (BiomedGPT uses it for MeQSum), validated with ROUGE."""
from dataclasses import dataclass, field

from fairseq.tasks import register_task

from ..data.datasets.summary import SummaryDataset
from ..metrics.text_metrics import gigaword_hypothesis, rouge_scores
from .ofa_task import OFAConfig, OFATask

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


@dataclass
class GigawordConfig(OFAConfig):
    eval_rouge: bool = field(default=False, metadata={"help": "compute ROUGE during validation"})
    eval_args: str = field(default="{}", metadata={"help": 'generation args as JSON, e.g. \'{"beam": 5}\''})
    eval_detok: str = field(default="space", metadata={"help": "accepted for compatibility (text is BPE-decoded)"})
    eval_detok_args: str = field(default="{}", metadata={"help": "accepted for compatibility"})
    eval_print_samples: bool = field(default=False, metadata={"help": "log one hypothesis/reference per batch"})
    noise_ratio: float = field(default=0.0, metadata={"help": "probability of replacing a teacher-forcing token"})


@register_task("gigaword", dataclass=GigawordConfig)
class GigawordTask(OFATask):
    dataset_class = SummaryDataset
    column_names = ["source", "target"]

    def prediction_record(self, sample, row, hypo):
        return {"hyp": gigaword_hypothesis(self.text.decode(hypo["tokens"])), "ref": sample["target_strs"][row]}

    def add_valid_metrics(self, sample, model, logging_output):
        if not self.cfg.eval_rouge:
            return
        hyps = [gigaword_hypothesis(h) for h in self.generate_text(model, sample, self.gen_args)]
        refs = list(sample["target_strs"])
        scores = rouge_scores(hyps, refs)
        for key in ROUGE_KEYS:
            for kind in ("recall", "f1"):
                logging_output[f"_{key}_{kind}_sum"] = sum(scores[f"{key}_{kind}"])
        logging_output["_rouge_cnt"] = len(hyps)
        self.log_example(hyps, refs)

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        for key in ROUGE_KEYS:
            for kind in ("recall", "f1"):
                self.log_ratio(logging_outputs, f"{key}_{kind}", f"_{key}_{kind}_sum", "_rouge_cnt")
