"""The `ofa` base task: configuration shared by every BiomedGPT task, the OFA vocabulary, the BPE, TSV data
loading and the training/validation glue.

Concrete tasks (caption, vqa_gen, ...) set `dataset_class` and add their validation metric. This module
must never hard-code data paths: everything comes from `--data`, `--bpe-dir` and `--selected-cols`.
"""
import dataclasses
import inspect
import json
import logging
from argparse import Namespace
from dataclasses import dataclass, field
from typing import Optional

import torch
from omegaconf import II

from fairseq import utils
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics
from fairseq.optim.amp_optimizer import AMPOptimizer
from fairseq.tasks import FairseqTask, register_task

from ..data.bpe import build_bpe as build_text_bpe
from ..data.dictionary import build_ofa_dictionary, resolve_bpe_dir
from ..data.text import TextEncoder
from ..data.tsv import IndexedTSV, parse_selected_cols
from ..generation.predictions import PredictionsFile
from ..generation.sequence_generator import OFASequenceGenerator
from ..optim.polynomial_decay_ratio import set_train_batches_per_epoch

logger = logging.getLogger(__name__)


@dataclass
class OFAConfig(FairseqDataclass):
    data: Optional[str] = field(default=None, metadata={
        "help": "comma-separated TSV files: training files (rotated by epoch), the last one is validation"})
    selected_cols: Optional[str] = field(default=None, metadata={"help": "comma-separated TSV column indices"})
    bpe_dir: Optional[str] = field(default=None, metadata={
        "help": "folder with dict.txt and either encoder.json + vocab.bpe (GPT-2 BPE) or spm.model (SentencePiece, "
                "see biomedgpt-train-spm) (default: the GPT-2 files packaged with biomedgpt)"})
    max_source_positions: int = field(default=1024, metadata={"help": "max encoder positions"})
    max_target_positions: int = field(default=1024, metadata={"help": "max decoder positions"})
    max_src_length: int = field(default=128, metadata={"help": "max source length (BPE tokens / words)"})
    max_tgt_length: int = field(default=30, metadata={"help": "max target length (BPE tokens)"})
    code_dict_size: int = field(default=8192, metadata={"help": "number of <code_i> image-code symbols"})
    patch_image_size: int = field(default=480, metadata={"help": "image side fed to the ResNet"})
    orig_patch_image_size: int = field(default=256, metadata={
        "help": "image side the position table was trained at (used by --interpolate-position)"})
    num_bins: int = field(default=1000, metadata={"help": "number of <bin_i> location symbols"})
    imagenet_default_mean_and_std: bool = field(default=False, metadata={
        "help": "normalise images with ImageNet mean/std instead of 0.5/0.5"})
    constraint_range: Optional[str] = field(default=None, metadata={
        "help": "'start,end': restrict predicted ids to this range (plus specials)"})
    zero_shot: bool = field(default=False, metadata={
        "help": "generation: constraints applied after the softmax and no decoder prompt (zero-shot evaluation)"})
    skip_invalid_rows: bool = field(default=False, metadata={
        "help": "skip (and count in the log) data rows that cannot be used, instead of stopping with an error"})
    predictions_json: Optional[str] = field(default=None, metadata={
        "help": "fairseq-generate: also write the predictions to this JSON file in the layout of the reference's "
                "{gen_subset}_predict.json (e.g. question_id/answer for vqa_gen, image_id/caption for caption)"})
    seed: int = II("common.seed")


def parse_json_arg(value: str, name: str) -> dict:
    """`--eval-args` style JSON strings -> dict, with an error naming the flag."""
    try:
        return json.loads(value) if value else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"--{name.replace('_', '-')} is not valid JSON ({exc}): {value!r}") from None


