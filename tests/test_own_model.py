"""The user's own model: a torchvision resnet18 fine-tuned to 3 classes (random weights, saved in tmp), named
with --labels or by its checkpoint, audited on its ImageFolder, built by a function of the user's own module
(``pkg.mod:factory``); and every bad input of these refused in one line, exit 2, before anything is written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import image, load_events, run_cli, text
from PIL import Image

import introspect
from introspect.categories import read_labels
from introspect.errors import ArgumentError, UsageError, WeightsError
from introspect.records.base import markdown_text

NAMES = ("ant", "bee", "wasp")
SIZE = "64"  # resnet18 takes any size: tiny inputs keep these runs fast


def _resnet3(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None)
    model.fc = torch.nn.Linear(512, 3)
    return model


@pytest.fixture(scope="module")
def own(tmp_path_factory) -> dict[str, Path]:
    """Checkpoints of a 3-class resnet18, labels files, a photo, an ImageFolder (ants/bees/wasps) and a package."""
    root = tmp_path_factory.mktemp("own")
    model = _resnet3()
    state = model.state_dict()
    torch.save(state, root / "r3.pth")
    torch.save({"state_dict": state, "classes": list(NAMES), "epoch": 7}, root / "r3_classes.pth")
    torch.save({"state_dict": state, "classes": ["a", "b", "c", "d"]}, root / "r3_four.pth")
    torch.save(model, root / "whole.pth")
    (root / "labels.txt").write_text("ant\n\nbee\nwasp\n")
    (root / "four.txt").write_text("ant\nbee\nwasp\nfly\n")
    (root / "labels.json").write_text(json.dumps(list(NAMES)))
    (root / "broken.json").write_text('["ant", "bee",')
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / "photo.png")
    for folder in ("ants", "bees", "wasps"):
        (root / "ds" / folder).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "ds" / folder / f"{i}.png")
    (root / "ds4").mkdir()
    for folder in ("ants", "bees", "flies", "wasps"):
        (root / "ds4" / folder).mkdir()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "ds4" / folder / "0.png")
    (root / "ds_clash" / "wasp").mkdir(parents=True)  # 'wasp' is class 2 by name, but first in sorted order
    for folder in ("x_first", "y_second"):
        (root / "ds_clash" / folder).mkdir()
    for folder in ("wasp", "x_first", "y_second"):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "ds_clash" / folder / "0.png")
    package = root / "user" / "ownpkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(
        "import torch, torchvision\n"
        "def factory(num_classes=1000, width=None):\n"
        "    model = torchvision.models.resnet18(weights=None)\n"
        "    model.fc = torch.nn.Linear(512, num_classes)\n"
        "    return model\n"
        "def not_a_model():\n"
        "    return {'fc': 3}\n"
        "DEPTH = 18\n")
    return {p.name: p for p in root.iterdir()} | {"root": root, "user": root / "user"}


@pytest.fixture
def in_user_folder(own, monkeypatch):
    """The current folder is the user's project (holding ownpkg/), which is not otherwise on the path."""
    monkeypatch.chdir(own["user"])
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    yield
    for name in [m for m in sys.modules if m == "ownpkg" or m.startswith("ownpkg.")]:
        del sys.modules[name]


def _info(run_dir: Path) -> str:
    return text(load_events(run_dir), "run/info")


