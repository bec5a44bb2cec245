"""CAM quality (ROAD keep / remove the top 20 %): on the trained synthetic model, in records, and in a run.

ROAD's imputation solves a sparse system per map, so the trained-model tests use 12
held-out 64 px images and the CLI run one 64 px photo on a random resnet18.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_untouched, model_state, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import introspect
from introspect.testing import synthetic
from introspect.analyzers.cam import cams_from_pass
from introspect.layers import pick_cam_layer
from introspect.analyzers.quality import cam_quality, rank_map
from introspect.engine.forward import run_forward
from introspect.inputs import InputBatch, prepare_inputs
from introspect.records import CamQuality, CamResult

IMAGES = 12
METHODS = ("gradcam", "layercam", "randomcam")



def load_run(stdout: str) -> EventAccumulator:
    """The events of the run named in the CLI's closing 'wrote ... to RUN_DIR' line."""
    match = re.search(r"^wrote \d+ summaries \(.*\) in [\d.]+ s to (.+)$", stdout, re.MULTILINE)
    assert match, f"no 'wrote ... to RUN_DIR' line in:\n{stdout}"
    acc = EventAccumulator(match.group(1), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    acc.Reload()
    return acc


def text(acc: EventAccumulator, tag: str) -> str:
    return acc.Tensors(tag)[0].tensor_proto.string_val[0].decode()


def table_rows(markdown: str) -> list[list[str]]:
    """Body rows of the first Markdown table (header and separator left out)."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def true_class_cams(model: torch.nn.Module, batch: InputBatch, labels: torch.Tensor,
                    methods: tuple[str, ...]) -> list[CamResult]:
    """Each image's map of its own class (one target per image, which introspect.cam's targets cannot give)."""
    choice = pick_cam_layer(model, input_size=tuple(batch.tensor.shape[-2:]))
    forward = run_forward(model, batch.tensor, capture=[choice.name], grad_layer=choice.name)
    saved = np.random.get_state()
    np.random.seed(0)  # RandomCAM draws its channel weights from numpy's global generator
    try:
        return cams_from_pass(model, forward, batch, methods, choice, labels[:, None], synthetic.CLASS_NAMES)
    finally:
        np.random.set_state(saved)
        forward.release()


@pytest.fixture(scope="module")
def scored(trained_synthetic) -> tuple[CamQuality, list[CamResult], InputBatch, float]:
    model, test_set = trained_synthetic
    batch = prepare_inputs(synthetic.normalize(test_set.images[:IMAGES]))
    results = true_class_cams(model, batch, test_set.labels[:IMAGES], METHODS)
    before = model_state(model)
    rng_before = torch.get_rng_state()
    quality = cam_quality(model, batch, results)
    assert_untouched(before, model)
    assert torch.equal(torch.get_rng_state(), rng_before)
    return quality, results, batch, float(synthetic.accuracy(model, test_set))


def test_one_entry_per_method_image_and_class(scored) -> None:
    quality, results, batch, _ = scored
    assert len(quality) == len(METHODS) * IMAGES
    assert quality.percent == 20.0
    assert quality.methods == tuple(m for m in METHODS for _ in range(IMAGES))
    assert quality.image_names == batch.names * len(METHODS)
    assert quality.class_indices == tuple(int(r.maps[0].class_index) for r in results)
    # the baseline is the class's probability that the CAM pass reported
    assert np.allclose(quality.confidence, [r.maps[0].probability for r in results], atol=1e-5)


def test_numbers_are_finite_and_in_range(scored) -> None:
    quality, *_ = scored
    for values in (quality.keep, quality.remove, quality.score, quality.confidence):
        assert all(math.isfinite(v) and -1.0 <= v <= 1.0 for v in values)
    assert np.allclose(quality.score, (np.array(quality.keep) - np.array(quality.remove)) / 2)
    for i, p in enumerate(quality.confidence):  # a change of probability p can go from -p to 1 - p
        assert -p - 1e-6 <= quality.keep[i] <= 1 - p + 1e-6
        assert -p - 1e-6 <= quality.remove[i] <= 1 - p + 1e-6


def test_gradcam_beats_a_random_map(scored) -> None:
    quality, _, _, accuracy = scored
    assert accuracy >= 0.95
    rows = {r.method: r for r in quality.by_method()}
    gradcam, layercam, random = rows["gradcam"], rows["layercam"], rows["randomcam"]
    # keeping the top 20 % of a right map keeps the evidence; a random map's top 20 % mostly does not
    assert gradcam.keep > random.keep + 0.1, (gradcam, random)
    # removing a right map's top 20 % removes the evidence
    assert gradcam.remove < random.remove - 0.1, (gradcam, random)
    assert gradcam.score > random.score + 0.1 and layercam.score > random.score + 0.1
    assert quality.by_method()[-1].method == "randomcam"


def test_by_method_is_sorted_and_averages(scored) -> None:
    quality, *_ = scored
    rows = quality.by_method()
    assert [r.score for r in rows] == sorted((r.score for r in rows), reverse=True)
    for row in rows:
        picked = [i for i, m in enumerate(quality.methods) if m == row.method]
        assert row.count == IMAGES == len(picked)
        assert row.keep == pytest.approx(np.mean([quality.keep[i] for i in picked]))
        assert row.remove == pytest.approx(np.mean([quality.remove[i] for i in picked]))
        assert row.score == pytest.approx(np.mean([quality.score[i] for i in picked]))


def test_numbers_do_not_depend_on_the_company_and_concat(trained_synthetic, scored) -> None:
    model, _ = trained_synthetic
    quality, results, batch, _ = scored
    first = [r for r in results if r.image_name in batch.names[:2] and r.method == "gradcam"]
    again = cam_quality(model, batch, first)
    picked = [i for i, (m, n) in enumerate(zip(quality.methods, quality.image_names))
              if m == "gradcam" and n in batch.names[:2]]
    # each map's tie-breaking and imputation noise are seeded per map: scored alone, the same numbers
    assert again.keep == pytest.approx([quality.keep[i] for i in picked], abs=1e-5)
    assert again.remove == pytest.approx([quality.remove[i] for i in picked], abs=1e-5)
    other_seed = cam_quality(model, batch, first, seed=1)
    assert other_seed.keep != pytest.approx(again.keep, abs=1e-9)  # the noise is real
    joined = CamQuality.concat([again, again])
    assert len(joined) == 2 * len(again) and joined.by_method()[0].score == pytest.approx(again.by_method()[0].score)
    with pytest.raises(ValueError, match="percent"):
        CamQuality.concat([again, cam_quality(model, batch, first[:1], percent=10)])


def test_exactly_the_top_percent_is_kept_or_removed_even_with_ties() -> None:
    """Ranks make ROAD's percentile threshold exact: a map that is mostly zero still removes 20 %, not 100 %."""
    from pytorch_grad_cam.metrics.perturbation_confidence import (
        RemoveLeastRelevantFirst,
        RemoveMostRelevantFirst,
    )

    heatmap = np.zeros((64, 64), dtype=np.float32)
    heatmap[10:20, 30:50] = np.linspace(0.5, 1.0, 200, dtype=np.float32).reshape(10, 20)  # 200 px > 0
    ranks = torch.from_numpy(rank_map(heatmap, np.random.default_rng(0)))

    def mask_of(perturbation) -> np.ndarray:  # 1 = pixel kept, 0 = imputed
        perturbation.imputer = lambda image, mask: mask
        return np.asarray(perturbation(torch.zeros(3, 64, 64), ranks))

    kept_top = mask_of(RemoveLeastRelevantFirst(20, None))
    kept_rest = mask_of(RemoveMostRelevantFirst(80, None))
    assert abs(kept_top.sum() - 0.2 * 4096) <= 1 and abs((1 - kept_rest).sum() - 0.2 * 4096) <= 1
    both = kept_top + kept_rest  # complementary but for the one pixel at the threshold
    assert both.max() == 1 and (both != 1).sum() <= 1
    assert kept_top[heatmap > 0].all()  # the 200 positive pixels are in the top 20 %
    # without ranks ROAD's threshold is 0 for this map: nothing would be kept
    raw = RemoveMostRelevantFirst(80, None)
    raw.imputer = lambda image, mask: mask
    assert np.asarray(raw(torch.zeros(3, 64, 64), torch.from_numpy(heatmap))).sum() == 0


