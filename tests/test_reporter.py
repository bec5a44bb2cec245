"""Tests of introspect.tensorboard (writer, layouts, Reporter): everything is read back with TensorBoard's own reader."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from introspect.analyzers.parameters import histogram_of
from introspect.errors import OutputError
from introspect.records import (
    CamMap,
    CamResult,
    FeatureMap,
    KernelGrid,
    LayerRow,
    ParameterSummary,
    ParameterTensor,
    Predictions,
    RunInfo,
    StructureSummary,
    Subject,
)
from introspect.tensorboard import LAYOUTS, Reporter, new_run_dir

# -- helpers -----------------------------------------------------------------------


def load(run_dir: Path) -> EventAccumulator:
    keep_all = {"images": 0, "histograms": 0, "tensors": 0, "scalars": 0}
    acc = EventAccumulator(str(run_dir), size_guidance=keep_all)
    acc.Reload()
    return acc


def read_text(acc: EventAccumulator, tag: str) -> str:
    return acc.Tensors(tag)[0].tensor_proto.string_val[0].decode()


def read_image_size(acc: EventAccumulator, tag: str) -> tuple[int, int]:
    image = Image.open(io.BytesIO(acc.Images(tag)[0].encoded_image_string))
    return image.size  # (width, height)


def rgb(height: int, width: int, value: int = 0) -> np.ndarray:
    return np.full((height, width, 3), value, dtype=np.uint8)


def tiny_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


class SetOutput(nn.Module):
    """A model torch.jit.trace refuses: its forward returns a Python set."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor) -> set:
        return {float(self.bn(self.conv(x)).sum())}


def feature_map(layer: str, image_name: str, width: int = 16) -> FeatureMap:
    return FeatureMap(
        layer=layer,
        image_name=image_name,
        shape=(1, 8, 4, 4),
        channels=(0, 1),
        channel_means=(0.5, 0.25),
        mean=0.375,
        std=0.125,
        zero_fraction=0.5,
        image=rgb(12, width),
    )


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return new_run_dir(tmp_path / "logs", "run", "tiny")


# -- new_run_dir ----------------------------------------------------------------------


def test_new_run_dir_default_name_has_model_and_timestamp(tmp_path: Path) -> None:
    run = new_run_dir(tmp_path / "a" / "b", None, "resnet18")
    assert run.is_dir() and run.parent == tmp_path / "a" / "b"
    assert run.name.startswith("resnet18-") and len(run.name) == len("resnet18-20240101-120000")


def test_new_run_dir_never_reuses_a_directory(tmp_path: Path) -> None:
    runs = [new_run_dir(tmp_path, "same", "m") for _ in range(3)]
    assert [r.name for r in runs] == ["same", "same-2", "same-3"]
    defaults = {new_run_dir(tmp_path, None, "m") for _ in range(3)}  # same second: still distinct
    assert len(defaults) == 3


def test_new_run_dir_unwritable_logdir_raises_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    with pytest.raises(OutputError, match="choose another logdir") as info:
        new_run_dir(blocker / "logs", None, "m")
    assert info.value.exit_code == 2
    assert info.value.parameter == "logdir" and f"logdir={str(blocker / 'logs')!r}" in str(info.value)


# -- lazy import -----------------------------------------------------------------------


def test_importing_the_writer_does_not_import_tensorboard() -> None:
    code = ("import sys, introspect.reporter, introspect.tensorboard\n"
            "print(any(m.split('.')[0] == 'tensorboard' or m.startswith('torch.utils.tensorboard') for m in sys.modules))")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_old_module_name_is_the_same_reporter() -> None:
    import introspect
    import introspect.reporter

    assert introspect.reporter.Reporter is Reporter is introspect.Reporter
    assert introspect.reporter.new_run_dir is new_run_dir


# -- primitives ------------------------------------------------------------------------


def test_primitives_round_trip(run_dir: Path) -> None:
    with Reporter(run_dir) as rep:
        rep.text("notes/a", "**hello**")
        rep.image("pics/a", rgb(20, 30))
        rep.scalar("nums/a", 1.5, step=3)
        rep.histogram("hist/np", np.arange(10, dtype=np.float32))
        rep.histogram("hist/torch", torch.ones(2, 3, requires_grad=True))
        rep.histogram("hist/empty", np.array([]))  # nothing to bin: skipped
    acc = load(run_dir)
    assert read_text(acc, "notes/a") == "**hello**"
    assert read_image_size(acc, "pics/a") == (30, 20)
    assert acc.Scalars("nums/a")[0].value == 1.5 and acc.Scalars("nums/a")[0].step == 3
    assert acc.Histograms("hist/np")[0].histogram_value.num == 10
    assert acc.Histograms("hist/torch")[0].histogram_value.num == 6
    assert "hist/empty" not in acc.Tags()["histograms"]
    assert rep.tags == {"notes": 1, "pics": 1, "nums": 1, "hist": 2}


