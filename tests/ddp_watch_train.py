"""Train a tiny CNN under DistributedDataParallel a few steps, with and without introspect.watch.

Run by tests/test_watch_wrapped.py as ``torchrun --standalone --nproc_per_node 2 tests/ddp_watch_train.py OUT``
(gloo, CPU). For each mode (``optimizer``: watch counts optimizer steps; ``backward``: it counts backward
passes) and each of plain / watched, every rank saves to ``OUT/<mode>-<plain|watched>-rank<r>.pt``: its final
state_dict, its final .grad, and the global gradient norm read from .grad after each backward (the
reduced gradients). The watched runs log under ``OUT/runs/<mode>`` with every=2 and a probe.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import introspect

STEPS = 4


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def batches(rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own data: local gradients differ
    out = []
    for _ in range(STEPS):
        y = torch.randint(0, 3, (6,), generator=g)
        x = torch.randn(6, 3, 16, 16, generator=g)
        x[torch.arange(6), y] += 1.0
        out.append((x, y))
    return out


def global_norm(params) -> float:
    return float(torch.stack([p.grad.double().norm() for p in params if p.grad is not None]).norm())


def train(mode: str, watched: bool, out: Path, rank: int) -> None:
    torch.manual_seed(0)
    model = TinyCNN().train()
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    probe = batches(99)[0][0][:2]
    context = (introspect.watch(ddp, out / "runs", optimizer=opt if mode == "optimizer" else None, every=2,
                                run_name=mode, probe=probe, labels=[0, 1])
               if watched else contextlib.nullcontext())
    reduced, local = [], []
    with context as w:
        for x, y in batches(rank):
            twin = copy.deepcopy(model)  # this rank's own gradient, for comparison (no DDP, no reduction)
            nn.functional.cross_entropy(twin(x), y).backward()
            local.append(global_norm(twin.parameters()))
            opt.zero_grad()
            nn.functional.cross_entropy(ddp(x), y).backward()
            reduced.append(global_norm(model.parameters()))
            opt.step()
    torch.save({
        "state": model.state_dict(),
        "grads": {name: p.grad for name, p in model.named_parameters()},
        "reduced_norms": reduced,
        "local_norms": local,
        "step": w.step if watched else None,
        "writes": w.writes if watched else None,
        "run_dir": str(w.run_dir) if watched and w.run_dir is not None else None,
    }, out / f"{mode}-{'watched' if watched else 'plain'}-rank{rank}.pt")


def main() -> int:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    try:
        for mode in ("optimizer", "backward"):
            for watched in (False, True):
                train(mode, watched, out, rank)
                dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
