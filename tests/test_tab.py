"""The introspect tab inside TensorBoard: its routes through TensorBoard's own WSGI app.

A run is written by ``introspect.report`` (resnet18 with seeded random weights saved to a file, 64 px),
so the tab reloads the model from the path in the run's ``introspect.json``; every map it serves must
equal :func:`introspect.cam` on the same model, image, layer and class.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import introspect
from conftest import assert_untouched, model_state

REPO = Path(__file__).resolve().parents[1]
SIZE = 64
PREFIX = "/data/plugin/introspect"


def tensorboard_app(logdir: Path):
    """TensorBoard's WSGI app with its core plugin and the introspect tab, on ``logdir``."""
    from tensorboard import program
    from tensorboard.backend import application
    from tensorboard.plugins.core import core_plugin

    from introspect_tab.plugin import IntrospectLoader

    board = program.TensorBoard(plugins=[core_plugin.CorePluginLoader(include_debug_info=False), IntrospectLoader()])
    board.configure(logdir=str(logdir))
    return application.TensorBoardWSGIApp(board.flags, board.plugin_loaders, None, board.assets_zip_provider)


@pytest.fixture(scope="module")
def logdir(tmp_path_factory, sample_cat) -> Path:
    """Two runs of resnet18 (weights from a file) on the cat; the second one's file is deleted afterwards."""
    root = tmp_path_factory.mktemp("tab")
    torch.manual_seed(0)
    weights = root / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    gone = root / "gone.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), gone)
    logs = root / "logs"
    for name, path in (("r18", weights), ("gone", gone)):
        introspect.report("resnet18", [sample_cat], logdir=logs, run_name=name, sections="cam",
                          load=introspect.LoadOptions(weights=str(path), input_size=SIZE))
    gone.unlink()
    tampered = logs / "tampered"  # a record naming a file by its weights, not its weights_path: never loaded
    shutil.copytree(logs / "r18", tampered)
    record = json.loads((tampered / "introspect.json").read_text())
    (tampered / "introspect.json").write_text(json.dumps({**record, "weights": "../r18.pth", "weights_path": None}))
    imported = logs / "imported"  # an import-path model: the tab runs no code a record names
    shutil.copytree(logs / "r18", imported)
    (imported / "introspect.json").write_text(json.dumps({**record, "model": "os:system"}))
    moved = logs / "moved"  # its photo is gone: the tab explains the input as the model saw it (input/cat)
    shutil.copytree(logs / "r18", moved)
    (moved / "introspect.json").write_text(json.dumps({**record, "image_files": {"cat": str(root / "gone.png")}}))
    return logs


@pytest.fixture(scope="module")
def client(logdir):
    from werkzeug.test import Client

    return Client(tensorboard_app(logdir))


@pytest.fixture(scope="module")
def same_model(logdir):
    record = json.loads((logdir / "r18" / "introspect.json").read_text())
    return introspect.load_model("resnet18", weights=record["weights_path"], input_size=SIZE)


def _get(client, route: str, **params):
    from urllib.parse import urlencode

    return client.get(f"{PREFIX}/{route}?{urlencode(params)}")


def _run_image(client) -> Image.Image:
    response = _get(client, "image", run="r18", name="cat")
    assert response.status_code == 200
    return Image.open(io.BytesIO(response.get_data())).convert("RGB")