def test_rank_map_breaks_ties_at_random_but_keeps_order() -> None:
    heatmap = np.array([[0.0, 0.0, 0.5], [0.5, 1.0, 0.0]], dtype=np.float32)
    ranks = rank_map(heatmap, np.random.default_rng(3))
    assert sorted(ranks.ravel().tolist()) == pytest.approx(np.linspace(0, 1, 6).tolist())
    assert ranks[1, 1] == 1.0 and max(ranks[0, 0], ranks[0, 1], ranks[1, 2]) < min(ranks[0, 2], ranks[1, 0])
    assert np.array_equal(ranks, rank_map(heatmap, np.random.default_rng(3)))


def test_bad_arguments(trained_synthetic, scored) -> None:
    model, _ = trained_synthetic
    _, results, batch, _ = scored
    with pytest.raises(ValueError, match="percent"):
        cam_quality(model, batch, results[:1], percent=100)
    other = prepare_inputs(batch.tensor[:1], names=["elsewhere"])
    with pytest.raises(ValueError, match="no such image"):
        cam_quality(model, other, results[:1])


def test_record_renders(scored) -> None:
    quality, *_ = scored
    markdown = quality.to_markdown()
    assert markdown.splitlines()[0].startswith("score = (keep - remove) / 2, higher is better")
    assert [r[0] for r in table_rows(markdown)] == [r.method for r in quality.by_method()]
    assert "<table>" in quality._repr_html_() and "randomcam" in quality._repr_html_()


