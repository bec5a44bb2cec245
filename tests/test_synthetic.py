"""Tests of the synthetic task and its reference model (introspect.testing.synthetic).

The last tests train the reference model once per session (about 35 s of
CPU time, one thread) and check its held-out accuracy and a hand-made
Grad-CAM "pointing game": the CAM's peak must fall in the object's box
(seed 0: 99.5 % accuracy, 99.5 % of peaks within 2 px of the box).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.models.resnet import ResNet

from introspect.testing import synthetic
from introspect.testing.synthetic import (
    MEAN,
    SHAPE_CLASSES,
    STD,
    TEXTURE_CLASSES,
    SyntheticDataset,
    accuracy,
    build_model,
    make_dataset,
    normalize,
    points_in_boxes,
    train,
)


@pytest.fixture(scope="module", params=["textures", "shapes"])
def small_set(request: pytest.FixtureRequest) -> SyntheticDataset:
    return make_dataset(64, seed=123, kind=request.param)


# --------------------------------------------------------------------- dataset


def test_dataset_is_deterministic_per_seed() -> None:
    a = make_dataset(12, seed=7)
    b = make_dataset(12, seed=7)
    c = make_dataset(12, seed=8)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.boxes, b.boxes)
    assert torch.equal(a.masks, b.masks)
    assert not torch.equal(a.images, c.images)


def test_shapes_and_dtypes(small_set: SyntheticDataset) -> None:
    n = len(small_set)
    assert small_set.images.shape == (n, 3, 64, 64)
    assert small_set.images.dtype == torch.float32
    assert small_set.labels.shape == (n,)
    assert small_set.labels.dtype == torch.int64
    assert small_set.boxes.shape == (n, 4)
    assert small_set.boxes.dtype == torch.int64
    assert small_set.masks.shape == (n, 64, 64)
    assert small_set.masks.dtype == torch.bool
    assert small_set.class_names in (TEXTURE_CLASSES, SHAPE_CLASSES)
    assert float(small_set.images.min()) >= 0.0
    assert float(small_set.images.max()) <= 1.0
    image, label = small_set[0]
    assert image.shape == (3, 64, 64) and isinstance(label, int)


def test_default_task_is_textures() -> None:
    assert make_dataset(2, seed=0).class_names == TEXTURE_CLASSES == synthetic.CLASS_NAMES
    assert make_dataset(2, seed=0, kind="shapes").class_names == SHAPE_CLASSES
    with pytest.raises(ValueError):
        make_dataset(2, seed=0, kind="stars")


def test_other_image_size() -> None:
    ds = make_dataset(4, seed=0, image_size=96)
    assert ds.images.shape == (4, 3, 96, 96)
    assert int(ds.boxes[:, 2:].max()) <= 96


def test_dataset_is_frozen(small_set: SyntheticDataset) -> None:
    with pytest.raises(AttributeError):
        small_set.labels = torch.zeros(1)  # type: ignore[misc]


def test_classes_are_balanced() -> None:
    ds = make_dataset(403, seed=1)
    counts = torch.bincount(ds.labels, minlength=4)
    assert int(counts.max() - counts.min()) <= 1
    assert int(counts.sum()) == 403


def test_boxes_lie_inside_image_and_have_object_size(small_set: SyntheticDataset) -> None:
    x0, y0, x1, y1 = small_set.boxes.T
    assert bool(((x0 >= 0) & (y0 >= 0) & (x1 <= 64) & (y1 <= 64)).all())
    w, h = x1 - x0, y1 - y0
    assert bool(((w >= 12) & (w <= 23) & (h >= 12) & (h <= 23)).all())


def test_object_pixels_lie_in_their_box_and_box_is_tight(small_set: SyntheticDataset) -> None:
    for i in range(len(small_set)):
        mask = small_set.masks[i]
        x0, y0, x1, y1 = small_set.boxes[i].tolist()
        inside = torch.zeros_like(mask)
        inside[y0:y1, x0:x1] = True
        assert not bool((mask & ~inside).any()), f"sample {i}: object pixels outside its box"
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) == (x0, y0, x1, y1)
        # every shape fills a good part of its box
        assert float(mask.float().sum()) >= 0.3 * (x1 - x0) * (y1 - y0)


def test_object_stands_out_from_background(small_set: SyntheticDataset) -> None:
    """Every object pixel differs from the background right around the box."""
    for i in range(len(small_set)):
        img = small_set.images[i]
        mask = small_set.masks[i]
        x0, y0, x1, y1 = small_set.boxes[i].tolist()
        ring = torch.zeros_like(mask)
        ring[max(0, y0 - 3) : y1 + 3, max(0, x0 - 3) : x1 + 3] = True
        ring &= ~mask
        background = img[:, ring].median(dim=1).values
        diff = (img[:, mask] - background[:, None]).abs().amax(dim=0)
        assert float((diff > 0.1).float().mean()) >= 0.95, f"sample {i}: object does not stand out"


def _neighbour_differences(img: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """Mean colour change between horizontal / vertical neighbours inside ``mask``."""
    both = mask[:, 1:] & mask[:, :-1]
    horizontal = (img[:, :, 1:] - img[:, :, :-1]).abs().amax(dim=0)[both].mean()
    both = mask[1:, :] & mask[:-1, :]
    vertical = (img[:, 1:, :] - img[:, :-1, :]).abs().amax(dim=0)[both].mean()
    return float(horizontal), float(vertical)


def test_object_content_matches_its_class() -> None:
    """Textures: stripes run the right way, checkers and dots vary both ways; shapes are flat."""
    textures = make_dataset(80, seed=4)
    for i in range(len(textures)):
        h, v = _neighbour_differences(textures.images[i], textures.masks[i])
        name = textures.class_names[int(textures.labels[i])]
        if name == "hstripes":
            assert h < 0.06 < v, (i, h, v)
        elif name == "vstripes":
            assert v < 0.06 < h, (i, h, v)
        else:
            assert h > 0.06 and v > 0.06, (i, name, h, v)
    shapes = make_dataset(40, seed=4, kind="shapes")
    for i in range(len(shapes)):
        h, v = _neighbour_differences(shapes.images[i], shapes.masks[i])
        assert h < 0.06 and v < 0.06, (i, h, v)


@pytest.mark.parametrize("kind", ["textures", "shapes"])
def test_colour_is_not_a_shortcut(kind: str) -> None:
    ds = make_dataset(400, seed=5, kind=kind)
    means = torch.stack([ds.images[i][:, ds.masks[i]].mean(dim=1) for i in range(len(ds))])
    per_class = torch.stack([means[ds.labels == k].mean(dim=0) for k in range(4)])
    assert float((per_class - per_class.mean(dim=0)).abs().max()) < 0.1


def test_normalize() -> None:
    assert MEAN == (0.5, 0.5, 0.5) and STD == (0.5, 0.5, 0.5)
    x = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    y = normalize(x)
    assert torch.allclose(y[:, :, 0, 0], torch.tensor([-1.0, 0.0, 1.0]).expand(2, 3))
    assert normalize(x[0]).shape == (3, 2, 2)


# ------------------------------------------------------------------ scoring helper


def test_points_in_boxes() -> None:
    boxes = np.array([[10, 20, 30, 40], [10, 20, 30, 40], [10, 20, 30, 40], [10, 20, 30, 40]])
    peaks = np.array([[20, 10], [39, 29], [40, 29], [19, 9]])  # (y, x)
    assert points_in_boxes(peaks, boxes).tolist() == [True, True, False, False]
    assert points_in_boxes(peaks, torch.from_numpy(boxes), margin=1).tolist() == [True, True, True, True]
    assert points_in_boxes(peaks, boxes).dtype == np.bool_
    with pytest.raises(ValueError):
        points_in_boxes(peaks[:2], boxes)


# ------------------------------------------------------------------------ model


def test_model_looks_like_torchvision_resnet() -> None:
    model = build_model(4)
    assert isinstance(model, ResNet)
    for name in ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"):
        assert hasattr(model, name)
    feats: dict[str, torch.Tensor] = {}
    handle = model.layer4.register_forward_hook(lambda m, i, o: feats.__setitem__("a", o))
    out = model(torch.zeros(2, 3, 64, 64))
    handle.remove()
    assert out.shape == (2, 4)
    assert feats["a"].shape[-2:] == (16, 16)  # fine enough for CAMs to point at 12-22 px objects
    assert sum(p.numel() for p in model.parameters()) < 200_000


def test_train_is_deterministic_and_accuracy_restores_mode() -> None:
    ds = make_dataset(40, seed=2)
    losses = []
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model(4)
        rng_before = torch.get_rng_state()
        losses.append(train(model, ds, epochs=2, batch_size=16, lr=1e-3, seed=3))
        assert torch.equal(torch.get_rng_state(), rng_before)  # global RNG untouched
        states.append(model.state_dict())
    assert losses[0] == losses[1] and len(losses[0]) == 2
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    model.train()
    acc = accuracy(model, ds)
    assert 0.0 <= acc <= 1.0 and model.training
    model.eval()
    accuracy(model, ds)
    assert not model.training


# ------------------------------------------------------------- trained reference


def hand_grad_cam_peaks(model: torch.nn.Module, dataset: SyntheticDataset) -> np.ndarray:
    """Plain Grad-CAM on ``model.layer4`` for the true class; ``(N, 2)`` (y, x) peaks."""
    acts: list[torch.Tensor] = []
    handle = model.layer4.register_forward_hook(lambda m, i, o: acts.append(o))
    try:
        scores = model(normalize(dataset.images))
    finally:
        handle.remove()
    activation = acts[0]
    target = scores.gather(1, dataset.labels[:, None]).sum()
    (grads,) = torch.autograd.grad(target, activation)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activation).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=dataset.images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    flat = cam.flatten(1).argmax(dim=1)
    width = cam.shape[-1]
    return torch.stack([flat // width, flat % width], dim=1).detach().numpy()


@pytest.mark.slow
def test_reference_model_is_accurate(trained_synthetic: tuple[torch.nn.Module, SyntheticDataset]) -> None:
    model, test_set = trained_synthetic
    assert not model.training
    assert len(test_set) == 200
    acc = accuracy(model, test_set)
    assert acc >= 0.95, f"held-out accuracy {acc:.3f}"
    assert not model.training


@pytest.mark.slow
def test_test_set_is_held_out(trained_synthetic: tuple[torch.nn.Module, SyntheticDataset]) -> None:
    _, test_set = trained_synthetic
    train_head = make_dataset(50, seed=0)
    assert not torch.equal(train_head.images[:5], test_set.images[:5])


@pytest.mark.slow
def test_hand_made_grad_cam_points_at_the_object(
    trained_synthetic: tuple[torch.nn.Module, SyntheticDataset],
) -> None:
    model, test_set = trained_synthetic
    peaks = hand_grad_cam_peaks(model, test_set)
    hits = points_in_boxes(peaks, test_set.boxes, margin=2)
    assert hits.mean() >= 0.90, f"pointing game {hits.mean():.3f}"


def test_module_exports() -> None:
    for name in synthetic.__all__:
        assert hasattr(synthetic, name)