def test_image_rejects_non_uint8_hwc(run_dir: Path) -> None:
    with Reporter(run_dir) as rep:
        with pytest.raises(ValueError, match="uint8"):
            rep.image("pics/bad", np.zeros((20, 30, 3), dtype=np.float32))
        with pytest.raises(ValueError, match="uint8"):
            rep.image("pics/bad", np.zeros((3, 20, 30), dtype=np.uint8))


# -- record writers --------------------------------------------------------------------


def test_record_writers_tags_and_counts(run_dir: Path) -> None:
    summary = StructureSummary(
        model_name="tiny",
        input_shape=(1, 3, 8, 8),
        rows=(
            LayerRow("0", "Conv2d", 1, (1, 4, 6, 6), 112, 112, 3888),
            LayerRow("4", "Linear", 1, (1, 2), 10, 10, 8),
        ),
        total_params=122,
        trainable_params=122,
        total_mult_adds=3896,
    )
    grids = [
        KernelGrid("features.0", (4, 3, 3, 3), "rgb", 4, 3, rgb(20, 30)),
        KernelGrid("layer4.1.conv2", (8, 8, 3, 3), "channels", 8, 8, rgb(40, 40)),
    ]
    maps = [
        feature_map("features.3", "cat.jpg", 16),
        feature_map("layer1.0", "cat.jpg", 24),
        feature_map("features.3", "dog", 8),
    ]
    preds = Predictions("cat.jpg", (281, 282), ("tabby", "tiger cat"), (0.75, 0.125))
    cam_map = CamMap("gradcam", Subject("class", 281, "tabby", 0.75), np.zeros((8, 8), np.float32), rgb(8, 8))
    cam = CamResult("gradcam", "layer4", "cat.jpg", (cam_map,), rgb(10, 26))
    params = ParameterSummary(
        (
            ParameterTensor(
                "0.weight", (4, 3, 3, 3), histogram_of(np.ones(108, np.float32)), 1.0, 0.0,
                grad=histogram_of(np.zeros(108, np.float32)),
            ),
            ParameterTensor("0.bias", (4,), histogram_of(np.ones(4, np.float32)), 1.0, 0.0),
        )
    )

    with Reporter(run_dir) as rep:
        rep.run_info({"model": "tiny", "odd": "a|b"}, warnings=["no weights: random init"])
        rep.structure(summary)
        rep.kernels(grids)
        rep.features(maps)
        rep.predictions(preds)
        rep.input_image("cat.jpg", rgb(8, 9))
        rep.cams([cam])
        rep.parameters(params, step=2)
    acc = load(run_dir)

    info = read_text(acc, "run/info")
    assert "| model | tiny |" in info and "a\\|b" in info
    assert "**WARNINGS**" in info and "no weights: random init" in info
    assert read_text(acc, "structure/summary") == summary.to_markdown()
    assert read_image_size(acc, "kernels/features.0") == (30, 20)
    assert read_image_size(acc, "kernels/layer4.1.conv2") == (40, 40)
    assert read_image_size(acc, "features/layer1.0/cat.jpg") == (24, 12)
    assert read_image_size(acc, "features/features.3/dog") == (8, 12)
    cat_stats = read_text(acc, "features/stats/cat.jpg")
    assert "zero fraction" in cat_stats and "features.3" in cat_stats and "layer1.0" in cat_stats
    assert "1x8x4x4" in cat_stats and "0.375" in cat_stats
    assert "features.3" in read_text(acc, "features/stats/dog")
    assert read_text(acc, "predictions/cat.jpg") == preds.to_markdown()
    assert read_image_size(acc, "input/cat.jpg") == (9, 8)
    assert read_image_size(acc, "cam/gradcam/cat.jpg") == (26, 10)
    assert acc.Histograms("parameters/0.weight")[0].histogram_value.num == 108
    assert acc.Histograms("parameters/0.weight")[0].step == 2
    assert acc.Histograms("gradients/0.weight")[0].histogram_value.num == 108
    assert acc.Histograms("parameters/0.bias")[0].histogram_value.num == 4
    assert "gradients/0.bias" not in acc.Tags()["histograms"]

    assert rep.tags == {
        "run": 1,
        "structure": 1,
        "kernels": 2,
        "features": 5,  # 3 maps + 2 stats tables
        "predictions": 1,
        "input": 1,
        "cam": 1,
        "parameters": 2,
        "gradients": 1,
    }

    written = [t for kind in ("images", "tensors", "histograms") for t in acc.Tags()[kind]]
    patterns = [layout for layout in LAYOUTS.values()]
    unmatched = [t for t in written if not any(layout.matches(t) for layout in patterns)]
    assert unmatched == []


