"""The `ofa` base task: configuration shared by every BiomedGPT task, the OFA vocabulary and the BPE.

It builds the dictionary (`{bpe_dir}/dict.txt` + `<mask>` + image codes + location bins) and the
model; the concrete tasks (caption, vqa_gen, ...) add datasets on top. It must never hard-code data paths.
"""
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from fairseq.data.encoders.gpt2_bpe import GPT2BPE, GPT2BPEConfig
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task

from ..data.dictionary import build_ofa_dictionary, resolve_bpe_dir

logger = logging.getLogger(__name__)


@dataclass
class OFAConfig(FairseqDataclass):
    data: Optional[str] = field(default=None, metadata={
        "help": "comma-separated TSV files: training files (rotated by epoch), the last one is validation"})
    selected_cols: Optional[str] = field(default=None, metadata={"help": "comma-separated TSV column indices"})
    bpe_dir: Optional[str] = field(default=None, metadata={
        "help": "folder with dict.txt, encoder.json and vocab.bpe (default: the GPT-2 files packaged with biomedgpt)"})
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


@register_task("ofa", dataclass=OFAConfig)
class OFATask(FairseqTask):
    """Base of the BiomedGPT tasks: holds the OFA dictionary (source = target) and the GPT-2 BPE."""

    cfg: OFAConfig

    def __init__(self, cfg: OFAConfig, src_dict, tgt_dict):
        super().__init__(cfg)
        self.src_dict = src_dict
        self.tgt_dict = tgt_dict
        self.bpe = None

    @classmethod
    def setup_task(cls, cfg: OFAConfig, **kwargs):
        dictionary = build_ofa_dictionary(cfg.bpe_dir, cfg.code_dict_size, cfg.num_bins)
        logger.info(f"OFA dictionary: {len(dictionary)} symbols (bpe dir {resolve_bpe_dir(cfg.bpe_dir)})")
        return cls(cfg, dictionary, dictionary)

    def build_model(self, cfg, from_checkpoint: bool = False):
        model = super().build_model(cfg, from_checkpoint)
        self.bpe = self.build_bpe(cfg)
        return model

    def build_bpe(self, cfg=None):
        """The GPT-2 byte-level BPE from `--bpe-dir` (no download)."""
        bpe_dir = resolve_bpe_dir(self.cfg.bpe_dir)
        paths = {name: os.path.join(bpe_dir, name) for name in ("encoder.json", "vocab.bpe")}
        missing = [p for p in paths.values() if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"--bpe-dir {bpe_dir}: missing {', '.join(missing)}")
        return GPT2BPE(GPT2BPEConfig(gpt2_encoder_json=paths["encoder.json"], gpt2_vocab_bpe=paths["vocab.bpe"]))

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs):
        raise ValueError(f"task 'ofa' has no data of its own (asked for split {split!r}): use a concrete task "
                         f"such as caption, vqa_gen, image_classify, gigaword or mnli")

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False, **kwargs):
        """Stock training step; accepts the `ema_model=` keyword fairseq passes when `--store-ema` is on."""
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def valid_step(self, sample, model, criterion, **kwargs):
        return super().valid_step(sample, model, criterion)

    def max_positions(self):
        return self.cfg.max_source_positions, self.cfg.max_target_positions

    @property
    def source_dictionary(self):
        return self.src_dict

    @property
    def target_dictionary(self):
        return self.tgt_dict
