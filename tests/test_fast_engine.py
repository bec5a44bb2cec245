"""The fast paths behind the one-pass engine give the same results as the slow ones they replace.

- parameter histograms computed one tensor at a time (numpy on the CPU, torch elsewhere)
  instead of TensorBoard binning a float64 copy of every tensor;
- the layer table from a meta-device run (no arithmetic) instead of a real forward;
- the graph traced once, without ``check_trace``'s extra forwards;
- EigenCAM / EigenGradCAM from one stacked economy SVD instead of a full SVD per map;
- gradients of one forward pass shared by every method that asks for the same classes;
- the maps' bilinear resize as two matrix products instead of ``F.interpolate``, and the images of one size
  normalised together;
- the default CLI run importing neither pytorch_grad_cam nor cv2.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_untouched, model_state
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from introspect.analyzers import parameters as params_module
from introspect.analyzers import structure as structure_module
from introspect.engine.cam import _eigencam, _eigengradcam, normalize_maps
from introspect.engine.resize import bilinear_resize, bilinear_resize_sum
from introspect.analyzers.parameters import histogram_of, parameter_summary
from introspect.analyzers.structure import summarize
from introspect.engine.forward import INPUT, run_forward
from introspect.errors import UsageError
from introspect.engine.targets import ClassScore
from introspect.tensorboard import Reporter
from introspect.tensorboard.writer import _traced_graph

REPO = Path(__file__).resolve().parents[1]


# -- histograms -------------------------------------------------------------------------


def test_histogram_counts_match_numpy_and_totals_are_exact() -> None:
    values = torch.arange(10, dtype=torch.float32).reshape(2, 5) * 0.5 - 1.0  # -1.0 ... 3.5, one per bin
    hist = histogram_of(values, bins=10)
    assert hist.num == 10 and hist.min == -1.0 and hist.max == 3.5
    np.testing.assert_allclose(hist.edges, np.linspace(-1.0, 3.5, 11))
    np.testing.assert_array_equal(hist.counts, np.ones(10))
    assert hist.sum == pytest.approx(float(values.sum()))
    assert hist.sum_squares == pytest.approx(float((values.double() ** 2).sum()))

    rng = np.random.default_rng(0)
    big = (rng.standard_normal(300_000) * 0.05 + 1.0).astype(np.float32)
    hist = histogram_of(big, bins=64)
    reference, _ = np.histogram(big, bins=64, range=(big.min(), big.max()))
    assert hist.counts.sum() == big.size
    assert np.abs(hist.counts - reference).max() <= 2  # values on a bin edge may round either way
    assert hist.mean == pytest.approx(float(big.astype(np.float64).mean()), rel=1e-9)


def test_histogram_leaves_out_non_finite_values_and_handles_constants_and_empties() -> None:
    hist = histogram_of(np.array([1.0, np.nan, 3.0, np.inf, -np.inf], dtype=np.float32), bins=4)
    assert hist.num == 2 and hist.min == 1.0 and hist.max == 3.0 and hist.counts.sum() == 2
    constant = histogram_of(torch.full((70_000,), 0.25))
    assert constant.num == 70_000 and list(constant.counts) == [70_000.0] and constant.min == constant.max == 0.25
    assert histogram_of(np.array([], dtype=np.float32)).num == 0
    assert histogram_of(torch.tensor([float("nan")])).num == 0
    assert histogram_of(torch.arange(6, dtype=torch.int64)).num == 6  # integers are binned as floats


def test_torch_path_agrees_with_numpy_path() -> None:
    torch.manual_seed(0)
    values = torch.randn(200_000) * 3 + 1
    values[::1000] = float("nan")
    by_numpy, std_numpy = params_module._summarise(values, 32)
    by_torch, std_torch = params_module._summarise_torch(params_module._flat(values), 32)
    assert by_numpy.num == by_torch.num == 199_800
    assert (by_numpy.min, by_numpy.max) == (by_torch.min, by_torch.max)
    assert np.abs(by_numpy.counts - by_torch.counts).max() <= 2
    assert std_numpy == pytest.approx(std_torch, rel=1e-6)
    finite = values[torch.isfinite(values)].double()
    assert std_numpy == pytest.approx(float(finite.std()), rel=1e-6)
    assert by_numpy.mean == pytest.approx(float(finite.mean()), rel=1e-6)


def test_parameter_summary_holds_histograms_not_values(tiny_cnn) -> None:
    model = tiny_cnn("small")
    last = list(model.parameters())[-1]
    last.grad = torch.linspace(-1, 1, last.numel()).reshape(last.shape)
    summary = parameter_summary(model)
    named = dict(model.named_parameters())
    assert [t.name for t in summary.tensors] == list(named)
    assert summary.total == sum(p.numel() for p in model.parameters())
    for record in summary.tensors:
        p = named[record.name].detach().double()
        assert record.shape == tuple(p.shape)
        assert record.histogram.num == p.numel() == record.histogram.counts.sum()
        assert record.mean == pytest.approx(float(p.mean()), rel=1e-6, abs=1e-9)
        assert record.std == pytest.approx(float(p.std()) if p.numel() > 1 else 0.0, rel=1e-5, abs=1e-9)
        assert not hasattr(record, "values")
    assert summary.tensors[-1].grad is not None and summary.tensors[-1].grad.num == last.numel()
    assert all(t.grad is None for t in summary.tensors[:-1])


def test_reporter_writes_the_histogram_record(tmp_path: Path) -> None:
    values = torch.linspace(-2, 2, 1000)
    with Reporter(tmp_path) as rep:
        rep.histogram("parameters/w", histogram_of(values, bins=8))
    acc = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0})
    acc.Reload()
    written = acc.Histograms("parameters/w")[0].histogram_value
    assert written.num == 1000 and written.min == -2.0 and written.max == 2.0
    assert written.bucket_limit == pytest.approx(list(np.linspace(-2, 2, 9)[1:]))
    assert sum(written.bucket) == 1000
    assert written.sum_squares == pytest.approx(float((values.double() ** 2).sum()), rel=1e-6)


# -- layer table on meta, graph traced once -------------------------------------------------


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)[:, :12]
        return self.fc(x) if float(x.sum()) >= 0 else -self.fc(x)  # cannot run on meta tensors


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(12, 12), nn.Linear(12, 12)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x.flatten(1)[:, :12]))


@pytest.mark.parametrize("kind", ["resnet", "tied", "data-dependent"])
def test_layer_table_on_meta_equals_a_real_forward(tiny_cnn, monkeypatch, kind) -> None:
    model = {"resnet": lambda: tiny_cnn(), "tied": _Tied, "data-dependent": _DataDependent}[kind]()
    size = 64 if kind == "resnet" else (1, 3, 2, 2)
    before = {name: (p, p.requires_grad) for name, p in model.named_parameters()}
    fast = summarize(model, size)

    def refuse(module):
        raise RuntimeError("no meta run")

    monkeypatch.setattr(structure_module, "_weights_on_meta", refuse)
    real = summarize(model, size)
    assert fast == real
    assert all(p is before[n][0] and p.requires_grad == before[n][1] and not p.is_meta
               for n, p in model.named_parameters())


def test_graph_traced_once_equals_add_graphs_own(tiny_cnn) -> None:
    from torch.utils.tensorboard import _pytorch_graph

    model = tiny_cnn()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notice
        ours, _ = _traced_graph(model, x)
        theirs, _ = _pytorch_graph.graph(model, x)
    assert ours == theirs and len(ours.node) > 10


# -- CAM engine -------------------------------------------------------------------------


def _first_component_full(x: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's get_2d_projection: one full SVD per map."""
    out = []
    for maps in np.nan_to_num(x.astype(np.float32), nan=0.0):
        flat = maps.reshape(maps.shape[0], -1).T
        flat = flat - flat.mean(axis=0)
        _, _, vt = np.linalg.svd(flat, full_matrices=True)
        out.append((flat @ vt[0, :]).reshape(maps.shape[1:]))
    return np.float32(out)