def _png(response) -> np.ndarray:
    assert response.status_code == 200, response.get_data()
    assert response.headers["Content-Type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.get_data())).convert("RGB"))


def _npy(response) -> np.ndarray:
    assert response.status_code == 200, response.get_data()
    return np.load(io.BytesIO(response.get_data()), allow_pickle=False)


def test_the_run_record_says_how_to_load_the_model_again(logdir, sample_cat):
    record = json.loads((logdir / "r18" / "introspect.json").read_text())
    assert record["image_files"] == {"cat": str(Path(sample_cat).resolve())}
    assert record["model"] == "resnet18"
    assert Path(record["weights_path"]).is_absolute() and Path(record["weights_path"]).name == "resnet18.pth"
    assert record["task"] == "classification" and record["input_size"] == SIZE
    assert record["cam_layer"] == "layer4" and record["cam_methods"] == ["gradcam"]
    assert len(record["categories"]) == 1000 and record["categories"][281] == "tabby"


def test_the_tab_is_listed_and_its_module_served(client):
    listing = json.loads(client.get("/data/plugins_listing").get_data())
    assert listing["introspect"]["enabled"] is True
    assert listing["introspect"]["loading_mechanism"] == {"type": "IFRAME", "module_path": f"{PREFIX}/index.js"}
    script = client.get(f"{PREFIX}/index.js")
    assert script.status_code == 200 and "export async function render" in script.get_data(as_text=True)
    runs = {run["name"]: run for run in json.loads(client.get(f"{PREFIX}/runs").get_data())["runs"]}
    assert runs["r18"]["model"] == "resnet18" and runs["r18"]["reloadable"] is True
    assert runs["gone"]["reloadable"] is False and "is gone" in runs["gone"]["note"]
    assert json.loads(_get(client, "images", run="r18").get_data()) == {"images": ["cat"]}


def test_png_and_npy_equal_introspect_cam_for_a_layer_and_a_class(client, same_model, sample_cat):
    params = dict(run="r18", image="run:cat", methods="gradcam,layercam", layer="layer3", target="tabby")
    found = json.loads(_get(client, "explain", **params).get_data())
    assert [m["method"] for m in found["maps"]] == ["gradcam", "layercam"]
    assert {m["layer"] for m in found["maps"]} == {"layer3"}
    assert found["subjects"][0]["name"] == "tabby" and found["subjects"][0]["index"] == 281
    expected = introspect.cam(same_model, sample_cat, "gradcam,layercam", layer="layer3", targets=["tabby"])
    for result in expected:
        heatmap = _npy(_get(client, "map.npy", method=result.method, **params))
        np.testing.assert_array_equal(heatmap, result.maps[0].heatmap)
        np.testing.assert_array_equal(_png(_get(client, "map.png", method=result.method, **params)),
                                      result.maps[0].image)
        shown = next(m for m in found["maps"] if m["method"] == result.method)
        assert shown["min"] == pytest.approx(float(heatmap.min())) and shown["max"] == pytest.approx(float(heatmap.max()))
    gradcam, layercam = (_npy(_get(client, "map.npy", method=m, **params)) for m in ("gradcam", "layercam"))
    assert not np.allclose(gradcam, layercam)  # side by side: two methods, two maps


def test_the_top_k_subjects_and_a_pick_among_them_equal_introspect_cam(client, same_model, sample_cat):
    found = json.loads(_get(client, "explain", run="r18", image="run:cat", subject=2).get_data())
    expected = introspect.cam(same_model, sample_cat, "gradcam", topk=5)[0]
    assert [s["index"] for s in found["subjects"]] == [m.subject.index for m in expected.maps]
    assert found["chosen"] == 2 and found["maps"][0]["layer"] == "layer4"  # the run's CAM layer by default
    heatmap = _npy(_get(client, "map.npy", run="r18", image="run:cat", subject=2))
    np.testing.assert_array_equal(heatmap, expected.maps[2].heatmap)
    again = json.loads(_get(client, "explain", run="r18", image="run:cat", subject=3).get_data())
    assert again["cached"] is True  # another of the top-k: computed by the first request
    raw = _png(_get(client, "map.png", run="r18", image="run:cat", subject=2, kind="heatmap"))
    from introspect.drawing import colorize

    np.testing.assert_array_equal(raw, colorize(expected.maps[2].heatmap))


def test_a_run_whose_photo_is_gone_explains_its_input_as_the_model_saw_it(client, same_model):
    heatmap = _npy(_get(client, "map.npy", run="moved", image="run:cat", target="tabby"))
    expected = introspect.cam(same_model, _run_image(client), "gradcam", targets=["tabby"])[0]
    np.testing.assert_array_equal(heatmap, expected.maps[0].heatmap)


def test_an_uploaded_photo_is_explained_like_the_library_does(client, same_model, sample_coffee):
    body = Path(sample_coffee).read_bytes()
    response = client.post(f"{PREFIX}/upload", data=body, content_type="image/png")
    assert response.status_code == 200, response.get_data()
    image = json.loads(response.get_data())["image"]
    heatmap = _npy(_get(client, "map.npy", run="r18", image=image, target="281"))
    expected = introspect.cam(same_model, Image.open(sample_coffee).convert("RGB"), "gradcam", targets=[281])[0]
    np.testing.assert_array_equal(heatmap, expected.maps[0].heatmap)


def test_the_warm_model_is_left_as_found(client):
    from introspect_tab.plugin import workbench

    _get(client, "explain", run="r18", image="run:cat")
    bench = workbench()
    loaded = bench.loaded("r18", bench._models["r18"].load)
    before = model_state(loaded.model)
    response = _get(client, "explain", run="r18", image="run:cat", methods="gradcam++,eigencam", layer="layer2")
    assert response.status_code == 200, response.get_data()
    assert_untouched(before, loaded.model)


def _error(response, status: int) -> str:
    assert response.status_code == status, response.get_data()
    assert response.headers["Content-Type"].startswith("application/json")
    message = json.loads(response.get_data())["error"]
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize(("params", "status", "words"), [
    (dict(run="nope", image="run:cat"), 404, "unknown run"),
    (dict(run="../r18", image="run:cat"), 404, "unknown run"),
    (dict(run="r18", image="run:dog"), 404, "no image"),
    (dict(run="r18", image="/etc/passwd"), 400, "image="),
    (dict(run="r18", image="upload:0123"), 404, "no upload"),
    (dict(run="r18", image="run:cat", layer="layer9"), 400, "unknown layer"),
    (dict(run="r18", image="run:cat", target="not a class"), 400, "unknown class"),
    (dict(run="r18", image="run:cat", target="1000"), 400, "1000"),
    (dict(run="r18", image="run:cat", subject="7"), 400, "subject=7"),
    (dict(run="r18", image="run:cat", methods="nocam"), 400, "nocam"),
    (dict(run="r18", image="run:cat", topk="0"), 400, "topk"),
    (dict(run="gone", image="run:cat"), 409, "is gone"),
    (dict(run="tampered", image="run:cat"), 409, "name no file path"),
    (dict(run="imported", image="run:cat"), 409, "runs no code"),
])
def test_bad_requests_get_a_4xx_with_one_line(client, params, status, words):
    assert words in _error(_get(client, "explain", **params), status)


def test_bad_uploads_get_a_4xx_and_the_server_keeps_serving(client, monkeypatch, sample_cat):
    import introspect_tab.plugin as plugin

    body = Path(sample_cat).read_bytes()
    assert "not an image" in _error(client.post(f"{PREFIX}/upload", data=b"MZ\x90\x00 an exe", content_type="image/png"),
                                    415)
    assert "not an image" in _error(client.post(f"{PREFIX}/upload", data=body, content_type="text/plain"), 415)
    assert "POST" in _error(client.get(f"{PREFIX}/upload"), 405)
    monkeypatch.setattr(plugin, "MAX_UPLOAD_BYTES", len(body) - 1)
    assert "MiB" in _error(client.post(f"{PREFIX}/upload", data=body, content_type="image/png"), 413)
    monkeypatch.setattr(plugin, "MAX_UPLOAD_BYTES", 8 << 20)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL's own bomb guard: the cat is far more
    assert "decompression-bomb" in _error(client.post(f"{PREFIX}/upload", data=body, content_type="image/png"), 413)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)
    monkeypatch.setattr(plugin, "MAX_UPLOAD_PIXELS", 1000)
    assert "pixels" in _error(client.post(f"{PREFIX}/upload", data=body, content_type="image/png"), 413)
    assert client.get(f"{PREFIX}/runs").status_code == 200


