"""A tiny segmenter trained on the synthetic task: each image's object painted with its texture class (1-4) on
background (0), the object's outline band ignored (255) in the masks written to disk.

The model is laid out as torchvision's segmenters (``backbone`` returning a dict with ``'out'``, a
``classifier`` head at 1/4 resolution, the scores resized bilinearly to the input, ``{'out': scores}``), so the
segmentation task's head fast path applies. Trained on CPU in a few seconds, once per test process.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from introspect.testing.synthetic import MEAN, STD, SyntheticShapes

CATEGORIES = ("__background__", "hstripes", "vstripes", "checker", "dots")
IMAGE_SIZE = 64


class _Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                                  nn.ReLU(), nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict([("out", self.body(x))])


class TinySegmenter(nn.Module):
    """backbone -> classifier at 1/4 resolution -> bilinear resize to the input: ``{'out': (N, 5, H, W)}``."""

    def __init__(self, classes: int = len(CATEGORIES)) -> None:
        super().__init__()
        self.backbone = _Backbone()
        self.classifier = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, classes, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        scores = self.classifier(self.backbone(x)["out"])
        return {"out": F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)}


def class_masks(data) -> torch.Tensor:
    """(N, H, W) int64: label + 1 on the object, 0 elsewhere."""
    return data.masks.long() * (data.labels[:, None, None] + 1)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """As the LoadedModel's transform normalises."""
    return (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


@functools.lru_cache(maxsize=1)
def trained_segmenter(steps: int = 120, batch_size: int = 16, seed: int = 0) -> tuple[nn.Module, object]:
    """(segmenter in eval mode, 48 held-out samples)."""
    torch.manual_seed(seed)
    data = SyntheticShapes(image_size=IMAGE_SIZE).generate(steps * batch_size // 4 + 48, seed + 7)
    images, masks = data.images[48:], class_masks(data)[48:]
    model = TinySegmenter().train()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        index = torch.randint(0, len(images), (batch_size,), generator=generator)
        loss = F.cross_entropy(model(normalize(images[index]))["out"], masks[index])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None
    held = SyntheticShapes(image_size=IMAGE_SIZE).generate(48, seed + 7)
    return model, held


def write_mask_dataset(data, root: Path) -> tuple[Path, Path, list[str]]:
    """``root/images/<i>.png`` and ``root/masks/<i>.png`` (greyscale class indices, the outline band 255)."""
    from PIL import Image

    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    pixels = (data.images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    classes = class_masks(data).numpy().astype(np.uint8)
    files = []
    for i, (photo, mask, obj) in enumerate(zip(pixels, classes, data.masks.numpy())):
        grown = F.max_pool2d(torch.from_numpy(obj).float()[None, None], 3, 1, 1)[0, 0].numpy() > 0
        band = grown & ~(-F.max_pool2d(-torch.from_numpy(obj).float()[None, None], 3, 1, 1)[0, 0].numpy() > 0)
        mask = mask.copy()
        mask[band] = 255
        Image.fromarray(photo).save(images / f"{i:05d}.png")
        Image.fromarray(mask, mode="L").save(masks / f"{i:05d}.png")
        files.append(f"{i:05d}.png")
    return images, masks, files


def segmenter_loaded(model: nn.Module):
    """A LoadedModel of the tiny segmenter: 64 px, the synthetic task's normalisation, its five classes."""
    from torchvision.transforms._presets import ImageClassification

    from introspect.models import LoadedModel

    transform = ImageClassification(crop_size=IMAGE_SIZE, resize_size=IMAGE_SIZE, mean=MEAN, std=STD)
    return LoadedModel(model=model, name="tiny_segmenter", weights="trained", weights_source="tests",
                       transform=transform, categories=CATEGORIES, input_size=IMAGE_SIZE,
                       device=torch.device("cpu"), task="segmentation")
