"""Which runs the introspect tab lists, and what it says of each: reports, dataset audits, watched training
runs, runs made by an older introspect (``run/info`` only), and tasks the tab cannot explain (video, optical
flow). Records are read back from ``introspect.json``; routes go through TensorBoard's WSGI app."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import introspect
from test_tab import PREFIX, SIZE, _get, _npy, tensorboard_app

pytest.importorskip("pyarrow")


def _error(response, status: int) -> str:
    assert response.status_code == status, response.get_data()
    message = json.loads(response.get_data())["error"]
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.fixture(scope="module")
def logs(tmp_path_factory, sample_cat) -> SimpleNamespace:
    """A report, an audit (CLI), a watched training run, an older run and video / optical-flow records."""
    from introspect.cli import main
    from introspect.run_scope import run_record

    root = tmp_path_factory.mktemp("tabruns")
    torch.manual_seed(0)
    weights = root / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    logdir = root / "logs"
    introspect.report("resnet18", [sample_cat], logdir=logdir, run_name="report", sections="cam",
                      load=introspect.LoadOptions(weights=str(weights), input_size=SIZE))

    dataset = root / "photos"  # two ImageNet classes by name, three noise photos each
    generator = np.random.default_rng(0)
    for folder in ("tabby", "goldfish"):
        (dataset / folder).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(generator.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(dataset / folder / f"{i}.png")
    assert main(["resnet18", "--dataset", str(dataset), "--weights", str(weights), "--input-size", str(SIZE),
                 "--logdir", str(logdir), "--run-name", "audit", "--batch-size", "4", "--workers", "0"]) == 0

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 2))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    with introspect.watch(net, logdir, optimizer=optimizer, every=1, run_name="watch"):
        net(torch.rand(2, 3, 16, 16)).sum().backward()
        optimizer.step()

    older = logdir / "older"  # a report made before introspect.json existed: run/info only
    shutil.copytree(logdir / "report", older)
    (older / "introspect.json").unlink()
    record = json.loads((logdir / "report" / "introspect.json").read_text())
    video = logdir / "video"  # a format-1 record (no not_explorable): the task registry is asked
    shutil.copytree(logdir / "report", video)
    (video / "introspect.json").write_text(json.dumps(
        {key: value for key, value in {**record, "format": 1, "model": "r3d_18", "task": "video"}.items()
         if key not in ("kind", "not_explorable")}))
    flow = logdir / "flow"  # the record run_record makes for a RAFT model
    shutil.copytree(logdir / "report", flow)
    raft = SimpleNamespace(name="raft_small", weights="random", weights_source="random", weights_path=None,
                           task="optical_flow", input_size=None, device="cpu", categories=())
    (flow / "introspect.json").write_text(json.dumps(run_record("report", raft)))
    return SimpleNamespace(logdir=logdir, dataset=dataset, weights=weights)


@pytest.fixture(scope="module")
def client(logs):
    from werkzeug.test import Client

    return Client(tensorboard_app(logs.logdir))


@pytest.fixture(scope="module")
def runs(client) -> dict:
    return {run["name"]: run for run in json.loads(client.get(f"{PREFIX}/runs").get_data())["runs"]}


def test_every_kind_of_run_is_listed(runs):
    assert {name: run["kind"] for name, run in runs.items()} == {
        "report": "report", "audit": "audit", "watch": "watch", "older": "older", "video": "report",
        "flow": "report"}
    assert runs["report"]["reloadable"] and runs["report"]["status"].startswith("completed")
    assert runs["audit"]["reloadable"] and runs["audit"]["model"] == "resnet18"


def test_the_records_say_what_made_each_run(logs):
    report = json.loads((logs.logdir / "report" / "introspect.json").read_text())
    assert report["kind"] == "report" and report["format"] == 2 and report["not_explorable"] is None
    audit = json.loads((logs.logdir / "audit" / "introspect.json").read_text())
    assert audit["kind"] == "audit" and audit["status"].startswith("completed")
    assert audit["weights_path"] == str(logs.weights.resolve()) and audit["input_size"] == SIZE
    assert audit["cam_layer"] == "layer4" and audit["cam_methods"] == ["gradcam"]
    assert audit["dataset"] == str(logs.dataset.resolve())
    photos = {str(p.resolve()) for p in logs.dataset.rglob("*.png")}
    assert audit["image_files"] and set(audit["image_files"].values()) <= photos
    watched = json.loads((logs.logdir / "watch" / "introspect.json").read_text())
    assert watched["kind"] == "watch" and watched["model"] == "Sequential"
    assert "training run" in watched["not_explorable"]


def test_an_audit_run_offers_its_photos_and_explains_them_like_introspect_cam(client, logs):
    record = json.loads((logs.logdir / "audit" / "introspect.json").read_text())
    images = json.loads(_get(client, "images", run="audit").get_data())["images"]
    assert images == sorted(record["image_files"])
    name = images[0]
    thumb = client.get(f"{PREFIX}/image?run=audit&name={name}")
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.get_data())).size == (48, 40)
    heatmap = _npy(_get(client, "map.npy", run="audit", image=f"run:{name}", target="tabby"))
    loaded = introspect.load_model("resnet18", weights=str(logs.weights), input_size=SIZE)
    expected = introspect.cam(loaded, record["image_files"][name], "gradcam", targets=["tabby"])[0]
    np.testing.assert_array_equal(heatmap, expected.maps[0].heatmap)


def test_an_audit_without_recorded_photos_says_so_in_one_line(logs, client):
    from introspect_tab.runs import RunCatalogue

    bare = logs.logdir / "audit-bare"
    shutil.copytree(logs.logdir / "audit", bare)
    record = json.loads((bare / "introspect.json").read_text())
    (bare / "introspect.json").write_text(json.dumps({**record, "image_files": {}}))
    try:
        run = RunCatalogue(logs.logdir).run("audit-bare")
        assert run.summary()["reloadable"] and "upload a photo" in run.summary()["images_note"]
    finally:
        shutil.rmtree(bare)


def test_an_older_run_is_listed_with_its_model_and_a_one_line_note(runs, client):
    older = runs["older"]
    assert older["model"] == "resnet18" and older["task"] == "classification" and older["input_size"] == SIZE
    assert older["reloadable"] is False and "older introspect" in older["note"] and "run it again" in older["note"]
    assert json.loads(_get(client, "images", run="older").get_data()) == {"images": ["cat"]}
    for route in ("explain", "model"):
        assert "run it again" in _error(_get(client, route, run="older", image="run:cat"), 409)


@pytest.mark.parametrize(("run", "words"), [
    ("video", "needs single photos as input, which video models do not give"),
    ("flow", "needs single photos as input and something to explain"),
    ("watch", "training run"),
])
def test_runs_the_tab_cannot_explain_say_why_in_the_registry_s_words(runs, client, run, words):
    from introspect.tasks import TASKS
    from introspect.tasks.base import NEEDS

    assert runs[run]["reloadable"] is False and words in runs[run]["note"]
    if run != "watch":
        assert TASKS[runs[run]["task"]].skip_reason("tab", NEEDS["tab"]) in runs[run]["note"]
    for route in ("explain", "model"):
        assert words in _error(_get(client, route, run=run, image="run:cat"), 409)


def test_the_demo_names_the_tab_as_tensorboard_shows_it():
    from tensorboard.plugins.base_plugin import TBContext

    from introspect_tab.plugin import IntrospectLoader

    tab = IntrospectLoader().load(TBContext(logdir=".")).frontend_metadata().tab_name
    demo = (Path(__file__).resolve().parents[1] / "scripts" / "demo").read_text()
    assert f"the {tab.upper()} tab" in demo and "tensorboard --logdir runs" in demo


def test_the_run_scope_writes_the_record_when_the_run_starts_and_its_status_when_it_ends(tmp_path):
    from introspect.run_scope import recorded_run, run_record
    from introspect.tensorboard import Reporter

    record = run_record("audit", model="resnet18")
    path = tmp_path / "run" / "introspect.json"
    with pytest.raises(ValueError, match="boom"):
        with recorded_run(Reporter(tmp_path / "run"), {}, record=record):
            assert json.loads(path.read_text())["status"] == "running"
            record["cam_layer"] = "layer3"  # the body adds to it, as the audit does
            raise ValueError("boom")
    written = json.loads(path.read_text())
    assert written["status"].startswith("failed: ValueError: boom") and written["cam_layer"] == "layer3"
    assert written["kind"] == "audit" and written["model"] == "resnet18" and written["not_explorable"] is None
