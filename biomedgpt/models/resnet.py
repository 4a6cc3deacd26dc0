"""The ResNet trunk that turns images into patch features (stages 1-3 of a bottleneck ResNet).

`[B, 3, P, P]` -> `[B, 1024, P/16, P/16]`. Key names follow torchvision/the released checkpoints
(`conv1`, `bn1`, `layer{1,2,3}.N.conv{1,2,3}`, `downsample.{0,1}`); stage 4 is never built.
Options: per-block drop path, frozen BatchNorm (`FrozenBatchNorm2d`, conv weights stay trainable),
synchronised BatchNorm, `channels_last` memory format for faster CPU/GPU convolutions.
"""
import logging
from typing import Callable, List, Optional

import torch
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from .embedding import stack_drop_path_rates
from .layers import DropPath

logger = logging.getLogger(__name__)
RESNET_BLOCKS = {"resnet50": [3, 4, 6], "resnet101": [3, 4, 23], "resnet152": [3, 8, 36]}


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 bottleneck with expansion 4 and optional drop path on the residual branch."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: Optional[nn.Module],
                 norm_layer: Callable[[int], nn.Module], drop_path_rate: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = norm_layer(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = norm_layer(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path_rate, batch_dim=0) if drop_path_rate > 0.0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(identity + self.drop_path(out))


class ResNet(nn.Module):
    """Stem + three bottleneck stages (output stride 16, 1024 channels).

    Args:
        layers: number of blocks in stages 1-3, e.g. `[3, 4, 6]` for resnet50.
        norm_layer: BatchNorm constructor (default `nn.BatchNorm2d`).
        drop_path_rate: within each stage, block i gets `linspace(0, rate, n)[i]`; block 0 gets none.
        channels_last: keep weights and activations in NHWC, which oneDNN/cuDNN convolve much faster
            (2.4x for the forward pass on a 2-core CPU); numerics and state-dict keys are unchanged.
    """

    def __init__(self, layers: List[int], norm_layer: Optional[Callable[[int], nn.Module]] = None,
                 drop_path_rate: float = 0.0, channels_last: bool = True):
        super().__init__()
        self.channels_last = channels_last
        norm_layer = norm_layer or nn.BatchNorm2d
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_stage(64, layers[0], 1, norm_layer, drop_path_rate)
        self.layer2 = self._make_stage(128, layers[1], 2, norm_layer, drop_path_rate)
        self.layer3 = self._make_stage(256, layers[2], 2, norm_layer, drop_path_rate)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def _make_stage(self, planes: int, blocks: int, stride: int, norm_layer, drop_path_rate: float) -> nn.Sequential:
        out_planes = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out_planes, kernel_size=1, stride=stride, bias=False),
                norm_layer(out_planes),
            )
        rates = stack_drop_path_rates(drop_path_rate, blocks)
        stage = [Bottleneck(self.inplanes, planes, stride, downsample, norm_layer)]
        self.inplanes = out_planes
        stage += [Bottleneck(self.inplanes, planes, 1, None, norm_layer, rates[i]) for i in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d below `module` by a FrozenBatchNorm2d holding the same statistics."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batch_norm(child)
    return module


def build_resnet(args) -> nn.Module:
    """The image trunk for `args.resnet_type`, honouring `--sync-bn`, `--freeze-resnet`, `--freeze-resnet-weights`,
    `--resnet-model-path`."""
    if args.resnet_type not in RESNET_BLOCKS:
        raise ValueError(f"--resnet-type must be one of {sorted(RESNET_BLOCKS)}, got {args.resnet_type!r}")
    norm_layer = None
    if getattr(args, "sync_bn", False):
        def norm_layer(channels):
            return nn.BatchNorm2d(channels, momentum=0.1, eps=1e-3)
    resnet = ResNet(RESNET_BLOCKS[args.resnet_type], norm_layer=norm_layer,
                    drop_path_rate=args.resnet_drop_path_rate)
    if getattr(args, "sync_bn", False):
        resnet = nn.SyncBatchNorm.convert_sync_batchnorm(resnet)
    if getattr(args, "freeze_resnet", False):
        resnet = freeze_batch_norm(resnet)
    if getattr(args, "resnet_model_path", None):
        load_resnet_weights(resnet, args.resnet_model_path)
    if getattr(args, "freeze_resnet_weights", False):
        resnet.requires_grad_(False)
    return resnet


def load_resnet_weights(resnet: nn.Module, path: str) -> None:
    """Load ImageNet-style ResNet weights (tensors only); `fc.*`/`layer4.*` and other extra keys are ignored."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    own = resnet.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"--resnet-model-path {path}: {len(missing)} ResNet weights are missing, e.g. {missing[:3]}; "
                         f"is it a {len(own)}-entry bottleneck ResNet state dict?")
    resnet.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    logger.info("loaded %d ResNet tensors from %s", sum(k in own for k in state), path)
