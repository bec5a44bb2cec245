"""Bad input through the CLI: the exit code, one line on stderr naming the problem and the fix,
no traceback, and for usage errors nothing written (no run directory). Then NaN/Inf and dead
gradients through the library's ``introspect.cam``: a zero map and a warning, never NaN."""

from __future__ import annotations

import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import run_cli
from torch import nn

import introspect
from introspect.errors import IntrospectWarning

REPO = Path(__file__).resolve().parents[1]
CAT = REPO / "sample_images" / "cat.png"



def fails(argv: list[str], logdir: Path, code: int = 2) -> str:
    """Run the CLI expecting ``code``; returns the one stderr line, and checks nothing was written."""
    got, out, err = run_cli([*argv, "--logdir", str(logdir)])
    assert got == code, f"exit {got}, stderr: {err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("introspect: error: ")
    assert "Traceback" not in err
    assert out == ""
    assert not logdir.exists(), f"{logdir} was created: {list(logdir.rglob('*'))}"
    return lines[0]


def resnet(*extra: str) -> list[str]:
    return ["resnet18", "--weights", "none", "--image", str(CAT), "--input-size", "64", *extra]


# -- names ----------------------------------------------------------------------------


def test_unknown_model_lists_closest(tmp_path):
    line = fails(["resnet", "--image", str(CAT)], tmp_path / "runs")
    assert "unknown model 'resnet'" in line
    assert "resnet18" in line and "resnet50" in line


def test_unknown_model_without_close_names_points_at_list(tmp_path):
    line = fails(["qqqqqq"], tmp_path / "runs")
    assert "--list-models" in line


def test_unknown_feature_layer(tmp_path):
    line = fails(resnet("--layers", "layer1", "layer9"), tmp_path / "runs")
    assert "unknown layer 'layer9'" in line
    assert "layer4" in line and "--list-layers" in line


def test_unknown_cam_layer(tmp_path):
    line = fails(resnet("--cam-layer", "layr4"), tmp_path / "runs")
    assert "unknown layer 'layr4'" in line
    assert "closest: layer4" in line and "--list-layers" in line


def test_unknown_cam_method_lists_methods(tmp_path):
    line = fails(resnet("--cam", "gradcam,gradkam"), tmp_path / "runs")
    assert "unknown CAM method 'gradkam'" in line
    for method in introspect.list_cam_methods():
        assert method in line


def test_unknown_section_lists_sections(tmp_path):
    from introspect.sections import selectable_sections

    line = fails(resnet("--sections", "structure,kernals"), tmp_path / "runs")
    assert "unknown section kernals" in line
    for section in selectable_sections():
        assert section in line


# -- images ---------------------------------------------------------------------------


def test_missing_image(tmp_path):
    line = fails(resnet("--image", str(tmp_path / "nope.png")), tmp_path / "runs")
    assert "nope.png" in line and "not found" in line


