"""What a person reads: labels tall enough once TensorBoard scales an image to its card, tags that never pile,
Markdown that shows names as they are, run/info and the console in the words of the command line."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from torch import nn

from introspect.drawing import CARD_WIDTH, MIN_PANEL_SIDE, distinct_colors, draw_boxes, labelled_panels, titled_rows

ROOT = Path(__file__).parents[1]


def _text_height_in_card(image: np.ndarray, rows: slice, columns: slice) -> float:
    """Height of the dark text inside ``image[rows, columns]`` once the image is shown ``CARD_WIDTH`` px wide."""
    dark = (image[rows, columns].max(axis=2) < 100).any(axis=1).nonzero()[0]
    assert len(dark), "no text there"
    return (dark[-1] - dark[0] + 1) * CARD_WIDTH / image.shape[1]


@pytest.mark.parametrize("count, side", [(1, 224), (3, 224), (5, 224), (5, 64), (8, 112)])
def test_panel_labels_stay_readable_at_the_card_width(count, side) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(100, 256, (side, side, 3), dtype=np.uint8) for _ in range(count)]  # light: text is dark
    labels = ["Egyptian cat 76.0%", "tabby 12.5%", "Chesapeake Bay retriever 3.1%", "tiger cat 1.0%", "lynx 0.5%",
              "a", "b c", "d"][:count]
    panel = labelled_panels(images, labels)
    tile = max(side, MIN_PANEL_SIDE)
    cols, rest = divmod(panel.shape[1] - 4, tile + 4)
    assert rest == 0 and 1 <= cols <= count
    if count >= 3:
        assert cols < count  # long labels: fewer columns, not smaller text
    rows = -(-count // cols)
    strip = (panel.shape[0] - 4) // rows - tile - 4
    for i in range(count):  # every label, in its own strip above its tile
        r, c = divmod(i, cols)
        top, left = 4 + r * (strip + tile + 4), 4 + c * (tile + 4)
        if labels[i] in ("a", "b c", "d"):
            continue  # no letter with a descender: shorter by nature
        assert _text_height_in_card(panel, slice(top, top + strip), slice(left, left + tile)) >= 11, labels[i]


def test_video_strip_titles_and_frame_labels_are_readable() -> None:
    frames = [[np.full((112, 112, 3), 200, np.uint8)] * 8] * 3
    strip = titled_rows(frames, ["scuba diving 40.0%", "trapezing 30.0%", "snorkeling 10.0%"],
                        [f"t={t}" for t in range(0, 16, 2)])
    title_rows = slice(0, 40 * strip.shape[1] // CARD_WIDTH)
    assert _text_height_in_card(strip, title_rows, slice(0, strip.shape[1])) >= 11  # "scuba diving 40.0%"


def test_box_tags_never_cover_each_other_and_classes_get_their_own_colour() -> None:
    colours = distinct_colors([3, 3, 7, 1])
    assert colours[0] == colours[1] and len({colours[0], colours[2], colours[3]}) == 3
    canvas = np.full((400, 400, 3), 255, np.uint8)
    boxes = np.array([[50, 50, 300, 300]] * 3, dtype=np.float64)  # three boxes in one place: tags must not pile
    own = [(230, 25, 75), (0, 130, 200), (60, 180, 75)]
    drawn = draw_boxes(canvas, boxes, ["cat 0.91", "dog 0.55", "fox 0.20"], own, line_width=1)
    tag_area = [int((drawn == np.array(c, np.uint8)).all(axis=2).sum()) for c in own]
    # each tag's fill is in sight (about 70 x 25 px less its letters): piled on one place, only the last would be
    assert all(area > 800 for area in tag_area), tag_area


def test_markdown_shows_names_as_they_are() -> None:
    from tensorboard.plugin_util import markdown_to_safe_html

    from introspect.records import RunInfo

    info = RunInfo(info={"command": "python -m introspect vgg11 --image a_b.png", "module": "__main__",
                         "class": "__background__ | *x*"}, warnings=("RANDOM WEIGHTS: __init__",))
    markdown = info.to_markdown()
    assert markdown.startswith("**WARNINGS**")  # first: text cards are short
    html = markdown_to_safe_html(markdown)
    assert "__main__" in html and "__background__ | *x*" in html and "a_b.png" in html and "__init__" in html
    assert html.count("<strong>") == 2  # the WARNINGS heading and the warning, nothing else
    assert html.index("RANDOM WEIGHTS") < html.index("<table>")


def test_command_line_is_pasteable_and_messages_speak_flags() -> None:
    from introspect.errors import worded, worded_as_flags
    from introspect.run_scope import command_line

    argv = ["/x/introspect/__main__.py", "vgg11", "--image", "my photos/cat.png", "--run-name", "a'b"]
    assert command_line(argv) == "python -m introspect vgg11 --image 'my photos/cat.png' --run-name 'a'\"'\"'b'"
    assert command_line(["train.py", "--lr", "0.1"]) == "python train.py --lr 0.1"
    message = "random initialisation (weights='none'); pass weights=PATH"
    assert worded(message) == message
    with worded_as_flags({"weights": "--weights"}):
        assert worded(message) == "random initialisation (--weights none); pass --weights PATH"


def test_tensorboard_command_names_the_program_that_exists(monkeypatch, tmp_path) -> None:
    import shutil

    from introspect.cli import tensorboard_command

    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "tensorboard").write_text("#!/bin/sh\n")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.chdir(tmp_path)
    assert tensorboard_command("my runs") == "venv/bin/tensorboard --logdir 'my runs'"
    (bin_dir / "tensorboard").unlink()
    assert tensorboard_command("runs") == "python -m tensorboard.main --logdir runs"
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/tensorboard")
    assert tensorboard_command("runs") == "tensorboard --logdir runs"


def test_a_bad_image_path_is_refused_before_any_weights_are_loaded(monkeypatch, tmp_path) -> None:
    import importlib

    report_module = importlib.import_module("introspect.report")

    def never(*args, **kwargs):
        raise AssertionError("weights were loaded before the image path was checked")

    monkeypatch.setattr(report_module, "load_model", never)
    code, _, err = run_cli(["resnet18", "--image", str(tmp_path / "nope.png"), "--logdir", str(tmp_path)])
    assert code == 2 and "nope.png" in err and "Traceback" not in err
    code, _, err = run_cli(["resnet18", "--dataset", str(tmp_path / "missing"), "--logdir", str(tmp_path)])
    assert code == 2 and "--dataset" in err and "missing" in err
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_run_without_images_says_what_it_skipped_and_how_to_open_it(tmp_path) -> None:
    code, out, err = run_cli(["resnet18", "--weights", "none", "--input-size", "32", "--sections",
                              "structure,features,cam", "--logdir", str(tmp_path)])
    assert code == 2 and "--image" in err  # asked for by name: an error naming the flag
    code, out, err = run_cli(["squeezenet1_1", "--weights", "none", "--input-size", "32", "--logdir", str(tmp_path)])
    assert code == 0, err
    assert "skipped features: no images given (pass --image PATH)" in err
    assert "skipped cam: no images given (pass --image PATH)" in err
    assert "open it with: " in out and "--logdir" in out


def test_audit_hparams_put_the_headline_first_and_whole_numbers_as_integers() -> None:
    from introspect.tensorboard.layouts import audit_hparams

    settings = {"model": "resnet18", "weights": "random", "dataset": "val", "labels": "folders", "boxes": "none",
                "methods": "gradcam", "layer": "layer4", "tolerance_px": 15.0, "batch_size": 64, "workers": 8,
                "processes": 1, "input_size": 224}
    shown, metrics = audit_hparams(settings, {"audit/accuracy/top1": 0.5, "audit/accuracy/top5": 0.8,
                                              "audit/energy_in_box/gradcam": 0.3, "audit/pointing/gradcam": 0.6})
    first = sorted(shown)[:5]  # what HPARAMS ticks at first: the first five by name
    assert set(first) == {"Model", "Weights", "CAM methods", "CAM layer", "Dataset"}
    assert shown["input size"] == "224" and shown["tolerance px"] == "15" and shown["batch size"] == "64"
    assert list(metrics) == ["audit/accuracy/top1", "audit/accuracy/top5", "audit/pointing/gradcam"]


def test_a_3d_colour_conv_is_a_labelled_time_by_filter_grid() -> None:
    from introspect.analyzers.kernels import kernel_grid

    conv = nn.Conv3d(3, 64, (3, 7, 7))
    with torch.no_grad():
        grid = kernel_grid("stem.0", conv)
    assert grid.mode == "rgb-time" and grid.shown_filters == 64
    height, width, _ = grid.image.shape
    assert width > height / 2  # four bands of 16 filters x 3 time steps, not a 64-row column
    margin = grid.image[:, :20]
    assert (margin.max(axis=2) < 100).any()  # the t= labels left of the rows


def test_the_random_weights_warning_comes_first_on_the_console_and_once(tmp_path) -> None:
    code, out, err = run_cli(["squeezenet1_1", "--input-size", "32", "--sections", "structure", "--logdir",
                              str(tmp_path)])  # offline (conftest): the default weights fall back to random
    assert code == 0, err
    lines = err.splitlines()
    assert lines[0].startswith("WARNING: RANDOM WEIGHTS") and "--weights PATH" in lines[0]
    assert err.count("RANDOM WEIGHTS") == 1 and "weights=PATH" not in err


def test_a_failed_download_prints_no_downloading_line(tmp_path, monkeypatch, capfd) -> None:
    """torch prints 'Downloading: URL' (stdout in torch 2.14) before it knows whether it can: a user without the
    network sees only the one RANDOM WEIGHTS line, not a download that never happens."""
    import urllib.error

    def fake_download(url, *args, **kwargs):
        sys.stdout.write(f'Downloading: "{url}" to somewhere\n')
        sys.stderr.write(f'Downloading: "{url}" to somewhere\n')
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.delenv("INTROSPECT_OFFLINE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))  # an empty cache: the download is tried
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    code, out, err = run_cli(["squeezenet1_1", "--input-size", "32", "--sections", "structure", "--logdir",
                              str(tmp_path / "runs")])
    captured = capfd.readouterr()
    assert code == 0, err
    assert "RANDOM WEIGHTS" in err and "download failed" in err
    assert "Downloading" not in out + err + captured.out + captured.err
