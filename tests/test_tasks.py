"""Every torchvision task: the registry, each task's analyzers and records, the CLI over one model per
task family with its tags read back from the event file, bad input, and untouched models.

The sweep over every torchvision model name is ``test_every_torchvision_model_runs`` (slow).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import assert_untouched, image, load_events, model_state, run_cli, text
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from introspect.sections import SECTIONS
from introspect.tasks import TASKS, models_by_task, task_of

REPO = Path(__file__).resolve().parents[1]
CAT = REPO / "sample_images" / "cat.png"
COFFEE = REPO / "sample_images" / "coffee.png"


# -- helpers --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def moving_gif(tmp_path_factory) -> Path:
    """A 6-frame 48x64 GIF: a red square moving right over a dark background."""
    frames = []
    for t in range(6):
        a = np.full((48, 64, 3), 30, np.uint8)
        a[10:30, 5 + 8 * t:25 + 8 * t] = (220, 60, 40)
        frames.append(Image.fromarray(a))
    path = tmp_path_factory.mktemp("clips") / "square.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def run_dir_from(stdout: str) -> Path:
    match = re.search(r"^wrote \d+ summaries \(.*\) in [\d.]+ s to (.+)$", stdout, re.MULTILINE)
    assert match, f"no 'wrote ... to RUN_DIR' line in:\n{stdout}"
    return Path(match.group(1))




def cli_run(args: list[str], tmp_path: Path) -> tuple[EventAccumulator, str]:
    code, out, err = run_cli([*args, "--weights", "none", "--logdir", str(tmp_path / "runs")])
    assert code == 0, err
    return load_events(run_dir_from(out)), out


def fails(args: list[str], tmp_path: Path) -> str:
    code, out, err = run_cli([*args, "--weights", "none", "--logdir", str(tmp_path / "runs")])
    assert code == 2, (code, out, err)
    lines = [line for line in err.splitlines() if line.startswith("introspect: error:")]
    assert len(lines) == 1, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir()), "a run was written"
    return lines[0]


# -- the registry ---------------------------------------------------------------------


def test_registry_covers_every_torchvision_name_once():
    grouped = models_by_task()
    names = [n for group in grouped.values() for n in group]
    assert sorted(names) == sorted(torchvision.models.list_models())
    assert len(names) == len(set(names)) == len(torchvision.models.list_models())
    assert {"classification", "detection", "segmentation", "video", "optical_flow", "quantized"} == set(grouped)
    assert task_of("fasterrcnn_resnet50_fpn").name == "detection"
    assert task_of("deeplabv3_resnet50").name == "segmentation"
    assert task_of("r3d_18").input_kind == "clip"
    assert task_of("raft_small").input_kind == "frame pair"
    assert task_of("quantized_resnet18").default_cam == "eigencam"
    assert task_of("resnet18").name == "classification"
    classifier_only = {"saliency", "filters", "embeddings", "quality"}
    skipped = {"classification": set(), "quantized": classifier_only, "detection": {"graph", *classifier_only},
               "segmentation": {"graph", *classifier_only}, "video": {"graph", *classifier_only},
               "hf_segmentation": {"graph", *classifier_only}, "hf_detection": {"graph", *classifier_only},
               "optical_flow": {"graph", "cam", *classifier_only}}
    for task in TASKS.values():
        for section in ("structure", "graph", "kernels", "features", "cam", "histograms", "saliency", "filters",
                        "embeddings", "quality"):
            reason = task.skip_reason(section, SECTIONS[section].requires)
            assert (reason is not None) == (section in skipped[task.name]), (task.name, section)
            assert reason is None or (reason and "\n" not in reason)


def test_list_models_is_grouped_by_task():
    code, out, err = run_cli(["--list-models"])
    assert code == 0 and err == ""
    headers = [line for line in out.splitlines() if line.startswith("# ")]
    names = [line for line in out.splitlines() if line and not line.startswith("# ")]
    assert sorted(names) == sorted(torchvision.models.list_models())
    counts = {h.split()[1]: int(h.split()[2].strip("():")) for h in headers}
    assert counts == {task: len(group) for task, group in models_by_task().items()}
    assert sum(counts.values()) == len(torchvision.models.list_models())


# -- video CAM over time: the 3-d rule agrees with pytorch-grad-cam's -------------------


class TinyVideoNet(nn.Module):
    """Conv3d trunk -> (N, 8, T/2, H/4, W/4) -> pool -> 5 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(3, 6, 3, stride=(1, 2, 2), padding=1), nn.ReLU())
        self.layer = nn.Sequential(nn.Conv3d(6, 8, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.pool(self.layer(self.stem(x))).flatten(1))


@pytest.mark.parametrize("method,reference", [("gradcam", "GradCAM"), ("layercam", "LayerCAM"),
                                              ("hirescam", "HiResCAM")])
def test_video_cam_equals_pytorch_grad_cam_on_5d_activations(method, reference):
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from introspect.analyzers.cam import activation_maps
    from introspect.engine.forward import run_forward

    torch.manual_seed(0)
    model = TinyVideoNet().eval()
    clip = torch.randn(2, 3, 8, 16, 16)
    classes = torch.tensor([[1, 3], [4, 0]])
    forward = run_forward(model, clip, capture=["layer"], grad_layer="layer")
    activation = forward.activations["layer"]
    assert activation.shape == (2, 8, 4, 4, 4)
    ours = activation_maps(method, activation, forward.gradients(classes)[""])  # (k, N, T', H', W'), layer resolution
    forward.release()
    for j in range(2):
        explainer_cls = getattr(pytorch_grad_cam, reference)
        with explainer_cls(model=model, target_layers=[model.layer]) as explainer:
            # compare at the layer's own (T, H, W): pytorch-grad-cam then resizes with scipy's cubic zoom
            explainer.get_target_width_height = lambda tensor: (4, 4, 4)
            theirs = explainer(input_tensor=clip, targets=[ClassifierOutputTarget(int(c)) for c in classes[:, j]])
        np.testing.assert_allclose(ours[j].numpy(), theirs, atol=1e-5)
    resized = activation_maps(method, activation, None if method == "eigencam" else
                       run_forward(model, clip, capture=["layer"], grad_layer="layer").gradients(classes)[""],
                       size=(8, 16, 16))
    assert resized.shape == (2, 2, 8, 16, 16) and float(resized.max()) == pytest.approx(1.0, abs=1e-5)


class _Note(nn.Module):
    """A child whose output holds no tensor (it only looks)."""

    def forward(self, x):
        return None


class NotedVideoNet(nn.Module):
    """TinyVideoNet with a tensorless child between its last 5-d layer and the pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(3, 6, 3, stride=(1, 2, 2), padding=1), nn.ReLU())
        self.layer = nn.Sequential(nn.Conv3d(6, 8, 3, stride=2, padding=1), nn.ReLU())
        self.note = _Note()
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        h = self.layer(self.stem(x))
        self.note(h)
        return self.fc(self.pool(h).flatten(1))


def test_video_cam_layer_passes_over_tensorless_children_and_leaves_the_model_untouched():
    from introspect.errors import UnknownLayerError
    from introspect.tasks.video import VideoLayer, video_cam_layer

    torch.manual_seed(0)
    model = NotedVideoNet().eval()
    clip = torch.randn(1, 3, 4, 16, 16)
    before = model_state(model)
    assert video_cam_layer(model, clip) == VideoLayer("layer", "ncthw")
    assert video_cam_layer(model, clip, "stem") == VideoLayer("stem", "ncthw")
    with pytest.raises(UnknownLayerError, match=r"layer='fc' gives \(1, 5\)"):
        video_cam_layer(model, clip, "fc")
    with pytest.raises(UnknownLayerError, match="layer='note' gives None"):
        video_cam_layer(model, clip, "note")
    assert_untouched(before, model)


def test_single_pass_methods_on_flattened_positions_equal_the_2d_maps(tiny_cnn):
    """activation_maps lays every position along one axis: on 4-d activations it must equal the image CAM path."""
    from introspect.analyzers.cam import activation_maps, cam
    from introspect.engine.forward import run_forward

    model = tiny_cnn()
    x = torch.randn(1, 3, 64, 64)
    for method in ("gradcam", "gradcam++", "xgradcam", "eigencam", "fem", "eigengradcam"):
        expected = cam(model, x, methods=method, targets=[2, 5], topk=2)[0]
        forward = run_forward(model, x, capture=["layer4"], grad_layer="layer4")
        maps = activation_maps(method, forward.activations["layer4"], forward.gradients(torch.tensor([[2, 5]]))[""],
                        size=(64, 64))
        for j, entry in enumerate(expected.maps):
            np.testing.assert_allclose(maps[min(j, maps.shape[0] - 1), 0].numpy(), entry.heatmap, atol=1e-5,
                                       err_msg=method)


# -- quantized models: int8 weights dequantized ------------------------------------------


def test_quantized_kernels_and_histograms_see_the_int8_convs():
    from introspect import load_model
    from introspect.analyzers.kernels import kernel_grids
    from introspect.analyzers.parameters import parameter_summary

    loaded = load_model("quantized_resnet18", weights="none", input_size=64)
    assert loaded.task == "quantized" and len(loaded.categories) == 1000
    conv1 = loaded.model.conv1
    assert conv1.weight().dtype == torch.qint8
    grids = {g.layer: g for g in kernel_grids(loaded)}
    assert grids["conv1"].weight_shape == (64, 3, 7, 7) and grids["conv1"].mode == "rgb"
    assert len(grids) == sum(1 for _, m in loaded.model.named_modules() if type(m).__name__.startswith("Conv"))
    params = {t.name: t for t in parameter_summary(loaded).tensors}
    weight = conv1.weight().dequantize()
    assert params["conv1.weight"].shape == (64, 3, 7, 7)
    assert params["conv1.weight"].mean == pytest.approx(float(weight.mean()), abs=1e-6)
    assert params["fc.weight"].shape == (1000, 512)


def test_weights_from_a_file_for_quantized_and_segmentation_models(tmp_path):
    """weights=PATH works as for classifiers: int8 state_dicts (packed params, dtypes) and an auxiliary head."""
    from introspect import load_model

    torch.manual_seed(0)
    quantized = torchvision.models.get_model("quantized_mobilenet_v2", weights=None, quantize=True)
    torch.save(quantized.state_dict(), tmp_path / "q.pth")
    loaded = load_model("quantized_mobilenet_v2", weights=str(tmp_path / "q.pth"), input_size=64)
    assert loaded.weights == "q.pth" and loaded.task == "quantized"
    assert torch.equal(loaded.model.features[0][0].weight().int_repr(), quantized.features[0][0].weight().int_repr())
    segmenter = torchvision.models.get_model("deeplabv3_mobilenet_v3_large", weights=None, weights_backbone=None,
                                             aux_loss=True)
    torch.save(segmenter.state_dict(), tmp_path / "s.pth")
    loaded = load_model("deeplabv3_mobilenet_v3_large", weights=str(tmp_path / "s.pth"), input_size=64)
    assert loaded.model.aux_classifier is not None
    assert torch.equal(loaded.model.classifier[4].weight, segmenter.classifier[4].weight)


def test_library_cam_on_a_quantized_model_defaults_to_eigencam_and_refuses_gradients():
    import introspect
    from introspect.errors import UnknownMethodError

    loaded = introspect.load_model("quantized_resnet18", weights="none", input_size=64)
    (result,) = introspect.cam(loaded, CAT, topk=2)
    assert result.method == "eigencam" and result.layer == "layer4" and len(result.maps) == 2
    assert result.maps[0].heatmap.shape == (64, 64) and float(result.maps[0].heatmap.max()) == pytest.approx(1.0)
    with pytest.raises(UnknownMethodError, match="gradcam needs gradients.*no autograd"):
        introspect.cam(loaded.model, CAT, methods="gradcam")


# -- the CLI over one model per task family, tags read back ------------------------------


def test_cli_detection(tmp_path):
    acc, _ = cli_run(["fasterrcnn_mobilenet_v3_large_320_fpn", "--image", str(CAT), "--input-size", "128",
                      "--score-threshold", "0.01", "--topk", "2"], tmp_path)
    images, texts = set(acc.Tags()["images"]), set(acc.Tags()["tensors"])
    assert {"detections/cat", "input/cat", "cam/gradcam/cat"} <= images
    assert {"detections/cat/table", "structure/summary", "run/info", "features/stats/cat"} <= texts
    assert any(t.startswith("features/backbone.body.") for t in images)
    assert any(t.startswith("kernels/backbone.body.") for t in images)
    assert image(acc, "detections/cat").shape == (640, 640, 3)  # the 128 px input drawn 5x for crisp labels
    table = text(acc, "detections/cat/table")
    assert table.startswith("Boxes (x0, y0, x1, y1) in the pixels of the input as the model saw it (input/cat, 128x128)")
    coco = torchvision.models.detection.FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.DEFAULT.meta["categories"]
    rows = [row for row in table.splitlines() if row.startswith("|")][2:]
    assert rows and all(row.split("|")[2].strip() in coco for row in rows)
    assert image(acc, "cam/gradcam/cat").shape[1] > 2 * 128  # one overlay per explained detection
    info = text(acc, "run/info")
    assert "graph: detection models take a list of images" in info and "completed" in info
    assert "cam layer | backbone" in info
    assert not any(t.startswith("graph") for t in images | texts)


def test_cli_segmentation(tmp_path):
    acc, _ = cli_run(["lraspp_mobilenet_v3_large", "--image", str(CAT), "--input-size", "96"], tmp_path)
    assert {"segmentation/cat", "input/cat", "cam/gradcam/cat"} <= set(acc.Tags()["images"])
    table = text(acc, "segmentation/cat/table")
    shares = [float(s) for s in re.findall(r"\| ([\d.]+)% \|", table)]
    assert shares and sum(shares) == pytest.approx(100.0, abs=0.5)
    voc = torchvision.models.segmentation.LRASPP_MobileNet_V3_Large_Weights.DEFAULT.meta["categories"]
    assert all(row.split("|")[1].strip().replace("\\_", "_") in voc for row in table.splitlines()[2:])  # Markdown-escaped
    assert any(t.startswith("features/backbone.") for t in acc.Tags()["images"])


def test_cli_video_clip(tmp_path, moving_gif):
    acc, out = cli_run(["r3d_18", "--image", str(moving_gif), "--input-size", "32", "--topk", "2"], tmp_path)
    name = moving_gif.stem
    kinetics = torchvision.models.video.R3D_18_Weights.DEFAULT.meta["categories"]
    table = text(acc, f"predictions/{name}")
    assert len(table.splitlines()) == 2 + 5 and table.splitlines()[2].split("|")[2].strip() in kinetics
    strip = image(acc, f"cam/gradcam/{name}")
    assert strip.shape[1] > 8 * 32 and strip.shape[0] > 2 * 32  # 8 frames across, 2 classes down
    info = text(acc, "run/info")
    assert "cam layer | layer4 (ncthw)" in info and "16 frames" in info
    assert "moviepy" in info or f"cam/gradcam/{name}/video" in acc.Tags()["images"]
    assert any(t.startswith("kernels/stem.0") for t in acc.Tags()["images"])


def test_cli_video_still_photo_is_a_static_clip_with_a_warning(tmp_path):
    acc, out = cli_run(["r3d_18", "--image", str(CAT), "--input-size", "32", "--sections", "cam"], tmp_path)
    assert "cam/gradcam/cat" in acc.Tags()["images"]
    assert "static clip" in text(acc, "run/info")


def test_cli_optical_flow(tmp_path):
    acc, _ = cli_run(["raft_small", "--image", str(CAT), "--image", str(COFFEE), "--input-size", "128"], tmp_path)
    assert "flow/cat-coffee" in acc.Tags()["images"]
    assert image(acc, "flow/cat-coffee").shape[1] > 3 * 128
    assert "flow/cat-coffee/table" in acc.Tags()["tensors"]
    assert any(t.startswith("features/feature_encoder.") for t in acc.Tags()["images"])
    assert "RAFT outputs a flow field, not class scores" in text(acc, "run/info")


def test_cli_quantized(tmp_path):
    acc, _ = cli_run(["quantized_mobilenet_v2", "--image", str(CAT), "--input-size", "64"], tmp_path)
    images = set(acc.Tags()["images"])
    assert "cam/eigencam/cat" in images and "kernels/features.0.0" in images
    assert "parameters/features.0.0.weight" in acc.Tags()["histograms"]
    info = text(acc, "run/info")
    assert "eigencam" in info and "no autograd" in info


# -- bad input: one line, exit 2, nothing written ---------------------------------------


def test_detector_asked_for_a_class_target(tmp_path):
    line = fails(["ssdlite320_mobilenet_v3_large", "--image", str(CAT), "--target", "tabby"], tmp_path)
    assert "unknown class 'tabby'" in line


def test_video_model_given_a_1x1_image(tmp_path):
    tiny = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (255, 0, 0)).save(tiny)
    line = fails(["r3d_18", "--image", str(tiny)], tmp_path)
    assert "1x1" in line and "at least 16x16" in line


def test_raft_given_one_frame(tmp_path):
    line = fails(["raft_small", "--image", str(CAT)], tmp_path)
    assert "two frames" in line and "two images" in line


def test_quantized_refuses_a_gradient_cam_method(tmp_path):
    line = fails(["quantized_resnet18", "--image", str(CAT), "--input-size", "64", "--cam", "gradcam"], tmp_path)
    assert "gradcam needs gradients" in line and "eigencam or fem" in line


def test_video_file_without_pyav_names_the_extra(tmp_path, monkeypatch):
    from introspect.tasks import video

    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00" * 64)
    monkeypatch.setattr(video, "video_available", lambda: False)
    line = fails(["r3d_18", "--image", str(clip)], tmp_path)
    assert "introspect[video]" in line


# -- the model comes back untouched -----------------------------------------------------


@pytest.mark.parametrize("name,size,images", [
    ("ssdlite320_mobilenet_v3_large", None, "cat"),
    ("lraspp_mobilenet_v3_large", 64, "cat"),
    ("r3d_18", 32, "gif"),
    ("raft_small", 128, "pair"),
    ("quantized_mobilenet_v2", 64, "cat"),
])
def test_model_untouched_by_a_task_report(tmp_path, moving_gif, name, size, images):
    from introspect import load_model, report

    loaded = load_model(name, weights="none", input_size=size)
    model = loaded.model
    model.train()  # not the eval mode the run uses: it must come back in train mode
    if name == "r3d_18":
        model.fc.weight.grad = torch.ones_like(model.fc.weight)
    before = model_state(model)
    paths = {"cat": [CAT], "gif": [moving_gif], "pair": [CAT, COFFEE]}[images]
    report(loaded, paths, logdir=tmp_path / "runs")
    assert_untouched(before, model)


# -- the sweep: every torchvision model name runs the default sections -------------------

_FIXED_224 = ("vit_", "swin_", "swin_v2", "maxvit", "mvit_", "s3d")


def _sweep_args(name: str, clip: Path) -> list[str]:
    """Small inputs where the model allows them."""
    task = task_of(name).name
    if task == "optical_flow":
        return ["--image", str(CAT), "--image", str(COFFEE), "--input-size", "128"]
    if task == "video":
        size = "224" if name.startswith(_FIXED_224) else "32"
        return ["--image", str(clip), "--input-size", size]
    if name.startswith("swin_v2"):
        size = "256"  # its weights' min_size
    elif name.startswith(_FIXED_224):
        size = "224"
    elif "inception" in name:
        size = "80"
    elif task == "segmentation":
        size = "64"
    elif task == "detection":
        size = "128"
    else:
        size = "64"
    return ["--image", str(CAT), "--input-size", size]


_EXPECTED_TAG = {"classification": "cam/gradcam/cat", "quantized": "cam/eigencam/cat", "detection": "detections/cat",
                 "segmentation": "segmentation/cat", "video": "cam/gradcam/square", "optical_flow": "flow/cat-coffee"}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(torchvision.models.list_models()))
def test_every_torchvision_model_runs(tmp_path, moving_gif, name):
    acc, _ = cli_run([name, *_sweep_args(name, moving_gif)], tmp_path)
    tags = set(acc.Tags()["images"]) | set(acc.Tags()["tensors"])
    assert _EXPECTED_TAG[task_of(name).name] in tags, sorted(tags)[:20]
    assert {"structure/summary", "run/info"} <= tags
    assert "| status | completed" in text(acc, "run/info")


def test_list_layers_of_a_video_model_marks_its_stages_and_cam_layer():
    code, out, err = run_cli(["r3d_18", "--list-layers"])
    assert code == 0, err
    marked = {line.split()[0]: line for line in out.splitlines() if "[" in line}
    assert "[cam]" in marked["layer4"] and "[features]" in marked["layer4"]
    assert "avgpool" not in marked and "fc" not in marked