def test_not_an_image(tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("these are not pixels")
    line = fails(resnet("--image", str(fake)), tmp_path / "runs")
    assert "notes.png" in line and "not an image" in line and ".png" in line


def test_truncated_png(tmp_path):
    data = CAT.read_bytes()
    broken = tmp_path / "half.png"
    broken.write_bytes(data[: len(data) // 2])
    line = fails(resnet("--image", str(broken)), tmp_path / "runs")
    assert "half.png" in line and "truncated" in line and "re-save" in line


def test_folder_with_bad_files_skips_them(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(CAT, folder / "good.png")
    shutil.copy(REPO / "sample_images" / "coffee.png", folder / "also_good.png")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.png").write_text("no pixels here")
    (folder / "half.png").write_bytes(CAT.read_bytes()[:5000])
    code, out, err = run_cli(["resnet18", "--weights", "none", "--image", str(folder), "--input-size", "64",
                              "--sections", "cam", "--logdir", str(tmp_path / "runs")])
    assert code == 0, err
    warning_lines = [line for line in err.splitlines() if line.startswith("WARNING:")]
    assert len(warning_lines) == 3
    for bad in ("empty.jpg", "text.png", "half.png"):
        assert sum(bad in line and "skipped" in line for line in warning_lines) == 1
    assert "Traceback" not in err
    assert out.startswith("also_good: ") or "\nalso_good: " in out
    assert "\ngood: " in out or out.startswith("good: ")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run_dir,) = (tmp_path / "runs").iterdir()
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    assert {t for t in acc.Tags()["images"] if t.startswith("input/")} == {"input/good", "input/also_good"}
    info = acc.Tensors("run/info")[0].tensor_proto.string_val[0].decode()
    assert "WARNING" in info and "half.png" in info


def test_folder_with_only_bad_files(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "text.png").write_text("no pixels here")
    line = fails(["resnet18", "--weights", "none", "--image", str(folder)], tmp_path / "runs")
    assert "none of the images could be loaded" in line


# -- weights --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.resnet18().state_dict()


def test_checkpoint_with_wrong_keys(tmp_path, resnet18_state):
    state = dict(resnet18_state)
    del state["fc.weight"]
    state["head.weight"] = torch.zeros(3)
    path = tmp_path / "wrong_keys.pth"
    torch.save(state, path)
    line = fails(["resnet18", "--weights", str(path), "--image", str(CAT)], tmp_path / "runs")
    assert "missing keys: fc.weight" in line and "unexpected keys: head.weight" in line
    assert "wrong_keys.pth" in line


def test_checkpoint_with_wrong_shapes(tmp_path, resnet18_state):
    state = dict(resnet18_state)
    state["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    path = tmp_path / "wrong_shapes.pth"
    torch.save(state, path)
    line = fails(["resnet18", "--weights", str(path), "--image", str(CAT)], tmp_path / "runs")
    assert "conv1.weight (64, 3, 5, 5) vs (64, 3, 7, 7)" in line


def test_checkpoint_for_another_model(tmp_path, resnet18_state):
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18_state, path)
    line = fails(["vgg11", "--weights", str(path), "--image", str(CAT)], tmp_path / "runs")
    assert "does not match VGG" in line and "missing keys" in line and "pick the matching model" in line


def _leave_marker(path: str) -> dict:
    """What an unsafe unpickle of :class:`Booby` runs: it creates a file."""
    Path(path).write_text("unpickled unsafely")
    return {}


class Booby:
    """Pickles as a call of :func:`_leave_marker`: loading it unsafely creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return _leave_marker, (str(self.marker),)


def test_unsafe_pickle_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "trap.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": Booby(marker)}, path)
    # The trap works: an unsafe load would run it.
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()

    line = fails(["resnet18", "--weights", str(path), "--image", str(CAT)], tmp_path / "runs")
    assert "trap.pth" in line and "weights_only=True" in line
    assert "_leave_marker" in line  # why: the global it refused
    assert "state_dict" in line  # the fix
    assert "weights_only` set to `False`" not in line  # never suggests the unsafe load
    assert not marker.exists()


def test_not_a_torch_file(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_bytes(pickle.dumps([1, 2, 3])[:4])
    line = fails(["resnet18", "--weights", str(path), "--image", str(CAT)], tmp_path / "runs")
    assert "weights.pth" in line and "torch.save" in line


def test_missing_weights_file(tmp_path):
    line = fails(["resnet18", "--weights", str(tmp_path / "gone.pth")], tmp_path / "runs")
    assert "gone.pth" in line and "does not exist" in line


def test_named_weights_offline_is_a_runtime_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # an empty hub cache
    line = fails(["resnet18", "--weights", "IMAGENET1K_V1", "--image", str(CAT)], tmp_path / "runs", code=1)
    assert "IMAGENET1K_V1" in line and "INTROSPECT_OFFLINE" in line
    assert "--weights PATH" in line


def test_unknown_weights_name_lists_valid(tmp_path):
    line = fails(resnet("--weights", "BOGUS"), tmp_path / "runs")
    assert "unknown weights 'BOGUS'" in line
    for valid in ("auto", "DEFAULT", "none", "PATH", "IMAGENET1K_V1"):
        assert valid in line
    assert line.count("DEFAULT") == 1


# -- output ---------------------------------------------------------------------------


def test_logdir_under_a_regular_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    code, out, err = run_cli([*resnet(), "--sections", "cam", "--logdir", str(blocker / "runs")])
    assert code == 2
    (line,) = err.strip().splitlines()
    assert "cannot write to" in line and str(blocker / "runs") in line and "--logdir" in line
    assert blocker.read_text() == "a file, not a folder"


# -- targets, device, sizes, counts ---------------------------------------------------


def test_target_out_of_range(tmp_path):
    line = fails(resnet("--target", "5000"), tmp_path / "runs")
    assert "--target 5000 is out of range" in line and "0 to 999" in line


def test_target_not_a_class(tmp_path):
    line = fails(resnet("--target", "not a class"), tmp_path / "runs")
    assert "unknown class 'not a class'" in line
    assert "closest" in line or "class index" in line


def test_target_misspelt_names_closest(tmp_path):
    line = fails(resnet("--target", "tabbby"), tmp_path / "runs")
    assert "'tabby'" in line


def test_cuda_without_cuda(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = fails(resnet("--device", "cuda"), tmp_path / "runs")
    assert "CUDA is not available" in line and "--device cpu" in line


def test_unknown_device(tmp_path):
    line = fails(resnet("--device", "gpu7"), tmp_path / "runs")
    assert "gpu7" in line and "cpu" in line


def test_input_too_small_for_inception(tmp_path):
    line = fails(["inception_v3", "--weights", "none", "--image", str(CAT), "--input-size", "16"], tmp_path / "runs")
    assert "at least 75x75" in line and "--input-size 75" in line


def test_vit_takes_only_its_size(tmp_path):
    line = fails(["vit_b_16", "--weights", "none", "--image", str(CAT), "--input-size", "96"], tmp_path / "runs")
    assert "only 224x224" in line and "--input-size 224" in line


@pytest.mark.parametrize("size", ["0", "-3"])
def test_input_size_not_positive(tmp_path, size):
    line = fails(resnet("--input-size", size), tmp_path / "runs")
    assert f"--input-size {size}" in line and "positive" in line


def test_topk_zero(tmp_path):
    line = fails(resnet("--topk", "0"), tmp_path / "runs")
    assert "--topk 0" in line and "1 or more" in line


def test_image_sections_without_an_image(tmp_path):
    line = fails(["resnet18", "--weights", "none", "--sections", "cam"], tmp_path / "runs")
    assert "need an image" in line and "--image" in line


def test_debug_shows_the_traceback(tmp_path):
    code, out, err = run_cli(["resnt18", "--debug", "--logdir", str(tmp_path / "runs")])
    assert code == 2
    assert "Traceback (most recent call last)" in err
    assert "UnknownModelError" in err
    assert err.strip().splitlines()[-1].startswith("introspect: error: unknown model 'resnt18'")


def test_runtime_error_message_is_one_line(tmp_path, monkeypatch):
    """torch's own errors span several lines; the CLI prints one."""
    import importlib

    def broken(*args, **kwargs):
        raise RuntimeError("first line\n\nsecond line\n    third")

    monkeypatch.setattr(importlib.import_module("introspect.analyzers.kernels"), "kernel_grids", broken)
    code, out, err = run_cli(["resnet18", "--weights", "none", "--sections", "kernels", "--logdir",
                              str(tmp_path / "runs")])
    assert code == 1
    lines = [line for line in err.splitlines() if not line.startswith("... ")]
    assert lines == ["introspect: error: RuntimeError: first line second line third "
                     "(run again with --debug for the traceback)"]


# -- NaN, Inf and dead gradients through the library -----------------------------------


class PoisonLayer(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x):
        return torch.full_like(x, self.value)


def _poisoned(value: float) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("features", nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), PoisonLayer(value)))
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flatten", nn.Flatten())
    model.add_module("fc", nn.Linear(4, 5))
    return model.eval()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("method", ["gradcam", "layercam", "eigencam"])
def test_non_finite_activations_give_a_zero_map_and_a_warning(value, method):
    model = _poisoned(value)
    inputs = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = introspect.cam(model, inputs, method, layer="features", targets=[1])
    assert len(results) == 2
    for res in results:
        heatmap = res.maps[0].heatmap
        assert np.isfinite(heatmap).all()
        assert heatmap.shape == (32, 32)
        assert heatmap.max() == 0.0
        assert any("NaN or Inf" in w for w in res.warnings)
    messages = [str(w.message) for w in caught if issubclass(w.category, IntrospectWarning)]
    assert any("NaN or Inf" in m for m in messages)


class DeadHead(nn.Module):
    """Every class score is multiplied by 0: all gradients at the target layer are zero."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3))) * 0.0


class ReluDeadHead(DeadHead):
    """The head's ReLU sees only negative values (a dead unit): the gradient is zero there too."""

    def forward(self, x):
        return self.fc(torch.relu(self.features(x).mean(dim=(2, 3)) - 1e6))


@pytest.mark.parametrize("model_class", [DeadHead, ReluDeadHead])
@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_zero_gradients_give_a_zero_map_and_a_warning(model_class, method):
    torch.manual_seed(0)
    model = model_class().eval()
    inputs = torch.randn(1, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (result,) = introspect.cam(model, inputs, method, layer="features", targets=[0, 3])
    for cam_map in result.maps:
        assert np.isfinite(cam_map.heatmap).all()
        assert cam_map.heatmap.max() == 0.0
    assert any("all gradients are zero" in w for w in result.warnings)
    assert any("all gradients are zero" in str(w.message) for w in caught
               if issubclass(w.category, IntrospectWarning))
    # The same model explained by a class-agnostic method still shows its activations.
    (eigen,) = introspect.cam(model, inputs, "eigencam", layer="features", targets=[0])
    assert eigen.maps[0].heatmap.max() > 0


class ZeroFeatures(torch.nn.Module):
    """Features that are all zero (a ReLU after a dead bias): every CAM over them is blank."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.features = torch.nn.ReLU()
        self.fc = torch.nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(self.features(self.conv(x) * 0 - 1).mean(dim=(2, 3)))


class ConstantMap(torch.nn.Module):
    """Features that do not vary over the image (a constant raw map, as LeViT's can be)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.features = torch.nn.Identity()
        self.fc = torch.nn.Linear(4, 5)

    def forward(self, x):
        flat = self.conv(x).mean(dim=(2, 3), keepdim=True).expand(-1, -1, x.shape[2], x.shape[3]) + 1.0
        return self.fc(self.features(flat * 1.0).mean(dim=(2, 3)))


@pytest.mark.parametrize("model_class,words", [(ZeroFeatures, "all activations are zero"),
                                               (ConstantMap, "are constant"), (DeadHead, "all gradients are zero")])
def test_every_blank_map_warns_once_with_the_method_named_once(model_class, words):
    torch.manual_seed(0)
    model = model_class().eval()
    inputs = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = introspect.cam(model, inputs, "gradcam", layer="features", targets=[0, 3])
    for result in results:
        assert all(cam_map.heatmap.max() == 0.0 for cam_map in result.maps)
    messages = [str(w.message) for w in caught if issubclass(w.category, IntrospectWarning)]
    blank = [m for m in messages if words in m]
    assert len(blank) == 1, messages
    assert blank[0].startswith("gradcam: ") and "gradcam: gradcam" not in blank[0]
