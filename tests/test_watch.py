"""Tests of introspect.watch: summaries read back with TensorBoard's own reader, and a model
that trains exactly as it would without the watch."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import introspect
from introspect.errors import ArgumentError, ArgumentTypeError, UsageError
from introspect.tensorboard import Reporter, new_run_dir
from introspect.watch import Watch

STAGES = ["features.2", "features.6", "features.9"]  # default_feature_layers(TinyNet())
NUM_CLASSES = 3


class TinyNet(nn.Module):
    """Conv-BN-ReLU stages, a dropout and a linear head: BN buffers and the RNG both matter."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.3)
        self.fc = nn.Linear(16, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.pool(self.features(x)).flatten(1)))


def make_data(steps: int, batch: int = 8, side: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches whose class is the brightest colour channel (learnable in a few steps)."""
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(steps):
        y = torch.randint(0, NUM_CLASSES, (batch,), generator=g)
        x = torch.randn(batch, 3, side, side, generator=g)
        x[torch.arange(batch), y] += 1.5
        out.append((x, y))
    return out


def fresh(seed: int = 0, lr: float = 1e-2) -> tuple[TinyNet, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = TinyNet().train()
    return model, torch.optim.Adam(model.parameters(), lr=lr)


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, data, between=None) -> None:
    """A plain loop: zero_grad, forward, backward, step (``between(i)`` runs after step i)."""
    for i, (x, y) in enumerate(data):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if between is not None:
            between(i)


def load(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "histograms": 0, "tensors": 0, "scalars": 0})
    acc.Reload()
    return acc


def steps_of(events) -> list[int]:
    return [e.step for e in events]


def decode(event) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def optimizer_hook_count(opt: torch.optim.Optimizer) -> int:
    return len(opt._optimizer_step_pre_hooks) + len(opt._optimizer_step_post_hooks)


@pytest.fixture
def probe() -> tuple[torch.Tensor, list[int]]:
    x, y = make_data(1, batch=3)[0]
    return x, y.tolist()


# -- what is written, and when -----------------------------------------------------------


def test_scalars_and_histograms_at_every_nth_step(tmp_path: Path) -> None:
    model, opt = fresh()
    with introspect.watch(model, tmp_path, optimizer=opt, every=2) as w:
        assert w.step == 0
        train_steps(model, opt, make_data(6))
        assert w.step == 6
    acc = load(w.run_dir)
    assert w.run_dir.parent == tmp_path and w.run_dir.name.startswith("TinyNet-")
    for tag in ["train/grad_norm", "train/update_ratio", "train/lr"]:
        assert steps_of(acc.Scalars(tag)) == [2, 4, 6], tag
    assert [e.value for e in acc.Scalars("train/lr")] == pytest.approx([1e-2] * 3)
    for name, p in model.named_parameters():
        assert steps_of(acc.Scalars(f"train/grad_norm/{name}")) == [2, 4, 6]
        assert steps_of(acc.Scalars(f"train/update_ratio/{name}")) == [2, 4, 6]
        weights, grads = acc.Histograms(f"weights/{name}"), acc.Histograms(f"gradients/{name}")
        assert steps_of(weights) == [2, 4, 6] and steps_of(grads) == [2, 4, 6]
        assert {h.histogram_value.num for h in weights} == {p.numel()}
        assert {h.histogram_value.num for h in grads} == {p.numel()}
        # the last histograms are of the final weights and of the gradients the last update used
        assert weights[-1].histogram_value.sum == pytest.approx(float(p.detach().double().sum()), rel=1e-4, abs=1e-4)
        assert weights[-1].histogram_value.max == pytest.approx(float(p.detach().max()), rel=1e-6)
        assert grads[-1].histogram_value.min == pytest.approx(float(p.grad.min()), rel=1e-6)
    total = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters()))
    assert acc.Scalars("train/grad_norm")[-1].value == pytest.approx(total, rel=1e-5)
    assert acc.Scalars("train/grad_norm/fc.weight")[-1].value == pytest.approx(float(model.fc.weight.grad.norm()),
                                                                               rel=1e-5)
    stage_tags = {f"activations/{layer}/{stat}" for layer in STAGES for stat in ("mean", "std", "zero_fraction")}
    assert stage_tags <= set(acc.Tags()["scalars"])
    for tag in stage_tags:
        assert steps_of(acc.Scalars(tag)) == [2, 4, 6], tag


def test_update_ratio_is_this_steps_update_over_the_weights(tmp_path: Path) -> None:
    model, opt = fresh()
    snapshots = [[p.detach().clone() for p in model.parameters()]]
    with introspect.watch(model, tmp_path, optimizer=opt, every=3) as w:
        train_steps(model, opt, make_data(3),
                    between=lambda i: snapshots.append([p.detach().clone() for p in model.parameters()]))
    before, after = snapshots[2], snapshots[3]  # the weights around step 3
    delta = math.sqrt(sum(float((a - b).double().pow(2).sum()) for a, b in zip(after, before)))
    norm = math.sqrt(sum(float(a.double().pow(2).sum()) for a in after))
    acc = load(w.run_dir)
    assert steps_of(acc.Scalars("train/update_ratio")) == [3]
    assert acc.Scalars("train/update_ratio")[0].value == pytest.approx(delta / norm, rel=1e-5)
    conv = 0  # features.0.weight is the first parameter
    expected = float((after[conv] - before[conv]).norm() / after[conv].norm())
    assert acc.Scalars("train/update_ratio/features.0.weight")[0].value == pytest.approx(expected, rel=1e-5)


def test_activation_stats_come_from_the_logging_steps_own_training_forward(tmp_path: Path) -> None:
    model, opt = fresh()
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in STAGES}
    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_hook(
        lambda m, a, out, name=name: seen[name].append(out.detach().clone())) for name in STAGES]

    def validate(i: int) -> None:  # a no_grad pass between steps must not be measured
        with torch.no_grad():
            model(torch.full((2, 3, 32, 32), 5.0))

    with introspect.watch(model, tmp_path, optimizer=opt, every=2) as w:
        train_steps(model, opt, make_data(4), between=validate)
    for h in handles:
        h.remove()
    acc = load(w.run_dir)
    for name in STAGES:
        for step in (2, 4):
            out = seen[name][2 * (step - 1)]  # forwards alternate: training step, validation
            logged = {stat: acc.Scalars(f"activations/{name}/{stat}")[step // 2 - 1] for stat in
                      ("mean", "std", "zero_fraction")}
            assert logged["mean"].step == step
            assert logged["mean"].value == pytest.approx(float(out.mean()), rel=1e-5, abs=1e-7)
            assert logged["std"].value == pytest.approx(float(out.std()), rel=1e-5)
            assert logged["zero_fraction"].value == pytest.approx(float((out == 0).float().mean()), abs=1e-7)
    assert 0 < acc.Scalars("activations/features.2/zero_fraction")[0].value < 1  # a ReLU: some zeros


def test_probe_cams_are_written_at_each_logging_step_and_change_as_the_model_learns(tmp_path: Path, probe) -> None:
    images, labels = probe
    model, opt = fresh(lr=3e-2)
    with introspect.watch(model, tmp_path, optimizer=opt, every=3, probe=images, labels=labels,
                          categories=["red", "green", "blue"]) as w:
        train_steps(model, opt, make_data(9))
    acc = load(w.run_dir)
    assert sorted(acc.Tags()["images"]) == ["cam/probe/0", "cam/probe/1", "cam/probe/2"]
    for i in range(3):
        events = acc.Images(f"cam/probe/{i}")
        assert steps_of(events) == [3, 6, 9]
        frames = [decode(e) for e in events]
        assert frames[0].shape == frames[-1].shape and frames[0].shape[1] >= 128  # enlarged from 32 px
        assert not np.array_equal(frames[0], frames[-1])
    assert steps_of(acc.Scalars("train/probe_true_class_probability")) == [3, 6, 9]
    # the last frame is the project's CAM of the true class, on the final model
    from introspect.drawing import label_image
    from introspect.watch import _enlarge

    for i, label in enumerate(labels):
        result = introspect.cam(model, images[i:i + 1], "gradcam", targets=[label],
                                categories=["red", "green", "blue"])[0]
        entry = result.maps[0]
        assert entry.class_index == label
        expected = label_image(_enlarge(entry.image, 128), f"{entry.class_name} {entry.probability:.1%}")
        assert np.array_equal(decode(acc.Images(f"cam/probe/{i}")[-1]), expected)


def test_manual_log_writes_at_the_given_step(tmp_path: Path) -> None:
    model, opt = fresh()
    with introspect.watch(model, tmp_path, optimizer=opt, every=100) as w:
        train_steps(model, opt, make_data(2))
        w.log()
        w.log(step=50)
        w.scalar("loss", torch.tensor(0.25))
    acc = load(w.run_dir)
    assert steps_of(acc.Histograms("weights/fc.weight")) == [2, 50]
    assert steps_of(acc.Scalars("train/grad_norm")) == [2, 50]
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(2, 0.25)]
    assert not any(t.startswith("activations/") for t in acc.Tags()["scalars"])  # automatic steps only


def test_start_step_shifts_the_numbering(tmp_path: Path) -> None:
    model, opt = fresh()
    with introspect.watch(model, tmp_path, optimizer=opt, every=5, start_step=10) as w:
        train_steps(model, opt, make_data(6))
    assert w.step == 16
    assert steps_of(load(w.run_dir).Scalars("train/grad_norm")) == [15]


# -- writers -----------------------------------------------------------------------------


def test_an_existing_reporter_is_used_and_left_open(tmp_path: Path) -> None:
    model, opt = fresh()
    with Reporter(new_run_dir(tmp_path, "mine", "m")) as reporter:
        with introspect.watch(model, reporter, optimizer=opt, every=1) as w:
            train_steps(model, opt, make_data(2))
        assert not reporter.closed and w.run_dir == reporter.run_dir
        reporter.scalar("after/watch", 1.0)
    acc = load(tmp_path / "mine")
    assert steps_of(acc.Scalars("train/grad_norm")) == [1, 2]
    assert "after/watch" in acc.Tags()["scalars"]


def test_a_summary_writer_is_wrapped(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path / "sw"))
    model, opt = fresh()
    with introspect.watch(model, writer, optimizer=opt, every=2):
        train_steps(model, opt, make_data(2))
    writer.add_scalar("user/after", 3.0, 0)  # still the user's, still open
    writer.close()
    acc = load(tmp_path / "sw")
    assert steps_of(acc.Scalars("train/grad_norm")) == [2]
    assert "user/after" in acc.Tags()["scalars"]


@pytest.mark.parametrize("kwargs, message", [
    ({"every": 0}, "every=0 must be"),
    ({"every": 2.5}, "every=2.5 must be"),
    ({"optimizer": "adam"}, "Optimizer"),
    ({"probe": torch.zeros(2, 3, 8, 8), "labels": [0]}, "1 entries for 2 probe images"),
    ({"labels": [0]}, "without probe"),
    ({"probe": torch.zeros(1, 3, 8, 8), "labels": ["cat"]}, "no categories"),
    ({"layers": ["features.99"]}, "unknown layer"),
])
def test_usage_errors(tmp_path: Path, kwargs, message) -> None:
    model, opt = fresh()
    arguments = {"optimizer": opt, **kwargs}
    with pytest.raises(UsageError, match=message):
        introspect.watch(model, tmp_path, **arguments)
    assert list(tmp_path.iterdir()) == []  # no run directory left behind


def test_an_unknown_writer_is_a_usage_error(tmp_path: Path) -> None:
    model, opt = fresh()
    with pytest.raises(UsageError, match="logdir_or_writer= cannot be a object: pass a log directory, a Reporter or a"):
        introspect.watch(model, object(), optimizer=opt)


# -- the model and the training are left alone -----------------------------------------


@pytest.mark.parametrize("fail_after, armed", [(0, True), (1, False)])  # every=2 arms after step 1, logs at 2
def test_hooks_are_gone_after_exit_and_after_an_exception(tmp_path: Path, probe, fail_after: int,
                                                         armed: bool) -> None:
    images, labels = probe
    model, opt = fresh()
    model.features[1].eval()  # a mixed mode that must survive
    flags = [m.training for m in model.modules()]
    with introspect.watch(model, tmp_path, optimizer=opt, every=2, probe=images, labels=labels) as w:
        train_steps(model, opt, make_data(3))
    assert hook_count(model) == 0 and optimizer_hook_count(opt) == 0
    assert [m.training for m in model.modules()] == flags

    model.features[1].eval()
    with pytest.raises(RuntimeError, match="boom"):
        with introspect.watch(model, tmp_path, optimizer=opt, every=2, probe=images, labels=labels) as w:
            def fail(i: int) -> None:
                if i == fail_after:
                    assert (hook_count(model) > 0) == armed
                    raise RuntimeError("boom")
            train_steps(model, opt, make_data(3), between=fail)
    assert hook_count(model) == 0 and optimizer_hook_count(opt) == 0
    assert w.reporter.closed  # the run it opened is closed
    assert list(w.run_dir.iterdir())  # and its event file is there


@pytest.mark.parametrize("every", [1, 2])
def test_training_is_bit_identical_with_and_without_watch(tmp_path: Path, probe, every: int) -> None:
    images, labels = probe
    data = make_data(6)

    plain, opt = fresh(seed=3)
    torch.manual_seed(7)  # dropout draws from the global RNG
    train_steps(plain, opt, data)

    watched, opt = fresh(seed=3)
    torch.manual_seed(7)
    with introspect.watch(watched, tmp_path, optimizer=opt, every=every, probe=images, labels=labels):
        train_steps(watched, opt, data)

    plain_state, watched_state = plain.state_dict(), watched.state_dict()
    assert "features.1.running_mean" in watched_state and "features.1.num_batches_tracked" in watched_state
    for key, value in plain_state.items():
        assert torch.equal(value, watched_state[key]), key
    for (name, p), q in zip(plain.named_parameters(), watched.parameters()):
        assert torch.equal(p.grad, q.grad), name
    assert int(watched_state["features.1.num_batches_tracked"]) == 6  # the probe ran no training forward


def test_rng_state_is_untouched_by_logging(tmp_path: Path, probe) -> None:
    images, labels = probe
    model, opt = fresh()
    data = make_data(2)
    with introspect.watch(model, tmp_path, optimizer=opt, every=1, probe=images, labels=labels) as w:
        model.train()
        for x, y in data:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            state = torch.get_rng_state()
            opt.step()  # a logging step: histograms, probe CAM
            assert torch.equal(torch.get_rng_state(), state)
    assert w.step == 2


def test_watch_accepts_a_loaded_model(tmp_path: Path) -> None:
    from introspect.models import LoadedModel

    model, opt = fresh()
    loaded = LoadedModel(model=model, name="tiny", weights="random", weights_source="test", transform=None,
                         categories=("a", "b", "c"), input_size=32, device=torch.device("cpu"))
    images, _ = make_data(1, batch=2)[0]
    with introspect.watch(loaded, tmp_path, optimizer=opt, every=1, probe=images, labels=["a", "c"]) as w:
        assert isinstance(w, Watch)
        train_steps(model, opt, make_data(1))
    assert w.run_dir.name.startswith("tiny-")
    assert steps_of(load(w.run_dir).Images("cam/probe/1")) == [1]


# -- without an optimizer: steps are training backward passes -----------------------------


def param_hook_count(model: nn.Module) -> int:
    return sum(len(getattr(p, "_post_accumulate_grad_hooks", None) or {}) + len(p._backward_hooks or {})
               for p in model.parameters())


def test_without_optimizer_steps_are_backward_passes_logged_with_their_gradients(tmp_path: Path) -> None:
    model, opt = fresh()
    seen: list[dict[str, dict[str, torch.Tensor]]] = []  # per step: the weights its forward used, its gradients

    with introspect.watch(model, tmp_path, every=2) as w:
        assert w.counts == "backward passes"
        for x, y in make_data(6):
            opt.zero_grad()
            weights = {n: p.detach().clone() for n, p in model.named_parameters()}
            nn.functional.cross_entropy(model(x), y).backward()
            seen.append({"weights": weights, "grads": {n: p.grad.clone() for n, p in model.named_parameters()}})
            opt.step()
        assert w.step == 6
    acc = load(w.run_dir)
    for tag in ["train/grad_norm", "train/update_ratio"]:
        assert steps_of(acc.Scalars(tag)) == [2, 4, 6], tag
    assert "train/lr" not in acc.Tags()["scalars"]  # no optimizer, no learning rate
    for step in (2, 4, 6):
        grads, weights = seen[step - 1]["grads"], seen[step - 1]["weights"]
        total = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads.values()))
        assert acc.Scalars("train/grad_norm")[step // 2 - 1].value == pytest.approx(total, rel=1e-5)
        for name in ("features.0.weight", "fc.bias"):
            hist = acc.Histograms(f"weights/{name}")[step // 2 - 1].histogram_value
            assert hist.sum == pytest.approx(float(weights[name].double().sum()), rel=1e-4, abs=1e-4)
            ghist = acc.Histograms(f"gradients/{name}")[step // 2 - 1].histogram_value
            assert ghist.max == pytest.approx(float(grads[name].max()), rel=1e-6)
        # the update ratio: the change since the previous backward (the previous step's update)
        before, after = seen[step - 2]["weights"], seen[step - 1]["weights"]
        delta = math.sqrt(sum(float((after[n] - before[n]).double().pow(2).sum()) for n in after))
        norm = math.sqrt(sum(float(a.double().pow(2).sum()) for a in after.values()))
        assert acc.Scalars("train/update_ratio")[step // 2 - 1].value == pytest.approx(delta / norm, rel=1e-5)
    for layer in STAGES:
        assert steps_of(acc.Scalars(f"activations/{layer}/mean")) == [2, 4, 6]
    assert param_hook_count(model) == 0 and hook_count(model) == 0


def test_without_optimizer_eval_backward_autograd_grad_and_the_probe_are_not_steps(tmp_path: Path, probe) -> None:
    images, labels = probe
    model, opt = fresh()
    (x, y), = make_data(1)
    with introspect.watch(model, tmp_path, every=1, probe=images, labels=labels) as w:
        nn.functional.cross_entropy(model(x), y).backward()  # a step (the probe CAM runs at its end)
        assert w.step == 1
        torch.autograd.grad(nn.functional.cross_entropy(model(x), y), list(model.parameters()))
        model.eval()
        nn.functional.cross_entropy(model(x), y).backward()  # eval mode: not training
        model.train()
        out = model(x)
        nn.functional.cross_entropy(out, y).backward(inputs=[out])  # stops short of the parameters
        assert w.step == 1
        nn.functional.cross_entropy(model(x), y).backward()
        assert w.step == 2
    acc = load(w.run_dir)
    assert steps_of(acc.Images("cam/probe/0")) == [1, 2]
    assert steps_of(acc.Scalars("train/grad_norm")) == [1, 2]


class Branchy(nn.Module):
    """A frozen stem and two heads of which a forward uses one: not every backward reaches every parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.stem.requires_grad_(False)
        self.left = nn.Linear(4, 3)
        self.right = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, right: bool = False) -> torch.Tensor:
        features = self.stem(x).mean((2, 3))
        return (self.right if right else self.left)(features)


