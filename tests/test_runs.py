"""Nothing is lost: an interrupted or failed run leaves a readable event file that says so, and a
run never writes into another run's directory."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = Path(__file__).resolve().parents[1]
CAT = REPO / "sample_images" / "cat.png"



def load_events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "histograms": 0, "tensors": 0, "scalars": 0})
    acc.Reload()
    return acc


def texts(acc: EventAccumulator, tag: str) -> list[str]:
    return [event.tensor_proto.string_val[0].decode() for event in acc.Tensors(tag)]


def test_sigint_keeps_what_was_written(tmp_path):
    """Ctrl-C in the middle of a slow section: exit 130, and the event file holds every summary
    written before it, with run/info saying the run was interrupted."""
    logdir = tmp_path / "runs"
    env = {**os.environ, "INTROSPECT_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    # Score-CAM on vgg11 runs 512 x 3 masked forward passes: far longer than the wait below.
    process = subprocess.Popen(
        [sys.executable, "-m", "introspect", "vgg11", "--weights", "none", "--image", str(CAT), "--logdir",
         str(logdir), "--input-size", "64", "--sections", "structure,kernels,cam", "--cam", "scorecam"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        progress = []
        for line in process.stderr:  # "... structure", "... kernels", "... images cat"
            progress.append(line.strip())
            if line.startswith("... images"):
                break
        assert progress and progress[-1].startswith("... images"), progress
        (run_dir,) = logdir.iterdir()
        (event_file,) = run_dir.glob("events.out.tfevents.*")
        assert event_file.stat().st_size > 1000  # structure and kernels are flushed
        deadline = time.monotonic() + 120
        while "predictions/cat" not in load_events(run_dir).Tags()["tensors"]:  # the forward pass is done
            assert time.monotonic() < deadline and process.poll() is None, "the predictions never arrived"
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        stdout, rest = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, rest
    assert "interrupted" in rest and "Traceback" not in rest
    assert list(logdir.iterdir()) == [run_dir]
    acc = load_events(run_dir)
    (info,) = texts(acc, "run/info")
    assert "interrupted" in info and "completed" not in info
    assert "vgg11" in info
    (structure,) = texts(acc, "structure/summary")
    assert "features.0" in structure
    kernels = {t for t in acc.Tags()["images"] if t.startswith("kernels/")}
    assert kernels == {f"kernels/features.{i}" for i in (0, 3, 6, 8, 11, 13, 16, 18)}
    assert "input/cat" in acc.Tags()["images"]
    (predictions,) = texts(acc, "predictions/cat")
    assert len([line for line in predictions.splitlines() if line.startswith("|")]) == 2 + 5  # header, rule, top 5
    assert "cam/scorecam/cat" not in acc.Tags()["images"]


def test_same_run_name_never_mixes(tmp_path):
    logdir = tmp_path / "runs"
    argv = ["resnet18", "--weights", "none", "--sections", "kernels", "--logdir", str(logdir), "--run-name", "mine",
            "--input-size", "64"]
    code, out, err = run_cli(argv)
    assert code == 0, err
    first = logdir / "mine"
    assert f"to {first}\n" in out
    files = {p: p.read_bytes() for p in first.iterdir()}
    assert sorted(p.name.split(".")[0] for p in files) == ["events", "introspect"]  # + introspect.json, the record

    code, out, err = run_cli([*argv[:4], "structure", *argv[5:]])
    assert code == 0, err
    second = logdir / "mine-2"
    assert f"to {second}\n" in out
    code, out, err = run_cli(argv)
    assert code == 0, err
    assert f"to {logdir / 'mine-3'}\n" in out

    assert sorted(p.name for p in logdir.iterdir()) == ["mine", "mine-2", "mine-3"]
    assert {p: p.read_bytes() for p in first.iterdir()} == files  # the first run is untouched
    first_acc, second_acc = load_events(first), load_events(second)
    assert len(texts(first_acc, "run/info")) == 1
    assert "structure/summary" not in first_acc.Tags()["tensors"]
    assert "kernels/conv1" in first_acc.Tags()["images"]
    assert len(texts(second_acc, "run/info")) == 1
    assert "structure/summary" in second_acc.Tags()["tensors"]
    assert not second_acc.Tags()["images"]


def test_run_failing_midway_leaves_a_readable_record(tmp_path, monkeypatch):
    """An analyzer that raises inside report(): exit 1, one line, and the summaries written before it
    are kept with run/info saying the run failed and why."""
    def broken(*args, **kwargs):
        raise RuntimeError("analyzer exploded")

    monkeypatch.setattr(importlib.import_module("introspect.engine.cam"), "cams_from_pass", broken)
    logdir = tmp_path / "runs"
    code, out, err = run_cli(["resnet18", "--weights", "none", "--image", str(CAT), "--input-size", "64",
                              "--sections", "kernels,features,cam", "--logdir", str(logdir)])
    assert code == 1
    errors = [line for line in err.splitlines() if not line.startswith("... ")]
    assert errors == ["introspect: error: RuntimeError: analyzer exploded (run again with --debug for the traceback)"]
    (run_dir,) = logdir.iterdir()
    acc = load_events(run_dir)
    (info,) = texts(acc, "run/info")
    assert "failed: RuntimeError: analyzer exploded" in info
    images = set(acc.Tags()["images"])
    assert "kernels/conv1" in images and "input/cat" in images and "features/layer4/cat" in images
    assert not any(t.startswith("cam/") for t in images)


def _wrapped_interrupt() -> RuntimeError:
    """What Python 3.11 raises when Ctrl-C lands in a class body being built (matplotlib's, on its first import)."""
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt as interrupt:
        error = RuntimeError("Error calling __set_name__ on 'deprecate_privatize_attribute' instance 'locs' in "
                             "'Formatter'")
        error.__cause__ = interrupt
        return error


@pytest.mark.parametrize("module, where, raised", [("analyzers.kernels", "kernel_grids", KeyboardInterrupt),
                                                  ("engine.features", "feature_maps_from_pass", KeyboardInterrupt),
                                                  ("analyzers.kernels", "kernel_grids", _wrapped_interrupt)])
def test_keyboard_interrupt_in_process(tmp_path, monkeypatch, module, where, raised):
    """The same for Ctrl-C inside report(), in-process: exit 130 and run/info says interrupted; also for the
    error Python raises in Ctrl-C's place inside a class body (seen once in the subprocess test above)."""

    def interrupted(*args, **kwargs):
        raise raised()

    monkeypatch.setattr(importlib.import_module(f"introspect.{module}"), where, interrupted)
    logdir = tmp_path / "runs"
    code, out, err = run_cli(["resnet18", "--weights", "none", "--image", str(CAT), "--input-size", "64",
                              "--sections", "structure,kernels,features", "--logdir", str(logdir)])
    assert code == 130
    assert "interrupted" in err.splitlines()[-1]
    (run_dir,) = logdir.iterdir()
    acc = load_events(run_dir)
    assert "interrupted" in texts(acc, "run/info")[0]
    assert "structure/summary" in acc.Tags()["tensors"]
    assert ("kernels/conv1" in acc.Tags()["images"]) == (where != "kernel_grids")
