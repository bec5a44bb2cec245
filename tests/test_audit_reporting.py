"""The audit on real weights agrees with the per-photo predictions; a full disk is one line, not a traceback."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from introspect.errors import OutputError

ROOT = Path(__file__).parents[1]
WEIGHTS = Path("/work/shared/weights/mobilenet_v2_imagenet.pth")


@pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"{WEIGHTS} is not on this machine")
def test_mobilenet_audit_predicts_as_the_per_photo_report(tmp_path) -> None:
    pytest.importorskip("pyarrow")
    from introspect import load_model, predict
    from introspect.audit import AuditOptions, audit
    from introspect.audit.table import read_table
    from introspect.images import find_images

    loaded = load_model("mobilenet_v2", weights=str(WEIGHTS))
    folder = ROOT / "sample_images"
    result = audit(loaded, folder, options=AuditOptions(num_workers=0, progress=False), out_dir=tmp_path)
    table = read_table(result.table)
    files = find_images([folder])
    assert result.images == len(files) == len(table["file"]) and result.labelled == 0
    expected = {Path(p.image_name).stem: p for p in predict(loaded, files)}
    by_stem = {Path(f).stem: (top, probs) for f, top, probs in zip(table["file"], table["top5"], table["top5_prob"])}
    assert by_stem.keys() == expected.keys()
    for stem, (top, probs) in by_stem.items():
        assert tuple(top) == expected[stem].indices
        assert probs == pytest.approx(expected[stem].probabilities, abs=1e-5)


def test_full_disk_is_one_output_error_without_a_traceback(tmp_path, capfd) -> None:
    from introspect.tensorboard import Reporter

    reporter = Reporter(tmp_path)
    record_writer = reporter._writer._get_file_writer().event_writer._async_writer._writer

    def full(data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    record_writer.write = full
    with pytest.raises(OutputError) as caught:
        reporter.scalar("audit/accuracy/top1", 0.5)
        reporter.flush()
    message = str(caught.value)
    assert str(tmp_path) in message and "No space left on device" in message and "\n" not in message
    reporter.close()  # nothing more to raise: the writer was dropped
    assert "Traceback" not in capfd.readouterr().err


def test_cli_audits_a_dataset_and_resumes(tmp_path) -> None:
    import shutil

    from conftest import run_cli

    data = tmp_path / "data"
    for i, photo in enumerate(sorted((ROOT / "sample_images").glob("*.png"))):
        (data / str(i % 2)).mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, data / str(i % 2) / photo.name)
    (data / "0" / "broken.jpg").write_bytes(b"not a jpeg")
    common = ["resnet18", "--weights", "none", "--dataset", str(data), "--input-size", "64", "--workers", "0",
              "--batch-size", "2", "--cam", "gradcam,eigencam"]
    code, out, err = run_cli(common + ["--logdir", str(tmp_path / "runs"), "--run-name", "r"])
    assert code == 0, err
    assert "4 images audited (1 unreadable skipped), 4 labelled" in out
    run = tmp_path / "runs" / "r"
    assert (run / "audit.parquet").is_file() and list(run.glob("events.out.tfevents.*"))
    code, out, err = run_cli(common + ["--resume", str(run)])  # everything is finished: nothing is redone
    assert code == 0 and "4 images audited" in out
    code, _, err = run_cli(["resnet18", "--weights", "none", "--image", str(data), "--boxes", "b.json"])
    assert code == 2 and "--dataset" in err
    code, _, err = run_cli(common + ["--batch-size", "0"])
    assert code == 2 and "--batch-size 0" in err


@pytest.mark.slow
def test_cli_under_torchrun_writes_one_run_from_rank_zero(tmp_path) -> None:
    import os
    import shutil
    import subprocess
    import sys

    pytest.importorskip("pyarrow")
    from introspect.audit.table import read_table

    data = tmp_path / "data"
    for i, photo in enumerate(sorted((ROOT / "sample_images").glob("*.png"))):
        (data / str(i % 2)).mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, data / str(i % 2) / photo.name)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "INTROSPECT_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "introspect", "resnet18", "--weights", "none", "--dataset", str(data), "--input-size", "64",
               "--workers", "0", "--batch-size", "1", "--logdir", str(tmp_path / "runs")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (tmp_path / "runs").iterdir()  # rank 0 made the folder and told rank 1
    assert len(list(run.glob("events.out.tfevents.*"))) == 1  # only rank 0 writes TensorBoard
    assert sorted(p.name for p in (run / "audit" / "table").iterdir()) == \
        ["rank0-part00000.parquet", "rank1-part00000.parquet"]
    assert read_table(run / "audit.parquet")["index"] == [0, 1, 2, 3]
    assert done.stdout.count("4 images audited") == 1