def test_without_optimizer_gradient_accumulation_frozen_and_unused_parameters(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Branchy().train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    data = make_data(6, batch=4, side=8)
    norms = []
    with introspect.watch(model, tmp_path, every=2, layers=[]) as w:
        for i, (x, y) in enumerate(data):  # two micro-batches per update, the second through the other head
            nn.functional.cross_entropy(model(x, right=i % 2 == 1), y).backward()
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            norms.append(math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads)))
            if i % 2 == 1:
                opt.step()
                opt.zero_grad()
        assert w.step == 6  # every backward counts, whichever parameters it reached
    acc = load(w.run_dir)
    assert [(e.step, e.value) for e in acc.Scalars("train/grad_norm")] == [
        (2, pytest.approx(norms[1], rel=1e-5)), (4, pytest.approx(norms[3], rel=1e-5)),
        (6, pytest.approx(norms[5], rel=1e-5))]
    histograms = set(acc.Tags()["histograms"])
    assert {"gradients/left.weight", "gradients/right.weight"} <= histograms  # both heads' accumulated .grad
    assert "gradients/stem.weight" not in histograms and "weights/stem.weight" in histograms  # frozen


def test_without_optimizer_a_backward_that_fails_does_not_stop_the_counting(tmp_path: Path) -> None:
    model, opt = fresh()
    (x, y), = make_data(1)

    def fail(grad: torch.Tensor) -> None:
        raise RuntimeError("boom")

    with introspect.watch(model, tmp_path, every=1) as w:
        features = model.features(x)
        features.register_hook(fail)  # reached after the head's parameters got their gradients
        loss = nn.functional.cross_entropy(model.fc(model.dropout(model.pool(features).flatten(1))), y)
        with pytest.raises(RuntimeError, match="boom"):
            loss.backward()
        assert model.fc.weight.grad is not None and w.step == 0  # the head was reached, the backward failed
        nn.functional.cross_entropy(model(x), y).backward()
        nn.functional.cross_entropy(model(x), y).backward()
        assert w.step == 2
    assert steps_of(load(w.run_dir).Scalars("train/grad_norm")) == [1, 2]


