"""`gigaword` rows (`source, target`; BiomedGPT's MeQSum) -> summarisation samples."""
import torch

from ..ofa_dataset import OFADataset
from ..text import pre_caption

PROMPT = ' what is the summary of article " {} "?'


class SummaryDataset(OFADataset):
    """Source: the article in the summary prompt; target: the summary. `target_str` keeps the lowercased
    reference for ROUGE. With `noise_ratio`, teacher-forcing inputs are randomly replaced by text tokens."""

    def build_item(self, index, fields):
        if len(fields) < 2:
            raise self.field_error(index, len(fields), f"needs 2 columns (source, target), has {len(fields)}")
        source = self.require_text(index, fields, 0)
        target = self.require_text(index, fields, 1)
        target_str = target.lower()
        source = pre_caption(source, self.cfg.max_src_length).replace("<unk>", "unk")
        target = pre_caption(target, self.cfg.max_tgt_length).replace("<unk>", "unk")
        src = self.with_bos_eos(self.encode(PROMPT.format(source), length=self.cfg.max_src_length))
        tgt = self.encode(target)  # no leading space, as the reference (its summaries start without one)
        prev = torch.cat([torch.tensor([self.bos]), self.add_noise(index, tgt)])
        return {"id": index, "source": src, "target": torch.cat([tgt, torch.tensor([self.eos])]),
                "prev_output_tokens": prev, "target_str": target_str}

    def add_noise(self, index: int, tokens: torch.Tensor) -> torch.Tensor:
        """Replace each token with probability `noise_ratio` by a random text-vocabulary id (training only).

        Deterministic per (seed, epoch, row), so a resumed run sees the same noise."""
        ratio = getattr(self.cfg, "noise_ratio", 0.0)
        if self.split != "train" or ratio <= 0:
            return tokens
        generator = self.row_generator(index)
        text_vocab_end = len(self.dictionary) - self.cfg.code_dict_size - self.cfg.num_bins
        noise = torch.rand(tokens.shape, generator=generator) < ratio
        random_ids = torch.randint(4, text_vocab_end, tokens.shape, generator=generator)
        return torch.where(noise, random_ids, tokens)
