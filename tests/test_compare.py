"""The CAM comparison image: the photo and each method's overlay side by side, from existing results."""

from __future__ import annotations

import numpy as np
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import introspect
from introspect.drawing import MIN_PANEL_SIDE, enlarge
from introspect.inputs import prepare_inputs


def test_compare_is_photo_then_each_method(tiny_cnn):
    model = tiny_cnn("small")
    batch = prepare_inputs(torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(0)))
    methods = ["gradcam", "layercam", "eigencam"]
    results = introspect.cam(model, batch, methods, topk=2)
    comparisons = introspect.compare_cams(results, batch)
    assert [c.image_name for c in comparisons] == ["image0", "image1"]
    side = MIN_PANEL_SIDE  # 40 px tiles are enlarged to carry readable labels
    for n, comparison in enumerate(comparisons):
        assert comparison.methods == tuple(methods)
        mine = [r for r in results if r.image_name == comparison.image_name]
        assert comparison.class_indices == tuple(m.class_index for m in mine[0].maps)
        height, width, _ = comparison.image.shape
        assert width == (1 + len(methods)) * (side + 4) + 4  # one photo tile + one tile per method
        strip = (height - 4) // 2 - side - 4  # one row per explained class
        assert strip > 5 and height == 2 * (side + strip + 4) + 4
        top = 4 + strip
        np.testing.assert_array_equal(comparison.image[top:top + side, 4:4 + side], enlarge(batch.photos[n], side))
        for i, result in enumerate(mine):
            x = 4 + (i + 1) * (side + 4)
            np.testing.assert_array_equal(comparison.image[top:top + side, x:x + side],
                                          enlarge(result.maps[0].image, side))


def test_report_writes_compare_only_for_several_methods(tiny_cnn, sample_cat, tmp_path):
    loaded = introspect.load_model(tiny_cnn("small"), input_size=64)
    tags = []
    for name, methods in (("two", "gradcam,layercam"), ("one", "gradcam")):
        summary = introspect.report(loaded, [sample_cat], logdir=tmp_path, run_name=name, sections="cam",
                                    cam=introspect.CamOptions(methods=methods))
        acc = EventAccumulator(str(summary.run_dir), size_guidance={"images": 0})
        acc.Reload()
        tags.append(set(acc.Tags()["images"]))
    assert {"cam/gradcam/cat", "cam/layercam/cat", "cam/compare/cat"} <= tags[0]
    assert "cam/gradcam/cat" in tags[1] and "cam/compare/cat" not in tags[1]


def test_compare_takes_every_image_task_and_leaves_clips_and_empty_results_out():
    from introspect.records import CamMap, CamResult, Subject

    photo = np.full((20, 30, 3), 9, np.uint8)
    box = Subject("box", 17, "cat", 0.9, box=(0.0, 0.0, 10.0, 10.0), detection=0)

    def boxed(method: str) -> CamResult:
        return CamResult(method, "backbone", "cat", (CamMap(method, box, np.zeros((20, 30), np.float32), photo),),
                         photo)

    clip_map = CamMap("gradcam", Subject("clip class", 1, "running", 0.5), np.zeros((2, 20, 30), np.float32), photo,
                      frames=np.zeros((2, 20, 30, 3), np.uint8))
    results = [boxed("gradcam"), boxed("eigencam"), CamResult("gradcam", "backbone", "empty", (), photo),
               CamResult("gradcam", "layer4", "clip", (clip_map,), photo)]
    comparisons = introspect.compare_cams(results, {"cat": photo})  # no photo asked of what is left out
    assert [c.image_name for c in comparisons] == ["cat"]
    assert comparisons[0].methods == ("gradcam", "eigencam") and comparisons[0].class_indices == (17,)
