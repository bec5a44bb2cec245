"""With real ImageNet weights (mobilenet_v2 in ../shared), predictions and Grad-CAM make sense.

Skipped where ../shared/weights/mobilenet_v2_imagenet.pth is absent. Measured with these weights:
cat.png -> Egyptian cat 0.778, tiger cat 0.119, tabby 0.091; coffee.png -> espresso 0.979,
consomme 0.010, cup 0.008. Grad-CAM of the whole cat photo peaks on the cat's muzzle.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import introspect

CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}  # ImageNet 281-285
# The cat's face in cat.png (451 x 300, skimage's chelsea), in the photo's own pixels (x0, y0, x1, y1):
# both eyes, the nose and the cheeks; everything inside is cat. Right of x = 380 is blurred background.
CAT_FACE = (110, 30, 370, 300)
EYES_ROW = 140  # both eyes lie above this row; the nose (its tip near y = 243) below
CAT_FUR = (0, 60, 61, 300)  # the left edge: the cat's cheek and shoulder fur
BACKGROUND = (390, 60, 451, 300)  # the right edge, the same size: blurred room


@pytest.fixture(scope="module")
def pretrained(shared_weights) -> introspect.LoadedModel:
    return introspect.load_model("mobilenet_v2", weights=str(shared_weights))


def whole_photo(path, loaded: introspect.LoadedModel, height: int = 224) -> tuple[torch.Tensor, tuple[int, int]]:
    """The whole photo (no crop), resized to ``height`` rows, normalised as the weights expect."""
    photo = Image.open(path).convert("RGB")
    width = round(photo.width * height / photo.height)
    pixels = np.asarray(photo.resize((width, height), Image.BILINEAR)).copy()
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    mean = torch.tensor(loaded.transform.mean)[:, None, None]
    std = torch.tensor(loaded.transform.std)[:, None, None]
    return ((tensor - mean) / std)[None], photo.size


def inside(point: tuple[float, float], box: tuple[int, int, int, int]) -> bool:
    x, y = point
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


def test_loads_the_shared_weights(pretrained, shared_weights):
    assert pretrained.pretrained and pretrained.weights == shared_weights.name
    assert len(pretrained.categories) == 1000 and pretrained.categories[285] == "Egyptian cat"


def test_cat_photo_is_a_cat(pretrained, sample_cat):
    predictions = introspect.predict(pretrained, sample_cat, topk=5)[0]
    assert predictions.names[0] in CAT_CLASSES
    probabilities = dict(zip(predictions.names, predictions.probabilities))
    assert predictions.probabilities[0] > 0.5
    assert sum(p for name, p in probabilities.items() if name in CAT_CLASSES) > 0.9


def test_coffee_photo_is_espresso(pretrained, sample_coffee):
    predictions = introspect.predict(pretrained, sample_coffee, topk=5)[0]
    assert predictions.names[0] in {"espresso", "cup", "coffee mug"}
    assert predictions.names[0] == "espresso" and predictions.probabilities[0] > 0.5


def test_gradcam_peak_of_the_centre_crop_lies_on_the_cat(pretrained, sample_cat):
    """The standard preprocessing: resize the short side to 256, centre-crop 224."""
    result = introspect.cam(pretrained, sample_cat, "gradcam", topk=1)[0]
    top = result.maps[0]
    assert top.class_name in CAT_CLASSES
    row, col = top.peak
    width, height = Image.open(sample_cat).size
    scale = 256 / min(width, height)
    left = int(round((round(width * scale) - 224) / 2))
    upper = int(round((round(height * scale) - 224) / 2))
    assert inside(((col + left) / scale, (row + upper) / scale), CAT_FACE)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_cam_of_the_whole_photo_lies_on_the_cat(pretrained, sample_cat, method):
    """The whole photo (background on the right included): the peak is on the face below the eyes (the
    muzzle), the face is far hotter than the background, and the cat's fur on the left edge hotter than
    the background on the right edge (a mirrored or flipped map fails one of these)."""
    tensor, (width, height) = whole_photo(sample_cat, pretrained)
    top = introspect.cam(pretrained, tensor, method, topk=1)[0].maps[0]
    assert top.class_name in CAT_CLASSES
    row, col = top.peak
    rows, cols = top.heatmap.shape
    peak = (col * width / cols, row * height / rows)
    assert inside(peak, CAT_FACE) and peak[1] > EYES_ROW

    def mean_heat(box: tuple[int, int, int, int]) -> float:
        return float(heat[box[1]:box[3], box[0]:box[2]].mean())

    heat = np.asarray(Image.fromarray(top.heatmap).resize((width, height), Image.BILINEAR))
    assert mean_heat(CAT_FACE) > 0.4 and mean_heat(CAT_FACE) > 3 * mean_heat(BACKGROUND)
    assert mean_heat(CAT_FUR) > 2 * mean_heat(BACKGROUND)