def _only_run(logdir: Path) -> Path:
    runs = [p for p in logdir.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


# -- names ------------------------------------------------------------------------------------


def test_labels_name_the_classes_in_console_tensorboard_and_cam_captions(own, tmp_path):
    code, out, err = run_cli(["resnet18", "--weights", str(own["r3.pth"]), "--labels", str(own["labels.txt"]),
                              "--image", str(own["photo.png"]), "--input-size", SIZE, "--sections", "cam",
                              "--logdir", str(tmp_path)])
    assert code == 0, err
    headline = next(line for line in out.splitlines() if line.startswith("photo"))
    assert all(name in headline for name in NAMES), headline  # the console's top-3 line
    run_dir = _only_run(tmp_path)
    acc = load_events(run_dir)
    table = text(acc, "predictions/photo")
    assert all(f"| {name} |" in table for name in NAMES) and "class 0" not in table, table
    assert f"labels file {own['labels.txt']} (3 names)" in text(acc, "run/info")
    # the CAM panel's captions: the same pixels as the library's panel drawn with these names, not the numbered one
    named = introspect.load_model("resnet18", weights=own["r3.pth"], input_size=64, categories=own["labels.txt"])
    result = introspect.cam(named, own["photo.png"], topk=3)[0]
    assert sorted(m.class_name for m in result.maps) == sorted(NAMES)
    written = image(acc, "cam/gradcam/photo")
    assert np.array_equal(written, result.image)
    numbered = introspect.cam(introspect.load_model("resnet18", weights=own["r3.pth"], input_size=64),
                              own["photo.png"], topk=3)[0]
    assert np.allclose(numbered.maps[0].heatmap, result.maps[0].heatmap)  # same maps, other captions
    assert not np.array_equal(written, numbered.image)


def test_checkpoint_names_its_classes_and_labels_win(own):
    carried = introspect.load_model("resnet18", weights=own["r3_classes.pth"], input_size=64)
    assert carried.categories == NAMES
    assert carried.categories_source == "the checkpoint's 'classes' entry (r3_classes.pth)"
    given = introspect.load_model("resnet18", weights=own["r3_classes.pth"], input_size=64,
                                  categories=["x", "y", "z"])
    assert given.categories == ("x", "y", "z") and given.categories_source == "categories= (3 names)"
    # a checkpoint whose entry is wrong is not read when names are given
    assert introspect.load_model("resnet18", weights=own["r3_four.pth"], categories=own["labels.json"]).categories \
        == NAMES
    plain = introspect.load_model("resnet18", weights=own["r3.pth"])
    assert plain.categories == ("class 0", "class 1", "class 2") and plain.categories_source.startswith("numbered")


@pytest.mark.parametrize("entry", [
    {"idx_to_class": {0: "ant", 1: "bee", 2: "wasp"}},
    {"id2label": {"2": "wasp", "0": "ant", "1": "bee"}},
    {"class_to_idx": {"bee": 1, "wasp": 2, "ant": 0}},  # torchvision ImageFolder's own mapping
    {"config": {"id2label": {"0": "ant", "1": "bee", "2": "wasp"}}},
])
def test_checkpoint_name_entries(own, tmp_path, entry):
    path = tmp_path / "ckpt.pth"
    torch.save({"model_state_dict": torch.load(own["r3.pth"], weights_only=True), **entry}, path)
    loaded = introspect.load_model("resnet18", weights=path)
    assert loaded.categories == NAMES
    assert next(iter(entry)) in loaded.categories_source or "id2label" in loaded.categories_source


def test_labels_files(own, tmp_path):
    assert read_labels(own["labels.txt"]).names == NAMES  # blank lines skipped
    assert read_labels(own["labels.json"]).names == NAMES
    (tmp_path / "map.json").write_text(json.dumps({"1": "bee", "0": "ant", "2": "wasp"}))
    assert read_labels(tmp_path / "map.json").names == NAMES
    module = _resnet3()
    assert introspect.predict(module, own["photo.png"], categories=NAMES)[0].names[0] in NAMES
    with pytest.raises(ArgumentError, match=r"categories gives 4 class names, but ResNet has 3 output classes"):
        introspect.predict(module, own["photo.png"], categories=["a", "b", "c", "d"])


# -- the audit ---------------------------------------------------------------------------------


@pytest.mark.parametrize("labels", [True, False], ids=["labels", "numbered"])
def test_image_folder_audit_maps_folders_by_sorted_name(own, tmp_path, labels):
    argv = ["resnet18", "--weights", str(own["r3.pth"]), "--dataset", str(own["ds"]), "--input-size", SIZE,
            "--workers", "0", "--logdir", str(tmp_path)] + (["--labels", str(own["labels.txt"])] if labels else [])
    code, out, err = run_cli(argv)
    assert code == 0, err
    run_dir = _only_run(tmp_path)
    acc = load_events(run_dir)
    info = text(acc, "run/info")
    names = NAMES if labels else ("ants", "bees", "wasps")
    assert "class folders mapped by sorted name, as torchvision's ImageFolder numbers them (ants = " \
           f"{'ant' if labels else 'class 0'}, bees = " in info, info
    assert {f"audit/pr/{name}" for name in names} <= set(acc.Tags()["tensors"])
    per_class = text(acc, "audit/per_class")
    assert all(f"| {name} |" in per_class for name in names), per_class
    import pyarrow.parquet as pq

    table = pq.read_table(run_dir / "audit.parquet").to_pydict()
    by_file = dict(zip(table["file"], table["label_name"]))
    assert by_file["ants/0.png"] == names[0] and by_file["wasps/1.png"] == names[2]
    assert {n for top in table["top5_names"] for n in top} == set(names)


# -- a model of the user's own, by import path -----------------------------------------------


def test_import_path_model_runs_the_default_sections(own, tmp_path, in_user_folder):
    code, out, err = run_cli(["ownpkg.nets:factory", "--model-arg", "num_classes=3", "--model-arg", "width='wide'",
                              "--weights", str(own["r3.pth"]), "--labels", str(own["labels.json"]),
                              "--image", str(own["photo.png"]), "--input-size", SIZE, "--logdir", str(tmp_path)])
    assert code == 0, err
    run_dir = _only_run(tmp_path)
    acc = load_events(run_dir)
    info = text(acc, "run/info")
    assert "| model | ownpkg.nets:factory |" in info
    assert markdown_text("into the model built by ownpkg.nets:factory(num_classes=3, width='wide')") in info
    assert {"structure/summary", "predictions/photo"} <= set(acc.Tags()["tensors"])
    assert "cam/gradcam/photo" in acc.Tags()["images"] and any(t.startswith("kernels/") for t in acc.Tags()["images"])
    # the weights were loaded: the same probabilities as torchvision's resnet18 with that file
    reference = introspect.predict(introspect.load_model("resnet18", weights=own["r3.pth"], input_size=64,
                                                         categories=NAMES), own["photo.png"])[0]
    headline = next(line for line in out.splitlines() if line.startswith("photo"))
    assert headline == reference.headline()


def test_import_path_without_weights_keeps_the_built_model(own, in_user_folder):
    loaded = introspect.load_model("ownpkg.nets:factory", weights="none", model_args={"num_classes": 5})
    assert len(loaded.categories) == 5 and loaded.weights == "as built" and not loaded.model.training


# -- bad inputs: one line, exit 2, nothing written -------------------------------------------


BAD = {
    "labels count": (["resnet18", "--weights", "{r3.pth}", "--labels", "{four.txt}"],
                     "--labels {four.txt} gives 4 class names, but resnet18 has 3 output classes"),
    "labels missing": (["resnet18", "--weights", "{r3.pth}", "--labels", "{root}/nope.txt"],
                       "--labels {root}/nope.txt does not exist"),
    "labels bad JSON": (["resnet18", "--weights", "{r3.pth}", "--labels", "{broken.json}"],
                        "is not a JSON list of class names"),
    "checkpoint count": (["resnet18", "--weights", "{r3_four.pth}"],
                         "(its 'classes' entry) gives 4 class names, but resnet18 has 3 output classes"),
    "pickled model": (["resnet18", "--weights", "{whole.pth}"],
                      "holds a whole pickled model (torchvision.models.resnet.ResNet, saved with torch.save(model))"),
    "no module": (["ownpkg.absent:factory"], "no module named 'ownpkg.absent' on the path"),
    "no attribute": (["ownpkg.nets:build"], "ownpkg.nets has no attribute 'build' (it defines factory, not_a_model)"),
    "not callable": (["ownpkg.nets:DEPTH"], "it is of type int, not a callable"),
    "not a module": (["ownpkg.nets:not_a_model"], "not_a_model() returned an object of type dict, not a "
                                                  "torch.nn.Module"),
    "model-arg syntax": (["ownpkg.nets:factory", "--model-arg", "num_classes"], "--model-arg num_classes is not "
                                                                               "KEY=VALUE"),
    "model-arg unknown": (["ownpkg.nets:factory", "--model-arg", "depth=3"],
                          "calling factory(depth=3) raised TypeError"),
    "model-arg by name": (["resnet18", "--model-arg", "depth=3"], "--model-arg depth=3 is for a model given by "
                                                                  "import path"),
    "weights of another": (["ownpkg.nets:factory", "--weights", "{r3.pth}"], "fc.weight (3, 512) vs (1000, 512)"),
    "folders not classes": (["resnet18", "--weights", "{r3.pth}", "--dataset", "{ds4}"],
                            "their 4 folders are not one per class of the model's 3"),
    "folder named otherwise": (["resnet18", "--weights", "{r3.pth}", "--labels", "{labels.txt}",
                                "--dataset", "{ds_clash}"], "class folder 'wasp' is the model's class 2 by name"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_is_one_line_exit_2_nothing_written(own, tmp_path, in_user_folder, case):
    argv, expected = BAD[case]
    paths = {"{" + k + "}": str(v) for k, v in own.items()}

    def fill(value: str) -> str:
        for key, path in paths.items():
            value = value.replace(key, path)
        return value

    argv, expected = [fill(a) for a in argv], fill(expected)
    logdir = tmp_path / "runs"
    has_input = "--dataset" in argv
    code, out, err = run_cli(argv + ([] if has_input else ["--image", str(own["photo.png"])]) +
                             ["--logdir", str(logdir)])
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("introspect: error: "), err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in err and not logdir.exists()


def test_library_errors_name_parameters(own, in_user_folder):
    with pytest.raises(ArgumentError, match=r"model_args='depth' is not KEY=VALUE"):
        introspect.LoadOptions(model_args=["depth"])
    with pytest.raises(UsageError, match=r"categories='.*four.txt' gives 4 class names") as caught:
        introspect.load_model("resnet18", weights=own["r3.pth"], categories=str(own["four.txt"]))
    assert caught.value.parameter == "categories"
    with pytest.raises(WeightsError, match=r"torch.save\(model.state_dict\(\), PATH\)"):
        introspect.load_model("resnet18", weights=own["whole.pth"])


def test_wordnet_folders_of_a_fine_tuned_head_are_numbered_by_sorted_name(tmp_path):
    from introspect.audit.dataset import scan_dataset

    for wnid in ("n02219486", "n02206856", "n04579432"):  # ant, bee, wasp... in no synset list: sorted order
        (tmp_path / wnid).mkdir()
        (tmp_path / wnid / "0.png").write_bytes(b"")
    index = scan_dataset(tmp_path, ("class 0", "class 1", "class 2"))
    assert index.labels == (0, 1, 2) and index.files[0].startswith("n02206856/")
    assert index.class_names == ("n02206856", "n02219486", "n04579432")
    named = scan_dataset(tmp_path, NAMES)
    assert named.class_names is None and "n02206856 = ant" in named.how
    with pytest.raises(UsageError, match="no LOC_synset_mapping.txt"):
        scan_dataset(tmp_path, ("a", "b"))
