"""Package boundaries, read from the source: no private names across modules, lean imports, one error family.

Also the small shared helpers the boundaries brought (one hit test, one device/dtype
rule, one predicate for the layer gradient), checked on numbers.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import introspect
from introspect.analyzers.cam import CAM_METHODS, needs_layer_gradient
from introspect.errors import ArgumentError, ArgumentTypeError, IntrospectError, StateError, UsageError
from introspect.geometry import points_in_boxes
from introspect.models import LoadedModel, device_and_dtype, unwrap
from introspect.records import PointingGame

PACKAGE = Path(introspect.__file__).resolve().parent
ROOT = PACKAGE.parent
MODULES = sorted(PACKAGE.rglob("*.py"))

# Raises of builtin exceptions that are not bad-argument errors: internal invariants and
# control flow the module itself catches.
BUILTIN_ERRORS = {"ValueError", "TypeError", "RuntimeError", "KeyError", "IndexError", "OSError", "Exception"}
ALLOWED_BUILTIN_RAISES = {
    ("models.py", "OSError"),  # _fetch_state: caught by load_model, which raises IntrospectError or warns
    ("categories.py", "ValueError"),  # names that do not parse: caught there, re-raised as ArgumentError/WeightsError
}
# Modules whose messages may name command-line flags: the CLI itself, and the modules rewritten
# on other branches (report.py, layers.py) until they are merged.
FLAG_MESSAGES_ALLOWED = {"cli.py", "layers.py", "__main__.py"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(module_name: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` reads from."""
    if not node.level:
        return node.module or ""
    package = module_name.split(".") if is_package else module_name.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def private_imports(source: str, module_name: str, is_package: bool = False) -> list[str]:
    """``module: name`` for every private introspect name this source takes from another module."""
    tree = ast.parse(source)
    found = []
    introspect_aliases: set[str] = set()  # local names bound to introspect modules
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source_module = _absolute(module_name, is_package, node)
            if not source_module.startswith("introspect"):
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{module_name}: {alias.name} from {source_module}")
                else:
                    introspect_aliases.add(alias.asname or alias.name)  # a submodule or a public name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("introspect"):
                    introspect_aliases.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in introspect_aliases:
                found.append(f"{module_name}: {ast.unparse(node)}")
    return found


def test_the_checker_catches_private_imports():
    bad = ("from .images import _expand\n"
           "from ..records import markdown_table, _html_table\n"
           "from introspect.analyzers import cam\n"
           "x = cam._maps_here\n")
    found = private_imports(bad, "introspect.analyzers.saliency")
    assert found == ["introspect.analyzers.saliency: _expand from introspect.analyzers.images",
                     "introspect.analyzers.saliency: _html_table from introspect.records",
                     "introspect.analyzers.saliency: cam._maps_here"]
    assert private_imports("from __future__ import annotations\nimport torch\ntorch._C\n", "introspect.x") == []


def test_no_module_imports_another_modules_private_name():
    found = []
    for path in MODULES:
        found += private_imports(path.read_text(), _module_name(path), path.name == "__init__.py")
    assert found == []


