"""Feature visualisation (activation maximisation): it excites the filters, stays in budget, leaves the model."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_untouched, model_state
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import introspect
from introspect.analyzers.filters import default_filter_layers
from introspect.cli import main
from introspect.errors import UnknownLayerError, UsageError
from introspect.drawing import label_image


def test_activation_maximisation_raises_the_filters_activation(tiny_cnn):
    model = tiny_cnn("small")
    before = model_state(model)
    (grid,) = introspect.visualize_filters(model, ["features.2"], filters=4, steps=24, size=32, budget_s=None,
                                           progress=False)
    assert_untouched(before, model)
    assert all(p.grad is None for p in model.parameters())
    assert grid.layer == "features.2" and grid.filters == (0, 1, 2, 3)
    assert grid.steps == 24 and not grid.stopped_early
    start, final = np.array(grid.start_activation), np.array(grid.final_activation)
    assert final.mean() > 5 * max(start.mean(), 1e-3), (start, final)
    assert (final > start).sum() >= 3, (start, final)
    assert grid.tiles.shape == (4, 32, 32, 3) and grid.tiles.dtype == np.uint8
    labelled = label_image(grid.tiles[0], "filter 0")
    assert grid.image.shape == (2 * (labelled.shape[0] + 4) + 4, 2 * (32 + 4) + 4, 3)  # 2x2 labelled tiles


def test_chosen_filters_and_time_budget(tiny_cnn):
    model = tiny_cnn("small")
    (grid,) = introspect.visualize_filters(model, ["features.7"], filters=[5, 1], steps=50, size=32, budget_s=0.0,
                                           progress=False)
    assert grid.filters == (5, 1)
    assert grid.steps == 1 and grid.stopped_early  # the budget is spent after the first step
    with pytest.raises(UsageError, match="not in layer features.7"):
        introspect.visualize_filters(model, ["features.7"], filters=[16], steps=1, size=32, progress=False)
    with pytest.raises(UnknownLayerError):
        introspect.visualize_filters(model, ["features.99"], steps=1, size=32, progress=False)


def test_default_layers_are_first_middle_last_stage(tiny_cnn):
    assert [c.name for c in default_filter_layers(tiny_cnn())] == ["relu", "layer2", "layer4"]


def test_cli_filters_section_writes_one_grid_per_layer(tmp_path):
    code = main(["resnet18", "--weights", "none", "--sections", "filters", "--filter-layers", "layer1", "conv1",
                 "--filter-steps", "2", "--filter-count", "3", "--filter-size", "48", "--logdir", str(tmp_path),
                 "--run-name", "f"])
    assert code == 0
    acc = EventAccumulator(str(tmp_path / "f"), size_guidance={"images": 0})
    acc.Reload()
    assert {"filters/layer1", "filters/conv1"} <= set(acc.Tags()["images"])


def test_filters_not_in_default_sections_but_in_all():
    from introspect.sections import parse_sections

    assert "filters" not in parse_sections(None)
    assert {"saliency", "filters", "embeddings"} <= set(parse_sections("all"))