@pytest.mark.parametrize("every", [1, 2])
def test_training_is_bit_identical_with_and_without_watch_without_optimizer(tmp_path: Path, probe,
                                                                            every: int) -> None:
    images, labels = probe
    data = make_data(6)

    plain, opt = fresh(seed=3)
    torch.manual_seed(7)
    train_steps(plain, opt, data)

    watched, opt = fresh(seed=3)
    torch.manual_seed(7)
    with introspect.watch(watched, tmp_path, every=every, probe=images, labels=labels) as w:
        train_steps(watched, opt, data)
    assert w.step == 6

    plain_state, watched_state = plain.state_dict(), watched.state_dict()
    for key, value in plain_state.items():
        assert torch.equal(value, watched_state[key]), key
    for (name, p), q in zip(plain.named_parameters(), watched.parameters()):
        assert torch.equal(p.grad, q.grad), name
    assert int(watched_state["features.1.num_batches_tracked"]) == 6
    assert param_hook_count(watched) == 0


# -- one signature ---------------------------------------------------------------------------


def test_options_and_keyword_settings_are_the_same_settings(tmp_path: Path) -> None:
    import dataclasses
    import inspect

    from introspect.watch import WatchOptions, WatchSettings

    assert introspect.watch is Watch
    assert set(WatchSettings.__annotations__) == {f.name for f in dataclasses.fields(WatchOptions)}
    parameters = inspect.signature(Watch).parameters
    assert [p.name for p in parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD] == ["model",
                                                                                          "logdir_or_writer"]
    model, opt = fresh()
    w = introspect.watch(model, tmp_path, options=WatchOptions(every=3, run_name="a"), every=5)
    assert w.every == 5 and w.options == WatchOptions(every=5, run_name="a") and w.run_dir.name == "a"
    w.close()
    assert WatchOptions(layers=["features.2"]).layers == ("features.2",)
    assert WatchOptions(layers="features.2, features.6").layers == ("features.2", "features.6")


