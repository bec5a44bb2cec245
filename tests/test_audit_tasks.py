"""The detection and segmentation audits on tiny models trained on the synthetic task: mAP equals pycocotools'
COCOeval run directly, mIoU a confusion matrix computed directly, the tags read back from the event files, two
processes equal one, a killed run resumes to the same table, and bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from audit_task_worker import detector_loaded, options
from conftest import assert_untouched, load_events, model_state, run_cli
from synthetic_segmenter import normalize, segmenter_loaded, trained_segmenter, write_mask_dataset

from introspect.audit import audit
from introspect.audit.table import read_table

pytest.importorskip("pyarrow")
pycocotools = pytest.importorskip("pycocotools")

WORKER = Path(__file__).parent / "audit_task_worker.py"


def _write_detection_dataset(images: torch.Tensor, boxes: torch.Tensor, root: Path) -> tuple[Path, Path]:
    """``root/images``: 40 single 64 px images and 8 wide ones (two images side by side, two objects), and a COCO
    file whose image ids are not the dataset's order."""
    from PIL import Image

    folder = root / "images"
    folder.mkdir(parents=True)
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    entries, annotations = [], []

    def add(name: str, photo: np.ndarray, objects: list[list[float]]) -> None:
        Image.fromarray(photo).save(folder / name)
        image_id = 1000 - len(entries)
        entries.append({"id": image_id, "file_name": name, "width": photo.shape[1], "height": photo.shape[0]})
        for x0, y0, x1, y1 in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 7,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})

    for i in range(40):
        add(f"single_{i:03d}.png", pixels[i], [boxes[i].tolist()])
    for j in range(8):
        a, b = 40 + 2 * j, 41 + 2 * j
        shifted = boxes[b].tolist()
        shifted = [shifted[0] + 64, shifted[1], shifted[2] + 64, shifted[3]]
        add(f"wide_{j:03d}.png", np.concatenate([pixels[a], pixels[b]], axis=1), [boxes[a].tolist(), shifted])
    coco = root / "coco.json"
    coco.write_text(json.dumps({"images": entries, "annotations": annotations,
                                "categories": [{"id": 7, "name": "object"}]}))
    return folder, coco


@pytest.fixture(scope="module")
def detection(tmp_path_factory) -> SimpleNamespace:
    from synthetic_detector import trained_detector

    model, images, boxes, _ = trained_detector()
    base = tmp_path_factory.mktemp("det_audit")
    folder, coco = _write_detection_dataset(images, boxes, base)
    weights = base / "detector.pt"
    torch.save(model.state_dict(), weights)
    before = model_state(model)
    result = audit(detector_loaded(model), folder, options=options("detection", str(coco)), out_dir=base / "run")
    assert_untouched(before, model)
    return SimpleNamespace(model=model, folder=folder, coco=coco, weights=weights, result=result, base=base)


@pytest.fixture(scope="module")
def segmentation(tmp_path_factory) -> SimpleNamespace:
    model, held = trained_segmenter()
    base = tmp_path_factory.mktemp("seg_audit")
    images, masks, files = write_mask_dataset(held, base)
    weights = base / "segmenter.pt"
    torch.save(model.state_dict(), weights)
    before = model_state(model)
    result = audit(segmenter_loaded(model), images, options=options("segmentation", str(masks)),
                   out_dir=base / "run")
    assert_untouched(before, model)
    return SimpleNamespace(model=model, images=images, masks=masks, files=files, weights=weights, result=result,
                           base=base, held=held)


