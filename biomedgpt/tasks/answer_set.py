"""Shared pieces of the closed-answer tasks (vqa_gen, image_classify, snli_ve): the answer set, its trie,
all-candidate or beam-search validation and the `vqa_score`-style metric."""

from ..data.answers import load_ans2label
from ..generation.allcand import CandidateGenerator, CandidateScorer
from ..generation.trie import Trie
from .ofa_task import OFATask


class AnswerSetTask(OFATask):
    """Base for tasks answered from `--ans2label-dict` / `--ans2label-file`; subclasses set `metric_name`."""

    metric_name = "score"

    def configure(self):
        super().configure()
        cfg, tgt_dict = self.cfg, self.tgt_dict
        self.uses_ema = getattr(cfg, "uses_ema", False)
        self.answers, self.trie, self.scorer, self.answer_trie = None, None, None, None
        if self.is_constrained():
            self.answers = list(load_ans2label(cfg.ans2label_dict, getattr(cfg, "ans2label_file", None)))
            self.trie = Trie(tgt_dict.eos())
            for answer in self.answers:
                self.trie.insert([tgt_dict.bos()] + self.text.encode(" " + answer).tolist() + [tgt_dict.eos()])
            self.scorer = CandidateScorer(self.answers, self.text, self.trie, getattr(cfg, "valid_batch_size", 20))
            self.answer_trie = self.trie

    def is_constrained(self) -> bool:
        """Whether answers come from a closed set (`--ans2label-*`)."""
        return True

    def predict(self, model, sample):
        """Answer strings per row: all-candidate scoring, or beam search when `--val-inference-type beamsearch`."""
        if self.uses_all_candidates():
            return self.scorer.predict(model, sample)
        return self.beam_answers(model, sample)

    def beam_answers(self, model, sample):
        """Beam search after each row's decoder prompt, restricted to the answer trie (before the softmax)."""
        return self.generate_text(model, sample, self.gen_args)

    def uses_all_candidates(self) -> bool:
        return self.scorer is not None and getattr(self.cfg, "val_inference_type", "allcand") == "allcand"

    def build_generator(self, models, args, *more, **kwargs):
        """`fairseq-generate` scores every answer (as the reference's evaluation) unless the task is set to
        `--val-inference-type beamsearch`; then the trie-constrained beam search of the plugin generator."""
        if self.uses_all_candidates():
            return CandidateGenerator(self.scorer, nbest=getattr(args, "nbest", 1))
        return super().build_generator(models, args, *more, **kwargs)

    def add_valid_metrics(self, sample, model, logging_output):
        predictions = self.predict(model, sample)
        logging_output["_score_sum"] = sum(ref.get(p, 0.0) for p, ref in zip(predictions, sample["ref_dict"]))
        logging_output["_score_cnt"] = len(predictions)

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        self.log_ratio(logging_outputs, self.metric_name, "_score_sum", "_score_cnt")
