"""VQ-GAN image codes for BiomedGPT pretraining: the taming-transformers GumbelVQ (`vqgan_gumbel_f8_8192`).

    from biomedgpt.vqgan import GumbelVQ
    vq = GumbelVQ.from_config("configs/vqgan_gumbel_f8_8192.yaml").load_checkpoint("last.ckpt")
    codes = vq.encode_to_codes(images)        # [B, 3, 128, 128] in [-1, 1] -> int64 [B, 16, 16]
    images = vq.decode_codes(codes)           # -> [B, 3, 128, 128]; to_pil_images(images) -> PIL

The command `python -m biomedgpt.cli.image_codes` writes the code TSVs of the pretraining data.
"""
import os
from typing import Optional

from .checkpoint import CheckpointMismatchError, CheckpointReadError, UnsafeCheckpointError, load_weights
from .gumbel_vq import GumbelVQ, code_image_transform, codes_from_logits, images_to_batch, to_pil_images

CONFIG_NAME = "vqgan_gumbel_f8_8192.yaml"

__all__ = ["GumbelVQ", "CheckpointMismatchError", "CheckpointReadError", "UnsafeCheckpointError", "load_weights",
           "code_image_transform", "codes_from_logits", "images_to_batch", "to_pil_images", "default_config_path",
           "CONFIG_NAME"]


def default_config_path() -> Optional[str]:
    """The released model's config if it can be found: `biomedgpt/vqgan/<CONFIG_NAME>` (package data, if shipped),
    else `configs/<CONFIG_NAME>` of a source checkout (biomedgpt/../configs); None otherwise."""
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (os.path.join(here, CONFIG_NAME), os.path.join(here, "..", "..", "configs", CONFIG_NAME)):
        if os.path.isfile(candidate):
            return os.path.normpath(candidate)
    return None
