"""One run path for every task: the library's analyzers, a user's section and the forward pass count
are the same for a classifier, a detector, a segmenter, a video model and RAFT."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import load_events, run_cli, text

import introspect
from introspect.errors import UsageError
from introspect.options import DetectionOptions
from introspect.records import (
    CamResult,
    Detections,
    FeatureMap,
    FlowResult,
    KernelGrid,
    Predictions,
    Segmentation,
    StructureSummary,
)
from introspect.sections import SECTIONS, Section, register_section

ROOT = Path(__file__).resolve().parents[1]
CAT = str(ROOT / "sample_images" / "cat.png")
COFFEE = str(ROOT / "sample_images" / "coffee.png")

# model, input size, inputs, predict record, what its CAMs explain (None when the task has no CAM)
TASK_MODELS = {
    "detection": ("fasterrcnn_mobilenet_v3_large_320_fpn", 128, [CAT], Detections, "box"),
    "segmentation": ("lraspp_mobilenet_v3_large", 96, [CAT], Segmentation, "mask class"),
    "video": ("r3d_18", 48, [CAT], Predictions, "clip class"),
    "optical_flow": ("raft_small", 128, [CAT, COFFEE], FlowResult, None),
}


@pytest.fixture(scope="module", params=list(TASK_MODELS))
def task_model(request):
    name, size, inputs, predicted, explained = TASK_MODELS[request.param]
    return introspect.load_model(name, weights="none", input_size=size), inputs, predicted, explained


@pytest.mark.filterwarnings("ignore")
def test_every_library_call_returns_the_tasks_record_or_says_why_not(task_model):
    loaded, inputs, predicted, explained = task_model
    assert isinstance(introspect.summarize(loaded), StructureSummary)
    found = introspect.predict(loaded, inputs)
    assert len(found) == 1 and isinstance(found[0], predicted)
    maps = introspect.feature_maps(loaded, inputs)
    assert maps and all(isinstance(m, FeatureMap) for m in maps)
    assert all(isinstance(k, KernelGrid) for k in introspect.kernel_grids(loaded))
    if explained is None:
        with pytest.raises(UsageError, match="does not apply to optical_flow models"):
            introspect.cam(loaded, inputs)
    else:
        results = introspect.cam(loaded, inputs)
        assert len(results) == 1 and isinstance(results[0], CamResult)  # one record for every task
        assert {m.subject.kind for m in results[0].maps} <= {explained}
        prediction = results[0].prediction
        assert prediction is None if predicted is Predictions else isinstance(prediction, predicted)
        if explained == "clip class":  # a map over time: its frames drawn, a strip of them as its image
            first = results[0].maps[0]
            assert first.heatmap.ndim == 3 and first.frames.shape == (*first.heatmap.shape, 3)
        assert results[0]._repr_png_()[:4] == b"\x89PNG"  # renders in Jupyter as the classifier's do
    for call in (lambda: introspect.saliency(loaded, inputs),
                 lambda: introspect.visualize_filters(loaded, steps=1, progress=False),
                 lambda: introspect.embeddings(loaded, inputs, progress=False)):
        with pytest.raises(UsageError, match=f"does not apply to {loaded.task} models"):
            call()


@pytest.fixture
def names_section():
    """A section from a user's own code: the names of each batch's inputs, whatever the task."""

    def run(ctx) -> None:
        ctx.reporter.text("inputs/names", ", ".join(ctx.batch.names))

    register_section(Section("inputnames", "the names of each batch's inputs", "batch", run, needs_images=True,
                             slow=True))
    yield
    del SECTIONS["inputnames"]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name,size,images", [
    ("resnet18", 64, [CAT]),
    ("fasterrcnn_mobilenet_v3_large_320_fpn", 128, [CAT]),
    ("lraspp_mobilenet_v3_large", 96, [CAT]),
    ("r3d_18", 48, [CAT]),
])
def test_a_users_section_runs_for_every_task(names_section, tmp_path, name, size, images):
    summary = introspect.report(name, images, logdir=tmp_path, sections="inputnames",
                                load=introspect.LoadOptions(weights="none", input_size=size))
    acc = load_events(summary.run_dir)
    assert text(acc, "inputs/names") == "cat"
    assert "completed" in text(acc, "run/info")


@pytest.mark.filterwarnings("ignore")
def test_a_detection_run_with_features_and_cam_runs_the_detector_once_per_batch(tmp_path):
    loaded = introspect.load_model("fasterrcnn_mobilenet_v3_large_320_fpn", weights="none", input_size=128)
    calls = []
    handle = loaded.model.register_forward_hook(lambda module, args, output: calls.append(len(args[0])))
    try:
        summary = introspect.report(loaded, [CAT, COFFEE], logdir=tmp_path, sections="features,cam",
                                    detection=DetectionOptions(score_threshold=0.01))
    finally:
        handle.remove()
    assert calls == [2]  # one batch of two images, one forward pass
    acc = load_events(summary.run_dir)
    tags = set(acc.Tags()["images"])
    assert {"detections/cat", "cam/gradcam/cat", "cam/gradcam/coffee"} <= tags
    assert any(tag.startswith("features/") and tag.endswith("/coffee") for tag in tags)


@pytest.mark.parametrize("args,said", [
    (["lraspp_mobilenet_v3_large", "--input-size", "96", "--target", "cat"], "--target"),
    (["raft_small", "--input-size", "128", "--image", COFFEE, "--target", "cat"], "--target"),
    (["fasterrcnn_mobilenet_v3_large_320_fpn", "--input-size", "128", "--cam-layer", "backbone.nope"],
     "unknown layer 'backbone.nope'"),
    (["fasterrcnn_mobilenet_v3_large_320_fpn", "--input-size", "128", "--target", "unicorn"], "unknown class 'unicorn'"),
    (["r3d_18", "--input-size", "48", "--cam", "scorecam"], "'scorecam' needs many forward passes"),
])
def test_options_that_do_not_fit_the_task_fail_in_one_line_before_anything_is_written(tmp_path, args, said):
    logdir = tmp_path / "runs"
    code, out, err = run_cli([*args, "--image", CAT, "--weights", "none", "--logdir", str(logdir)])
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.startswith("introspect: error")]
    assert len(lines) == 1 and said in lines[0], err
    assert "Traceback" not in err
    assert not logdir.exists() or not any(logdir.iterdir())


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name,cam_layer,feature", [
    ("fasterrcnn_mobilenet_v3_large_320_fpn", "backbone", "backbone.body"),
    ("lraspp_mobilenet_v3_large", "backbone", "backbone."),
    ("raft_small", None, "feature_encoder."),
])
def test_list_layers_marks_the_cam_layer_of_every_task(name, cam_layer, feature):
    code, out, err = run_cli([name, "--weights", "none", "--list-layers"])
    assert code == 0, err
    marked = [line.split()[0] for line in out.splitlines() if "[cam]" in line]
    assert marked == ([cam_layer] if cam_layer else [])
    features = [line.split()[0] for line in out.splitlines() if "[features]" in line]
    assert len(features) >= 2 and all(f.startswith(feature) for f in features)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("task", list(TASK_MODELS) + ["classification", "quantized"])
def test_a_bare_module_is_given_its_task_from_its_structure(task):
    """A module passed without a name (a library call, a model built by the user's own code) is read as the
    torchvision model of the same structure would be: same task, same class names, same kind of input."""
    name, size = (TASK_MODELS[task][:2] if task in TASK_MODELS else
                  {"classification": ("resnet18", 64), "quantized": ("mobilenet_v2", 64)}[task])
    named = introspect.load_model(name if task != "quantized" else f"quantized_{name}", weights="none",
                                  input_size=size)
    bare = introspect.load_model(named.model, input_size=size)
    assert bare.task == named.task == task
    assert bare.categories == named.categories or task in ("classification", "quantized")
    assert len(bare.categories) == len(named.categories)
    if task == "detection":  # the whole chain: boxes and a CAM per box from the bare module
        found = introspect.predict(named.model, [CAT])
        assert isinstance(found[0], Detections)
        assert {m.subject.kind for m in introspect.cam(named.model, [CAT])[0].maps} <= {"box"}
    if task == "segmentation":
        assert isinstance(introspect.predict(named.model, [CAT])[0], Segmentation)
