"""A tiny torchvision Faster R-CNN trained on the synthetic task (one textured object on clutter, known box).

The detector is torchvision's own ``FasterRCNN`` (transform, RPN, ``RoIHeads`` with ``MultiScaleRoIAlign``)
over a four-conv backbone (stride 8) that returns its map in a dict, like ``BackboneWithFPN``. Trained on CPU
in well under a minute, once per test process (:func:`trained_detector` is cached).
"""

from __future__ import annotations

import functools
import time
from collections import OrderedDict

import torch
from torch import nn

try:  # the synthetic task is moving to introspect.testing
    from introspect.testing.synthetic import SyntheticShapes
except ImportError:  # pragma: no cover - before the move
    from introspect.synthetic import SyntheticShapes

CATEGORIES = ("__background__", "object")
IMAGE_SIZE = 64


class TinyBackbone(nn.Module):
    """Four 3x3 convs, three of stride 2: a (N, 32, H/8, W/8) map in a dict, as FPN backbones give."""

    out_channels = 32

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict([("0", self.body(x))])


def build_detector() -> nn.Module:
    """A small Faster R-CNN: 64 px inputs kept at 64 px, anchors 8-32 px, a 128-wide box head, 2 classes."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    backbone = TinyBackbone()
    anchors = AnchorGenerator(sizes=((12, 16, 24),), aspect_ratios=((1.0,),))
    pooler = MultiScaleRoIAlign(featmap_names=["0"], output_size=5, sampling_ratio=2)
    return FasterRCNN(backbone, num_classes=None, min_size=IMAGE_SIZE, max_size=IMAGE_SIZE,
                      image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25],
                      rpn_anchor_generator=anchors, box_roi_pool=pooler,
                      box_head=TwoMLPHead(32 * 5 * 5, 128), box_predictor=FastRCNNPredictor(128, len(CATEGORIES)),
                      rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100,
                      rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
                      rpn_batch_size_per_image=64, box_batch_size_per_image=64, box_detections_per_img=10)


@functools.lru_cache(maxsize=1)
def trained_detector(steps: int = 300, batch_size: int = 16, seed: int = 0):
    """(detector in eval mode, held-out images (N, 3, 64, 64) in [0, 1], their boxes (N, 4), seconds spent)."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    data = SyntheticShapes(image_size=IMAGE_SIZE).generate(steps * batch_size // 4 + 64, seed)
    train_images, train_boxes = data.images[64:], data.boxes[64:]
    model = build_detector().train()
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        index = torch.randint(0, len(train_images), (batch_size,), generator=generator)
        images = list(train_images[index])
        targets = [{"boxes": train_boxes[i:i + 1].float(), "labels": torch.ones(1, dtype=torch.int64)}
                   for i in index.tolist()]
        losses = model(images, targets)
        loss = sum(losses.values())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None
    return model, data.images[:64], data.boxes[:64], time.perf_counter() - start
