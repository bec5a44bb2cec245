"""What a person sees: TensorBoard, started on a free local port, opened in headless Chromium on a demo-like run
and an audit run (tiny, random weights); the pixels must show the cards the runs wrote, not a blank page.

Needs Debian's ``chromium`` (``.ci/run`` installs it); skipped with the reason where it is absent.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[1]
CHROMIUM = next((found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))),
                None)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _screenshot(url: str, out: Path, height: int = 1400) -> np.ndarray:
    """The page at ``url`` as headless Chromium draws it at 1600 px wide (RGB array)."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                        f"--screenshot={out}", f"--window-size=1600,{height}", "--virtual-time-budget=15000", url],
                       capture_output=True, timeout=120, check=False)
    assert out.is_file(), f"chromium wrote no screenshot of {url}"
    return np.asarray(Image.open(out).convert("RGB"), dtype=np.int16)


def _first_card(pixels: np.ndarray) -> np.ndarray:
    """Where the IMAGES and TEXT tabs put the first card matching their tag filter (the page 1600 px wide): below
    the filter box, right of the side panel, one card wide. Without a match, the first tag group's header and
    the top of its first card (a confusion matrix here) come there instead."""
    return pixels[190:600, 370:740]


def _saturated(pixels: np.ndarray) -> float:
    """Share of strongly coloured pixels (a CAM's jet colours; TensorBoard's own page is grey, white and pale)."""
    spread = pixels.max(axis=2) - pixels.min(axis=2)
    return float((spread > 120).mean())


def _ink(pixels: np.ndarray) -> float:
    """Share of dark pixels (text)."""
    return float((pixels.max(axis=2) < 90).mean())


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """A log dir with a demo-like run and an audit run, and a TensorBoard serving it: its base URL."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    pytest.importorskip("pyarrow")
    root = tmp_path_factory.mktemp("browser")
    logdir = root / "runs"
    code, _, err = run_cli(["resnet18", "--weights", "none", "--image", str(ROOT / "sample_images" / "cat.png"),
                            "--input-size", "96", "--sections", "structure,kernels,cam", "--topk", "3",
                            "--logdir", str(logdir), "--run-name", "demo"])
    assert code == 0, err
    data = root / "data"
    for label, photos in (("tabby", ("cat.png", "coffee.png")), ("space shuttle", ("rocket.png", "astronaut.png"))):
        (data / label).mkdir(parents=True)
        for photo in photos:
            shutil.copy(ROOT / "sample_images" / photo, data / label / photo)
    boxes = root / "boxes.csv"
    boxes.write_text("file,x0,y0,x1,y1,label\ntabby/cat.png,40,30,300,280,tabby\n"
                     "space shuttle/rocket.png,200,20,440,420,\n")
    code, _, err = run_cli(["resnet18", "--weights", "none", "--dataset", str(data), "--boxes", str(boxes),
                            "--input-size", "64", "--workers", "0", "--batch-size", "2", "--logdir", str(logdir),
                            "--run-name", "audit"])
    assert code == 0, err
    port = _free_port()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port),
                               "--host", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:  # up, and both runs loaded
            try:
                with urllib.request.urlopen(f"{url}/data/runs", timeout=5) as answer:
                    if {"demo", "audit"} <= set(__import__("json").loads(answer.read())):
                        break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "TensorBoard did not start"
            time.sleep(1)
        yield url, root
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_demo_run_shows_its_cam_card(board) -> None:
    url, root = board
    cam = _first_card(_screenshot(f"{url}/#images&tagFilter=cam%2Fgradcam%2Fcat", root / "cam.png"))
    none = _first_card(_screenshot(f"{url}/#images&tagFilter=no_such_tag", root / "none.png"))
    assert cam.std() > 20, "a blank card"
    assert _saturated(cam) > 0.04 > 0.02 > _saturated(none), (_saturated(cam), _saturated(none))  # the heatmaps
    info = _screenshot(f"{url}/#text&tagFilter=run%2Finfo", root / "info.png")[190:600, 370:1500]
    assert info.std() > 20 and _ink(info) > 0.01, (info.std(), _ink(info))  # run/info's table of text


def test_the_audit_run_shows_its_gallery(board) -> None:
    url, root = board
    gallery = _first_card(_screenshot(f"{url}/#images&tagFilter=audit%2Fworst_confident_wrong", root / "gallery.png"))
    none = _first_card(_screenshot(f"{url}/#images&tagFilter=no_such_tag", root / "none.png"))
    assert gallery.std() > 20, "a blank card"
    assert _saturated(gallery) > 0.04 > 0.02 > _saturated(none), (_saturated(gallery), _saturated(none))
    assert _ink(gallery) > 0.04, _ink(gallery)  # the captions (label, prediction, energy in box)
