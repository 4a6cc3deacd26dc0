"""Pre-train the demo's ResNet trunk to name each training image's colour and shape.

OFA/BiomedGPT never train their ResNet trunk from scratch: it starts from ImageNet weights
(`--resnet-model-path`). The demo has no network and no ImageNet, so it gives the trunk the same kind of start
on its own training images: stages 1-3 of the reference trunk (unchanged) plus a throw-away average-pool +
linear head, trained with cross-entropy on the colour and the shape that the training questions name for each
image. The result is a torchvision-layout state dict that `fairseq-train --resnet-model-path` loads; the head
is discarded. Validation images (never trained on) measure how well the trunk names them.
"""
import collections
import json
import os
from typing import Dict, List, Sequence, Tuple

import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from ..data.image import resize_transform
from ..models.resnet import RESNET_BLOCKS, ResNet
from .easy_vqa_data import COLOURS, SHAPES, Question, question_kind


def image_labels(questions: Sequence[Question]) -> Dict[str, Tuple[int, int]]:
    """image path -> (colour index, shape index) that its training questions reveal (-1 where none does).

    An open question's answer names one; a colour or shape word in a question names one when the image has it:
    in every open question ("what color is the circle?") and in a yes/no question answered "yes" without
    negation or "no" with it ("is there not a red shape?" -> "no").
    """
    labels: Dict[str, List[int]] = collections.defaultdict(lambda: [-1, -1])
    for q in questions:
        words = q.question.rstrip("?").split()
        named = list(words)
        if question_kind(q) == "colour/shape":
            named.append(q.answer)
        elif (q.answer == "yes") == ("not" in words or words[:2] == ["is", "no"]):
            continue  # the words it names are absent from the image
        for word in named:
            if word in COLOURS:
                labels[q.image_path][0] = COLOURS.index(word)
            elif word in SHAPES:
                labels[q.image_path][1] = SHAPES.index(word)
    return {path: (colour, shape) for path, (colour, shape) in labels.items()}


def _tensors(labels: Dict[str, Tuple[int, int]], image_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    transform = resize_transform(image_size)
    paths = sorted(labels)
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(transform(image.convert("RGB")))
    return torch.stack(images), torch.tensor([labels[path] for path in paths], dtype=torch.long)


class _TrunkClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = ResNet(RESNET_BLOCKS["resnet50"])  # ofa_tiny's trunk
        self.head = nn.Linear(1024, len(COLOURS) + len(SHAPES))

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(self.trunk(images).mean(dim=(2, 3)))
        return logits[:, :len(COLOURS)], logits[:, len(COLOURS):]


def _accuracy(model: _TrunkClassifier, images: torch.Tensor, labels: torch.Tensor) -> Dict[str, float]:
    model.eval()
    with torch.no_grad():
        colour, shape = zip(*(model(chunk) for chunk in images.split(256)))
    model.train()
    out = {}
    for name, logits, target in (("colour", torch.cat(colour), labels[:, 0]),
                                 ("shape", torch.cat(shape), labels[:, 1])):
        known = target >= 0
        out[name] = round(float((logits[known].argmax(1) == target[known]).float().mean()), 4) if known.any() else None
    return out


def pretrain_trunk(train: Sequence[Question], valid: Sequence[Question], out_path: str, image_size: int,
                   updates: int, batch_size: int = 32, lr: float = 1e-3, seed: int = 1, device: str = "cpu",
                   log_every: int = 50) -> dict:
    """Train the trunk on `train`'s images for `updates` Adam steps; save its state dict to `out_path`.

    Returns the validation images' colour and shape accuracy (fraction; None without such labels) and the
    number of images used.
    """
    torch.manual_seed(seed)
    images, labels = _tensors(image_labels(train), image_size)
    valid_images, valid_labels = _tensors(image_labels(valid), image_size)
    images, labels = images.to(device), labels.to(device)
    valid_images, valid_labels = valid_images.to(device), valid_labels.to(device)
    model = _TrunkClassifier().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=updates, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=generator)
    position = 0
    for update in range(1, updates + 1):
        if position + batch_size > len(order):
            order, position = torch.randperm(len(images), generator=generator), 0
        index = order[position:position + batch_size]
        position += batch_size
        colour, shape = model(images[index])
        loss = (F.cross_entropy(colour, labels[index, 0], ignore_index=-1)
                + F.cross_entropy(shape, labels[index, 1], ignore_index=-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if update % log_every == 0 or update == updates:
            print(f"trunk pre-training: update {update}/{updates}, loss {loss.item():.3f}", flush=True)
    result = {"images": len(images), "valid_images": len(valid_images),
              **{f"valid_{k}_accuracy": v for k, v in _accuracy(model, valid_images, valid_labels).items()}}
    torch.save({k: v.cpu() for k, v in model.trunk.state_dict().items()}, out_path)
    return result


def cached_trunk(train: Sequence[Question], valid: Sequence[Question], folder: str, image_size: int, updates: int,
                 **kwargs) -> Tuple[str, dict]:
    """`(folder/trunk.pt, its result)`: pre-trained by `pretrain_trunk(..., **kwargs)` unless an earlier run
    finished it (its result is kept in `folder/trunk.json`, written last)."""
    path, result_path = os.path.join(folder, "trunk.pt"), os.path.join(folder, "trunk.json")
    if not os.path.isfile(result_path):
        result = pretrain_trunk(train, valid, path, image_size, updates, **kwargs)
        with open(result_path, "w", encoding="utf-8") as handle:
            json.dump(result, handle)
    with open(result_path, encoding="utf-8") as handle:
        return path, json.load(handle)
