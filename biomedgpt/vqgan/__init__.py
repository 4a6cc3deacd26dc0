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
    """The released model's config, shipped as package data (`configs/` of the repo links to it); None if absent."""
    candidate = os.path.join(os.path.dirname(os.path.abspath(__file__)), CONFIG_NAME)
    return candidate if os.path.isfile(candidate) else None
