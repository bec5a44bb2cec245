"""The introspect tab in a real browser: TensorBoard on a free local port, headless Chromium.

Chromium is driven through chromedriver's W3C WebDriver protocol (plain HTTP and JSON, so no client
library is needed). The test opens TensorBoard at ``#introspect``, enters the tab's iframe, picks the
run, the image and a class, waits for the map, then another class, and checks from the pixels of the
two colour-mapped maps that they differ. Skipped where ``chromium`` or ``chromedriver`` is absent.

``INTROSPECT_TAB_SCREENSHOT=docs/introspect_tab.png`` also saves the page's screenshot there (the
README's picture); with the ImageNet mobilenet_v2 weights in ../shared the run is then made with them.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1500,1150"]
SHARED_WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_v2_imagenet.pth"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None, reason="chromium/chromedriver not installed")]

SERVE = """
import sys
from tensorboard import default, program
from introspect_tab.plugin import IntrospectLoader
plugins = default.get_plugins()
if not any(getattr(p, "__name__", "") == "IntrospectLoader" for p in plugins):  # not installed: add it
    plugins.append(IntrospectLoader)
board = program.TensorBoard(plugins=plugins)
board.configure(logdir=sys.argv[1], port=int(sys.argv[2]), host="localhost", reload_interval=0)
board.main()
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def _wait_http(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except (OSError, urllib.error.URLError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


class WebDriver:
    """The few W3C WebDriver commands the test needs, over chromedriver's HTTP port."""

    def __init__(self, port: int, profile: str) -> None:
        self.base = f"http://localhost:{port}"
        options = {"binary": CHROMIUM, "args": [*FLAGS, f"--user-data-dir={profile}"]}
        answer = self._call("POST", "/session", {"capabilities": {"alwaysMatch": {"goog:chromeOptions": options}}})
        self.session = f"/session/{answer['sessionId']}"

    def _call(self, verb: str, path: str, payload: dict | None = None) -> dict:
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=verb,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as error:
            raise AssertionError(f"webdriver {verb} {path}: {error.read()[:500]!r}") from None

    def command(self, verb: str, path: str, payload: dict | None = None):
        return self._call(verb, self.session + path, payload)

    def open(self, url: str) -> None:
        self.command("POST", "/url", {"url": url})

    def script(self, body: str, *args):
        return self.command("POST", "/execute/sync", {"script": body, "args": list(args)})

    def find(self, css: str) -> dict:
        return self.command("POST", "/element", {"using": "css selector", "value": css})

    def click(self, css: str) -> None:
        """Click the element ``css`` names; found again if the page redrew it between the find and the click
        (WebDriver's "stale element reference", seen once in a full-suite run)."""
        for attempt in range(3):
            element = self.find(css)
            try:
                self.command("POST", f"/element/{next(iter(element.values()))}/click", {})
                return
            except AssertionError as error:
                if "stale element" not in str(error) or attempt == 2:
                    raise
                time.sleep(0.2)

    def type(self, css: str, text: str) -> None:
        element = self.find(css)
        self.command("POST", f"/element/{next(iter(element.values()))}/value", {"text": text})

    def frame(self, css: str | None) -> None:
        self.command("POST", "/frame", {"id": self.find(css) if css else None})

    def until(self, body: str, seconds: float = 120, what: str = "") -> object:
        deadline = time.monotonic() + seconds
        while True:
            value = self.script(body)
            if value:
                return value
            if time.monotonic() > deadline:
                page = self.script("const s = document.getElementById('status'), e = document.getElementById('error');"
                                   "return [s && s.dataset.state, s && s.textContent, e && e.textContent];")
                raise AssertionError(f"timed out waiting for {what or body}; status, error: {page}")
            time.sleep(0.2)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.command("GET", "/screenshot"))

    def quit(self) -> None:
        try:
            self.command("DELETE", "")
        except (AssertionError, OSError):
            pass


@pytest.fixture(scope="module")
def logdir(tmp_path_factory, sample_cat) -> Path:
    import torch
    import torchvision

    import introspect

    root = tmp_path_factory.mktemp("tab_browser")
    shot = os.environ.get("INTROSPECT_TAB_SCREENSHOT")
    if shot and SHARED_WEIGHTS.is_file():
        model, weights, size = "mobilenet_v2", str(SHARED_WEIGHTS), 224
    else:
        torch.manual_seed(0)
        model, weights, size = "resnet18", str(root / "resnet18.pth"), 64
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    introspect.report(model, [sample_cat], logdir=root / "logs", run_name=f"{model}-cat", sections="cam",
                      load=introspect.LoadOptions(weights=weights, input_size=size),
                      cam=introspect.CamOptions(methods="gradcam,layercam"))
    return root / "logs"


@pytest.fixture(scope="module")
def tensorboard(logdir, tmp_path_factory):
    port = _free_port()
    log = (tmp_path_factory.mktemp("tensorboard_log") / "tensorboard.log").open("wb")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen([sys.executable, "-c", SERVE, str(logdir), str(port)], cwd=REPO, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_http(f"http://localhost:{port}/data/plugins_listing")
        yield f"http://localhost:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    port = _free_port()
    driver_process = subprocess.Popen([CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
    profile = tempfile.mkdtemp(prefix="introspect-chromium-")
    try:
        _wait_http(f"http://localhost:{port}/status", seconds=30)
        driver = WebDriver(port, profile)
        try:
            yield driver
        finally:
            driver.quit()
    finally:
        driver_process.terminate()
        driver_process.wait(timeout=20)
        shutil.rmtree(profile, ignore_errors=True)


READY = "const s = document.getElementById('status'); return s && s.dataset.state === 'ready' ? s.textContent : null;"
PIXELS = """
const img = document.querySelector('.card[data-method="gradcam"] img.heatmap');
const canvas = document.createElement('canvas');
canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
const context = canvas.getContext('2d');
context.drawImage(img, 0, 0);
return [img.naturalWidth, img.naturalHeight, Array.from(context.getImageData(0, 0, canvas.width, canvas.height).data)];
"""
HEADING = "return document.querySelector('.card[data-method=\"gradcam\"] h3').textContent;"


def _pixels(browser: WebDriver) -> np.ndarray:
    width, height, data = browser.script(PIXELS)
    return np.asarray(data, dtype=np.uint8).reshape(height, width, 4)[..., :3]


def _wait_map(browser: WebDriver, heading_has: str) -> np.ndarray:
    browser.until(READY, what="the map")
    browser.until(f"return document.querySelector('.card[data-method=\"gradcam\"] h3')?.textContent"
                  f".includes({json.dumps(heading_has)});", what=f"the map of {heading_has}")
    return _pixels(browser)


def test_the_tab_shows_two_classes_as_two_different_maps(tensorboard, browser, tmp_path):
    browser.open(f"{tensorboard}/#introspect")
    browser.until("return document.querySelector('iframe') !== null;", what="the tab's iframe")
    browser.frame("iframe")
    browser.until("return document.querySelectorAll('#run option').length > 0;", what="the runs")
    run = browser.script("return document.getElementById('run').options[0].value;")
    browser.script("const s = document.getElementById('run');"
                   "if (s.value !== arguments[0]) { s.value = arguments[0]; s.dispatchEvent(new Event('change')); }", run)
    browser.until("return document.querySelector('#images img[data-image=\"run:cat\"]') !== null;", what="images")
    browser.until("return document.querySelectorAll('#subjects button').length >= 2;", what="the top-k")
    browser.click('#images img[data-image="run:cat"]')
    first_name = browser.script("return document.querySelector('#subjects button[data-subject=\"0\"]').dataset.name;")
    browser.click('#subjects button[data-subject="0"]')
    first = _wait_map(browser, first_name)
    second_name = browser.script("return document.querySelector('#subjects button[data-subject=\"1\"]').dataset.name;")
    browser.click('#subjects button[data-subject="1"]')
    second = _wait_map(browser, second_name)
    assert first.shape == second.shape and first.shape[0] > 8
    assert np.abs(first.astype(int) - second.astype(int)).mean() > 1.0  # two classes, two maps
    browser.type("#class-search", "tabby")
    browser.click("#class-go")
    tabby = _wait_map(browser, "tabby")
    assert browser.script("return document.getElementById('error').textContent;") == ""
    assert len(browser.script("return document.querySelectorAll('.card img.overlay');")) == 2  # gradcam, layercam
    browser.frame(None)
    picture = browser.screenshot()
    assert picture[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "introspect_tab.png").write_bytes(picture)
    if os.environ.get("INTROSPECT_TAB_SCREENSHOT"):
        Path(os.environ["INTROSPECT_TAB_SCREENSHOT"]).write_bytes(picture)
    assert tabby.shape == first.shape
