"""A process of a dataset audit on the synthetic model, for tests that need other processes.

``python tests/audit_worker.py WEIGHTS DATASET OUT_DIR SUMMARY_JSON [--boxes B] [--kill-after K] [--resume]``,
alone or under ``torchrun --nproc_per_node N``; rank 0 writes the result's figures to SUMMARY_JSON.
``--kill-after K`` SIGKILLs this process after its K-th batch (a hard kill, nothing flushed).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from conftest import synthetic_loaded, synthetic_task  # noqa: E402

from introspect.audit import AuditOptions, audit  # noqa: E402


def summary(result) -> dict:
    """The figures two runs must agree on."""
    return {
        "images": result.images, "labelled": result.labelled, "top1": result.top1, "top5": result.top5,
        "boxed": result.boxed, "pointing": result.pointing, "centre": result.centre_baseline,
        "energy": result.energy, "confusion": result.confusion.tolist(),
        "confusion_classes": list(result.confusion_classes),
        "classes": [[c.index, c.images, c.correct, c.boxed, list(c.hits), c.centre_hits] for c in result.classes],
        "pr_positive": result.pr_positive.tolist(), "pr_negative": result.pr_negative.tolist(),
        "wrong": [i.index for g in result.galleries if g.name == "worst_confident_wrong" for i in g.items],
        "lowest": [i.index for g in result.galleries if g.name == "lowest_energy_in_box" for i in g.items],
        "sample": list(result.sample.files) if result.sample is not None else [],
        "mean_cams": {m.class_name: m.maps.tolist() for m in result.mean_cams},
        "table": result.table,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("weights")
    parser.add_argument("dataset")
    parser.add_argument("out_dir")
    parser.add_argument("summary")
    parser.add_argument("--boxes")
    parser.add_argument("--kill-after", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--checkpoint-every", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = synthetic_task().build_model(4)
    model.load_state_dict(torch.load(args.weights, weights_only=True))
    model.eval()

    def on_batch(batches: int, images: int) -> None:
        if args.kill_after is not None and batches >= args.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    options = AuditOptions(methods=("gradcam", "layercam"), boxes=args.boxes, batch_size=args.batch_size,
                           num_workers=0, checkpoint_every=args.checkpoint_every, progress=False, projector_size=20,
                           gallery_size=6)
    result = audit(synthetic_loaded(model), args.dataset, options=options, out_dir=args.out_dir,
                   resume=args.resume, on_batch=on_batch)
    if result is not None:
        Path(args.summary).write_text(json.dumps(summary(result)))


if __name__ == "__main__":
    main()