def test_import_introspect_stays_lean():
    code = ("import sys, introspect\n"
            "heavy = ['introspect.testing', 'tensorboard', 'pytorch_grad_cam', 'cv2', 'timm', 'transformers']\n"
            "print(','.join(m for m in heavy if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == ""
    assert "testing" not in introspect.__all__ and "synthetic" not in dir(introspect)


def _raises(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            call = node.exc if isinstance(node.exc, ast.Call) else None
            name = (call.func if call else node.exc)
            yield node, call, name.id if isinstance(name, ast.Name) else getattr(name, "attr", "")


def test_every_error_raised_on_purpose_is_an_introspect_error():
    found = []
    for path in MODULES:
        for node, _, name in _raises(ast.parse(path.read_text())):
            if name in BUILTIN_ERRORS and (path.name, name) not in ALLOWED_BUILTIN_RAISES:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: raise {name}")
    assert found == []


def test_library_messages_name_parameters_not_flags():
    import re

    found = []
    for path in MODULES:
        if path.name in FLAG_MESSAGES_ALLOWED:
            continue
        for node, call, _ in _raises(ast.parse(path.read_text())):
            texts = [c.value for c in ast.walk(call) if isinstance(c, ast.Constant) and isinstance(c.value, str)] \
                if call else []
            if any(re.search(r"(?<![\w-])--[a-z]", t) for t in texts):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


# -- the error family --------------------------------------------------------------------


def test_errors_carry_the_parameter_and_translate_to_flags():
    with pytest.raises(ArgumentError) as caught:
        introspect.visualize_filters(nn.Sequential(nn.Conv2d(3, 4, 3)), ["0"], steps=0, progress=False)
    error = caught.value
    assert isinstance(error, UsageError) and isinstance(error, ValueError) and error.exit_code == 2
    assert error.parameter == "steps" and str(error) == "steps=0 must be at least 1"
    assert error.with_flags({"steps": "--filter-steps"}) == "--filter-steps 0 must be at least 1"
    quoted = IntrospectError("device='cuda' asked for: use device='cpu'", parameter="device")
    assert quoted.with_flags({"device": "--device"}) == "--device cuda asked for: use --device cpu"
    assert IntrospectError("plain").parameter is None


def test_compatible_builtin_bases():
    from introspect.hooks import first_tensor

    with pytest.raises(TypeError) as caught:  # watch() catches TypeError from first_tensor
        first_tensor(None)
    assert isinstance(caught.value, ArgumentTypeError) and caught.value.parameter == "output"
    assert issubclass(StateError, RuntimeError) and issubclass(StateError, IntrospectError)


# -- one implementation each -------------------------------------------------------------


def test_pointing_game_hits_and_points_in_boxes_agree():
    from introspect.testing import synthetic

    assert synthetic.points_in_boxes is points_in_boxes
    rng = np.random.default_rng(0)
    boxes = np.sort(rng.integers(0, 64, size=(200, 2, 2)), axis=1).reshape(200, 4)  # x0 <= x1, y0 <= y1
    peaks = rng.integers(0, 64, size=(1, 200, 2))
    game = PointingGame(methods=("m",), peaks=peaks, boxes=boxes)
    for margin in (0, 2):
        rows, cols = peaks[0].T
        x0, y0, x1, y1 = boxes.T
        expected = (cols >= x0 - margin) & (cols < x1 + margin) & (rows >= y0 - margin) & (rows < y1 + margin)
        assert game.hits("m", margin).tolist() == expected.tolist()
        assert points_in_boxes(peaks[0], torch.from_numpy(boxes), margin).tolist() == expected.tolist()
    assert 0 < expected.sum() < 200  # both outcomes occur


def test_device_and_dtype():
    assert device_and_dtype(nn.ReLU()) == (torch.device("cpu"), torch.float32)
    assert device_and_dtype(nn.Linear(2, 2).double()) == (torch.device("cpu"), torch.float64)
    norm = nn.BatchNorm2d(3, affine=False).half()  # buffers only; the first one is float16
    assert device_and_dtype(norm) == (torch.device("cpu"), torch.float16)
    assert device_and_dtype(nn.ReLU(), default_device="meta")[0] == torch.device("meta")
    with torch.device("meta"):
        assert device_and_dtype(nn.Linear(2, 2)) == (torch.device("meta"), torch.float32)


def test_unwrap():
    module = nn.Linear(2, 2)
    assert unwrap(module) == (module, None)
    loaded = introspect.load_model(module)
    assert isinstance(loaded, LoadedModel) and unwrap(loaded) == (module, loaded)


def test_needs_layer_gradient_is_the_registry_s_answer():
    assert needs_layer_gradient(["gradcam"]) and needs_layer_gradient(["eigencam", "layercam"])
    assert not needs_layer_gradient(["eigencam", "fem"])  # computed here, activation only
    assert not needs_layer_gradient(["scorecam", "fullgrad"])  # delegated: pytorch-grad-cam takes its own
    for name, method in CAM_METHODS.items():
        assert method.delegated == (method.compute is None)
        assert needs_layer_gradient([name]) == (not method.delegated and method.uses_gradients)


def _introspect_imports(path: Path) -> set[str]:
    """The introspect modules one source file imports (module level and inside functions)."""
    name = _module_name(path)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            found.add(_absolute(name, path.name == "__init__.py", node))
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m.startswith("introspect")}


def test_records_import_nothing_above_them():
    allowed = ("introspect.records", "introspect.errors", "introspect.geometry")
    found = {f"{path.relative_to(ROOT)}: {m}" for path in sorted((PACKAGE / "records").glob("*.py"))
             for m in _introspect_imports(path) if not m.startswith(allowed)}
    assert found == set()