def test_record_writes_any_record_through_its_layout(tmp_path: Path) -> None:
    grid = KernelGrid("features.0", (4, 3, 3, 3), "rgb", 4, 3, rgb(20, 30))
    preds = Predictions("cat.jpg", (281,), ("tabby",), (0.75,))
    with Reporter(new_run_dir(tmp_path, "by_record", "m")) as by_record:
        by_record.record(grid)
        by_record.record(preds)
        by_record.record(RunInfo({"model": "tiny"}))
    with Reporter(new_run_dir(tmp_path, "by_method", "m")) as by_method:
        by_method.kernels([grid])
        by_method.predictions(preds)
        by_method.run_info({"model": "tiny"})
    assert by_record.tags == by_method.tags == {"kernels": 1, "predictions": 1, "run": 1}
    acc, other = load(tmp_path / "by_record"), load(tmp_path / "by_method")
    assert read_text(acc, "predictions/cat.jpg") == read_text(other, "predictions/cat.jpg")
    assert read_text(acc, "run/info") == read_text(other, "run/info")
    assert LAYOUTS[KernelGrid].tags == ("kernels/<layer>",) and LAYOUTS[KernelGrid].matches("kernels/a.b")
    assert not LAYOUTS[KernelGrid].matches("kernels/") and LAYOUTS[KernelGrid].summary
    with Reporter(new_run_dir(tmp_path, "bad", "m")) as rep:
        with pytest.raises(TypeError, match="no TensorBoard layout") as caught:
            rep.record(object())
    assert caught.value.parameter == "record"


def test_one_cam_record_for_images_and_clips_and_the_info_line_on_videos(tmp_path: Path, monkeypatch) -> None:
    photo = CamResult("gradcam", "layer4", "cat", (CamMap("gradcam", Subject("class", 281, "tabby", 0.75),
                                                         np.zeros((8, 8), np.float32), rgb(8, 8)),), rgb(10, 26))
    frames = np.zeros((3, 8, 8, 3), np.uint8)
    clip_map = CamMap("gradcam", Subject("clip class", 5, "juggling", 0.5), np.zeros((3, 8, 8), np.float32),
                      rgb(10, 30), frames=frames)
    clip = CamResult("gradcam", "layer4", "square", (clip_map,), rgb(10, 30))
    monkeypatch.setattr(Reporter, "can_write_video", staticmethod(lambda: False))
    with Reporter(new_run_dir(tmp_path, "cams", "m")) as rep:
        assert rep.cams([photo]) == {}  # no clip: nothing to say about videos
        said = rep.cams([clip])
    assert list(said) == ["cam videos"]
    assert said["cam videos"].startswith("not written") and "moviepy" in said["cam videos"]
    acc = load(tmp_path / "cams")
    assert read_image_size(acc, "cam/gradcam/cat") == (26, 10)
    assert read_image_size(acc, "cam/gradcam/square") == (30, 10)
    assert LAYOUTS[CamResult].matches("cam/gradcam/square/video") and LAYOUTS[CamResult].matches("cam/gradcam/cat")
    assert clip_map.peak == (0, 0) and clip_map.probability == 0.5 and clip_map.class_name == "juggling"


def test_a_subject_says_what_its_score_is() -> None:
    assert Subject("class", 281, "tabby", 0.75).caption == "tabby 75.0%"
    box = Subject("box", 17, "cat", 0.934, box=(1.0, 2.0, 30.0, 40.0), detection=0)
    assert box.caption == "cat 0.93" and box.score_name == "detection score"
    assert Subject("mask class", 8, "cat", 0.125).caption == "cat 12.5%"
    assert Subject("mask class", 8, "cat", 0.125).score_name == "pixel share"
    assert CamMap("gradcam", box, np.zeros((4, 4), np.float32), rgb(4, 4)).probability is None
    with pytest.raises(ValueError, match="'pixel' is not a CAM subject"):
        Subject("pixel", 0, "x", 1.0)


