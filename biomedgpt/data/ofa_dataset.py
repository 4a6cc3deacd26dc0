"""Base class of the task datasets: indexed TSV rows -> OFA samples, per-epoch shuffling, collate.

Subclasses implement `build_item(index, fields)` returning a sample dict (see `collate.collate`).
Rows are read by index, so fairseq's batching, sharding, workers and resume work unchanged. A bad row
raises `DataError` naming file, line and column; with `skip_invalid_rows` it is logged, counted and left
out of its batch instead.
"""
import logging
from typing import Dict, List, Optional

import numpy as np
import torch

from fairseq.data import FairseqDataset

from .collate import collate
from .errors import DataError
from .image import decode_image
from .text import TextEncoder
from .tsv import IndexedTSV

logger = logging.getLogger(__name__)


class OFADataset(FairseqDataset):
    """Rows of `tsv` as samples.

    Args:
        split: subset name; only "train" is shuffled.
        tsv: the rows (columns already selected and ordered as the subclass expects).
        text: BPE + dictionary encoder.
        cfg: the task config (lengths, image size, ...).
        seed: base of the per-epoch shuffle.
        skip_invalid_rows: skip (and count) rows that raise DataError instead of failing.
    """

    def __init__(self, split: str, tsv: IndexedTSV, text: TextEncoder, cfg, seed: int = 1,
                 skip_invalid_rows: bool = False):
        super().__init__()
        self.split, self.tsv, self.text, self.cfg = split, tsv, text, cfg
        self.dictionary = text.dictionary
        self.bos, self.eos, self.pad = text.bos, text.eos, text.pad
        self.seed = seed
        self.epoch = 1
        self.skip_invalid_rows = skip_invalid_rows
        self.skipped_indices = set()

    # ------------------------------------------------------------------ fairseq dataset protocol
    def __len__(self) -> int:
        return len(self.tsv)

    def num_tokens(self, index: int) -> int:
        return 1  # batches are formed by --batch-size, as in the reference (rows are not read to size them)

    def size(self, index: int) -> int:
        return 1

    def batch_by_size(self, indices, max_tokens=None, max_sentences=None, required_batch_size_multiple=1):
        """Consecutive chunks of `--batch-size` rows (the reference's batching; `--max-tokens` is not used)."""
        if not max_sentences:
            raise ValueError("OFA tasks batch by rows: give --batch-size (and --batch-size-valid if needed); "
                             "--max-tokens alone is not supported")
        return [indices[i: i + max_sentences] for i in range(0, len(indices), max_sentences)]

    @property
    def skipped_rows(self) -> int:
        """Distinct rows skipped so far by this process (`--skip-invalid-rows`)."""
        return len(self.skipped_indices)

    def filter_indices_by_size(self, indices, max_sizes):
        return indices, []  # lengths are capped when encoding (--max-src-length / --max-tgt-length)

    @property
    def can_reuse_epoch_itr_across_epochs(self) -> bool:
        return False  # a new row order every epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def ordered_indices(self) -> np.ndarray:
        if self.split != "train":
            return np.arange(len(self))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self))

    def __getitem__(self, index: int) -> Optional[Dict]:
        try:
            return self.build_item(index, self.tsv[index])
        except DataError as exc:
            if not self.skip_invalid_rows:
                raise
            if index not in self.skipped_indices:  # fairseq may read a row twice (dry run, dummy batch)
                self.skipped_indices.add(index)
                logger.warning(f"skipping invalid row ({self.skipped_rows} distinct rows skipped in this process "
                               f"so far): {exc}")
            return None

    def collater(self, samples: List[Optional[Dict]]) -> Dict:
        return collate([s for s in samples if s is not None], self.pad, self.eos)

    # ------------------------------------------------------------------ helpers for subclasses (which define
    # `build_item(index, fields) -> sample dict`)
    def row_generator(self, index: int) -> torch.Generator:
        """A torch generator seeded by (seed, epoch, row): random choices that survive resume and workers."""
        return torch.Generator().manual_seed(hash((self.seed, self.epoch, int(index))) & 0x7FFFFFFF)

    def field_error(self, index: int, position: int, problem: str) -> DataError:
        return self.tsv.error(index, problem, position)

    def require_text(self, index: int, fields: List[str], position: int) -> str:
        value = fields[position]
        if not value.strip():
            raise self.field_error(index, position, "empty text")
        return value

    def load_image(self, index: int, fields: List[str], position: int):
        """Decode the base64 image in column `position` of row `index` (PIL RGB)."""
        value = fields[position]
        try:
            return decode_image(value, self.tsv.path, None, self.tsv.column_name(position))
        except DataError as exc:
            raise self.field_error(index, position, exc.problem) from None

    def encode(self, text: str, length: Optional[int] = None, **kwargs) -> torch.Tensor:
        return self.text.encode(text, length=length, **kwargs)

    def decoder_prompt(self, src: torch.Tensor) -> torch.Tensor:
        """The decoder prompt of `--prompt-type`: none -> `[bos]`, src -> the source, prev_output -> source
        without its eos."""
        prompt_type = getattr(self.cfg, "prompt_type", None)
        if prompt_type in (None, "none"):
            return torch.tensor([self.bos])
        if prompt_type == "src":
            return src
        if prompt_type == "prev_output":
            return src[:-1]
        raise ValueError(f"--prompt-type must be none, src or prev_output, got {prompt_type!r}")

    def answer_after_prompt(self, src: torch.Tensor, answer_ids: torch.Tensor, trie=None) -> Dict:
        """Decoder side of a closed-answer sample: the `--prompt-type` prompt, then the answer and eos.

        Loss falls only on the answer and eos (prompt targets are pad); with a trie, `constraint_mask` rows of the
        answer positions list the allowed next tokens (prompt rows allow nothing)."""
        prompt = self.decoder_prompt(src)
        target = torch.cat([prompt[1:], answer_ids, torch.tensor([self.eos])])
        target[: len(prompt) - 1] = self.pad
        item = {"decoder_prompt": prompt, "prev_output_tokens": torch.cat([prompt, answer_ids]), "target": target}
        if trie is not None:
            mask = torch.zeros(len(target), len(self.dictionary), dtype=torch.bool)
            mask[len(prompt) - 1:] = trie.constraint_mask(answer_ids, self.bos, len(self.dictionary))
            item["constraint_mask"] = mask
        return item

    def with_bos_eos(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.tensor([self.bos]), ids, torch.tensor([self.eos])])
