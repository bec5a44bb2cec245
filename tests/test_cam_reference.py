"""introspect.cam agrees with pytorch-grad-cam, method by method, on CNNs and transformers.

Every reference map comes from pytorch-grad-cam called the ordinary way (one call per
class rank, the batch of images with one ClassifierOutputTarget each) on a copy of the
model, with the target layer and reshape transform written out here (the tutorial's),
not taken from introspect. Maps are compared after pytorch-grad-cam's normalisation.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import introspect
from introspect.analyzers.cam import CAM_METHODS

TOLERANCE = 1e-4
CLASS_AGNOSTIC = {"eigencam", "fem", "kpcacam"}  # the same map for every class, by definition
RANDOM = {"randomcam"}


# -- helpers -----------------------------------------------------------------------


def _sign_corrected_references():
    """pytorch-grad-cam's EigenCAM / EigenGradCAM with the SVD sign fixed the way introspect fixes it.

    pytorch-grad-cam leaves the first component's sign to the SVD, so some of its maps are the
    negative of the projection; introspect makes EigenCAM's larger-magnitude side positive (the rule
    of pytorch-grad-cam's own ``get_2d_projection_with_sign_correction``) and aligns EigenGradCAM's
    projection with the class evidence (sum of gradient x activation). Everything else (SVD,
    ReLU, scaling, resize) is pytorch-grad-cam's.
    """
    from pytorch_grad_cam import EigenCAM, EigenGradCAM
    from pytorch_grad_cam.utils.svd_on_activations import (
        get_2d_projection,
        get_2d_projection_with_sign_correction,
    )

    class SignCorrectedEigenCAM(EigenCAM):
        def get_cam_image(self, input_tensor, target_layer, target_category, activations, grads, eigen_smooth):
            return get_2d_projection_with_sign_correction(activations)

    class EvidenceAlignedEigenGradCAM(EigenGradCAM):
        def get_cam_image(self, input_tensor, target_layer, target_category, activations, grads, eigen_smooth):
            projection = get_2d_projection(grads * activations)
            evidence = (grads * activations).sum(axis=1)
            flip = (projection * evidence).sum(axis=(-2, -1)) < 0
            projection[flip] *= -1
            return projection

    return {"eigencam": SignCorrectedEigenCAM, "eigengradcam": EvidenceAlignedEigenGradCAM}


def reference_class(method: str):
    """The pytorch-grad-cam class whose maps introspect's ``method`` must equal."""
    import pytorch_grad_cam

    return _sign_corrected_references().get(method) or getattr(pytorch_grad_cam, CAM_METHODS[method].delegate)


def photo_batch(paths, size: int) -> torch.Tensor:
    """Photos resized to size x size and ImageNet-normalised (N, 3, size, size)."""
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    tensors = []
    for path in paths:
        image = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
        pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
        tensors.append((pixels - mean) / std)
    return torch.stack(tensors)


def our_maps(model, inputs, methods, layer=None, topk=2):
    """{method: (N, k, H, W) heatmaps}, and the (N, k) classes introspect chose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. FullGrad's "target_layers is ignored"
        results = introspect.cam(model, inputs, methods, layer=layer, topk=topk)
    maps: dict[str, list] = {}
    for result in results:
        maps.setdefault(result.method, []).append(np.stack([m.heatmap for m in result.maps]))
    classes = np.array([[m.class_index for m in r.maps] for r in results if r.method == results[0].method])
    return {name: np.stack(per_image) for name, per_image in maps.items()}, classes, results


def reference_maps(model, target_layer, method, inputs, classes, reshape=None) -> np.ndarray:
    """pytorch-grad-cam's maps (N, k, H, W): one call per class rank j, targets classes[:, j]."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    explainer_class = reference_class(method)
    if method == "finercam":  # FinerCAM picks each class's 3 closest-scoring rivals itself, given target_idx
        return finer_reference(model, target_layer, inputs, classes, reshape)
    per_rank = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for j in range(1 if method in CLASS_AGNOSTIC else classes.shape[1]):
            with explainer_class(model=model, target_layers=[target_layer], reshape_transform=reshape) as explainer:
                targets = [ClassifierOutputTarget(int(c)) for c in classes[:, j]]
                per_rank.append(explainer(input_tensor=inputs, targets=targets))
    if len(per_rank) < classes.shape[1]:  # a class-agnostic method: the same map for every class
        per_rank *= classes.shape[1]
    return np.stack(per_rank, axis=1)