def test_a_new_record_type_is_one_layout(tmp_path: Path) -> None:
    from dataclasses import dataclass

    from introspect.tensorboard import register_layout

    @dataclass(frozen=True)
    class LogitNorms:
        names: tuple[str, ...]
        norms: tuple[float, ...]

    @register_layout(LogitNorms, tags=("logits/norm/<image>",))
    def _logit_norms(writer, record, step=0):
        """One scalar per image (SCALARS)."""
        for name, value in zip(record.names, record.norms):
            writer.scalar(f"logits/norm/{name}", value, step)

    try:
        with Reporter(tmp_path) as rep:
            rep.record(LogitNorms(("a", "b"), (1.0, 2.0)), step=3)
        assert rep.tags == {"logits": 2} and LAYOUTS[LogitNorms].summary == "One scalar per image (SCALARS)."
        assert load(tmp_path).Scalars("logits/norm/b")[0].value == 2.0
    finally:
        del LAYOUTS[LogitNorms]


def test_every_layout_describes_its_tags() -> None:
    for record_type, layout in LAYOUTS.items():
        assert layout.record is record_type and layout.tags and layout.summary, record_type
        assert all("/" in tag or tag == "hparams" for tag in layout.tags), layout.tags


def test_run_info_without_warnings_has_no_warnings_section(run_dir: Path) -> None:
    with Reporter(run_dir) as rep:
        rep.run_info({"model": "tiny"})
    assert "WARNINGS" not in read_text(load(run_dir), "run/info")


# -- graph -----------------------------------------------------------------------------


def test_graph_of_a_traceable_model(run_dir: Path) -> None:
    model = tiny_model().train()
    model[0].eval()
    before = [m.training for m in model.modules()]
    weight = model[0].weight.detach().clone()
    with Reporter(run_dir) as rep:
        assert rep.graph(model, torch.zeros(1, 3, 8, 8)) is None
    acc = load(run_dir)
    assert acc.Tags()["graph"] is True
    assert len(acc.Graph().node) > 0
    assert [m.training for m in model.modules()] == before
    assert torch.equal(model[0].weight, weight) and model[0].weight.grad is None
    assert rep.tags == {"graph": 1}


def test_graph_failure_writes_a_note_and_restores_training_flags(run_dir: Path, capsys) -> None:
    model = SetOutput().train()
    model.conv.eval()  # a mix: root and bn train, conv eval
    before = [m.training for m in model.modules()]
    with Reporter(run_dir) as rep:
        reason = rep.graph(model, torch.zeros(1, 3, 4, 4))
    assert reason is not None and "\n" not in reason and reason.startswith("RuntimeError")
    assert [m.training for m in model.modules()] == before
    acc = load(run_dir)
    assert acc.Tags()["graph"] is False
    assert reason in read_text(acc, "graph/error")
    assert rep.tags == {"graph": 1}
    assert capsys.readouterr().out == ""  # add_graph's own error printout is swallowed


# -- lifetime --------------------------------------------------------------------------


def test_exception_inside_with_closes_writer_and_keeps_earlier_events(run_dir: Path) -> None:
    with pytest.raises(KeyError):
        with Reporter(run_dir) as rep:
            rep.text("notes/before", "written before the crash")
            rep.kernels([KernelGrid("features.0", (4, 3, 3, 3), "rgb", 4, 3, rgb(20, 30))])
            raise KeyError("boom")
    assert rep.closed
    acc = load(run_dir)
    assert read_text(acc, "notes/before") == "written before the crash"
    assert read_image_size(acc, "kernels/features.0") == (30, 20)


def test_keyboard_interrupt_inside_with_closes_writer(run_dir: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        with Reporter(run_dir) as rep:
            rep.structure(
                StructureSummary("tiny", (1, 3, 8, 8), (), total_params=0, trainable_params=0, total_mult_adds=0)
            )
            raise KeyboardInterrupt
    assert rep.closed
    assert "structure/summary" in load(run_dir).Tags()["tensors"]


def test_record_writer_flushes_so_events_are_readable_before_close(run_dir: Path) -> None:
    rep = Reporter(run_dir, flush_secs=3600)
    try:
        rep.predictions(Predictions("x", (1,), ("one",), (1.0,)))
        assert "predictions/x" in load(run_dir).Tags()["tensors"]
    finally:
        rep.close()


def test_close_is_idempotent_and_writes_after_close_fail(run_dir: Path) -> None:
    rep = Reporter(run_dir)
    rep.close()
    rep.close()
    rep.flush()  # harmless once closed
    with pytest.raises(RuntimeError, match="closed"):
        rep.text("notes/late", "too late")
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
