"""introspect.run_scope.recorded_run: run/info written and the writer closed on success, failure and Ctrl-C."""

from __future__ import annotations

import time
import warnings
from types import SimpleNamespace

import pytest
from conftest import load_events, text

from introspect.tensorboard import Reporter
from introspect.run_scope import RunEnd, recorded_run


def test_a_completed_run_records_status_warnings_once_and_closes(tmp_path) -> None:
    reporter = Reporter(tmp_path)
    info: dict[str, object] = {"model": "tiny"}
    summary = SimpleNamespace(warnings=None, seconds=None, tags=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with recorded_run(reporter, info, summary, caught, time.perf_counter()) as end:
            assert isinstance(end, RunEnd) and end.status == "running"
            warnings.warn("twice")
            warnings.warn("twice")
            reporter.scalar("audit/accuracy/top1", 0.5)
            info["images"] = 3  # read when the run ends
    assert end.completed and end.status.startswith("completed in ") and end.warnings == ["twice"]
    assert summary.warnings == ["twice"] and summary.seconds == end.seconds and summary.tags == end.tags
    assert end.tags == {"audit": 1, "run": 1} and reporter.closed
    written = text(load_events(tmp_path), "run/info")
    assert written.startswith("**WARNINGS**")  # first: TensorBoard's text cards are short
    keys = [line.split("|")[1].strip() for line in written.splitlines() if line.startswith("|")][2:]
    assert keys == ["model", "images", "versions", "command", "status"]
    assert written.count("twice") == 1


def _caused_by_ctrl_c() -> RuntimeError:
    error = RuntimeError("Error calling __set_name__ on 'x' instance 'y' in 'Z'")
    error.__cause__ = KeyboardInterrupt()
    return error


@pytest.mark.parametrize("raised, status", [(ValueError("bad\nthing"), "failed: ValueError: bad"),
                                            (KeyboardInterrupt(), "interrupted (Ctrl-C)"),
                                            (_caused_by_ctrl_c(), "interrupted (Ctrl-C)")])
def test_a_run_that_raises_says_how_it_ended_and_raises_on(tmp_path, raised, status) -> None:
    reporter = Reporter(tmp_path)
    with pytest.raises(type(raised)):
        with recorded_run(reporter, {"model": "tiny"}, caught=["from load_model", "from load_model"]) as end:
            reporter.scalar("audit/accuracy/top1", 0.5)
            raise raised
    assert end.status.startswith(status) and not end.completed and reporter.closed
    assert end.warnings == ["from load_model"]
    acc = load_events(tmp_path)
    assert f"| status | {status}" in text(acc, "run/info")
    assert len(acc.Scalars("audit/accuracy/top1")) == 1  # what was written before stays readable