@register_task("ofa", dataclass=OFAConfig)
class OFATask(FairseqTask):
    """Base of the BiomedGPT tasks: the OFA dictionary (source = target), the BPE and TSV loading."""

    cfg: OFAConfig
    dataset_class = None  # set by concrete tasks
    column_names = None  # names of the selected TSV columns, for error messages
    prediction_keys = ("uniq_id", "answer")  # the reference's {gen_subset}_predict.json record keys
    predictions = None  # PredictionsFile while fairseq-generate runs with --predictions-json

    def __init__(self, cfg: OFAConfig, src_dict, tgt_dict):
        super().__init__(cfg)
        self.src_dict = src_dict
        self.tgt_dict = tgt_dict
        self.configure()

    def configure(self) -> None:
        """Derive everything that depends on the task config (BPE, generation args; subclasses add answer
        sets, tries, ...). Called at construction and again when a checkpoint's settings are adopted."""
        self.bpe = self.build_bpe()
        self.text = TextEncoder(self.bpe, self.src_dict)
        self.gen_args = parse_json_arg(getattr(self.cfg, "eval_args", "{}"), "eval_args")
        if self.cfg.predictions_json:
            self.predictions = PredictionsFile(self.cfg.predictions_json)

    def adopt_checkpoint_config(self, saved) -> None:
        """Take the checkpoint's task settings for every field the command line left at its default.

        `fairseq-generate` builds the task from the command line; the reference's evaluation took the task
        settings (answer set, image size, prompt type, ...) from the checkpoint. `data` always comes from the
        command line; `--model-overrides` are already applied to `saved` by fairseq."""
        from fairseq.tasks import TASK_DATACLASS_REGISTRY

        defaults = TASK_DATACLASS_REGISTRY[self.cfg._name]()
        adopted = []
        for spec in dataclasses.fields(defaults):
            name = spec.name
            if name in ("_name", "data", "seed") or name not in saved:
                continue
            if getattr(self.cfg, name, None) == getattr(defaults, name) and saved[name] != getattr(self.cfg, name):
                setattr(self.cfg, name, saved[name])
                adopted.append(name)
        if adopted:
            logger.info(f"task settings taken from the checkpoint: {', '.join(adopted)}")
            self.configure()

    @classmethod
    def setup_task(cls, cfg: OFAConfig, **kwargs):
        dictionary = build_ofa_dictionary(cfg.bpe_dir, cfg.code_dict_size, cfg.num_bins)
        logger.info(f"OFA dictionary: {len(dictionary)} symbols (bpe dir {resolve_bpe_dir(cfg.bpe_dir)})")
        return cls(cfg, dictionary, dictionary)

    def build_model(self, cfg, from_checkpoint=False):
        """The model; one rebuilt from a checkpoint takes its ResNet weights from the checkpoint, so the file it was
        first initialised from (`--resnet-model-path`, saved in its arguments) is not read and may be gone."""
        if from_checkpoint and getattr(cfg, "resnet_model_path", None):
            logger.info(f"not reading --resnet-model-path {cfg.resnet_model_path}: the checkpoint has the trunk")
            cfg.resnet_model_path = None
        return super().build_model(cfg, from_checkpoint)

    def build_bpe(self, cfg=None):
        """The tokenizer of `--bpe-dir`: GPT-2 byte-level BPE or SentencePiece, chosen by the files (no download)."""
        return build_text_bpe(resolve_bpe_dir(self.cfg.bpe_dir))

    # ------------------------------------------------------------------ data
    def data_paths(self):
        if not self.cfg.data:
            raise ValueError(f"task {self.cfg._name}: no data given (the positional DATA argument: "
                             f"comma-separated TSV files, the last one used for validation)")
        return [p for p in str(self.cfg.data).split(",") if p]

    def split_path(self, split: str, epoch: int = 1) -> str:
        """Training rotates over all files but the last (one per epoch); any other split reads the last file."""
        paths = self.data_paths()
        if split == "train":
            train = paths[:-1] if len(paths) > 1 else paths
            return train[(epoch - 1) % len(train)]
        return paths[-1]

    def has_sharded_data(self, split: str) -> bool:
        return split == "train" and len(self.data_paths()) > 2  # reload each epoch to rotate training files

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, task_cfg=None, **kwargs):
        if task_cfg is not None and task_cfg is not self.cfg:  # fairseq-generate passes the checkpoint's
            self.adopt_checkpoint_config(task_cfg)
        if self.dataset_class is None:
            raise ValueError(f"task 'ofa' has no data of its own (asked for split {split!r}): use a concrete task "
                             f"such as caption, vqa_gen, image_classify, gigaword or mnli")
        path = self.split_path(split, epoch)
        tsv = IndexedTSV(path, parse_selected_cols(self.cfg.selected_cols), column_names=self.column_names)
        self.datasets[split] = self.dataset_class(split, tsv, self.text, self.cfg, seed=self.cfg.seed,
                                                  skip_invalid_rows=self.cfg.skip_invalid_rows)
        logger.info(f"{split}: {len(tsv)} rows from {path}")

    def get_batch_iterator(self, dataset, *args, **kwargs):
        """Stock iterator; for the training set it also tells `polynomial_decay_ratio` how many batches an epoch
        has on this rank, so `--warmup-ratio` with only `--max-epoch` works as in the reference."""
        epoch_itr = super().get_batch_iterator(dataset, *args, **kwargs)
        if dataset is self.datasets.get("train"):
            set_train_batches_per_epoch(len(epoch_itr))
        return epoch_itr

    # ------------------------------------------------------------------ training glue
    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False, **kwargs):
        """Stock step, plus `update_num` for criteria that use it (drop-worst); accepts fairseq's `ema_model=`."""
        model.train()
        model.set_num_updates(update_num)
        extra = {"update_num": update_num} if _accepts(criterion, "update_num") else {}
        with torch.autograd.profiler.record_function("forward"):
            with torch.autocast(device_type="cuda", enabled=isinstance(optimizer, AMPOptimizer)):
                loss, sample_size, logging_output = criterion(model, sample, **extra)
        if ignore_grad:
            loss *= 0
        with torch.autograd.profiler.record_function("backward"):
            optimizer.backward(loss)
        return loss, sample_size, logging_output

    def valid_step(self, sample, model, criterion, **kwargs):
        """Criterion loss, then the task's metric on `ema_model` when fairseq passes one (`--uses-ema`)."""
        loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        eval_model = kwargs.get("ema_model") or model
        eval_model.eval()
        with torch.no_grad():
            self.add_valid_metrics(sample, eval_model, logging_output)
        return loss, sample_size, logging_output

    def log_example(self, hyps, refs) -> None:
        """With `--eval-print-samples`, log the first hypothesis of a validation batch and its reference(s)."""
        if getattr(self.cfg, "eval_print_samples", False) and hyps:
            logger.info(f"example hypothesis: {hyps[0]}")
            logger.info(f"example reference: {refs[0]}")

    def add_valid_metrics(self, sample, model, logging_output) -> None:
        """Concrete tasks add their metric sums (e.g. `_score_sum`, `_score_cnt`) to `logging_output`."""

    @staticmethod
    def log_ratio(logging_outputs, name: str, numerator: str, denominator: str, scale: float = 1.0,
                  digits: int = 4) -> None:
        """Log `scale * sum(numerator) / sum(denominator)` as derived metric `name` (when any count exists)."""
        total = sum(utils.item(log.get(denominator, 0)) for log in logging_outputs)
        if total <= 0:
            return
        value = sum(utils.item(log.get(numerator, 0)) for log in logging_outputs)
        metrics.log_scalar("_" + numerator, value)
        metrics.log_scalar("_" + denominator, total)
        metrics.log_derived(name, lambda meters: round(
            scale * meters["_" + numerator].sum / meters["_" + denominator].sum, digits))

    # ------------------------------------------------------------------ generation
    answer_trie = None  # closed-answer tasks set the trie that constrains generation

    def sequence_generator(self, models, gen_args: dict, constraint_range=None):
        """The plugin generator over `models` with `--eval-args`-style options (validation-time decoding)."""
        args = Namespace(**gen_args)
        return OFASequenceGenerator(
            models, self.target_dictionary, beam_size=getattr(args, "beam", 5),
            max_len_a=getattr(args, "max_len_a", 0), max_len_b=getattr(args, "max_len_b", 200),
            min_len=getattr(args, "min_len", 1), normalize_scores=not getattr(args, "unnormalized", False),
            len_penalty=getattr(args, "lenpen", 1), unk_penalty=getattr(args, "unkpen", 0),
            temperature=getattr(args, "temperature", 1.0),
            no_repeat_ngram_size=getattr(args, "no_repeat_ngram_size", 0), constraint_trie=self.answer_trie,
            constraint_range=constraint_range or self.cfg.constraint_range)

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None, **kwargs):
        """fairseq's generator choice (beam, sampling, diverse beam, ...) on the plugin generator: BOS start,
        answer-trie / `--constraint-range` masks before the softmax, `--zero-shot` masks after it."""
        extra = {"constraint_trie": self.answer_trie, "constraint_range": self.cfg.constraint_range,
                 "zero_shot": self.cfg.zero_shot, **(extra_gen_cls_kwargs or {})}  # the task's own keys win
        return super().build_generator(models, args, seq_gen_cls=seq_gen_cls or OFASequenceGenerator,
                                       extra_gen_cls_kwargs=extra, **kwargs)

    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        """Decode with the task's decoder prompts (`sample["prefix_tokens"]`) when the batch carries them."""
        if prefix_tokens is None:
            prefix_tokens = sample.get("prefix_tokens")
        with torch.no_grad():
            hypos = generator.generate(models, sample, prefix_tokens=prefix_tokens, constraints=constraints)
        if self.predictions is not None:
            self.predictions.add((int(sample["id"][row]), self.prediction_record(sample, row, hypo[0]))
                                 for row, hypo in enumerate(hypos))
        return hypos

    def prediction_record(self, sample, row: int, hypo) -> dict:
        """The `--predictions-json` record of one row's best hypothesis: `{id key: uniq id, answer key: text}`."""
        ids = sample.get("uniq_ids")
        uniq_id = ids[row] if ids is not None else int(sample["id"][row])
        id_key, answer_key = self.prediction_keys
        return {id_key: uniq_id, answer_key: self.text.decode(hypo["tokens"])}

    def generate_text(self, model, sample, gen_args: dict):
        """Best hypothesis text per row of `sample` (after its decoder prompt, if any)."""
        generator = self.sequence_generator([model], gen_args)
        hypos = self.inference_step(generator, [model], sample)
        return [self.text.decode(h[0]["tokens"]) for h in hypos]

    # ------------------------------------------------------------------ sizes and dictionaries
    def max_positions(self):
        return self.cfg.max_source_positions, self.cfg.max_target_positions

    @property
    def source_dictionary(self):
        return self.src_dict

    @property
    def target_dictionary(self):
        return self.tgt_dict


def _accepts(fn, name: str) -> bool:
    try:
        parameters = inspect.signature(fn.forward if hasattr(fn, "forward") else fn).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind == p.VAR_KEYWORD for p in parameters.values())