def test_eigen_maps_equal_the_full_svd_projection() -> None:
    torch.manual_seed(0)
    activations = torch.relu(torch.randn(3, 64, 7, 7))
    gradients = torch.randn(2, 3, 64, 7, 7)
    # Both fix the SVD's arbitrary sign: eigencam makes the larger-magnitude side positive,
    # eigengradcam agrees with the class evidence (gradient x activation summed over channels).
    projection = _first_component_full(activations.numpy())
    flip = np.abs(projection.min(axis=(-2, -1))) > np.abs(projection.max(axis=(-2, -1)))
    projection[flip] *= -1
    torch.testing.assert_close(_eigencam(activations, None), torch.from_numpy(projection)[None], rtol=1e-4,
                               atol=1e-4)
    product = (gradients * activations).numpy()
    projection = np.stack([_first_component_full(p) for p in product])
    flip = (projection * product.sum(axis=2)).sum(axis=(-2, -1)) < 0
    projection[flip] *= -1
    torch.testing.assert_close(_eigengradcam(activations, gradients), torch.from_numpy(projection), rtol=1e-4,
                               atol=1e-4)


def test_gradients_of_one_pass_are_shared_between_methods(tiny_cnn) -> None:
    model = tiny_cnn()
    forward = run_forward(model, torch.randn(2, 3, 64, 64), capture=["layer4"], grad_layer="layer4")
    classes = forward.logits.topk(3, dim=-1).indices
    targets = ClassScore.per_image(classes)
    first = forward.gradients(targets)
    assert forward.gradients(ClassScore.per_image(classes.clone())) is first  # the same targets: no second backward
    assert forward.gradients(classes) is first  # class indices are ClassScore targets
    other = forward.gradients(ClassScore.per_image(classes.flip(1)))
    torch.testing.assert_close(other[""], first[""].flip(0))
    forward.release()
    with pytest.raises(RuntimeError):
        forward.gradients(targets)


