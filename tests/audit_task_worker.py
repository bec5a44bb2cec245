"""A process of a detection or segmentation audit on the tiny synthetic models, for tests that need other processes.

``python tests/audit_task_worker.py KIND WEIGHTS DATASET TRUTH OUT_DIR SUMMARY_JSON [--kill-after K] [--resume]``
(KIND: detection, TRUTH a COCO file; segmentation, TRUTH the masks folder), alone or under
``torchrun --nproc_per_node N``; rank 0 writes the result's figures to SUMMARY_JSON. ``--kill-after K``
SIGKILLs this process after its K-th batch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from introspect.audit import AuditOptions, audit  # noqa: E402


def detector_loaded(model: torch.nn.Module):
    """A LoadedModel of the tiny synthetic Faster R-CNN (64 px, classes background + object)."""
    from synthetic_detector import CATEGORIES, IMAGE_SIZE

    from introspect.loaded import imagenet_transform
    from introspect.models import LoadedModel

    return LoadedModel(model=model, name="tiny_detector", weights="trained", weights_source="tests",
                       transform=imagenet_transform(IMAGE_SIZE, IMAGE_SIZE, (0.0,) * 3, (1.0,) * 3),
                       categories=CATEGORIES, input_size=IMAGE_SIZE, device=torch.device("cpu"), task="detection")


def options(kind: str, truth: str, **changes) -> AuditOptions:
    """The tests' settings: small batches, no workers, a checkpoint every 2 batches."""
    base = dict(methods=("gradcam", "layercam"), batch_size=8, num_workers=0, progress=False, gallery_size=6,
                checkpoint_every=2, score_threshold=0.3)
    base["boxes" if kind == "detection" else "masks"] = truth
    base.update(changes)
    return AuditOptions(**base)


def _clean(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def summary(result) -> dict:
    """The figures two runs must agree on."""
    if hasattr(result, "map"):
        out = {"map": result.map, "ap50": result.ap50, "ap75": result.ap75, "ap_small": result.ap_small,
               "images": result.images, "objects": result.objects, "detections": result.detections,
               "classes": [[c.index, c.objects, c.ap, c.ap50, c.found, c.confident, c.explained, list(c.hits)]
                           for c in result.classes],
               "pointing": result.pointing, "energy": result.energy, "listed": result.listed,
               "pr": [[c.class_name, c.tp.tolist(), c.fp.tolist()] for c in result.pr_curves]}
    else:
        out = {"miou": result.mean_iou, "pixel_accuracy": result.pixel_accuracy, "images": result.images,
               "confusion": result.confusion.tolist(), "classes": [[c.index, c.pixels, c.predicted, c.intersection,
                                                                    c.images] for c in result.classes],
               "listed": result.listed, "mean_cams": {m.class_name: m.maps.tolist() for m in result.mean_cams}}
    out["table"] = result.table
    return _clean(out)


def build(kind: str, weights: str):
    """The model of ``kind`` with the weights saved at ``weights``, as a LoadedModel."""
    if kind == "detection":
        from synthetic_detector import build_detector

        model = build_detector()
        loaded = detector_loaded
    else:
        from synthetic_segmenter import TinySegmenter, segmenter_loaded

        model = TinySegmenter()
        loaded = segmenter_loaded
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return loaded(model)


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("kind", "weights", "dataset", "truth", "out_dir", "summary"):
        parser.add_argument(name)
    parser.add_argument("--kill-after", type=int)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)

    def on_batch(batches: int, images: int) -> None:
        if args.kill_after is not None and batches >= args.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    result = audit(build(args.kind, args.weights), args.dataset, options=options(args.kind, args.truth),
                   out_dir=args.out_dir, resume=args.resume, on_batch=on_batch)
    if result is not None:
        Path(args.summary).write_text(json.dumps(summary(result)))


if __name__ == "__main__":
    main()
