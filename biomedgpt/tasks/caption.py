"""Task `caption`: image captioning, validated with CIDEr-D."""
from dataclasses import dataclass, field
from typing import Optional

from fairseq.tasks import register_task

from ..data.datasets.caption import CaptionDataset
from ..data.text import strip_punctuation
from ..metrics.text_metrics import cider_d, load_cider_document_frequency
from .ofa_task import OFAConfig, OFATask



@dataclass
class CaptionConfig(OFAConfig):
    eval_bleu: bool = field(default=False, metadata={
        "help": "compute BLEU (sacrebleu, exp smoothing) per validation batch, averaged over sentences"})
    eval_cider: bool = field(default=False, metadata={"help": "compute CIDEr-D in validation"})
    eval_args: str = field(default="{}", metadata={"help": 'generation args as JSON, e.g. \'{"beam": 5}\''})
    eval_print_samples: bool = field(default=False, metadata={"help": "log one hypothesis/reference per batch"})
    eval_cider_cached_tokens: Optional[str] = field(default=None, metadata={
        "help": "CIDEr-D document frequencies (pickle); default: computed from the validation references"})
    scst: bool = field(default=False, metadata={"help": "self-critical training targets (all references)"})
    scst_args: str = field(default="{}", metadata={"help": "generation args for SCST as JSON"})


@register_task("caption", dataclass=CaptionConfig)
class CaptionTask(OFATask):
    dataset_class = CaptionDataset
    column_names = ["uniq_id", "image", "caption"]
    prediction_keys = ("image_id", "caption")

    def prediction_record(self, sample, row, hypo):
        record = super().prediction_record(sample, row, hypo)
        record["caption"] = strip_punctuation(record["caption"])
        return record

    def configure(self):
        super().configure()
        cfg = self.cfg
        self.cider_df = (load_cider_document_frequency(cfg.eval_cider_cached_tokens)
                         if cfg.eval_cider and cfg.eval_cider_cached_tokens else None)

    def add_valid_metrics(self, sample, model, logging_output):
        if not (self.cfg.eval_cider or self.cfg.eval_bleu):
            return
        hyps = [strip_punctuation(h) for h in self.generate_text(model, sample, self.gen_args)]
        refs = [[r.strip() for r in target.split("&&")] for target in sample["target_strs"]]
        if self.cfg.eval_cider:
            _, per_sample = cider_d(hyps, refs, self.cider_df)
            logging_output["_cider_score_sum"] = float(sum(per_sample))
            logging_output["_cider_cnt"] = len(hyps)
        if self.cfg.eval_bleu:
            import sacrebleu

            most = max(len(r) for r in refs)  # sacrebleu wants equally many reference streams
            streams = [[r[i] if i < len(r) else r[0] for r in refs] for i in range(most)]
            bleu = sacrebleu.corpus_bleu(hyps, streams, smooth_method="exp")
            logging_output["_bleu_score_sum"] = bleu.score * len(hyps)
            logging_output["_bleu_cnt"] = len(hyps)
        self.log_example(hyps, refs)

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        self.log_ratio(logging_outputs, "cider", "_cider_score_sum", "_cider_cnt", digits=3)
        self.log_ratio(logging_outputs, "bleu", "_bleu_score_sum", "_bleu_cnt", digits=3)