def test_input_leaf_with_an_extra_leaf_gives_each_class_its_own_autograd_gradients(tiny_cnn) -> None:
    model = tiny_cnn("small")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    classes = torch.tensor([[1, 4, 7], [0, 2, 9]])
    before = model_state(model)
    scopes = []
    forward = run_forward(model, x, grad_layer=INPUT, extra_leaves=["features"], prepare=scopes.append)
    grads = forward.gradients(classes)
    assert forward.levels == ("", "features") and len(scopes) == 1
    forward.release()
    assert_untouched(before, model)
    kept = {}
    handle = model.features.register_forward_hook(lambda module, args, output: kept.update(features=output))
    xr = x.clone().requires_grad_(True)
    logits = model(xr)
    handle.remove()
    for j in range(3):
        picked = logits[torch.arange(2), classes[:, j]].sum()
        d_input, d_features = torch.autograd.grad(picked, [xr, kept["features"]], retain_graph=True)
        torch.testing.assert_close(grads[""][j], d_input, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(grads["features"][j], d_features, rtol=1e-6, atol=1e-9)
    with pytest.raises(UsageError, match="grad_layer=INPUT takes one input tensor"):
        run_forward(model, (x, x), grad_layer=INPUT)


# -- the default CLI run ------------------------------------------------------------------


@pytest.mark.parametrize("source,size", [((7, 7), (224, 224)), ((32, 16), (256, 200)), ((5, 9), (5, 9)),
                                         ((40, 40), (20, 30)), ((1, 3), (4, 4))])
def test_matrix_resize_equals_interpolate(source, size) -> None:
    maps = torch.randn(3, 2, *source, generator=torch.Generator().manual_seed(0))
    theirs = torch.nn.functional.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    assert torch.allclose(bilinear_resize(maps, size), theirs, atol=1e-5, rtol=1e-5)
    crop = (max(1, size[0] - 3), max(1, size[1] // 2))
    assert torch.allclose(bilinear_resize(maps, size, crop=crop), theirs[..., :crop[0], :crop[1]], atol=1e-5, rtol=1e-5)


def test_resized_levels_summed_in_one_product_equal_the_sum_of_their_resizes() -> None:
    generator = torch.Generator().manual_seed(1)
    levels = [torch.randn(6, h, w, generator=generator) for h, w in ((40, 40), (20, 20), (10, 11), (5, 5), (3, 2))]
    for size, crop in (((320, 320), None), ((330, 300), (320, 288))):
        expected = sum(bilinear_resize(level, size, crop=crop) for level in levels)
        assert torch.allclose(bilinear_resize_sum(levels, size, crop=crop), expected, atol=1e-5, rtol=1e-5)


def _normalized_by_interpolate(levels: list[torch.Tensor], size: tuple[int, int], canvas: tuple[int, int]):
    """pytorch-grad-cam's scaling written out with ``F.interpolate``: per level ReLU, min-max, resize; the mean
    ReLU'd and min-maxed."""
    def minmax(x):
        x = x - x.amin(dim=(-2, -1), keepdim=True)
        return x / (1e-7 + x.amax(dim=(-2, -1), keepdim=True))
    total = 0
    for level in levels:
        flat = minmax(torch.relu(level).reshape(-1, *level.shape[-2:]))
        resized = torch.nn.functional.interpolate(flat[:, None], size=canvas, mode="bilinear",
                                                  align_corners=False)[:, 0, :size[0], :size[1]]
        total = total + resized.reshape(*level.shape[:-2], *size)
    return minmax(torch.relu(total / len(levels)))


def test_normalized_maps_equal_the_interpolated_ones_for_levels_and_a_canvas() -> None:
    generator = torch.Generator().manual_seed(3)
    levels = [torch.randn(4, 2, 12, 10, generator=generator), torch.randn(4, 2, 6, 5, generator=generator)]
    for canvas in ((48, 40), (60, 52)):
        ours = normalize_maps(levels, (48, 40), canvas=canvas)
        assert ours.shape == (4, 2, 48, 40)
        assert torch.allclose(ours, _normalized_by_interpolate(levels, (48, 40), canvas), atol=1e-5)
        assert float(ours.amin()) == 0.0 and abs(float(ours.amax()) - 1.0) < 1e-6
    one = normalize_maps(levels[0], (30, 30))
    assert torch.allclose(one, _normalized_by_interpolate(levels[:1], (30, 30), (30, 30)), atol=1e-5)


def test_default_cli_run_imports_no_pytorch_grad_cam_nor_cv2(tmp_path: Path, sample_cat: Path) -> None:
    script = (
        "import sys\n"
        "from introspect.cli import main\n"
        f"code = main(['resnet18', '--image', {str(sample_cat)!r}, '--weights', 'none', '--input-size', '64',"
        f" '--logdir', {str(tmp_path)!r}])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('pytorch_grad_cam', 'cv2', 'sklearn'))\n"
        "print('HEAVY', code, heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "HEAVY 0 []" in done.stdout, done.stdout[-2000:]
    assert len(list(tmp_path.iterdir())) == 1  # one run directory written
