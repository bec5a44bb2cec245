"""The dataset audit on the synthetic task written to disk: it agrees with the in-memory analyzers, its table
has one row per image, it survives bad files, interruption and a hard kill, and two processes equal one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import assert_untouched, model_state, synthetic_loaded, synthetic_task, write_image_folder

from introspect import pointing_game
from introspect.audit import AuditOptions, audit
from introspect.audit.table import read_table
from introspect.errors import IntrospectWarning, OutputError, UsageError
from introspect.records import PointingGame

pytest.importorskip("pyarrow")

WORKER = Path(__file__).parent / "audit_worker.py"
METHODS = ("gradcam", "layercam")


@pytest.fixture(scope="module")
def data(trained_synthetic, tmp_path_factory) -> SimpleNamespace:
    model, test_set = trained_synthetic
    base = tmp_path_factory.mktemp("audit")
    root = base / "images"
    files = write_image_folder(test_set, root)
    weights = base / "synthetic.pt"
    torch.save(model.state_dict(), weights)
    return SimpleNamespace(model=model, test_set=test_set, root=root, boxes=base / "boxes.json", files=files,
                           weights=weights, base=base)


def options(**changes) -> AuditOptions:
    base = dict(methods=METHODS, batch_size=16, num_workers=0, progress=False, projector_size=20, gallery_size=6,
                checkpoint_every=2)
    base.update(changes)
    return AuditOptions(**base)


def run(data, tmp: Path | None = None, **changes):
    return audit(synthetic_loaded(data.model), data.root, options=options(boxes=str(data.boxes), **changes),
                 out_dir=tmp)


@pytest.fixture(scope="module")
def full(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    before = model_state(data.model)
    result = run(data, out)
    assert_untouched(before, data.model)
    return result


def disk_images(data) -> torch.Tensor:
    """The PNGs read back, normalised as the model eats them, in dataset order."""
    from PIL import Image

    task = synthetic_task()
    arrays = [np.asarray(Image.open(data.root / f).convert("RGB"), dtype=np.float32) / 255.0 for f in data.files]
    return task.normalize(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))


@pytest.mark.parametrize("tolerance", [0, 15])
def test_accuracy_and_pointing_equal_the_in_memory_analyzers(data, full, tolerance) -> None:
    result = full if tolerance == 15 else run(data, None, tolerance=0)
    images = disk_images(data)
    labels = data.test_set.labels
    with torch.no_grad():
        predicted = data.model(images).argmax(dim=1)
    assert result.images == result.labelled == 200 and result.boxed == 200
    assert result.top1 == pytest.approx(float((predicted == labels).float().mean()))
    assert result.top1 > 0.9
    game = pointing_game(data.model, images, labels, data.test_set.boxes, METHODS, batch_size=16)
    for method in METHODS:
        assert result.pointing[method] == pytest.approx(game.hits(method, tolerance=tolerance).mean())
    centre = PointingGame(methods=("centre",), peaks=np.tile([[32, 32]], (1, 200, 1)),
                          boxes=data.test_set.boxes.numpy())
    assert result.centre_baseline == pytest.approx(centre.hits("centre", tolerance=tolerance).mean())
    assert result.pointing["gradcam"] > result.centre_baseline  # the maps find objects, not the middle
    if tolerance == 0:
        assert result.pointing["gradcam"] == pytest.approx(game.fraction("gradcam"))  # margin-0 rule: same hits


def test_table_has_one_row_per_image(data, full) -> None:
    table = read_table(full.table)
    assert len(table["file"]) == 200 and sorted(table["file"]) == sorted(data.files)
    assert table["index"] == list(range(200))
    labels = data.test_set.labels.tolist()
    assert [labels[data.files.index(f)] for f in table["file"]] == table["label"]
    assert sum(table["correct"]) == round(full.top1 * 200)
    assert all(len(t) == 4 and abs(sum(p) - 1) < 1e-4 for t, p in zip(table["top5"], table["top5_prob"]))
    for method in METHODS:
        assert sum(table[f"{method}_hit"]) == round(full.pointing[method] * 200)
        energy = np.array(table[f"{method}_energy"])
        assert ((energy >= 0) & (energy <= 1)).all() and energy.mean() == pytest.approx(full.energy[method])
        assert max(table[f"{method}_peak_y"]) < 64


def test_aggregates_are_consistent(full) -> None:
    assert full.confusion.sum() == 200 and np.trace(full.confusion) == round(full.top1 * 200)
    assert full.pr_positive.sum() == 200 and full.pr_negative.sum() == 200 * 3
    assert sum(c.images for c in full.classes) == 200
    assert [m.class_name for m in full.mean_cams] == list(synthetic_task().CLASS_NAMES)
    wrong = next((g for g in full.galleries if g.name == "worst_confident_wrong"), None)
    if wrong is not None:
        assert all(i.label != i.predicted for i in wrong.items)
        probs = [i.probability for i in wrong.items]
        assert probs == sorted(probs, reverse=True)
    lowest = next(g for g in full.galleries if g.name == "lowest_energy_in_box")
    assert len(lowest.items) == 6 and [i.energy for i in lowest.items] == sorted(i.energy for i in lowest.items)
    assert full.sample is not None and len(full.sample) == 20 and full.sample.features.shape[0] == 20


def rows(path) -> list[dict]:
    table = read_table(path)
    return [dict(zip(table, values)) for values in zip(*table.values())]


def assert_same_rows(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if key.endswith("energy") or key == "top5_prob":
                assert np.allclose(np.array(x[key], dtype=float), np.array(y[key], dtype=float), atol=1e-5), key
            else:
                assert x[key] == y[key], (key, x["file"])


def test_resume_after_ctrl_c_finishes_with_the_same_table(data, full, tmp_path) -> None:
    def stop(batches: int, images: int) -> None:
        if batches == 5:
            raise KeyboardInterrupt

    loaded = synthetic_loaded(data.model)
    with pytest.raises(KeyboardInterrupt):
        audit(loaded, data.root, options=options(boxes=str(data.boxes)), out_dir=tmp_path, on_batch=stop)
    parts = sorted((tmp_path / "audit" / "table").glob("*.parquet"))
    assert sum(len(read_table(p)["file"]) for p in parts) == 5 * 16  # everything finished is readable
    seen = []
    result = audit(loaded, data.root, options=options(boxes=str(data.boxes)), out_dir=tmp_path, resume=True,
                   on_batch=lambda b, i: seen.append(b))
    assert seen == list(range(6, 14))  # the 5 finished batches are not redone
    assert_same_rows(rows(result.table), rows(full.table))
    assert result.top1 == full.top1 and result.pointing == full.pointing
    assert np.array_equal(result.confusion, full.confusion)


def test_resume_with_other_settings_is_refused(data, tmp_path) -> None:
    loaded = synthetic_loaded(data.model)
    with pytest.raises(KeyboardInterrupt):
        audit(loaded, data.root, options=options(), out_dir=tmp_path,
              on_batch=lambda b, i: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(UsageError, match="batch_size"):
        audit(loaded, data.root, options=options(batch_size=8), out_dir=tmp_path, resume=True)
    with pytest.raises(UsageError, match="resume=True"):
        audit(loaded, data.root, options=options(), out_dir=tmp_path)


def worker(args: list[str], processes: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   str(WORKER), *args]
    else:
        command = [sys.executable, str(WORKER), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_resume_after_sigkill_finishes_with_the_same_table(data, full, tmp_path) -> None:
    out, summary = tmp_path / "run", tmp_path / "summary.json"
    args = [str(data.weights), str(data.root), str(out), str(summary), "--boxes", str(data.boxes)]
    killed = worker(args + ["--kill-after", "7"], check=False)
    assert killed.returncode == -9 and not summary.exists()
    state = torch.load(out / "audit" / "state-rank0.pt", weights_only=True)
    assert state["finished"] == list(range(6))  # checkpoints every 2 batches: batch 7 was lost with the kill
    worker(args + ["--resume"])
    assert_same_rows(rows(out / "audit.parquet"), rows(full.table))
    figures = json.loads(summary.read_text())
    assert figures["top1"] == full.top1 and figures["pointing"] == full.pointing


@pytest.mark.slow
def test_two_processes_equal_one(data, tmp_path) -> None:
    results = {}
    for processes in (1, 2):
        out, summary = tmp_path / f"run{processes}", tmp_path / f"summary{processes}.json"
        worker([str(data.weights), str(data.root), str(out), str(summary), "--boxes", str(data.boxes)], processes)
        results[processes] = json.loads(summary.read_text())
        if processes == 2:
            assert {p.name.split("-")[0] for p in (out / "audit" / "table").glob("*.parquet")} == {"rank0", "rank1"}
    one, two = results[1], results[2]
    for key in one:
        if key in ("energy", "mean_cams"):
            continue
        if key == "table":
            assert_same_rows(rows(one[key]), rows(two[key]))
        else:
            assert one[key] == two[key], key
    for method, value in one["energy"].items():
        assert two["energy"][method] == pytest.approx(value, abs=1e-12)
    for name, maps in one["mean_cams"].items():
        assert np.allclose(maps, two["mean_cams"][name], atol=1e-6)
    assert one["images"] == 200 and len(one["sample"]) == 20


def test_bad_files_are_skipped_and_counted(data, tmp_path) -> None:
    root = tmp_path / "mixed"
    for f in data.files[:20]:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data.root / f, root / f)
    cls = data.files[0].split("/")[0]
    (root / cls / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / cls / "empty.jpg").write_bytes(b"")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = audit(synthetic_loaded(data.model), root, options=options(batch_size=8), out_dir=tmp_path / "run")
    skipped = [str(w.message) for w in caught if issubclass(w.category, IntrospectWarning)]
    assert len([m for m in skipped if m.startswith("skipped ")]) == 2
    assert result.images == 20 and result.skipped == 2
    assert sorted(result.skipped_files) == sorted([f"{cls}/broken.png", f"{cls}/empty.jpg"])
    assert len(read_table(result.table)["file"]) == 20


def test_workers_give_the_same_figures(data, full) -> None:
    result = run(data, None, num_workers=2)
    assert result.top1 == full.top1 and result.pointing == full.pointing
    assert np.array_equal(result.confusion, full.confusion)


def test_flat_folder_has_no_labels(data, tmp_path) -> None:
    for f in data.files[:10]:
        shutil.copy(data.root / f, tmp_path / f.replace("/", "_"))
    result = audit(synthetic_loaded(data.model), tmp_path, options=options())
    assert result.images == 10 and result.labelled == 0 and np.isnan(result.top1) and result.boxed == 0
    assert sum(m.count for m in result.mean_cams) == 10  # mean CAMs by predicted class


def test_unwritable_output_is_one_error_naming_the_path(data, tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="a-file"):
        audit(synthetic_loaded(data.model), data.root, options=options(), out_dir=blocker / "run")


def test_sanity_check_randomises_a_copy(data) -> None:
    from introspect.audit.sanity import spearman

    before = model_state(data.model)
    result = audit(synthetic_loaded(data.model), data.root, options=options(sanity=True, sanity_samples=8))
    assert_untouched(before, data.model)
    check = result.sanity
    assert check.samples == 8 and check.correlations.shape == (2, 5) and check.steps[-1] == "conv1"
    assert check.correlations[0, -1] < 0.9 and "gradcam" not in check.flagged
    a, b = torch.rand(3, 8, 8), torch.rand(3, 8, 8)
    assert np.allclose(spearman(a, a), 1.0) and np.allclose(spearman(a, -a), -1.0)
    scipy_stats = pytest.importorskip("scipy.stats")
    expected = [scipy_stats.spearmanr(x.flatten(), y.flatten())[0] for x, y in zip(a, b)]
    assert np.allclose(spearman(a, b), expected)


def test_reporter_writes_the_audit_tags(full, tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from introspect.tensorboard import Reporter

    assert [c.class_index for c in full.pr_curves] == list(full.pr_classes)  # drawn by the audit, not the writer
    assert full.confusion_image.dtype == np.uint8 and full.confusion_image.shape[2] == 3
    with Reporter(tmp_path) as reporter:
        reporter.audit(full)
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    scalars = set(tags["scalars"])
    assert {"audit/accuracy/top1", "audit/accuracy/top5", "audit/pointing/gradcam", "audit/pointing/layercam",
            "audit/pointing/centre_baseline", "audit/energy_in_box/gradcam"} <= scalars
    assert events.Scalars("audit/accuracy/top1")[0].value == pytest.approx(full.top1)
    images = set(tags["images"])
    names = synthetic_task().CLASS_NAMES
    assert {"audit/confusion_matrix", "audit/lowest_energy_in_box"} | {f"audit/mean_cam/{n}" for n in names} <= images
    tensors = set(tags["tensors"])
    assert {"audit/protocol", "audit/per_class"} <= tensors and {f"audit/pr/{n}" for n in names} <= tensors
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")
    assert (tmp_path / "projector_config.pbtxt").exists()
