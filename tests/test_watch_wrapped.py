"""introspect.watch where training really happens: DistributedDataParallel under torchrun, and torch.compile.

Both: the training is bit-identical with and without the watch; what is logged is read back from the
event files. The DDP test launches tests/ddp_watch_train.py with 2 gloo processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import introspect

REPO = Path(__file__).resolve().parents[1]


def load(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "histograms": 0, "scalars": 0})
    acc.Reload()
    return acc


# -- DistributedDataParallel, 2 processes --------------------------------------------------------


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "tests" / "ddp_watch_train.py"), str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["optimizer", "backward"])
def test_ddp_training_is_bit_identical_and_rank_0_alone_logs_the_reduced_gradients(ddp_run: Path,
                                                                                   mode: str) -> None:
    runs = {rank: {kind: torch.load(ddp_run / f"{mode}-{kind}-rank{rank}.pt", weights_only=True)
                   for kind in ("plain", "watched")} for rank in (0, 1)}
    for rank in (0, 1):
        plain, watched = runs[rank]["plain"], runs[rank]["watched"]
        assert plain["state"].keys() == watched["state"].keys()
        for key, value in plain["state"].items():
            assert torch.equal(value, watched["state"][key]), (rank, key)
        for name, grad in plain["grads"].items():
            assert torch.equal(grad, watched["grads"][name]), (rank, name)
        assert watched["step"] == 4
    # DDP really reduced: both ranks hold the same gradients, which differ from each rank's own
    for name, grad in runs[0]["watched"]["grads"].items():
        assert torch.equal(grad, runs[1]["watched"]["grads"][name]), name
    reduced = runs[0]["watched"]["reduced_norms"]
    assert reduced == runs[1]["watched"]["reduced_norms"]
    assert runs[0]["watched"]["local_norms"] != runs[1]["watched"]["local_norms"]

    assert runs[0]["watched"]["writes"] is True and runs[1]["watched"]["writes"] is False
    assert runs[1]["watched"]["run_dir"] is None
    run_dir = Path(runs[0]["watched"]["run_dir"])
    assert run_dir == ddp_run / "runs" / mode
    assert sorted(p.name for p in (ddp_run / "runs").iterdir()) == ["backward", "optimizer"]
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1  # one writer: rank 0's
    acc = load(run_dir)
    grad_norms = acc.Scalars("train/grad_norm")
    assert [e.step for e in grad_norms] == [2, 4]
    assert [e.value for e in grad_norms] == pytest.approx([reduced[1], reduced[3]], rel=1e-5)
    scalars, histograms = set(acc.Tags()["scalars"]), set(acc.Tags()["histograms"])
    names = ["features.0.weight", "features.1.weight", "features.4.bias", "fc.weight"]  # no "module." prefix
    assert {f"train/grad_norm/{n}" for n in names} <= scalars and {f"gradients/{n}" for n in names} <= histograms
    assert {"train/update_ratio", "activations/features.2/mean", "train/probe_true_class_probability"} <= scalars
    assert ("train/lr" in scalars) == (mode == "optimizer")
    assert sorted(acc.Tags()["images"]) == ["cam/probe/0", "cam/probe/1"]


# -- torch.compile -----------------------------------------------------------------------------------

# inductor compiles this model in ~30 s on a 2-core CPU, aot_eager (the same autograd graphs, run eagerly) in ~1 s;
# INTROSPECT_TEST_COMPILE_BACKEND=inductor runs these tests with inductor
BACKEND = os.environ.get("INTROSPECT_TEST_COMPILE_BACKEND", "aot_eager")


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def data(steps: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    return [(torch.randn(6, 3, 16, 16, generator=g), torch.randint(0, 3, (6,), generator=g)) for _ in range(steps)]


def train_compiled(tmp_path: Path | None, with_optimizer: bool, in_place: bool = False):
    """(model, compile counter, watch or None, global gradient norm after each backward)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = TinyNet().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    counter = CompileCounterWithBackend(BACKEND)
    if in_place:
        model.compile(backend=counter)
        compiled = model
    else:
        compiled = torch.compile(model, backend=counter)
    probe = data(1)[0][0][:2]
    norms = []
    w = None
    if tmp_path is not None:
        w = introspect.watch(compiled, tmp_path, optimizer=opt if with_optimizer else None, every=2, probe=probe,
                             labels=[0, 2], run_name="compiled")
        w.start()
    try:
        for x, y in data():
            opt.zero_grad()
            nn.functional.cross_entropy(compiled(x), y).backward()
            norms.append(float(torch.stack([p.grad.double().norm() for p in model.parameters()]).norm()))
            opt.step()
    finally:
        if w is not None:
            w.close()
    return model, counter, w, norms


@pytest.mark.parametrize("with_optimizer", [True, False], ids=["optimizer", "backward"])
def test_compiled_training_is_bit_identical_and_compiles_once(tmp_path: Path, with_optimizer: bool) -> None:
    plain, plain_counter, _, _ = train_compiled(None, with_optimizer)
    watched, counter, w, norms = train_compiled(tmp_path, with_optimizer)
    assert plain_counter.frame_count == counter.frame_count == 1  # no recompilation, no graph break
    for key, value in plain.state_dict().items():
        assert torch.equal(value, watched.state_dict()[key]), key
    for (name, p), q in zip(plain.named_parameters(), watched.parameters()):
        assert torch.equal(p.grad, q.grad), name
    assert w.compiled and w.step == 4
    acc = load(w.run_dir)
    scalars = set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("train/grad_norm")] == [2, 4]
    assert [e.value for e in acc.Scalars("train/grad_norm")] == pytest.approx([norms[1], norms[3]], rel=1e-5)
    assert "train/grad_norm/features.0.weight" in scalars and "weights/fc.weight" in acc.Tags()["histograms"]
    assert not any("_orig_mod" in tag for tag in scalars | set(acc.Tags()["histograms"]))
    assert not any(tag.startswith("activations/") for tag in scalars)  # no forward hooks on compiled code
    assert "train/update_ratio" in scalars
    assert [e.step for e in acc.Images("cam/probe/1")] == [2, 4]


def test_a_module_compiled_in_place_is_seen_as_compiled(tmp_path: Path) -> None:
    plain, plain_counter, _, _ = train_compiled(None, False, in_place=True)
    watched, counter, w, _ = train_compiled(tmp_path, False, in_place=True)
    assert plain_counter.frame_count == counter.frame_count == 1 and w.compiled  # the probe ran eagerly
    for key, value in plain.state_dict().items():
        assert torch.equal(value, watched.state_dict()[key]), key


def test_wrappers_are_unwrapped_for_names(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    for wrapped, compiled in [(nn.DataParallel(model), False),
                              (torch.compile(nn.DataParallel(model), backend="eager"), True)]:
        with introspect.watch(wrapped, tmp_path, every=1) as w:
            assert w.model is model and w.compiled is compiled
            nn.functional.cross_entropy(wrapped(torch.randn(2, 3, 16, 16)), torch.tensor([0, 1])).backward()
        assert "train/grad_norm/features.0.weight" in load(w.run_dir).Tags()["scalars"]
