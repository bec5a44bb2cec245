"""A synthetic image-classification task whose evidence location is known.

Each image shows a cluttered background (low-contrast noise, thin lines and
soft blobs in random colours, none of which decides the class) and exactly
one *object* whose shape decides the class: a filled square, a filled disc, a
filled triangle or a plus-shaped cross. Colour and size (12-22 px) are random,
so only the shape is evidence. The object's bounding box (and pixel mask) is
recorded, so a class activation map can be checked against the true evidence
location ("pointing game").

The module also provides a small torchvision-style ResNet
(:func:`build_model`), a deterministic CPU training loop (:func:`train`) and
:func:`train_reference_model`, which trains that network to >= 95 % held-out
accuracy in well under a minute on two CPU cores.

Images are float32 in [0, 1]; the model expects them normalised with
:data:`MEAN` / :data:`STD` (see :func:`normalize`), which :func:`train` and
:func:`accuracy` do themselves.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

__all__ = [
    "CLASS_NAMES",
    "MEAN",
    "STD",
    "SyntheticDataset",
    "SyntheticShapes",
    "SmallResNet",
    "make_dataset",
    "normalize",
    "build_model",
    "train",
    "accuracy",
    "predict",
    "train_reference_model",
    "points_in_boxes",
]

CLASS_NAMES: tuple[str, ...] = ("square", "disc", "triangle", "cross")
"""Class names, indexed by label."""

MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
"""Per-channel mean used to normalise images before they enter the model."""

STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
"""Per-channel standard deviation used to normalise images."""

# Settings of the reference model (tuned on a 2-core CPU: see train_reference_model).
REFERENCE_TRAIN_SAMPLES = 3000
REFERENCE_TEST_SAMPLES = 200
REFERENCE_EPOCHS = 6
REFERENCE_BATCH_SIZE = 50
REFERENCE_LR = 3e-3


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Map images in [0, 1] (``(N, 3, H, W)`` or ``(3, H, W)``) to model input."""
    mean = torch.tensor(MEAN, dtype=images.dtype, device=images.device).view(3, 1, 1)
    std = torch.tensor(STD, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return (images - mean) / std


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class SyntheticDataset:
    """A generated data set.

    Attributes:
        images: ``(N, 3, H, W)`` float32 in [0, 1].
        labels: ``(N,)`` int64 class indices into ``class_names``.
        boxes: ``(N, 4)`` int64 ``(x0, y0, x1, y1)``, exclusive upper bounds,
            the tight bounding box of the class-defining object.
        class_names: names of the classes.
        masks: ``(N, H, W)`` bool, the object's pixels (always set by
            :func:`make_dataset`).
    """

    images: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    class_names: tuple[str, ...]
    masks: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    @property
    def image_size(self) -> int:
        """Side length of the (square) images in pixels."""
        return int(self.images.shape[-1])


class SyntheticShapes:
    """Generator of the synthetic shapes task.

    Deterministic given ``seed``: the same seed gives the same images, labels
    and boxes. Labels are drawn so that classes are balanced (a shuffled
    repetition of all classes).

    Args:
        image_size: side of the square images in pixels.
        min_size, max_size: range of the object's side / diameter in pixels
            (scaled by ``image_size / 64``).
    """

    class_names: tuple[str, ...] = CLASS_NAMES

    def __init__(self, image_size: int = 64, min_size: int = 12, max_size: int = 22) -> None:
        if image_size < 32:
            raise ValueError(f"image_size must be at least 32, got {image_size}")
        scale = image_size / 64.0
        self.image_size = image_size
        self.min_size = max(6, round(min_size * scale))
        self.max_size = max(self.min_size, round(max_size * scale))
        yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32)
        self._yy = yy
        self._xx = xx

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    # ---------------------------------------------------------------- shapes
    def _object_mask(self, label: int, size: int, x0: int, y0: int, rng: np.random.Generator) -> np.ndarray:
        """Boolean mask of an object of class ``label`` whose box starts at (x0, y0)."""
        xx, yy = self._xx, self._yy
        s = float(size)
        # coordinates relative to the box, pixel centres at +0.5
        u = xx - x0 + 0.5
        v = yy - y0 + 0.5
        inside = (u >= 0) & (u <= s) & (v >= 0) & (v <= s)
        name = self.class_names[label]
        if name == "square":
            return inside
        if name == "disc":
            r = s / 2.0
            return (u - r) ** 2 + (v - r) ** 2 <= r * r
        if name == "triangle":
            # isosceles triangle, apex up or down; base along the box's bottom/top
            if rng.random() < 0.5:
                v = s - v
            half = v / 2.0  # apex at v = 0, base (full width) at v = s
            return inside & (np.abs(u - s / 2.0) <= half)
        if name == "cross":
            t = max(2.0, s * rng.uniform(0.28, 0.38)) / 2.0
            c = s / 2.0
            return inside & ((np.abs(u - c) <= t) | (np.abs(v - c) <= t))
        raise AssertionError(name)

    # ------------------------------------------------------------ background
    def _background(self, rng: np.random.Generator) -> np.ndarray:
        n = self.image_size
        base = rng.uniform(0.25, 0.75, size=3).astype(np.float32)
        # smooth low-contrast gradient plus pixel noise
        gx, gy = rng.uniform(-0.12, 0.12, size=2)
        grad = (gx * (self._xx / n - 0.5) + gy * (self._yy / n - 0.5)).astype(np.float32)
        img = base[:, None, None] + grad[None] + rng.normal(0.0, 0.04, size=(3, n, n)).astype(np.float32)
        return img

    def _draw_distractors(self, img: np.ndarray, rng: np.random.Generator) -> None:
        n = self.image_size
        xx, yy = self._xx, self._yy
        # thin (about 1 px) straight lines in random colours
        for _ in range(int(rng.integers(2, 6))):
            colour = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
            px, py = rng.uniform(0, n, size=2)
            theta = rng.uniform(0, math.pi)
            dx, dy = math.cos(theta), math.sin(theta)
            half_len = rng.uniform(0.2, 0.6) * n
            along = (xx - px) * dx + (yy - py) * dy
            across = -(xx - px) * dy + (yy - py) * dx
            line = (np.abs(across) <= 0.5) & (np.abs(along) <= half_len)
            alpha = rng.uniform(0.4, 0.9)
            img[:, line] = (1 - alpha) * img[:, line] + alpha * colour[:, None]
        # soft Gaussian blobs (no sharp edges, so they do not look like objects)
        for _ in range(int(rng.integers(2, 6))):
            colour = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
            px, py = rng.uniform(0, n, size=2)
            sigma = rng.uniform(1.0, 2.5) * n / 64.0
            w = np.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * sigma * sigma)) * rng.uniform(0.4, 0.8)
            img[:] = img * (1 - w[None]) + colour[:, None, None] * w[None]

    def _object_colour(self, img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A random colour that stands out from the background under ``mask``."""
        local = img[:, mask].mean(axis=1)
        colour = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
        for _ in range(50):
            if np.abs(colour - local).max() >= 0.35:
                break
            colour = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
        else:  # pragma: no cover - practically unreachable
            colour = np.where(local > 0.5, 0.0, 1.0).astype(np.float32)
        return colour

    # ---------------------------------------------------------------- sample
    def sample(self, label: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One image of class ``label``: ``(image (3,H,W) float32, box (4,) int64, mask (H,W) bool)``."""
        n = self.image_size
        img = self._background(rng)
        self._draw_distractors(img, rng)
        size = int(rng.integers(self.min_size, self.max_size + 1))
        x0 = int(rng.integers(0, n - size + 1))
        y0 = int(rng.integers(0, n - size + 1))
        mask = self._object_mask(label, size, x0, y0, rng)
        colour = self._object_colour(img, mask, rng)
        # slight shading noise on the object so it is not perfectly flat
        img[:, mask] = colour[:, None] + rng.normal(0.0, 0.02, size=(3, int(mask.sum()))).astype(np.float32)
        ys, xs = np.nonzero(mask)
        box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.int64)
        np.clip(img, 0.0, 1.0, out=img)
        return img, box, mask

    def generate(self, n: int, seed: int) -> SyntheticDataset:
        """Generate ``n`` samples deterministically from ``seed``."""
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        rng = np.random.default_rng(seed)
        k = self.num_classes
        labels = np.tile(np.arange(k, dtype=np.int64), -(-n // k))[:n]
        rng.shuffle(labels)
        size = self.image_size
        images = np.empty((n, 3, size, size), dtype=np.float32)
        boxes = np.empty((n, 4), dtype=np.int64)
        masks = np.empty((n, size, size), dtype=bool)
        for i in range(n):
            images[i], boxes[i], masks[i] = self.sample(int(labels[i]), rng)
        return SyntheticDataset(
            images=torch.from_numpy(images),
            labels=torch.from_numpy(labels),
            boxes=torch.from_numpy(boxes),
            class_names=self.class_names,
            masks=torch.from_numpy(masks),
        )


def make_dataset(n: int, seed: int, image_size: int = 64) -> SyntheticDataset:
    """Generate ``n`` samples of the synthetic shapes task, deterministically from ``seed``."""
    return SyntheticShapes(image_size=image_size).generate(n, seed)


# -------------------------------------------------------------------------- model


class SmallResNet(ResNet):
    """A narrow ResNet with torchvision's structure and module names.

    It *is* a :class:`torchvision.models.resnet.ResNet` (``conv1``, ``bn1``,
    ``relu``, ``maxpool``, ``layer1`` .. ``layer4``, ``avgpool``, ``fc``) built
    from torchvision's :class:`BasicBlock`, one block per stage, but with
    widths ``widths`` instead of 64..512, a 3x3 stride-2 stem and no max-pool.
    ``layer2`` and ``layer3`` downsample, ``layer4`` keeps the resolution, so
    a 64x64 input gives an 8x8 map at ``layer4``.
    """

    def __init__(self, num_classes: int = 4, widths: tuple[int, int, int, int] = (16, 32, 48, 64)) -> None:
        # Build the ordinary (wide) torchvision ResNet first so every attribute
        # ResNet.forward relies on exists, then replace the layers by narrow ones.
        super().__init__(BasicBlock, [1, 1, 1, 1], num_classes=num_classes)
        w1, w2, w3, w4 = widths
        self.conv1 = nn.Conv2d(3, w1, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w1)
        self.maxpool = nn.Identity()
        self.layer1 = _stage(w1, w1, stride=1)
        self.layer2 = _stage(w1, w2, stride=2)
        self.layer3 = _stage(w2, w3, stride=2)
        self.layer4 = _stage(w3, w4, stride=1)
        self.fc = nn.Linear(w4, num_classes)
        self.inplanes = w4
        for m in self.modules():  # same initialisation as torchvision's ResNet
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def _stage(inplanes: int, planes: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(planes),
        )
    return nn.Sequential(BasicBlock(inplanes, planes, stride=stride, downsample=downsample))


def build_model(num_classes: int = 4) -> nn.Module:
    """A small, freshly initialised torchvision-style ResNet for the synthetic task.

    Uses the global torch RNG for initialisation (seed it for reproducibility).
    """
    return SmallResNet(num_classes=num_classes)


# ----------------------------------------------------------------------- training


def _batches(n: int, batch_size: int, generator: torch.Generator | None) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def train(
    model: nn.Module,
    train_set: SyntheticDataset,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    log: Callable[[str], None] | None = None,
) -> list[float]:
    """Train ``model`` in place on ``train_set`` with Adam and a one-cycle schedule.

    Deterministic given ``seed`` (shuffling uses its own generator; the
    global torch RNG is left as it was). Returns the mean training loss of
    each epoch; ``log`` (e.g. ``print``) receives one line per epoch.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be positive")
    generator = torch.Generator().manual_seed(seed)
    inputs = normalize(train_set.images)
    labels = train_set.labels
    n = len(train_set)
    steps = epochs * math.ceil(n / batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.25)
    loss_fn = nn.CrossEntropyLoss()
    losses: list[float] = []
    was_training = model.training
    model.train()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for epoch in range(epochs):
                start = time.perf_counter()
                total, count = 0.0, 0
                for idx in _batches(n, batch_size, generator):
                    optimizer.zero_grad(set_to_none=True)
                    loss = loss_fn(model(inputs[idx]), labels[idx])
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    total += loss.item() * len(idx)
                    count += len(idx)
                losses.append(total / count)
                if log is not None:
                    log(f"epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f} ({time.perf_counter() - start:.1f} s)")
    finally:
        model.train(was_training)
    return losses


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Predicted labels for images in [0, 1] (runs in eval mode, restores the mode)."""
    was_training = model.training
    model.eval()
    try:
        out = [model(normalize(images[i : i + batch_size])).argmax(1) for i in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.int64)


def accuracy(model: nn.Module, dataset: SyntheticDataset) -> float:
    """Fraction of ``dataset`` that ``model`` classifies correctly (eval mode, mode restored)."""
    if len(dataset) == 0:
        return float("nan")
    return float((predict(model, dataset.images) == dataset.labels).float().mean())


def train_reference_model(
    seed: int = 0, log: Callable[[str], None] | None = None
) -> tuple[nn.Module, SyntheticDataset]:
    """Train the reference model; return it (in eval mode) and a held-out test set.

    Trains :func:`build_model` on 3000 samples generated from ``seed`` and
    returns 200 test samples generated from a different seed. Takes roughly
    20-30 s on two CPU cores and reaches >= 95 % held-out accuracy.
    The global torch RNG is left as it was.
    """
    train_set = make_dataset(REFERENCE_TRAIN_SAMPLES, seed=seed)
    test_set = make_dataset(REFERENCE_TEST_SAMPLES, seed=seed + 1_000_003)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(len(train_set.class_names))
    train(
        model,
        train_set,
        epochs=REFERENCE_EPOCHS,
        batch_size=REFERENCE_BATCH_SIZE,
        lr=REFERENCE_LR,
        seed=seed,
        log=log,
    )
    model.eval()
    return model, test_set


# ------------------------------------------------------------------------ scoring


def points_in_boxes(peaks_yx: np.ndarray, boxes: np.ndarray | torch.Tensor, margin: int = 0) -> np.ndarray:
    """Whether each ``(y, x)`` peak lies in its ``(x0, y0, x1, y1)`` box (exclusive).

    ``peaks_yx`` is ``(N, 2)``, ``boxes`` ``(N, 4)``; the box is grown by
    ``margin`` pixels on every side. Returns a bool array of shape ``(N,)``.
    """
    peaks = np.asarray(peaks_yx, dtype=np.float64).reshape(-1, 2)
    b = np.asarray(boxes.cpu() if isinstance(boxes, torch.Tensor) else boxes, dtype=np.float64).reshape(-1, 4)
    if len(peaks) != len(b):
        raise ValueError(f"{len(peaks)} peaks but {len(b)} boxes")
    y, x = peaks[:, 0], peaks[:, 1]
    x0, y0, x1, y1 = b[:, 0] - margin, b[:, 1] - margin, b[:, 2] + margin, b[:, 3] + margin
    return (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