def test_the_workbench_drops_the_least_recently_used_model(logdir):
    from introspect.tab import Workbench
    from introspect_tab.runs import RunCatalogue

    load = RunCatalogue(logdir).run("r18").load
    bench = Workbench(max_models=1)
    first = bench.loaded("a", load)
    assert bench.loaded("a", load) is first and bench.warm_keys() == ["a"]
    bench.loaded("b", load)
    assert bench.warm_keys() == ["b"]
    assert Workbench(max_bytes=1).loaded("c", load) is not None  # the newest stays, whatever its size


def test_tensorboard_starts_without_torch():
    code = ("import sys; from introspect_tab.plugin import IntrospectLoader; "
            "from tensorboard.plugins.base_plugin import TBContext; "
            "plugin = IntrospectLoader().load(TBContext(logdir='.')); plugin.get_plugin_apps(); plugin.frontend_metadata(); "
            "print('torch' in sys.modules, 'introspect' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_the_package_declares_the_entry_point_and_ships_the_module():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    target = project["project"]["entry-points"]["tensorboard_plugins"]["introspect"]
    module, _, name = target.partition(":")
    from importlib import import_module

    from tensorboard.plugins.base_plugin import TBLoader

    assert issubclass(getattr(import_module(module), name), TBLoader)
    assert "static/*" in project["tool"]["setuptools"]["package-data"]["introspect_tab"]
    assert (REPO / "introspect_tab" / "static" / "index.js").is_file()


def _task_run(tmp_path: Path, model: str, image: Path, state: dict, size: int | None) -> tuple[Path, str]:
    """A run of ``model`` whose weights are ``state`` saved to a file; the log dir and the file."""
    weights = tmp_path / f"{model}.pth"
    torch.save(state, weights)
    introspect.report(model, [image], logdir=tmp_path / "logs", run_name=model, sections="cam",
                      load=introspect.LoadOptions(weights=str(weights), input_size=size))
    return tmp_path / "logs", str(weights)


@pytest.mark.slow
def test_a_detector_run_explains_a_detection_like_introspect_cam(tmp_path, sample_cat):
    from werkzeug.test import Client

    torch.manual_seed(0)
    name = "fasterrcnn_mobilenet_v3_large_320_fpn"
    net = torchvision.models.get_model(name, weights=None, weights_backbone=None)
    state = net.state_dict()
    head = "roi_heads.box_predictor.cls_score"
    state[f"{head}.weight"] = torch.zeros_like(state[f"{head}.weight"])
    state[f"{head}.bias"] = torch.full_like(state[f"{head}.bias"], -10.0)
    state[f"{head}.bias"][17] = 10.0  # every box a confident "cat": detections to explain
    logs, weights = _task_run(tmp_path, name, sample_cat, state, None)
    client = Client(tensorboard_app(logs))
    model = json.loads(_get(client, "model", run=name).get_data())
    assert model["task"] == "detection" and model["layers"] and "tabby" not in model["categories"]
    found = json.loads(_get(client, "explain", run=name, image="run:cat", topk=3, subject=1).get_data())
    assert [s["kind"] for s in found["subjects"]] == ["box"] * 3 and found["chosen"] == 1
    assert found["subjects"][1]["name"] == "cat" and len(found["subjects"][1]["box"]) == 4
    loaded = introspect.load_model(name, weights=weights)
    expected = introspect.cam(loaded, sample_cat, "gradcam", topk=3)[0].maps[1]
    heatmap = _npy(_get(client, "map.npy", run=name, image="run:cat", topk=3, subject=1))
    np.testing.assert_allclose(heatmap, expected.heatmap, atol=1e-5)
    assert "subject=3" in _error(_get(client, "explain", run=name, image="run:cat", topk=3, subject=3), 400)


@pytest.mark.slow
def test_a_segmenter_run_explains_a_class_present_like_introspect_cam(tmp_path, sample_cat):
    from werkzeug.test import Client

    torch.manual_seed(0)
    name = "lraspp_mobilenet_v3_large"
    state = torchvision.models.get_model(name, weights=None, weights_backbone=None).state_dict()
    logs, weights = _task_run(tmp_path, name, sample_cat, state, 96)
    client = Client(tensorboard_app(logs))
    model = json.loads(_get(client, "model", run=name).get_data())
    assert model["task"] == "segmentation" and model["layers"]
    found = json.loads(_get(client, "explain", run=name, image="run:cat").get_data())
    assert found["subjects"] and {s["kind"] for s in found["subjects"]} == {"mask class"}
    loaded = introspect.load_model(name, weights=weights, input_size=96)
    expected = introspect.cam(loaded, sample_cat, "gradcam")[0].maps[0]
    assert found["subjects"][0]["index"] == expected.subject.index
    heatmap = _npy(_get(client, "map.npy", run=name, image="run:cat"))
    np.testing.assert_allclose(heatmap, expected.heatmap, atol=1e-5)
    assert "does not apply" in _error(_get(client, "explain", run=name, image="run:cat", target="cat"), 400)


def test_one_request_at_a_time_per_model_and_its_progress_state(logdir, monkeypatch, sample_cat):
    import threading
    import time

    import introspect.analyzers.cam as cam_module
    from introspect.tab import Workbench
    from introspect_tab.runs import RunCatalogue

    load = RunCatalogue(logdir).run("r18").load
    bench = Workbench()
    real_cam, seen, active, second_started = cam_module.cam, [], [0], threading.Event()

    def watched(*args, **kwargs):
        active[0] += 1
        seen.append((active[0], bench.status("r18")))
        if len(seen) == 1:  # hold the model while a second request arrives
            second_started.wait(30)
            time.sleep(0.5)
        try:
            return real_cam(*args, **kwargs)
        finally:
            active[0] -= 1

    monkeypatch.setattr(cam_module, "cam", watched)
    image = Image.open(sample_cat).convert("RGB")
    bench.loaded("r18", load)
    assert bench.status("r18") == {"warm": True, "state": "idle"}

    def ask(target: str) -> None:
        bench.explain("r18", load, image, "cat", methods=["gradcam"], target=target)

    first = threading.Thread(target=ask, args=("tabby",))
    first.start()
    while not seen:
        time.sleep(0.01)
    second = threading.Thread(target=ask, args=("tiger cat",))
    second.start()
    second_started.set()
    first.join(60)
    second.join(60)
    assert [count for count, _ in seen] == [1, 1]  # never two maps of one model at once
    assert all(status == {"warm": True, "state": "computing"} for _, status in seen)
    assert bench.status("r18") == {"warm": True, "state": "idle"}