@pytest.mark.parametrize("kwargs, error, message", [
    ({"evry": 2}, ArgumentTypeError, "no setting evry="),
    ({"options": {"every": 2}}, ArgumentTypeError, "options= must be a WatchOptions"),
    ({"start_step": -1}, ArgumentError, "start_step=-1 must be"),
    ({"categories": "cat"}, ArgumentTypeError, "categories='cat' must be a sequence"),
    ({"cam_method": "nope", "probe": torch.zeros(1, 3, 8, 8)}, introspect.errors.UnknownMethodError, "nope"),
])
def test_setting_errors_name_the_parameter(tmp_path: Path, kwargs, error, message) -> None:
    model, _ = fresh()
    with pytest.raises(error, match=message) as raised:
        introspect.watch(model, tmp_path, **kwargs)
    assert list(tmp_path.iterdir()) == []
    assert isinstance(raised.value, UsageError)
    if error is not introspect.errors.UnknownMethodError:
        assert raised.value.parameter == next(iter(kwargs))  # the CLI maps it to its flag


def test_without_optimizer_a_frozen_model_is_a_usage_error(tmp_path: Path) -> None:
    model, opt = fresh()
    model.requires_grad_(False)
    with pytest.raises(UsageError, match="no parameter that requires grad"):
        introspect.watch(model, tmp_path)
    with introspect.watch(model, tmp_path, optimizer=opt):  # with an optimizer it counts its steps
        pass