def finer_reference(model, target_layer, inputs, classes, reshape=None) -> np.ndarray:
    """pytorch-grad-cam's FinerCAM (N, k, H, W): one call per image and class, with its own comparison classes."""
    from pytorch_grad_cam import FinerCAM

    maps = np.zeros((inputs.shape[0], classes.shape[1], *inputs.shape[-2:]), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n in range(inputs.shape[0]):
            for j in range(classes.shape[1]):
                with FinerCAM(model=model, target_layers=[target_layer], reshape_transform=reshape) as explainer:
                    maps[n, j] = explainer(input_tensor=inputs[n:n + 1], targets=None,
                                           target_idx=int(classes[n, j]))[0]
    return maps


def reference_repeated(model, target_layer, method, image, classes, reshape=None) -> np.ndarray:
    """pytorch-grad-cam's maps for one image (1, k, H, W), all k classes in one batched call."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    k = 1 if method in CLASS_AGNOSTIC else len(classes)  # class-agnostic: one map serves every class
    explainer_class = reference_class(method)
    with explainer_class(model=model, target_layers=[target_layer], reshape_transform=reshape) as explainer:
        maps = explainer(input_tensor=image.repeat(k, 1, 1, 1),
                         targets=[ClassifierOutputTarget(int(c)) for c in classes[:k]])
    return np.repeat(maps[None], len(classes) // k, axis=1)


def assert_informative(maps: np.ndarray, method: str) -> None:
    """Guard against vacuous agreement: most maps span [0, 1], images differ, classes differ.

    (A map can be blank legitimately: every location's weighted sum negative, cut by the ReLU.)
    """
    flat = maps.reshape(*maps.shape[:2], -1)
    spanning = flat.max(-1) - flat.min(-1) > 0.5
    assert spanning.mean() >= 0.5, f"{method}: most reference maps are (nearly) constant: {spanning.tolist()}"
    if maps.shape[0] > 1:
        assert np.abs(maps[0] - maps[1]).max() > 1e-3, f"{method}: both images gave the same map"
    if maps.shape[1] > 1 and method not in CLASS_AGNOSTIC:
        assert np.abs(maps[:, 0] - maps[:, 1]).max() > 1e-3, f"{method}: both classes gave the same map"


def assert_matches(ours: np.ndarray, reference: np.ndarray, method: str) -> None:
    assert ours.shape == reference.shape, f"{method}: shape {ours.shape} vs reference {reference.shape}"
    assert np.isfinite(ours).all()
    difference = float(np.abs(ours - reference).max())
    assert difference <= TOLERANCE, f"{method}: max |ours - pytorch-grad-cam| = {difference:.2e}"


def vit_reshape(tokens: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam tutorial's ViT transform: drop the class token, tokens -> (N, C, 14, 14)."""
    side = int(round((tokens.shape[1] - 1) ** 0.5))
    grid = tokens[:, 1:, :].reshape(tokens.size(0), side, side, tokens.size(2))
    return grid.transpose(2, 3).transpose(1, 2)


def swin_reshape(features: torch.Tensor) -> torch.Tensor:
    """torchvision Swin's (N, H, W, C) output -> (N, C, H, W)."""
    return features.transpose(2, 3).transpose(1, 2)


# -- fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def photos(sample_cat, sample_coffee):
    return [sample_cat, sample_coffee]


@pytest.fixture(scope="module")
def small_model():
    from conftest import SmallConvNet, _randomise_batchnorm

    torch.manual_seed(0)
    model = SmallConvNet(num_classes=10, width=16)
    _randomise_batchnorm(model, torch.Generator().manual_seed(1))
    return model.eval()


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


# -- every method on a small CNN (16-channel target layer, 64 x 64, 2 images, top-2) ---


@pytest.mark.parametrize("method", [m for m in CAM_METHODS if m not in RANDOM])
def test_small_cnn_matches_pytorch_grad_cam(method, small_model, photos):
    inputs = photo_batch(photos, 64)
    maps, classes, results = our_maps(small_model, inputs, method)
    ours = maps[method]
    assert ours.shape == (2, 2, 64, 64)
    assert [r.layer for r in results] == ["features", "features"]
    logits = small_model(inputs).detach()
    assert (classes == logits.topk(2, dim=-1).indices.numpy()).all()
    probabilities = torch.softmax(logits, -1)
    for n, result in enumerate(results):
        for entry in result.maps:
            assert entry.probability == pytest.approx(float(probabilities[n, entry.class_index]), abs=1e-5)

    reference_model = copy.deepcopy(small_model)
    reference = reference_maps(reference_model, reference_model.features, method, inputs, classes)
    assert_informative(reference, method)
    assert_matches(ours, reference, method)


def test_randomcam_maps_are_valid(small_model, photos):
    inputs = photo_batch(photos, 64)
    maps, classes, _ = our_maps(small_model, inputs, "randomcam")
    heatmaps = maps["randomcam"]
    assert heatmaps.shape == (2, 2, 64, 64) and heatmaps.dtype == np.float32
    assert np.isfinite(heatmaps).all()
    assert heatmaps.min() >= 0.0 and heatmaps.max() <= 1.0
    spans = heatmaps.reshape(4, -1)
    assert ((spans.max(-1) > 0.99) | (spans.max(-1) == 0)).all()  # min-max scaled, or blank (all weights < 0)


def test_explicit_targets_pick_those_classes(small_model, photos):
    inputs = photo_batch(photos, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = introspect.cam(small_model, inputs, "gradcam", targets=[7, 2])
    classes = np.array([[m.class_index for m in r.maps] for r in results])
    assert (classes == [[7, 2], [7, 2]]).all()
    reference_model = copy.deepcopy(small_model)
    reference = reference_maps(reference_model, reference_model.features, "gradcam", inputs, classes)
    assert_matches(np.stack([[m.heatmap for m in r.maps] for r in results]), reference, "gradcam")


# -- a torchvision CNN family: resnet18 at 96 px ---------------------------------------

RESNET_METHODS = ["gradcam", "gradcam++", "layercam", "eigencam", "fullgrad"]  # fast path and one delegated


def test_resnet18_matches_pytorch_grad_cam(resnet18, photos):
    inputs = photo_batch(photos, 96)
    maps, classes, results = our_maps(resnet18, inputs, ",".join(RESNET_METHODS))
    assert {r.layer for r in results} == {"layer4"}
    reference_model = copy.deepcopy(resnet18)
    for method in RESNET_METHODS:
        reference = reference_maps(reference_model, reference_model.layer4, method, inputs, classes)
        assert_informative(reference, method)
        assert_matches(maps[method], reference, method)


# -- transformers with their reshape transforms -----------------------------------------


def test_vit_b_16_matches_pytorch_grad_cam(sample_cat):
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None).eval()
    with torch.no_grad():  # torchvision zero-initialises the head: every logit 0, every gradient 0
        model.heads.head.weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(0))
    image = photo_batch([sample_cat], 224)
    maps, classes, results = our_maps(model, image, "gradcam,eigencam")
    assert {r.layer for r in results} == {"encoder.layers.encoder_layer_11.ln_1"}
    target = model.encoder.layers[-1].ln_1
    for method in ("gradcam", "eigencam"):
        reference = reference_repeated(model, target, method, image, classes[0], reshape=vit_reshape)
        assert_informative(reference, method)
        assert_matches(maps[method], reference, method)


def test_swin_t_matches_pytorch_grad_cam(sample_cat):
    torch.manual_seed(0)
    model = torchvision.models.swin_t(weights=None).eval()
    image = photo_batch([sample_cat], 128)  # a 4 x 4 final grid: the 7 x 7 windows are padded
    maps, classes, results = our_maps(model, image, "gradcam,eigencam")
    assert {r.layer for r in results} == {"norm"}
    assert maps["gradcam"].shape == (1, 2, 128, 128)
    for method in ("gradcam", "eigencam"):
        reference = reference_repeated(model, model.norm, method, image, classes[0], reshape=swin_reshape)
        assert_informative(reference, method)
        assert_matches(maps[method], reference, method)


# -- how the gradients are taken --------------------------------------------------------


def test_gradient_methods_write_nothing_into_grad(small_model, photos):
    model = copy.deepcopy(small_model)
    inputs = photo_batch(photos, 64)
    accumulated: list[str] = []
    handles = [p.register_post_accumulate_grad_hook(lambda p, name=name: accumulated.append(name))
               for name, p in model.named_parameters()]
    try:
        gradient_methods = [n for n, m in CAM_METHODS.items() if not m.delegated and m.uses_gradients]
        our_maps(model, inputs, ",".join(gradient_methods))
        assert accumulated == []
        assert all(p.grad is None for p in model.parameters())
        # The detector works: pytorch-grad-cam's own Grad-CAM (a full backward) fills .grad.
        classes = np.array([[0, 1], [0, 1]])
        reference_maps(model, model.features, "gradcam", inputs, classes)
        assert "features.0.weight" in accumulated
    finally:
        for handle in handles:
            handle.remove()


def test_gradient_methods_work_on_a_frozen_model_and_under_no_grad(small_model, photos):
    inputs = photo_batch(photos, 64)
    expected, classes, _ = our_maps(small_model, inputs, "gradcam,layercam")
    frozen = copy.deepcopy(small_model).requires_grad_(False)
    maps, frozen_classes, _ = our_maps(frozen, inputs, "gradcam,layercam")
    assert (frozen_classes == classes).all()
    with torch.no_grad():
        no_grad_maps, _, _ = our_maps(small_model, inputs, "gradcam,layercam")
    assert torch.is_grad_enabled()
    for method in ("gradcam", "layercam"):
        assert_informative(expected[method], method)
        assert_matches(maps[method], expected[method], method)
        assert_matches(no_grad_maps[method], expected[method], method)


def test_gradcam_path_imports_neither_pytorch_grad_cam_nor_cv2():
    script = textwrap.dedent("""
        import sys
        import torch
        from torchvision.models.resnet import BasicBlock, ResNet
        import introspect
        model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10).eval()
        results = introspect.cam(model, torch.randn(1, 3, 64, 64), "gradcam", topk=2)
        assert len(results) == 1 and len(results[0].maps) == 2
        heavy = ("pytorch_grad_cam", "cv2", "sklearn", "torch.utils.tensorboard")
        print("after gradcam:", ",".join(m for m in heavy if m in sys.modules))
        introspect.cam(model, torch.randn(1, 3, 64, 64), "kpcacam", topk=1)
        print("after kpcacam:", ",".join(m for m in heavy if m in sys.modules))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(":", 1) for line in done.stdout.strip().splitlines())
    assert lines["after gradcam"].strip() == ""
    # The check can fail: a delegated method does import pytorch-grad-cam (and with it cv2).
    assert {"pytorch_grad_cam", "cv2"} <= set(lines["after kpcacam"].strip().split(","))


# -- heads whose gradients vary by position: Grad-CAM and HiResCAM part ----------------------------
#
# Behind global average pooling and a linear layer, a class score's gradient at the target layer is the same at
# every location, so Grad-CAM (channel weights = mean gradient) and HiResCAM (gradient x activation, location by
# location) give one map. A flatten + MLP head, and VGG's flatten + classifier, give each location its own
# gradient: the two maps part, and a mix-up of the two formulas shows. Compared in float64 (pytorch-grad-cam's
# maps come back float32) to 1e-5.

POSITIONAL_METHODS = ("gradcam", "hirescam", "xgradcam", "gradcam++")
FINE_TOLERANCE = 1e-5


class FlatHeadNet(torch.nn.Module):
    """A small CNN whose head is flatten + MLP (no global pooling): 16 x 16 x 16 features at 64 x 64."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16 * 16, 32), nn.ReLU(), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def assert_methods_match(model, target_layer, inputs, expected_layer: str) -> dict[str, np.ndarray]:
    maps, classes, results = our_maps(model, inputs, ",".join(POSITIONAL_METHODS))
    assert {r.layer for r in results} == {expected_layer}
    for method in POSITIONAL_METHODS:
        reference = reference_maps(model, target_layer, method, inputs, classes)
        assert_informative(reference, method)
        assert maps[method].shape == reference.shape == (inputs.shape[0], 2, *inputs.shape[-2:])
        difference = float(np.abs(maps[method] - reference).max())
        assert difference <= FINE_TOLERANCE, f"{method}: max |ours - pytorch-grad-cam| = {difference:.2e}"
    return maps


def test_flatten_mlp_head_matches_pytorch_grad_cam_and_parts_gradcam_from_hirescam(photos):
    torch.manual_seed(0)
    model = FlatHeadNet().double().eval()
    inputs = photo_batch(photos, 64).double()
    maps = assert_methods_match(model, model.features, inputs, "features")
    apart = np.abs(maps["gradcam"] - maps["hirescam"]).reshape(4, -1).max(axis=1)
    assert (apart > 0.1).all(), apart  # every (image, class) map differs between the two


def test_global_pooling_head_cannot_part_gradcam_from_hirescam(small_model, photos):
    """The contrast: on SmallConvNet (global pooling + linear) the two maps agree, so only heads like the
    ones above can tell the methods apart."""
    maps, _, _ = our_maps(small_model, photo_batch(photos, 64), "gradcam,hirescam")
    assert_informative(maps["gradcam"], "gradcam")
    assert np.abs(maps["gradcam"] - maps["hirescam"]).max() <= TOLERANCE


@pytest.mark.slow  # about 6-9 s on one core: vgg11's 130 M weights in float64
def test_vgg11_matches_pytorch_grad_cam_and_parts_gradcam_from_hirescam(photos):
    """torchvision's vgg11 (random weights) at 64 x 64: a 2 x 2 grid after the last pooling, which the
    adaptive pooling repeats to 7 x 7 before the flattening classifier."""
    torch.manual_seed(0)
    model = torchvision.models.vgg11(weights=None).double().eval()
    # Frozen so that pytorch-grad-cam's full backward skips the classifier's 120 M weight gradients (seconds in
    # float64); the gradient at the target layer, all the maps need, is the same.
    model.classifier.requires_grad_(False)
    inputs = photo_batch(photos, 64).double()
    maps = assert_methods_match(model, model.features[-1], inputs, "features.20")
    apart = np.abs(maps["gradcam"] - maps["hirescam"]).reshape(4, -1).max(axis=1)
    assert (apart > 0.1).all(), apart
