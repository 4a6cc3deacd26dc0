"""GumbelVQ: the taming-transformers VQ-GAN (`vqgan_gumbel_f8_8192`) that turns images into discrete codes and back.

BiomedGPT's pretraining uses it to turn the 128x128 centre of an image into 16x16 = 256 codes (`<code_i>` tokens).
`encode_to_codes` takes the argmax of the 8192 code logits (deterministic); `sample=True` reproduces the reference's
Gumbel sampling law instead (shared/spec/vqgan/README.md §3). `decode_codes` maps codes back to images.
"""
from typing import List, Optional, Union

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision import transforms

from .modules import Decoder, Encoder


class GumbelQuantize(nn.Module):
    """`proj`: one logit per codebook entry at each position (1x1 conv); `embed`: the codebook."""

    def __init__(self, in_channels: int, embed_dim: int, n_embed: int):
        super().__init__()
        self.n_embed, self.embed_dim = n_embed, embed_dim
        self.proj = nn.Conv2d(in_channels, n_embed, kernel_size=1)
        self.embed = nn.Embedding(n_embed, embed_dim)
        self.temperature = 1.0  # not a state-dict entry; does not change either argmax


def codes_from_logits(logits: torch.Tensor, sample: bool = False,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Code indices from logits `[B, n_embed, h, w]` -> int64 `[B, h, w]`.

    Default: argmax over the code axis. `sample=True`: argmax(logits + G) with G standard Gumbel noise
    (G = -log E, E ~ Exponential(1)), i.e. a draw from softmax(logits) as the reference's `F.gumbel_softmax` does.
    """
    if sample:
        noise = torch.empty_like(logits, dtype=torch.float32).exponential_(generator=generator).log_().neg_()
        logits = logits.float() + noise
    return logits.argmax(dim=1)


class GumbelVQ(nn.Module):
    """VQ-GAN with a Gumbel quantizer. State-dict keys (and their order) equal the released checkpoint's.

    Build with `GumbelVQ.from_config(yaml)`, load weights with `.load_checkpoint(last.ckpt)`.
    """

    def __init__(self, ddconfig: dict, n_embed: int, embed_dim: int):
        super().__init__()
        ddconfig = dict(ddconfig)
        if ddconfig.get("double_z", False):
            raise ValueError("GumbelVQ needs ddconfig double_z: false (the encoder output feeds the quantizer)")
        z_channels = int(ddconfig["z_channels"])
        if z_channels != embed_dim:
            raise ValueError(f"GumbelVQ needs ddconfig z_channels ({z_channels}) == embed_dim ({embed_dim}): "
                             "quantize.proj reads the quant_conv output")
        self.ddconfig, self.n_embed, self.embed_dim = ddconfig, int(n_embed), int(embed_dim)
        self.downsample_factor = 2 ** (len(ddconfig["ch_mult"]) - 1)
        # registration order = state-dict order: encoder, decoder, quantize, quant_conv, post_quant_conv
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quantize = GumbelQuantize(z_channels, self.embed_dim, self.n_embed)
        self.quant_conv = nn.Conv2d(z_channels, self.embed_dim, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(self.embed_dim, z_channels, kernel_size=1)

    # ---------------------------------------------------------------- construction and weights
    @classmethod
    def from_config(cls, yaml_path) -> "GumbelVQ":
        """Build from a taming model yaml (`model.params.{ddconfig,n_embed,embed_dim}`; `target`, lossconfig,
        temperature scheduler and training settings are ignored). The model is returned in eval mode."""
        from omegaconf import OmegaConf

        config = OmegaConf.to_container(OmegaConf.load(str(yaml_path)), resolve=True)
        try:
            params = config["model"]["params"]
            ddconfig, n_embed, embed_dim = params["ddconfig"], params["n_embed"], params["embed_dim"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{yaml_path}: not a taming VQ-GAN config (missing model.params.{exc})") from None
        return cls(ddconfig, n_embed, embed_dim).eval()

    def load_checkpoint(self, path) -> "GumbelVQ":
        """Load the weights of a taming `last.ckpt` (Lightning layout) or a bare state-dict file, safely.

        Exactly the model's keys are used; a missing key or a shape mismatch raises `CheckpointMismatchError`,
        extra entries (e.g. `loss.*`) are logged and ignored. Returns self."""
        from .checkpoint import load_weights

        load_weights(self, path)
        return self

    @classmethod
    def from_pretrained(cls, yaml_path, ckpt_path, device=None) -> "GumbelVQ":
        """`from_config(yaml_path).load_checkpoint(ckpt_path)`, moved to `device`, in eval mode."""
        model = cls.from_config(yaml_path).load_checkpoint(ckpt_path)
        return model.to(device) if device is not None else model

    # ---------------------------------------------------------------- encode / decode
    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != self.ddconfig.get("in_channels", 3):
            raise ValueError(f"expected images [B, {self.ddconfig.get('in_channels', 3)}, H, W], "
                             f"got {tuple(images.shape)}")
        f = self.downsample_factor
        if images.shape[2] % f or images.shape[3] % f:
            raise ValueError(f"image height and width must be multiples of {f}, got {tuple(images.shape[2:])}")
        param = self.quant_conv.weight
        return images.to(device=param.device, dtype=param.dtype)

    @torch.no_grad()
    def code_logits(self, images: torch.Tensor) -> torch.Tensor:
        """`quantize.proj(quant_conv(encoder(x)))`: [B, 3, H, W] in [-1, 1] -> [B, n_embed, H/8, W/8]."""
        x = self._check_images(images)
        return self.quantize.proj(self.quant_conv(self.encoder(x)))

    @torch.no_grad()
    def encode_to_codes(self, images: torch.Tensor, sample: bool = False,
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Images [B, 3, H, W] in [-1, 1] (H, W multiples of 8) -> codes int64 [B, H/8, W/8].

        Deterministic argmax by default; `sample=True` draws like the reference (see `codes_from_logits`)."""
        return codes_from_logits(self.code_logits(images), sample=sample, generator=generator)

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes int [B, h, w] -> images [B, 3, 8h, 8w] (roughly [-1, 1], not clamped)."""
        if codes.dim() != 3:
            raise ValueError(f"expected codes [B, h, w], got {tuple(codes.shape)}")
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise ValueError(f"codes must be an integer tensor, got {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.n_embed):
            raise ValueError(f"codes must lie in [0, {self.n_embed}), got [{int(codes.min())}, {int(codes.max())}]")
        weight = self.quantize.embed.weight
        z_q = weight[codes.to(device=weight.device, dtype=torch.long)].permute(0, 3, 1, 2).contiguous()
        return self.decoder(self.post_quant_conv(z_q))

    def decode_to_pil(self, codes: torch.Tensor) -> List[Image.Image]:
        """`decode_codes` then `to_pil_images`."""
        return to_pil_images(self.decode_codes(codes))


def to_pil_images(images: torch.Tensor) -> List[Image.Image]:
    """Decoder output [B, 3, H, W] -> RGB uint8 PIL images: clamp to [-1, 1], (x+1)/2*255, truncated."""
    x = images.detach().float().cpu().clamp(-1.0, 1.0)
    x = ((x + 1.0) / 2.0).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray((255 * item).astype(np.uint8)) for item in x]


def code_image_transform(size: int):
    """The reference's code-image preprocessing: Resize((size, size), LANCZOS) -> ToTensor -> 2x - 1."""
    return transforms.Compose([
        transforms.Resize((size, size), interpolation=transforms.InterpolationMode.LANCZOS),
        transforms.ToTensor(),
        transforms.Lambda(lambda t: 2.0 * t - 1.0),
    ])


def images_to_batch(images: List[Image.Image], size: int,
                    device: Union[str, torch.device, None] = None) -> torch.Tensor:
    """PIL images -> float batch [B, 3, size, size] in [-1, 1] with `code_image_transform`."""
    transform = code_image_transform(size)
    batch = torch.stack([transform(image.convert("RGB")) for image in images])
    return batch.to(device) if device is not None else batch
