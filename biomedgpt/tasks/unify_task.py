"""Task `unify_task`: BiomedGPT/OFA pretraining on vision-language, text, image-code and detection TSVs.

    fairseq-train vision_language.tsv --user-dir ... --task unify_task --selected-cols 0,1,2,3,4,5,6,7 \
        --text-data text.tsv --image-data image.tsv --detection-data detection.tsv --disable-validation ...

Training only: there is no validation split (use `--disable-validation`). Each training step gets a pair of
batches (image-text, extra); see `biomedgpt.data.datasets.unify`.
"""
import logging
from dataclasses import dataclass, field
from typing import Optional

from fairseq.tasks import register_task

from ..data.datasets.unify import UnifyDataset
from ..data.errors import DataError
from ..data.negatives import NegativeSamples
from ..data.tsv import IndexedTSV, parse_selected_cols
from .ofa_task import OFAConfig, OFATask

logger = logging.getLogger(__name__)


@dataclass
class UnifyConfig(OFAConfig):
    max_image_size: int = field(default=512, metadata={"help": "coordinate range of the location bins (pixels)"})
    text_data: Optional[str] = field(default=None, metadata={"help": "text TSV for text infilling (id, text)"})
    image_data: Optional[str] = field(default=None, metadata={
        "help": "image TSV for masked image infilling (id, base64 256x256 image, VQ-GAN codes of its centre; "
                "biomedgpt-image-codes --with-image writes it)"})
    detection_data: Optional[str] = field(default=None, metadata={
        "help": "detection TSV (id, base64 image, 'x0,y0,x1,y1,category_id,category_name&&...')"})
    text_selected_cols: Optional[str] = field(default=None, metadata={"help": "columns of --text-data"})
    image_selected_cols: Optional[str] = field(default=None, metadata={"help": "columns of --image-data"})
    detection_selected_cols: Optional[str] = field(default=None, metadata={"help": "columns of --detection-data"})
    neg_sample_dir: Optional[str] = field(default=None, metadata={
        "help": "folder with type2ans.json / object.txt / all_captions.txt for image-text matching negatives "
                "(optional: whatever is missing is derived from the training data)"})
    code_image_size: int = field(default=128, metadata={"help": "side of the image the VQ-GAN codes describe"})
    pretrain_seed: int = field(default=7, metadata={"help": "accepted for compatibility (sampling uses --seed)"})
    mask_ratio: float = field(default=0.3, metadata={"help": "fraction of words masked in text infilling"})
    random_ratio: float = field(default=0.0, metadata={"help": "fraction of masked spans replaced by random tokens"})
    keep_ratio: float = field(default=0.0, metadata={"help": "fraction of masked spans left unchanged"})
    mask_length: str = field(default="span-poisson", metadata={"help": "span-poisson or word"})
    poisson_lambda: float = field(default=3.0, metadata={"help": "mean span length (words) for span-poisson"})
    replace_length: int = field(default=1, metadata={
        "help": "symbols replacing a masked span: 1 one, -1 one per token, 0 none (deleted)"})


def _readable_rows(tsv):
    """The rows of `tsv` that decode and have the selected columns; a bad row raises (or is skipped with
    --skip-invalid-rows) when the dataset reads it, not while the negatives are derived."""
    for index in range(len(tsv)):
        try:
            yield tsv[index]
        except DataError:
            continue


@register_task("unify_task", dataclass=UnifyConfig)
class UnifyTask(OFATask):
    column_names = ["uniq_id", "image", "caption", "question", "refs", "gt_objects", "dataset_name", "type"]
    negatives = None

    def split_path(self, split: str, epoch: int = 1) -> str:
        """Every file of DATA is training data, one per epoch in turn (there is no validation file)."""
        if split != "train":
            raise ValueError(f"unify_task has no {split!r} data (pretraining trains only): add --disable-validation")
        paths = self.data_paths()
        return paths[(epoch - 1) % len(paths)]

    def has_sharded_data(self, split: str) -> bool:
        return split == "train" and len(self.data_paths()) > 1

    def extra_tsv(self, path: Optional[str], cols: Optional[str], names):
        return IndexedTSV(path, parse_selected_cols(cols), column_names=names) if path else None

    def dataset_class(self, split, tsv, *args, **kwargs):
        cfg = self.cfg
        if self.negatives is None:
            self.negatives = NegativeSamples.load(cfg.neg_sample_dir, _readable_rows(tsv))
        extras = {
            "text_tsv": self.extra_tsv(cfg.text_data, cfg.text_selected_cols, ["id", "text"]),
            "image_tsv": self.extra_tsv(cfg.image_data, cfg.image_selected_cols, ["id", "image", "codes"]),
            "detection_tsv": self.extra_tsv(cfg.detection_data, cfg.detection_selected_cols,
                                            ["id", "image", "boxes"]),
        }
        for name, extra in extras.items():
            if extra is not None:
                logger.info(f"{name[:-4]} data: {len(extra)} rows from {extra.path}")
        return UnifyDataset(split, tsv, *args, negatives=self.negatives, **extras, **kwargs)
