"""A synthetic image-classification task whose evidence location is known.

Each image shows a cluttered background (low-contrast noise, a colour
gradient, thin lines and soft blobs in random colours, none of which decides
the class) and exactly one *object*, pasted at a random position, whose
content decides the class. Its bounding box (and pixel mask) is recorded, so a
class activation map can be checked against the true evidence location (the
"pointing game").

Two variants (``SyntheticShapes(kind=...)``):

* ``"textures"`` (the default, used by :func:`make_dataset` and the reference
  model): the object is a square or a disc (at random, not class-defining)
  filled with a two-colour pattern: horizontal stripes, vertical stripes, a
  checkerboard or dots. Every part of the object is evidence, and a small CNN
  learns it in a few epochs.
* ``"shapes"``: the object is a flat-coloured square, disc, triangle or cross.
  Harder to learn: a small CNN needs several times as many training steps,
  which is why the reference model uses textures.

Colours and size (12-22 px on a 64 px image) are random, so only the pattern
(or shape) is evidence. The module also provides a small torchvision-style
ResNet (:func:`build_model`), a deterministic CPU training loop (:func:`train`)
and :func:`train_reference_model`.

For introspect's tests and scripts (see :mod:`introspect.testing`), not the public API.
:func:`points_in_boxes` is :func:`introspect.geometry.points_in_boxes`, the hit test of
:meth:`introspect.records.PointingGame.hits`.

Images are float32 in [0, 1]; the model expects them normalised with
:data:`MEAN` / :data:`STD` (see :func:`normalize`), which :func:`train`,
:func:`predict` and :func:`accuracy` do themselves.
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

from ..errors import ArgumentError
from ..geometry import points_in_boxes
from ..loaded import device_and_dtype

__all__ = [
    "CLASS_NAMES",
    "TEXTURE_CLASSES",
    "SHAPE_CLASSES",
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

TEXTURE_CLASSES: tuple[str, ...] = ("hstripes", "vstripes", "checker", "dots")
"""Class names of the ``"textures"`` task, indexed by label."""

SHAPE_CLASSES: tuple[str, ...] = ("square", "disc", "triangle", "cross")
"""Class names of the ``"shapes"`` task, indexed by label."""

CLASS_NAMES: tuple[str, ...] = TEXTURE_CLASSES
"""Class names of the default task (what :func:`make_dataset` generates)."""

MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
"""Per-channel mean used to normalise images before they enter the model."""

STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
"""Per-channel standard deviation used to normalise images."""

# Settings of the reference model (tuned on a 2-core CPU; see train_reference_model).
REFERENCE_TRAIN_SAMPLES = 3000
REFERENCE_TEST_SAMPLES = 200
REFERENCE_EPOCHS = 5
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
    """Generator of the synthetic task.

    Deterministic given ``seed``: the same seed gives the same images, labels,
    boxes and masks. Labels are balanced (a shuffled repetition of all classes).

    Args:
        image_size: side of the square images in pixels (at least 32).
        kind: ``"textures"`` (patterned square/disc; the default) or
            ``"shapes"`` (flat square/disc/triangle/cross); see the module doc.
        min_size, max_size: range of the object's side / diameter in pixels
            for a 64 px image (scaled by ``image_size / 64``).
    """

    def __init__(
        self, image_size: int = 64, kind: str = "textures", min_size: int = 12, max_size: int = 22
    ) -> None:
        if image_size < 32:
            raise ArgumentError(f"image_size={image_size} must be at least 32", parameter="image_size")
        if kind not in ("textures", "shapes"):
            raise ArgumentError(f"kind={kind!r} must be 'textures' or 'shapes'", parameter="kind")
        if not 4 <= min_size <= max_size:
            raise ArgumentError(f"min_size={min_size}, max_size={max_size}: need 4 <= min_size <= max_size",
                                parameter="min_size")
        scale = image_size / 64.0
        self.image_size = image_size
        self.kind = kind
        self.class_names: tuple[str, ...] = TEXTURE_CLASSES if kind == "textures" else SHAPE_CLASSES
        self.min_size = max(4, round(min_size * scale))
        self.max_size = min(image_size, max(self.min_size, round(max_size * scale)))
        yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32)
        self._yy = yy
        self._xx = xx

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    # ---------------------------------------------------------------- shapes
    def _shape_mask(self, name: str, size: int, x0: int, y0: int, rng: np.random.Generator) -> np.ndarray:
        """Boolean mask of shape ``name`` (a SHAPE_CLASSES name) whose box starts at (x0, y0)."""
        xx, yy = self._xx, self._yy
        s = float(size)
        # coordinates relative to the box, pixel centres at +0.5
        u = xx - x0 + 0.5
        v = yy - y0 + 0.5
        inside = (u >= 0) & (u <= s) & (v >= 0) & (v <= s)
        if name == "square":
            return inside
        if name == "disc":
            r = s / 2.0
            return (u - r) ** 2 + (v - r) ** 2 <= r * r
        if name == "triangle":
            # isosceles triangle, apex up or down; base along the box's bottom/top
            if rng.random() < 0.5:
                v = s - v
            half = (v + 1.0) / 2.0  # apex row at v = 0, base (full width) at v = s
            return inside & (np.abs(u - s / 2.0) <= half)
        if name == "cross":
            t = max(2.0, s * rng.uniform(0.28, 0.38)) / 2.0
            c = s / 2.0
            return inside & ((np.abs(u - c) <= t) | (np.abs(v - c) <= t))
        raise AssertionError(name)

    def _pattern(self, name: str, x0: int, y0: int, rng: np.random.Generator) -> np.ndarray:
        """Boolean "on" pixels of texture ``name`` (a TEXTURE_CLASSES name), anchored at (x0, y0)."""
        period = 2 * int(rng.integers(2, 4))  # 4 or 6 px
        half = period // 2
        px = (self._xx.astype(np.int64) - x0 + int(rng.integers(0, period))) % period
        py = (self._yy.astype(np.int64) - y0 + int(rng.integers(0, period))) % period
        if name == "hstripes":
            return py < half
        if name == "vstripes":
            return px < half
        if name == "checker":
            return (px < half) == (py < half)
        if name == "dots":
            return (px < half) & (py < half)
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
        # thin (about 1 px) straight lines in random colours; never within 20
        # degrees of horizontal or vertical, so a line cannot pass for a stripe
        for _ in range(int(rng.integers(2, 6))):
            colour = rng.uniform(0.0, 1.0, size=(3, 1, 1)).astype(np.float32)
            px, py = rng.uniform(0, n, size=2)
            theta = math.radians(rng.uniform(20.0, 70.0) + 90.0 * int(rng.integers(0, 2)))
            dx, dy = math.cos(theta), math.sin(theta)
            half_len = rng.uniform(0.2, 0.6) * n
            rx, ry = xx - px, yy - py
            line = (np.abs(ry * dx - rx * dy) <= 0.5) & (np.abs(rx * dx + ry * dy) <= half_len)
            w = line * np.float32(rng.uniform(0.4, 0.9))
            img += w * (colour - img)
        # soft Gaussian blobs (no sharp edges, so they do not look like objects)
        for _ in range(int(rng.integers(2, 6))):
            colour = rng.uniform(0.0, 1.0, size=(3, 1, 1)).astype(np.float32)
            px, py = rng.uniform(0, n, size=2)
            sigma = rng.uniform(1.0, 2.5) * n / 64.0
            amp = rng.uniform(0.4, 0.8)
            r = int(math.ceil(3 * sigma))
            ya, yb = max(0, int(py) - r), min(n, int(py) + r + 1)
            xa, xb = max(0, int(px) - r), min(n, int(px) + r + 1)
            if ya >= yb or xa >= xb:
                continue
            d2 = (xx[ya:yb, xa:xb] - px) ** 2 + (yy[ya:yb, xa:xb] - py) ** 2
            w = (np.exp(-d2 / (2 * sigma * sigma)) * amp).astype(np.float32)
            patch = img[:, ya:yb, xa:xb]
            patch += w * (colour - patch)

    def _contrasting_colour(
        self, others: list[np.ndarray], gaps: list[float], rng: np.random.Generator
    ) -> np.ndarray:
        """A random colour whose largest channel difference to ``others[i]`` is >= ``gaps[i]``."""
        colour = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
        for _ in range(100):
            if all(np.abs(colour - o).max() >= g for o, g in zip(others, gaps)):
                return colour
            colour = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
        # practically unreachable: the colour farthest from the first reference
        return np.where(others[0] > 0.5, 0.0, 1.0).astype(np.float32)

    # ---------------------------------------------------------------- sample
    def sample(self, label: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One image of class ``label``: ``(image (3,H,W) float32, box (4,) int64, mask (H,W) bool)``."""
        n = self.image_size
        img = self._background(rng)
        self._draw_distractors(img, rng)
        size = int(rng.integers(self.min_size, self.max_size + 1))
        x0 = int(rng.integers(0, n - size + 1))
        y0 = int(rng.integers(0, n - size + 1))
        name = self.class_names[label]
        if self.kind == "shapes":
            mask = self._shape_mask(name, size, x0, y0, rng)
            local = img[:, mask].mean(axis=1)
            colour = self._contrasting_colour([local], [0.35], rng)
            img[:, mask] = colour[:, None]
        else:
            outline = SHAPE_CLASSES[int(rng.integers(0, 2))]  # square or disc, not class-defining
            mask = self._shape_mask(outline, size, x0, y0, rng)
            local = img[:, mask].mean(axis=1)
            on_colour = self._contrasting_colour([local], [0.35], rng)
            off_colour = self._contrasting_colour([on_colour, local], [0.4, 0.25], rng)
            on = self._pattern(name, x0, y0, rng)
            img[:, mask] = np.where(on[mask], on_colour[:, None], off_colour[:, None])
        # slight shading noise on the object so it is not perfectly flat
        img[:, mask] += rng.normal(0.0, 0.02, size=(3, int(mask.sum()))).astype(np.float32)
        ys, xs = np.nonzero(mask)
        box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.int64)
        np.clip(img, 0.0, 1.0, out=img)
        return img, box, mask

    def generate(self, n: int, seed: int) -> SyntheticDataset:
        """Generate ``n`` samples deterministically from ``seed``."""
        if n < 0:
            raise ArgumentError(f"n={n} must be 0 or more", parameter="n")
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