def test_a_rank_other_than_0_counts_but_writes_nothing(tmp_path: Path, probe, monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = probe
    monkeypatch.setenv("RANK", "1")  # torchrun's rank, before (or without) a process group
    model, opt = fresh()
    with introspect.watch(model, tmp_path, every=1, probe=images, labels=labels) as w:
        train_steps(model, opt, make_data(2))
        w.scalar("loss", 1.0)
        w.log()
    assert not w.writes and w.run_dir is None and w.reporter is None and w.step == 2
    assert list(tmp_path.iterdir()) == []
    assert hook_count(model) == 0 and param_hook_count(model) == 0
    with pytest.raises(UsageError, match="every=0"):  # the settings are checked on every rank alike
        introspect.watch(model, tmp_path, every=0)


@pytest.mark.parametrize("reentrant", [True, False])
def test_without_optimizer_checkpointed_segments_are_one_step(tmp_path: Path, reentrant: bool) -> None:
    from torch.utils.checkpoint import checkpoint

    model, opt = fresh()
    norms = []
    with introspect.watch(model, tmp_path, every=1, layers=[]) as w:
        for x, y in make_data(3):
            opt.zero_grad()
            x = x.requires_grad_(True)  # the reentrant variant needs an input that requires grad
            features = model.features[4:](checkpoint(model.features[:4], x, use_reentrant=reentrant))
            nn.functional.cross_entropy(model.fc(model.pool(features).flatten(1)), y).backward()
            norms.append(math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters())))
            opt.step()
        assert w.step == 3  # the nested backward of a reentrant checkpoint is part of its step
    assert [e.value for e in load(w.run_dir).Scalars("train/grad_norm")] == pytest.approx(norms, rel=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"probe": [1, 2]}, r"probe= must be a normalised image tensor \(N, 3, H, W\), got list"),
    ({"probe": torch.zeros(2, 1, 8, 8)}, r"probe= must be .* got shape \(2, 1, 8, 8\)"),
    ({"probe": torch.zeros(1, 3, 8, 8), "labels": [-1]}, "labels= entry -1 is negative"),
])
def test_probe_errors_name_the_parameter(tmp_path: Path, kwargs, message) -> None:
    model, _ = fresh()
    with pytest.raises(UsageError, match=message):
        introspect.watch(model, tmp_path, **kwargs)


def test_a_closed_reporter_and_a_non_module_are_usage_errors(tmp_path: Path) -> None:
    model, _ = fresh()
    reporter = Reporter(new_run_dir(tmp_path, "closed", "m"))
    reporter.close()
    with pytest.raises(UsageError, match="logdir_or_writer= is the closed Reporter"):
        introspect.watch(model, reporter)
    with pytest.raises(UsageError, match="model= must be a torch.nn.Module"):
        introspect.watch("resnet18", tmp_path)