def _cocoeval(coco_file: Path, table: dict) -> tuple[np.ndarray, dict[int, float]]:
    """COCOeval (bbox) run directly on the annotation file and the table's detections."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(coco_file))
        ids = {image["file_name"]: image["id"] for image in gt.dataset["images"]}
        results = [{"image_id": ids[f], "category_id": 7, "score": s, "bbox": [x0, y0, x1 - x0, y1 - y0]}
                   for f, s, x0, y0, x1, y1, label in zip(table["file"], table["score"], table["x0"], table["y0"],
                                                          table["x1"], table["y1"], table["label"]) if label == 1]
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    precision = evaluator.eval["precision"][:, :, 0, 0, -1]
    return np.asarray(evaluator.stats), {7: float(precision[precision > -1].mean())}


def test_detection_map_equals_cocoeval_run_directly(detection) -> None:
    result = detection.result
    table = read_table(result.table)
    assert len(table["file"]) == result.detections > 0 and result.images == 48 and result.objects == 56
    stats, per_class = _cocoeval(detection.coco, table)
    assert result.map == pytest.approx(stats[0], abs=1e-6) and 0.2 < result.map < 1
    assert result.ap50 == pytest.approx(stats[1], abs=1e-6)
    assert result.ap75 == pytest.approx(stats[2], abs=1e-6)
    assert [result.ap_small, result.ap_medium, result.ap_large] == pytest.approx(list(stats[3:6]), abs=1e-6,
                                                                                  nan_ok=True)
    (row,) = result.classes
    assert row.name == "object" and row.objects == 56 and row.ap == pytest.approx(per_class[7], abs=1e-6)
    (curve,) = result.pr_curves
    assert curve.class_name == "object" and curve.tp[0] + curve.fn[0] == 56  # threshold 0: every object


def test_detection_table_matches_and_explains_each_detection(detection) -> None:
    """Each row's match is COCO's greedy rule at IoU 0.5; the explained rows are the confident ones, best first;
    a matched explained detection's energy and hit are scored on its object's box and add up to the figures."""
    result = detection.result
    table = read_table(result.table)
    coco = json.loads(detection.coco.read_text())
    ids = {image["file_name"]: image["id"] for image in coco["images"]}
    objects: dict[int, list] = {}
    for annotation in coco["annotations"]:
        x, y, w, h = annotation["bbox"]
        objects.setdefault(annotation["image_id"], []).append((x, y, x + w, y + h))
    rows = [dict(zip(table, values)) for values in zip(*table.values())]
    for row in rows:
        if row["matched"] is not None:
            x0, y0, x1, y1 = objects[ids[row["file"]]][row["matched"]]
            inter = max(0, min(x1, row["x1"]) - max(x0, row["x0"])) * max(0, min(y1, row["y1"]) - max(y0, row["y0"]))
            union = (x1 - x0) * (y1 - y0) + (row["x1"] - row["x0"]) * (row["y1"] - row["y0"]) - inter
            assert inter / union >= 0.5 - 1e-6
        assert row["explained"] == (row["score"] >= 0.3 and row["detection"] < 10)
        assert (row["gradcam_energy"] is not None) == (row["explained"] and row["matched"] is not None)
    scored = [r for r in rows if r["gradcam_energy"] is not None]
    assert len(scored) == result.explained_matched > 0
    for method in ("gradcam", "layercam"):
        assert np.mean([r[f"{method}_energy"] for r in scored]) == pytest.approx(result.energy[method], abs=1e-9)
        assert np.mean([r[f"{method}_hit"] for r in scored]) == pytest.approx(result.pointing[method], abs=1e-12)
    assert result.pointing["gradcam"] > 0.5  # the trained detector looks at its objects


def test_detection_cams_equal_detection_cams_of_the_same_batch(detection) -> None:
    """The audit's energy of each explained detection equals the one computed from introspect's detection_cams over
    the same batch (the box-score target is IoU with the detection itself, at its kink: its gradients follow the
    float rounding of the batched pass, so the reference runs on the same 8 images)."""
    from PIL import Image

    from introspect.tasks.detection import detection_cams

    table = read_table(detection.result.table)
    rows = [dict(zip(table, v)) for v in zip(*table.values())]
    files = sorted({r["file"] for r in rows})[:8]  # the audit's first batch
    photos = [torch.from_numpy(np.array(Image.open(detection.folder / f).convert("RGB"))).permute(2, 0, 1).float() / 255
              for f in files]
    cams = detection_cams(detection.model, photos, methods=("gradcam", "layercam"), topk=10, score_threshold=0.3,
                          categories=("__background__", "object"), names=files)
    coco = json.loads(detection.coco.read_text())
    ids = {i["file_name"]: i["id"] for i in coco["images"]}
    checked = 0
    for cam in cams:
        for entry in cam.maps:
            (row,) = [r for r in rows if r["file"] == cam.image_name and r["detection"] == entry.subject.detection]
            assert row["explained"]
            if row["matched"] is None:
                continue
            x, y, w, h = [a["bbox"] for a in coco["annotations"] if a["image_id"] == ids[row["file"]]][row["matched"]]
            x0, y0, x1, y1 = math.floor(x), math.floor(y), math.ceil(x + w), math.ceil(y + h)
            heat = entry.heatmap.astype(np.float64)
            share = heat[y0:y1, x0:x1].sum() / heat.sum() if heat.sum() > 0 else 0.0  # a blank map: no energy
            assert share == pytest.approx(row[f"{cam.method}_energy"], abs=1e-5)
            checked += 1
    assert checked >= 16


def test_segmentation_miou_equals_a_direct_confusion_matrix(segmentation) -> None:
    from PIL import Image

    result = segmentation.result
    images = torch.stack([torch.from_numpy(np.asarray(Image.open(segmentation.images / f).convert("RGB"))).permute(
        2, 0, 1).float() / 255 for f in segmentation.files])
    truth = torch.stack([torch.from_numpy(np.asarray(Image.open(segmentation.masks / f))).long()
                         for f in segmentation.files])
    with torch.no_grad():
        predicted = segmentation.model(normalize(images))["out"].argmax(1)
    valid = truth != 255
    assert (~valid).any()
    confusion = torch.bincount(truth[valid] * 5 + predicted[valid], minlength=25).reshape(5, 5).numpy()
    present = [k for k in range(5) if confusion[k].sum() or confusion[:, k].sum()]
    ious = [confusion[k, k] / (confusion[k].sum() + confusion[:, k].sum() - confusion[k, k]) for k in present]
    assert list(result.confusion_classes) == present
    assert np.array_equal(result.confusion, confusion[np.ix_(present, present)])
    assert result.mean_iou == pytest.approx(float(np.mean(ious)), abs=1e-12)
    assert result.pixel_accuracy == pytest.approx(np.trace(confusion) / confusion.sum(), abs=1e-12)
    assert result.pixels == int(valid.sum()) and result.images == 48
    table = read_table(result.table)
    assert table["file"] == segmentation.files
    n = 3
    t, p, v = truth[n], predicted[n], valid[n]
    assert table["pixel_accuracy"][n] == pytest.approx(float(((t == p) & v).sum() / v.sum()))
    worst = [file for file, _ in result.listed["worst_iou"]]
    by_iou = sorted(zip(table["iou"], table["file"]))[: len(worst)]
    assert worst == [file for _, file in by_iou]
    assert {m.class_name for m in result.mean_cams} == {"hstripes", "vstripes", "checker", "dots"}


def test_reporter_writes_the_task_audit_tags(detection, segmentation, tmp_path) -> None:
    from introspect.tensorboard import Reporter

    for name, result in (("det", detection.result), ("seg", segmentation.result)):
        with Reporter(tmp_path / name) as reporter:
            reporter.audit(result)
    det = load_events(tmp_path / "det")
    tags = det.Tags()
    assert {"audit/map/map", "audit/map/ap50", "audit/map/ap75", "audit/pointing/gradcam",
            "audit/energy_in_box/layercam"} <= set(tags["scalars"])
    assert det.Scalars("audit/map/map")[0].value == pytest.approx(detection.result.map, abs=1e-6)
    assert {"audit/pr/object", "audit/per_class", "audit/protocol"} <= set(tags["tensors"])
    assert {f"audit/{g.name}" for g in detection.result.galleries} <= set(tags["images"])
    assert "audit/missed_objects" in tags["images"]  # the wide images' small objects
    seg = load_events(tmp_path / "seg")
    tags = seg.Tags()
    assert {"audit/miou", "audit/pixel_accuracy", "audit/iou/__background__"} <= set(tags["scalars"])
    assert seg.Scalars("audit/miou")[0].value == pytest.approx(segmentation.result.mean_iou, abs=1e-6)
    assert {"audit/confusion_matrix", "audit/worst_iou", "audit/mean_cam/checker"} <= set(tags["images"])


@pytest.mark.parametrize("case", ["missing image", "class folders", "no masks", "mask size", "mask values"])
def test_bad_input_is_one_line_exit_2_nothing_written(case, tmp_path) -> None:
    from PIL import Image

    data, masks = tmp_path / "data", tmp_path / "masks"
    (data / "cat").mkdir(parents=True)
    masks.mkdir()
    Image.fromarray(np.zeros((40, 48, 3), dtype=np.uint8)).save(data / "cat" / "a.png")
    Image.fromarray(np.zeros((40, 48), dtype=np.uint8), mode="L").save(masks / "a.png")
    detector = ["fasterrcnn_mobilenet_v3_large_320_fpn", "--dataset", str(data)]
    segmenter = ["lraspp_mobilenet_v3_large", "--dataset", str(data), "--masks", str(masks)]
    expected = {"missing image": "--boxes", "class folders": "class folders", "no masks": "--masks",
                "mask size": "48x40", "mask values": "[30]"}[case]
    if case == "missing image":
        coco = {"images": [{"id": 1, "file_name": "cat/a.png"}, {"id": 2, "file_name": "gone.png"}],
                "annotations": [], "categories": [{"id": 1, "name": "person"}]}
        (tmp_path / "coco.json").write_text(json.dumps(coco))
        argv = detector + ["--boxes", str(tmp_path / "coco.json")]
    elif case == "class folders":
        argv = detector
    elif case == "no masks":
        argv = segmenter[:3]
    elif case == "mask size":
        Image.fromarray(np.zeros((20, 48), dtype=np.uint8), mode="L").save(masks / "a.png")
        argv = segmenter
    else:
        mask = np.zeros((40, 48), dtype=np.uint8)
        mask[0, 0] = 30
        Image.fromarray(mask, mode="L").save(masks / "a.png")
        argv = segmenter
    logdir = tmp_path / "runs"
    code, out, err = run_cli(argv + ["--weights", "none", "--input-size", "64", "--workers", "0", "--logdir",
                                     str(logdir)])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and out == "" and len(lines) == 1, err
    assert lines[0].startswith("introspect: error: ") and expected in lines[0] and "Traceback" not in err
    assert not logdir.exists()


def test_cli_audits_a_segmenter_with_masks(segmentation, tmp_path) -> None:
    """A torchvision segmenter (random weights) through the CLI: run/info, the tags, the table."""
    from conftest import text

    logdir = tmp_path / "runs"
    masks = tmp_path / "masks"
    masks.mkdir()
    for f in segmentation.files[:4]:  # VOC's 21 classes: the synthetic classes 1-4 are among them
        (masks / f).write_bytes((segmentation.masks / f).read_bytes())
    images = tmp_path / "images"
    images.mkdir()
    for f in segmentation.files[:4]:
        (images / f).write_bytes((segmentation.images / f).read_bytes())
    code, out, err = run_cli(["lraspp_mobilenet_v3_large", "--dataset", str(images), "--masks", str(masks),
                              "--weights", "none", "--input-size", "64", "--workers", "0", "--batch-size", "2",
                              "--logdir", str(logdir), "--run-name", "seg"])
    assert code == 0, err
    assert "4 images audited" in out and "mIoU" in out
    events = load_events(logdir / "seg")
    assert "| status | completed" in text(events, "run/info")
    assert {"audit/miou", "audit/pixel_accuracy"} <= set(events.Tags()["scalars"])
    assert len(read_table(logdir / "seg" / "audit.parquet")["file"]) == 4


def _worker(args: list[str], processes: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    command = [sys.executable, str(WORKER), *args] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", str(WORKER),
         *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def _rows(path) -> list[dict]:
    table = read_table(path)
    return [dict(zip(table, values)) for values in zip(*table.values())]


def _same_rows(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if key.endswith("energy"):
                assert (x[key] is None) == (y[key] is None) and (x[key] is None or abs(x[key] - y[key]) < 1e-6), key
            else:
                assert x[key] == y[key], (key, x["file"])


def _args(kind: str, data: SimpleNamespace, tmp: Path, name: str) -> tuple[list[str], Path, Path]:
    out, summary = tmp / name, tmp / f"{name}.json"
    folder, truth = (data.folder, data.coco) if kind == "detection" else (data.images, data.masks)
    return [kind, str(data.weights), str(folder), str(truth), str(out), str(summary)], out, summary


def _same_figures(one: dict, two: dict) -> None:
    for key in one:
        if key == "table":
            _same_rows(_rows(one[key]), _rows(two[key]))
        elif key in ("energy", "mean_cams"):
            assert np.allclose(np.array(list(one[key].values()), dtype=float),
                               np.array(list(two[key].values()), dtype=float), atol=1e-6), key
        else:
            assert one[key] == two[key], key


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["detection", "segmentation"])
def test_two_processes_equal_one(kind, detection, segmentation, tmp_path) -> None:
    data = detection if kind == "detection" else segmentation
    summaries = {}
    for processes in (1, 2):
        args, out, summary = _args(kind, data, tmp_path, f"run{processes}")
        _worker(args, processes)
        summaries[processes] = json.loads(summary.read_text())
        if processes == 2:
            assert {p.name.split("-")[0] for p in (out / "audit" / "table").glob("*.parquet")} == {"rank0", "rank1"}
    _same_figures(summaries[1], summaries[2])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["detection", "segmentation"])
def test_resume_after_sigkill_finishes_with_the_same_table(kind, detection, segmentation, tmp_path) -> None:
    data = detection if kind == "detection" else segmentation
    args, out, summary = _args(kind, data, tmp_path, "killed")
    killed = _worker(args + ["--kill-after", "5"], check=False)
    assert killed.returncode == -9 and not summary.exists()
    state = torch.load(out / "audit" / "state-rank0.pt", weights_only=True)
    assert state["finished"] == list(range(4))  # checkpoints every 2 batches: batch 5 was lost with the kill
    _worker(args + ["--resume"])
    full_args, _, full_summary = _args(kind, data, tmp_path, "full")
    _worker(full_args)
    _same_figures(json.loads(full_summary.read_text()), json.loads(summary.read_text()))
