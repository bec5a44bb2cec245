"""The dataset audit's run scope and what it refuses: a task without an audit is refused in one line before any
weights are loaded or anything is written; once the run folder exists, run/info says how the audit ended."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import load_events, run_cli, text

from introspect.errors import UnknownMethodError, UsageError

pytest.importorskip("pyarrow")

AUDIT = ["--weights", "none", "--input-size", "64", "--workers", "0", "--batch-size", "1"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Two class folders with a generated PNG each."""
    from PIL import Image

    root = tmp_path_factory.mktemp("scope") / "data"
    rng = np.random.default_rng(0)
    for label in ("0", "1"):
        (root / label).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (48, 56, 3), dtype=np.uint8)).save(root / label / f"{label}.png")
    return root


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("model, task", [("r3d_18", "video"), ("raft_small", "optical_flow")])
def test_cli_refuses_a_task_without_an_audit_before_loading(dataset, tmp_path, monkeypatch, model, task) -> None:
    import introspect.models

    def never(*args, **kwargs):
        raise AssertionError("weights were loaded for a refused audit")

    monkeypatch.setattr(introspect.models, "load_model", never)
    logdir = tmp_path / "runs"
    code, out, err = run_cli([model, "--dataset", str(dataset), "--logdir", str(logdir), *AUDIT])
    assert code == 2 and out == ""
    (line,) = _error_lines(err)
    assert line.startswith("introspect: error: --dataset cannot audit") and model in line and task in line
    assert "Traceback" not in err and "meta tensor" not in err
    assert not logdir.exists()


def test_library_refuses_a_flow_model_naming_the_model(dataset, tmp_path) -> None:
    from introspect import load_model
    from introspect.audit import AuditOptions, audit

    loaded = load_model("raft_small", weights="none")
    with pytest.raises(UsageError) as caught:
        audit(loaded, dataset, options=AuditOptions(num_workers=0, progress=False), out_dir=tmp_path / "run")
    assert caught.value.parameter == "model"
    message = str(caught.value)
    assert message.startswith("model='raft_small' cannot be audited (optical_flow model)")
    assert "\n" not in message
    assert not (tmp_path / "run").exists()


def test_library_refuses_a_detector_without_boxes_naming_the_parameter(dataset, tmp_path) -> None:
    """A detector given a class-folder dataset and no boxes: one line naming boxes=, nothing written."""
    from introspect import load_model
    from introspect.audit import AuditOptions, audit

    loaded = load_model("fasterrcnn_mobilenet_v3_large_320_fpn", weights="none")
    with pytest.raises(UsageError) as caught:
        audit(loaded, dataset, options=AuditOptions(num_workers=0, progress=False), out_dir=tmp_path / "run")
    assert caught.value.parameter == "boxes" and "class folders" in str(caught.value)
    assert "\n" not in str(caught.value) and not (tmp_path / "run").exists()


def test_every_task_says_whether_it_can_be_audited() -> None:
    from introspect.tasks import TASKS

    auditable = {name for name, task in TASKS.items() if task.skip_reason("audit") is None}
    assert auditable == {"classification", "quantized", "detection", "segmentation", "hf_detection", "hf_segmentation"}
    assert {name: task.audit_kind for name, task in TASKS.items() if name in auditable} == {
        "classification": "classes", "quantized": "classes", "detection": "boxes", "segmentation": "masks",
        "hf_detection": "boxes", "hf_segmentation": "masks"}
    for task in TASKS.values():
        reason = task.skip_reason("audit")
        assert reason is None or (reason and "\n" not in reason and "does not apply" not in reason)


def test_quantized_audit_runs_the_activation_only_cams(dataset, tmp_path) -> None:
    """A quantized classifier is audited with its task's default CAM (eigencam), and a gradient method is
    refused before anything is written."""
    logdir = tmp_path / "runs"
    code, out, err = run_cli(["quantized_resnet18", "--dataset", str(dataset), "--logdir", str(logdir),
                              "--cam", "gradcam", *AUDIT])
    assert code == 2 and "--cam gradcam: gradcam cannot run on quantized_resnet18" in err
    assert not logdir.exists()
    code, out, err = run_cli(["quantized_resnet18", "--dataset", str(dataset), "--logdir", str(logdir),
                              "--run-name", "q", *AUDIT])
    assert code == 0, err
    assert "2 images audited" in out
    info = text(load_events(logdir / "q"), "run/info")
    assert "| cam methods | eigencam |" in info and "| status | completed in" in info


def test_library_refuses_a_method_the_task_cannot_run(tmp_path) -> None:
    from introspect.audit import AuditOptions
    from introspect.audit.run import check_auditable
    from introspect.models import LoadedModel

    loaded = LoadedModel(model=None, name="int8net", weights="as given", weights_source="tests", transform=None,
                         categories=(), input_size=64, device=None, task="quantized")
    check_auditable(loaded, AuditOptions(methods="eigencam,fem"))
    with pytest.raises(UnknownMethodError) as caught:
        check_auditable(loaded, AuditOptions(methods="eigencam,gradcam"))
    assert caught.value.parameter == "methods" and str(caught.value).startswith("methods=eigencam,gradcam: gradcam")


@pytest.mark.parametrize("raised, code, status", [
    (RuntimeError("batch exploded"), 1, "failed: RuntimeError: batch exploded in "),
    (KeyboardInterrupt(), 130, "interrupted (Ctrl-C) in "),
])
def test_an_audit_that_stops_midway_says_so_in_run_info(dataset, tmp_path, monkeypatch, raised, code,
                                                        status) -> None:
    import introspect.audit.run

    batches = []
    real = introspect.audit.run._one_batch

    def second_fails(*args, **kwargs):
        batches.append(1)
        if len(batches) == 2:
            raise raised
        return real(*args, **kwargs)

    monkeypatch.setattr(introspect.audit.run, "_one_batch", second_fails)
    logdir = tmp_path / "runs"
    got, out, err = run_cli(["resnet18", "--dataset", str(dataset), "--logdir", str(logdir), "--run-name", "r",
                             *AUDIT])
    assert got == code
    assert "Traceback" not in err and _error_lines(err)[-1].startswith("introspect: ")
    run = logdir / "r"
    (event_file,) = run.glob("events.out.tfevents.*")
    info = text(load_events(run), "run/info")
    assert f"| status | {status}" in info
    assert "| model | resnet18 |" in info and f"| dataset | {dataset} |" in info and "| versions | python" in info
    assert "completed" not in info
    if isinstance(raised, KeyboardInterrupt):  # the finished batch was saved: the run can be resumed
        assert "--resume" in err and (run / "audit" / "state-rank0.pt").is_file()
        monkeypatch.setattr(introspect.audit.run, "_one_batch", real)
        got, out, err = run_cli(["resnet18", "--dataset", str(dataset), "--resume", str(run), *AUDIT])
        assert got == 0, err
        assert "2 images audited" in out