def make_dataset(n: int, seed: int, image_size: int = 64, kind: str = "textures") -> SyntheticDataset:
    """Generate ``n`` samples of the synthetic task, deterministically from ``seed``.

    ``kind`` picks the variant (``"textures"``, the default, or ``"shapes"``).
    """
    return SyntheticShapes(image_size=image_size, kind=kind).generate(n, seed)


# -------------------------------------------------------------------------- model


class SmallResNet(ResNet):
    """A narrow ResNet with torchvision's structure and module names.

    It *is* a :class:`torchvision.models.resnet.ResNet` (``conv1``, ``bn1``,
    ``relu``, ``maxpool``, ``layer1`` .. ``layer4``, ``avgpool``, ``fc``) built
    from torchvision's :class:`BasicBlock`, one block per stage, but with
    channel widths ``widths`` instead of 64..512, a 3x3 stride-2 stem, no
    max-pool, and per-stage strides ``strides``. The defaults (about 43k
    parameters) downsample a 64x64 input only 4x, to a 16x16 map at
    ``layer4``, so a class activation map has 4 px cells: with an 8x8 map the
    hand-made Grad-CAM pointing game drops from about 99 % to about 93 %.
    """

    def __init__(
        self,
        num_classes: int = 4,
        widths: tuple[int, int, int, int] = (16, 16, 32, 32),
        strides: tuple[int, int, int, int] = (1, 2, 1, 1),
    ) -> None:
        # Build the ordinary (wide) torchvision ResNet first so every attribute
        # ResNet.forward relies on exists, then replace the layers by narrow ones.
        super().__init__(BasicBlock, [1, 1, 1, 1], num_classes=num_classes)
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.maxpool = nn.Identity()
        inplanes = widths[0]
        for i, (planes, stride) in enumerate(zip(widths, strides)):
            setattr(self, f"layer{i + 1}", _stage(inplanes, planes, stride))
            inplanes = planes
        self.fc = nn.Linear(inplanes, num_classes)
        self.inplanes = inplanes
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
    if epochs < 1:
        raise ArgumentError(f"epochs={epochs} must be at least 1", parameter="epochs")
    if batch_size < 1:
        raise ArgumentError(f"batch_size={batch_size} must be at least 1", parameter="batch_size")
    if len(train_set) == 0:
        raise ArgumentError("train_set is empty: give at least one sample", parameter="train_set")
    generator = torch.Generator().manual_seed(seed)
    device = device_and_dtype(model)[0]
    inputs = normalize(train_set.images).to(device)
    labels = train_set.labels.to(device)
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
                    idx = idx.to(device)
                    optimizer.zero_grad(set_to_none=True)
                    loss = loss_fn(model(inputs[idx]), labels[idx])
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    total += loss.item() * len(idx)
                    count += len(idx)
                losses.append(total / count)
                if log is not None:
                    seconds = time.perf_counter() - start
                    log(f"epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f} ({seconds:.1f} s)")
    finally:
        model.train(was_training)
    return losses


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Predicted labels for images in [0, 1] (runs in eval mode, restores the mode)."""
    was_training = model.training
    device = device_and_dtype(model)[0]
    images = images.to(device)
    model.eval()
    try:
        out = [
            model(normalize(images[i : i + batch_size])).argmax(1) for i in range(0, len(images), batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(out).cpu() if out else torch.empty(0, dtype=torch.int64)


def accuracy(model: nn.Module, dataset: SyntheticDataset) -> float:
    """Fraction of ``dataset`` that ``model`` classifies correctly (eval mode, mode restored)."""
    if len(dataset) == 0:
        return float("nan")
    return float((predict(model, dataset.images) == dataset.labels).float().mean())


def train_reference_model(
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    num_threads: int | None = 1,
) -> tuple[nn.Module, SyntheticDataset]:
    """Train the reference model; return it (in eval mode) and a held-out test set.

    Trains :func:`build_model` on 3000 "textures" samples generated from
    ``seed`` for 5 epochs and returns 200 test samples generated from a
    different seed. Reaches about 99 % held-out accuracy.

    ``num_threads`` is the number of torch CPU threads used while training
    (restored afterwards; ``None`` leaves torch's setting alone). The default
    of one thread takes about 30 s of CPU time; it makes the result
    independent of the machine's core count (float sums depend on the thread
    count; with a fixed count, runs are bit-for-bit repeatable), and it avoids
    a pathology on busy machines: with two threads on two cores shared with
    other work, each training step was measured 5-10 times slower than with
    one thread.
    The global torch RNG is left as it was.
    """
    train_set = make_dataset(REFERENCE_TRAIN_SAMPLES, seed=seed)
    test_set = make_dataset(REFERENCE_TEST_SAMPLES, seed=seed + 1_000_003)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(len(train_set.class_names))
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        train(
            model,
            train_set,
            epochs=REFERENCE_EPOCHS,
            batch_size=REFERENCE_BATCH_SIZE,
            lr=REFERENCE_LR,
            seed=seed,
            log=log,
        )
    finally:
        if num_threads is not None:
            torch.set_num_threads(previous_threads)
    model.eval()
    return model, test_set
