"""The CLI end to end: every model family into TensorBoard, read back with EventAccumulator.

Runs go through ``introspect.cli.main([...])`` in-process (fast); a few go through a
real ``python -m introspect`` / ``introspect`` subprocess for exit codes and the
console script. Weights are random (``--weights none``), inputs small where the
model allows.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import image, load_events, run_cli, text
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from introspect import cli
from introspect.records.base import markdown_text

REPO = Path(__file__).resolve().parents[1]
CAT = REPO / "sample_images" / "cat.png"
PANEL_PADDING = 4  # tile_grid padding of the CAM panel: width = classes * (size + 4) + 4

# name -> (input size, first conv, one feature layer the family's defaults must include)
FAMILIES = {
    "resnet18": (64, "conv1", "layer4"),
    "vgg11": (64, "features.0", "features.20"),
    "densenet121": (64, "features.conv0", "features.norm5"),
    "mobilenet_v2": (64, "features.0.0", "features.18"),
    "mobilenet_v3_small": (64, "features.0.0", "features.12"),
    "efficientnet_b0": (64, "features.0.0", "features.8"),
    "convnext_tiny": (64, "features.0.0", "features.7"),
    "regnet_x_400mf": (64, "stem.0", "trunk_output.block4"),
    "squeezenet1_1": (64, "features.0", "features.12"),
    "shufflenet_v2_x0_5": (64, "conv1.0", "conv5"),
    "googlenet": (64, "conv1.conv", "inception5b"),
    "inception_v3": (80, "Conv2d_1a_3x3.conv", "Mixed_7c"),
    "vit_b_16": (224, "conv_proj", "encoder.layers.encoder_layer_11"),
    "swin_t": (224, "features.0.0", "features.7"),
}


# -- helpers --------------------------------------------------------------------------



def run_dir_from(stdout: str) -> Path:
    """The run directory named in the CLI's closing 'wrote ... to DIR' line."""
    match = re.search(r"^wrote \d+ summaries \(.*\) in [\d.]+ s to (.+)$", stdout, re.MULTILINE)
    assert match, f"no 'wrote ... to RUN_DIR' line in:\n{stdout}"
    return Path(match.group(1))




def all_tags(acc: EventAccumulator) -> set[str]:
    tags = acc.Tags()
    return set(tags["images"]) | set(tags["tensors"]) | set(tags["histograms"]) | set(tags["scalars"])


