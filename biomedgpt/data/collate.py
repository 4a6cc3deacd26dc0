"""Collate OFA samples into fairseq batches (right padding with the dictionary's pad, images stacked)."""
from typing import Dict, List

import numpy as np
import torch

from fairseq.data import data_utils


def collate_masks(masks: List[torch.Tensor]) -> torch.Tensor:
    """Stack `[T_i, V]` boolean masks into `[B, max T, V]`, padding rows with False."""
    longest = max(mask.size(0) for mask in masks)
    out = masks[0].new_zeros((len(masks), longest, masks[0].size(1)))
    for i, mask in enumerate(masks):
        out[i, : mask.size(0)] = mask
    return out


def collate(samples: List[Dict], pad_idx: int, eos_idx: int) -> Dict:
    """Batch dict with `net_input` (src_tokens, src_lengths, [patch_images, patch_masks, code_masks],
    prev_output_tokens) and `id` (row index), `nsentences`, `ntokens`, `target`, plus any of `conf`, `ref_dict`,
    `constraint_masks`, `decoder_prompts`, `prefix_tokens`, `target_strs`, `uniq_ids` the samples carry."""
    if not samples:
        return {}

    def tokens(key, left_pad=False):
        return data_utils.collate_tokens([s[key] for s in samples], pad_idx, eos_idx, left_pad=left_pad)

    first = samples[0]
    src_tokens = tokens("source")
    net_input = {
        "src_tokens": src_tokens,
        "src_lengths": src_tokens.ne(pad_idx).long().sum(1),
        "prev_output_tokens": tokens("prev_output_tokens"),
    }
    if "patch_image" in first:
        net_input["patch_images"] = torch.stack([s["patch_image"] for s in samples])
        net_input["patch_masks"] = torch.tensor([bool(s["patch_mask"]) for s in samples])
    if "code_mask" in first:
        net_input["code_masks"] = torch.tensor([bool(s["code_mask"]) for s in samples])
    target = tokens("target")
    batch = {
        "id": np.array([s["id"] for s in samples]),
        "nsentences": len(samples),
        "ntokens": int(target.ne(pad_idx).sum()),
        "net_input": net_input,
        "target": target,
    }
    if first.get("conf") is not None:
        batch["conf"] = torch.tensor([float(s["conf"]) for s in samples])
    for key, batch_key in (("ref_dict", "ref_dict"), ("target_str", "target_strs"), ("uniq_id", "uniq_ids")):
        if key in first:
            batch[batch_key] = np.array([s[key] for s in samples], dtype=object)
    for key in ("region_coord", "resize_ratio"):
        if key in first:
            batch[key + "s"] = torch.stack([s[key] for s in samples])
    if first.get("constraint_mask") is not None:
        batch["constraint_masks"] = collate_masks([s["constraint_mask"] for s in samples])
    if "decoder_prompt" in first:
        batch["decoder_prompts"] = [s["decoder_prompt"].tolist() for s in samples]
        batch["prefix_tokens"] = tokens("decoder_prompt")[:, 1:]
    return batch
