"""The section registry and the option dataclasses: a new section plugs in without editing report.py or cli.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import introspect
from introspect import cli
from introspect.errors import ArgumentError
from introspect.options import CamOptions, FeatureOptions, FilterOptions, LoadOptions, SaliencyOptions
from introspect.sections import SECTIONS, Section, default_sections, parse_sections, register_section

CAT = Path(__file__).resolve().parent.parent / "sample_images" / "cat.png"


@pytest.fixture
def toy_section():
    """A section defined here, outside the package: the logit shape and the top class of every image."""
    seen: list[str] = []

    def run(ctx) -> None:
        for name, logits in zip(ctx.batch.names, ctx.forward.logits):
            seen.append(name)
            ctx.reporter.text(f"toy/{name}", f"{tuple(logits.shape)} top {int(logits.argmax())}")

    section = register_section(Section("toy", "a toy section from the tests", "batch", run, needs_images=True,
                                       slow=True))
    yield section, seen
    del SECTIONS["toy"]


def test_toy_section_is_offered_by_the_cli_help(toy_section, capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--help"])
    assert "toy (slow): a toy section from the tests" in " ".join(capsys.readouterr().out.split())


def test_toy_section_writes_into_the_event_file(toy_section, tmp_path):
    section, seen = toy_section
    code, out, err = run_cli(["resnet18", "--weights", "none", "--input-size", "64", "--image", str(CAT),
                              "--sections", "toy,structure", "--logdir", str(tmp_path)])
    assert code == 0, err
    (run_dir,) = tmp_path.iterdir()
    events = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    events.Reload()
    tags = set(events.Tags()["tensors"])
    assert {"toy/cat", "structure/summary", "predictions/cat"} <= tags
    assert "cam/gradcam/cat" not in events.Tags()["images"]  # only what was asked for
    text = events.Tensors("toy/cat")[0].tensor_proto.string_val[0].decode()
    assert text.startswith("(1000,) top ")
    assert seen == ["cat"]
    assert "toy" not in default_sections() and "toy" in parse_sections("all")


def test_sections_describe_themselves():
    for section in SECTIONS.values():
        assert section.summary and section.stage in ("model", "batch", "images")
    assert default_sections() == ["structure", "graph", "kernels", "histograms", "features", "cam"]
    assert [s for s in parse_sections("all") if SECTIONS[s].slow] == ["filters", "saliency", "quality", "embeddings"]
    assert SECTIONS["cam"].needs_gradients and SECTIONS["cam"].needs_forward and SECTIONS["cam"].needs_images
    assert not SECTIONS["kernels"].needs_images and not SECTIONS["kernels"].needs_forward
    with pytest.raises(ArgumentError, match="section="):
        register_section("toy")


def test_cli_defaults_come_from_the_option_dataclasses():
    args = cli.build_parser().parse_args(["resnet18"])
    assert args.topk == CamOptions.topk and args.cam == CamOptions.methods
    assert (args.filter_count, args.filter_steps, args.filter_size, args.filter_budget) == (
        FilterOptions.count, FilterOptions.steps, FilterOptions.size, FilterOptions.budget_s)
    assert args.saliency == SaliencyOptions.methods
    assert (args.weights, args.device, args.input_size) == (LoadOptions.weights, LoadOptions.device,
                                                            LoadOptions.input_size)
    assert args.layers == FeatureOptions.layers


@pytest.mark.parametrize("kind, values, parameter", [
    (CamOptions, {"topk": 0}, "topk"),
    (FilterOptions, {"steps": 0}, "steps"),
    (FilterOptions, {"count": -1}, "count"),
    (FilterOptions, {"budget_s": 0}, "budget_s"),
    (SaliencyOptions, {"topk": 1.5}, "topk"),
])
def test_options_name_the_bad_parameter(kind, values, parameter):
    with pytest.raises(ArgumentError) as caught:
        kind(**values)
    assert caught.value.parameter == parameter
    assert str(caught.value).startswith(f"{parameter}=")
    assert caught.value.exit_code == 2


def test_options_are_frozen_and_normalised():
    options = CamOptions(methods="gradcam, layercam", targets=[1, "tabby"])
    assert options.methods == ("gradcam", "layercam") and options.targets == (1, "tabby")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.topk = 5


def test_cli_names_the_flag_for_a_bad_option(tmp_path):
    code, out, err = run_cli(["resnet18", "--weights", "none", "--sections", "filters", "--filter-steps", "0",
                              "--logdir", str(tmp_path)])
    assert code == 2
    assert err.strip() == "introspect: error: --filter-steps 0 must be a whole number, 1 or more"
    assert not any(tmp_path.iterdir())


def test_report_takes_options_keyword_only(tmp_path):
    with pytest.raises(TypeError):
        introspect.report("resnet18", [CAT], tmp_path)  # logdir is keyword-only


def test_cli_warnings_name_flags_not_parameters(tmp_path):
    """The offline RANDOM WEIGHTS warning says `weights=PATH` in the library and `--weights PATH` on the console."""
    code, out, err = run_cli(["resnet18", "--sections", "structure", "--input-size", "64", "--logdir", str(tmp_path)])
    assert code == 0, err
    warning = next(line for line in err.splitlines() if "RANDOM WEIGHTS" in line)
    assert "--weights PATH" in warning and "weights=PATH" not in warning