def test_cli_run_writes_quality_scalars_and_table(tmp_path: Path, sample_cat: Path, sample_coffee: Path) -> None:
    code, out, err = run_cli(["resnet18", "--weights", "none", "--input-size", "64", "--image", str(sample_cat),
                              "--image", str(sample_coffee), "--sections", "cam,quality",
                              "--cam", "gradcam,layercam", "--topk", "2", "--logdir", str(tmp_path)])
    assert code == 0, err
    acc = load_run(out)
    scalars = set(acc.Tags()["scalars"])
    expected = {f"quality/{m}/{s}" for m in ("gradcam", "layercam") for s in ("keep20", "remove20", "score")}
    assert scalars == expected
    values = {tag: acc.Scalars(tag)[0].value for tag in expected}
    assert all(math.isfinite(v) and -1 <= v <= 1 for v in values.values())
    for m in ("gradcam", "layercam"):
        assert values[f"quality/{m}/score"] == pytest.approx(
            (values[f"quality/{m}/keep20"] - values[f"quality/{m}/remove20"]) / 2, abs=1e-6)
    table = text(acc, "quality/summary")
    assert table.startswith("score = (keep - remove) / 2")
    rows = table_rows(table)
    assert sorted(r[0] for r in rows) == ["gradcam", "layercam"]
    assert [float(r[3]) for r in rows] == sorted((float(r[3]) for r in rows), reverse=True)
    for row in rows:
        assert float(row[3]) == pytest.approx(values[f"quality/{row[0]}/score"], abs=1e-4)
        assert row[4] == "4"  # 2 images x 2 classes
    assert any(t.startswith("cam/gradcam/") for t in acc.Tags()["images"])


def test_quality_alone_scores_the_maps_without_writing_them(tmp_path: Path, sample_cat: Path) -> None:
    code, out, err = run_cli(["resnet18", "--weights", "none", "--input-size", "64", "--image", str(sample_cat),
                              "--sections", "quality", "--topk", "1", "--logdir", str(tmp_path)])
    assert code == 0, err
    acc = load_run(out)
    assert set(acc.Tags()["scalars"]) == {"quality/gradcam/keep20", "quality/gradcam/remove20",
                                          "quality/gradcam/score"}
    assert not any(t.startswith("cam/") for t in acc.Tags()["images"])


def test_quality_is_in_all_but_not_in_the_default() -> None:
    from introspect.sections import default_sections, parse_sections

    assert "quality" not in default_sections() and "quality" not in parse_sections(None)
    assert "quality" in parse_sections("all")
    assert introspect.cam_quality is cam_quality