def table_rows(markdown: str) -> list[list[str]]:
    """Body rows of the first Markdown table (header and separator left out)."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[re.sub(r"\\(.)", r"\1", c.strip()) for c in re.split(r"(?<!\\)\|", line.strip("|"))]
            for line in lines[2:]]


def meta_model(name: str) -> nn.Module:
    """The torchvision model for its names and shapes: on the meta device (no random init) where it builds there."""
    kwargs = {"init_weights": False} if name in {"googlenet", "inception_v3"} else {}
    try:
        with torch.device("meta"):
            return torchvision.models.get_model(name, weights=None, **kwargs)
    except NotImplementedError:  # a builder that reads tensor values (RegNet's block widths)
        return torchvision.models.get_model(name, weights=None, **kwargs)


def expected_rgb_kernel_grid_size(conv: nn.Conv2d) -> tuple[int, int]:
    """(width, height) of the kernel grid of a first conv: one colour tile per filter (at most 64),
    each enlarged by an integer factor to >= 24 px, ceil(sqrt(F)) columns, 1 px padding."""
    filters = min(conv.out_channels, 64)
    kh, kw = conv.kernel_size
    factor = math.ceil(24 / max(kh, kw)) if max(kh, kw) < 24 else 1
    h, w = kh * factor, kw * factor
    cols = math.ceil(math.sqrt(filters))
    rows = math.ceil(filters / cols)
    return cols * (w + 1) + 1, rows * (h + 1) + 1


def assert_panel_of(panel: np.ndarray, size: int, classes: int) -> None:
    """A CAM panel: ``classes`` labelled tiles of ``size`` px (enlarged to MIN_PANEL_SIDE when smaller) in a grid of
    as many columns as keep the labels readable, white padding between them, dark label text above each tile."""
    from introspect.drawing import MIN_PANEL_SIDE

    side = max(size, MIN_PANEL_SIDE)
    height, width, _ = panel.shape
    cols, rest = divmod(width - PANEL_PADDING, side + PANEL_PADDING)
    assert rest == 0 and 1 <= cols <= classes, f"panel {width} px wide is no grid of {side} px tiles"
    rows = -(-classes // cols)
    cell, rest = divmod(height - PANEL_PADDING, rows)
    strip = cell - side - PANEL_PADDING
    assert rest == 0 and strip > 5, f"no label strip above the tiles (panel {width}x{height})"
    for i in range(cols + 1):  # the padding columns between (and around) the tiles are white
        x = i * (side + PANEL_PADDING)
        assert (panel[:, x:x + PANEL_PADDING] == 255).all(), f"column {x} is not padding"
    for i in range(classes):
        r, c = divmod(i, cols)
        x, y = PANEL_PADDING + c * (side + PANEL_PADDING), PANEL_PADDING + r * cell
        label = panel[y:y + strip, x:x + side]
        assert (label < 100).any(), f"tile {i} has no label text"


# -- the family sweep ---------------------------------------------------------------


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_run(request, tmp_path_factory):
    """One CLI run of a family with every default section; its stdout, event file and meta model."""
    name = request.param
    size = FAMILIES[name][0]
    logdir = tmp_path_factory.mktemp(f"runs-{name}")
    code, out, err = run_cli([name, "--weights", "none", "--image", str(CAT), "--logdir", str(logdir),
                              "--input-size", str(size)])
    assert code == 0, err
    run_dir = run_dir_from(out)
    return {"name": name, "size": size, "out": out, "err": err, "run_dir": run_dir, "events": load_events(run_dir),
            "model": meta_model(name)}


def test_family_run_info_and_console(family_run):
    acc, out = family_run["events"], family_run["out"]
    info = text(acc, "run/info")
    assert f"| model | {markdown_text(family_run['name'])} |" in info
    assert "completed" in info
    assert "random" in info  # the weights
    assert family_run["run_dir"].parent.exists() and family_run["run_dir"].is_dir()
    # The closing lines: per-section counts equal what the event file holds, and how to open it.
    counts = dict(re.findall(r"(\w+) (\d+)", re.search(r"wrote \d+ summaries \((.*)\)", out).group(1)))
    by_section: dict[str, int] = {}
    for tag in all_tags(acc):
        by_section[tag.split("/", 1)[0]] = by_section.get(tag.split("/", 1)[0], 0) + 1
    by_section["graph"] = by_section.get("graph", 0) + (1 if acc.Tags()["graph"] else 0)
    assert {k: int(v) for k, v in counts.items()} == by_section
    total = int(re.search(r"wrote (\d+) summaries", out).group(1))
    assert total == sum(by_section.values())
    assert f"tensorboard --logdir {family_run['run_dir'].parent}" in out


def test_family_structure_table(family_run):
    model = family_run["model"]
    summary = text(family_run["events"], "structure/summary")
    total = sum(p.numel() for p in model.parameters())
    assert f"{total:,} parameters" in summary
    first_conv = FAMILIES[family_run["name"]][1]
    layer_names = {row[0] for row in table_rows(summary)}
    assert first_conv.split(".")[0] in layer_names
    assert "Conv2d" in {row[1] for row in table_rows(summary)}


def test_family_graph(family_run):
    acc = family_run["events"]
    # Every family in the sweep traces; a model that cannot is covered by test_untraceable_model_graph_error.
    assert acc.Tags()["graph"], "no graph in the event file"
    assert "graph/error" not in all_tags(acc)
    graph = acc.Graph()
    assert len(graph.node) > 10


def test_family_input_image(family_run):
    size = family_run["size"]
    assert image(family_run["events"], "input/cat").shape == (size, size, 3)


def test_family_first_conv_kernels(family_run):
    first_conv = FAMILIES[family_run["name"]][1]
    convs = [n for n, m in family_run["model"].named_modules() if isinstance(m, nn.Conv2d)]
    assert convs[0] == first_conv
    conv = dict(family_run["model"].named_modules())[first_conv]
    grid = image(family_run["events"], f"kernels/{first_conv}")
    width, height = expected_rgb_kernel_grid_size(conv)
    assert grid.shape == (height, width, 3)
    assert len(np.unique(grid.reshape(-1, 3), axis=0)) > 16  # colour kernels, not a blank grid
    kernel_tags = {t for t in all_tags(family_run["events"]) if t.startswith("kernels/")}
    modules = dict(family_run["model"].named_modules())
    pictured = [n for n in convs if modules[n].kernel_size != (1, 1)]  # 1x1 convs are skipped, run/info says so
    assert kernel_tags == {f"kernels/{n}" for n in (pictured or convs)}
    if len(pictured) < len(convs):
        assert f"{len(convs) - len(pictured)} 1x1 convs" in text(family_run["events"], "run/info")


def test_family_feature_maps(family_run):
    from introspect.layers import default_feature_layers

    acc = family_run["events"]
    name = family_run["name"]
    defaults = [c.name for c in default_feature_layers(family_run["model"])]
    assert 4 <= len(defaults) <= 6
    assert FAMILIES[name][2] in defaults
    feature_tags = {t for t in all_tags(acc) if t.startswith("features/") and not t.startswith("features/stats/")}
    assert feature_tags == {f"features/{layer}/cat" for layer in defaults}
    for layer in defaults:
        grid = image(acc, f"features/{layer}/cat")
        assert grid.ndim == 3 and min(grid.shape[:2]) >= 48
    stats = table_rows(text(acc, "features/stats/cat"))
    assert [row[0] for row in stats] == defaults


def test_family_gradcam_panel(family_run):
    acc = family_run["events"]
    panel = image(acc, "cam/gradcam/cat")
    assert_panel_of(panel, family_run["size"], classes=3)


def test_family_predictions(family_run):
    rows = table_rows(text(family_run["events"], "predictions/cat"))
    assert len(rows) == 5
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4, 5]
    probabilities = [float(r[3]) for r in rows]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(0 <= int(r[2]) < 1000 for r in rows)
    # The console names the top 3 of the same table.
    assert f"cat: {rows[0][1]} " in family_run["out"]


def test_family_parameter_histograms(family_run):
    acc = family_run["events"]
    params = dict(family_run["model"].named_parameters())
    tags = {t for t in acc.Tags()["histograms"] if t.startswith("parameters/")}
    assert tags == {f"parameters/{n}" for n in params}
    for name, p in params.items():
        assert acc.Histograms(f"parameters/{name}")[0].histogram_value.num == p.numel(), name


def test_untraceable_model_graph_error(tmp_path):
    """A model that torch.jit.trace refuses gets a one-line graph/error text, and the run goes on."""
    import introspect

    class DictOutput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return {"logits": self.fc(self.features(x).mean(dim=(2, 3)))}

    torch.manual_seed(0)
    summary = introspect.report(DictOutput().eval(), images=[CAT], logdir=tmp_path, sections="graph,cam",
                                load=introspect.LoadOptions(input_size=32))
    acc = load_events(summary.run_dir)
    assert not acc.Tags()["graph"]
    error = text(acc, "graph/error")
    assert "could not be traced" in error and "\n" not in error.strip()
    assert "cam/gradcam/cat" in all_tags(acc)


# -- several images ---------------------------------------------------------------------


def test_several_images_and_a_folder_in_one_run(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(REPO / "sample_images" / "astronaut.png", folder / "astronaut.png")
    shutil.copy(REPO / "sample_images" / "rocket.png", folder / "rocket.png")
    code, out, err = run_cli(["squeezenet1_1", "--weights", "none", "--image", str(CAT), "--image",
                              str(REPO / "sample_images" / "coffee.png"), "--image", str(folder),
                              "--logdir", str(tmp_path / "runs"), "--input-size", "64", "--sections", "features,cam"])
    assert code == 0, err
    run_dirs = list((tmp_path / "runs").iterdir())
    assert run_dirs == [run_dir_from(out)]
    acc = load_events(run_dirs[0])
    tags = all_tags(acc)
    names = ["cat", "coffee", "astronaut", "rocket"]
    for name in names:
        assert f"input/{name}" in tags
        assert f"predictions/{name}" in tags
        assert f"cam/gradcam/{name}" in tags
        assert f"features/stats/{name}" in tags
        assert f"features/features.12/{name}" in tags
        assert re.search(rf"^{name}: ", out, re.MULTILINE)
    assert {t.split("/")[-1] for t in tags if t.startswith("input/")} == set(names)
    # Different photos, different inputs.
    assert not np.array_equal(image(acc, "input/cat"), image(acc, "input/coffee"))


def test_sections_structure_kernels_write_only_those(tmp_path):
    code, out, err = run_cli(["resnet18", "--weights", "none", "--image", str(CAT), "--logdir", str(tmp_path),
                              "--input-size", "64", "--sections", "structure,kernels"])
    assert code == 0, err
    acc = load_events(run_dir_from(out))
    assert {t.split("/", 1)[0] for t in all_tags(acc)} == {"run", "structure", "kernels"}
    assert not acc.Tags()["graph"]
    assert "structure, kernels" in text(acc, "run/info")


def test_several_cam_methods(tmp_path):
    code, out, err = run_cli(["resnet18", "--weights", "none", "--image", str(CAT), "--logdir", str(tmp_path),
                              "--input-size", "64", "--sections", "cam", "--cam", "gradcam,layercam,eigencam"])
    assert code == 0, err
    acc = load_events(run_dir_from(out))
    cam_tags = {t for t in all_tags(acc) if t.startswith("cam/")}
    assert {"cam/gradcam/cat", "cam/layercam/cat", "cam/eigencam/cat"} <= cam_tags
    assert {t.split("/")[1] for t in cam_tags} <= {"gradcam", "layercam", "eigencam", "compare"}
    panels = [image(acc, f"cam/{m}/cat") for m in ("gradcam", "layercam", "eigencam")]
    for panel in panels:
        assert_panel_of(panel, 64, classes=3)
    assert not np.array_equal(panels[0], panels[2])  # eigencam is not gradcam


def test_target_by_name_and_index_explain_that_class(tmp_path):
    code, out, err = run_cli(["resnet18", "--weights", "none", "--image", str(CAT), "--logdir", str(tmp_path),
                              "--input-size", "64", "--sections", "cam", "--target", "tabby", "--target", "0"])
    assert code == 0, err
    assert_panel_of(image(load_events(run_dir_from(out)), "cam/gradcam/cat"), 64, classes=2)

    import introspect

    torch.manual_seed(0)
    loaded = introspect.load_model("resnet18", weights="none", input_size=64)
    by_name = introspect.cam(loaded, CAT, targets=["tabby"])[0]
    by_index = introspect.cam(loaded, CAT, targets=[281])[0]
    for result in (by_name, by_index):
        assert [(m.class_index, m.class_name) for m in result.maps] == [(281, "tabby")]
    np.testing.assert_array_equal(by_name.maps[0].heatmap, by_index.maps[0].heatmap)
    other = introspect.cam(loaded, CAT, targets=[0])[0]
    assert other.maps[0].class_name == "tench"
    assert not np.array_equal(other.maps[0].heatmap, by_name.maps[0].heatmap)


# -- listing and help ---------------------------------------------------------------


def test_list_models(tmp_path):
    code, out, err = run_cli(["--list-models"])
    assert code == 0 and err == ""
    names = [line for line in out.splitlines() if line and not line.startswith("# ")]  # "# task (N): ..." heads
    assert sorted(names) == sorted(torchvision.models.list_models())
    assert {"resnet18", "vgg11", "vit_b_16", "swin_t", "r3d_18", "raft_small"} <= set(names)


def test_list_layers(tmp_path):
    code, out, err = run_cli(["resnet18", "--list-layers"])
    assert code == 0
    lines = out.splitlines()
    names = [line.split()[0] for line in lines]
    assert names == [n for n, _ in torchvision.models.resnet18().named_modules() if n]
    rows = {line.split()[0]: line.split(maxsplit=1)[1] for line in lines}
    assert rows["conv1"].split() == ["Conv2d", "(1,", "64,", "112,", "112)", "nchw"]  # the probed output
    assert rows["layer4"].split() == ["Sequential", "(1,", "512,", "7,", "7)", "nchw", "[features]", "[cam]"]
    assert rows["layer1"].endswith("(1, 64, 56, 56) nchw [features]")
    assert rows["fc"].split() == ["Linear", "(1,", "1000)"]
    assert not list(tmp_path.iterdir())


def test_help_mentions_every_option():
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    help_text = out.getvalue()
    options = [o for action in cli.build_parser()._actions for o in action.option_strings if o.startswith("--")]
    assert len(options) >= 15
    for option in options:
        assert option in help_text, option
    assert "python -m introspect vgg11" in help_text  # the examples


def test_no_model_is_a_usage_error():
    code, out, err = run_cli([])
    assert code == 2
    assert "give a MODEL" in err


# -- real processes -------------------------------------------------------------------


def test_python_m_introspect_exit_codes(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "introspect", "resnet18", "--weights", "none", "--sections",
                         "kernels", "--logdir", str(tmp_path / "runs")], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    run_dir = run_dir_from(ok.stdout)
    assert run_dir.parent == tmp_path / "runs"
    assert "kernels/conv1" in all_tags(load_events(run_dir))

    bad = subprocess.run([sys.executable, "-m", "introspect", "resnet18", "--weights", "none", "--cam", "nope",
                          "--logdir", str(tmp_path / "bad")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    assert "unknown CAM method 'nope'" in bad.stderr and "gradcam" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_console_script():
    script = Path(sys.executable).parent / "introspect"
    assert script.is_file(), "the 'introspect' console script is not installed next to the interpreter"
    unknown = subprocess.run([str(script), "resnet"], capture_output=True, text=True, timeout=300)
    assert unknown.returncode == 2
    assert unknown.stdout == ""
    assert unknown.stderr.startswith("introspect: error: unknown model 'resnet': did you mean ")
    assert "resnet18" in unknown.stderr and "Traceback" not in unknown.stderr


def test_list_layers_honours_input_size():
    code, out, err = run_cli(["resnet18", "--list-layers", "--input-size", "64"])
    assert code == 0, err
    cam_rows = [line for line in out.splitlines() if line.endswith("[cam]")]
    assert len(cam_rows) == 1 and cam_rows[0].startswith("layer4 ") and "(1, 512, 2, 2)" in cam_rows[0]
    code, out, err = run_cli(["vit_b_32", "--list-layers", "--input-size", "64"])  # a fixed-size model: checked
    assert code == 2 and "takes only 224x224" in err and "--input-size 224" in err
