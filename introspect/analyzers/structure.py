"""Structure: the layer table (torchinfo) with output shapes, parameters and mult-adds.

torchinfo runs the model once; that run is made on the meta device (every weight
swapped for a shapeless twin, then put back), so it costs no arithmetic. A model
that cannot run on meta tensors gets a real forward instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..hooks import inspecting
from ..loaded import LoadedModel, device_and_dtype, unwrap
from ..records import LayerRow, StructureSummary

__all__ = ["summarize"]


@contextlib.contextmanager
def _weights_on_meta(module: nn.Module) -> Iterator[None]:
    """Swap every parameter and buffer for a meta tensor of the same shape (tied ones stay tied); put them back."""
    swapped: list[tuple[dict, str, torch.Tensor]] = []
    twins: dict[int, torch.Tensor] = {}
    try:
        for sub in module.modules():
            for store in (sub._parameters, sub._buffers):
                for key, value in list(store.items()):
                    if value is None:
                        continue
                    twin = twins.get(id(value))
                    if twin is None:
                        meta = value.detach().to("meta")
                        twin = nn.Parameter(meta, value.requires_grad) if isinstance(value, nn.Parameter) else meta
                        twins[id(value)] = twin
                    swapped.append((store, key, value))
                    store[key] = twin
        yield
    finally:
        for store, key, value in reversed(swapped):
            store[key] = value


def summarize(model: nn.Module | LoadedModel, input_size: int | tuple[int, ...] | None = None,
              depth: int = 3, num_inputs: int = 1, on_meta: bool = True) -> StructureSummary:
    """The layer table of ``model`` for one input of ``input_size`` (default: the model's own, or 224).

    Rows go ``depth`` levels deep; a container's mult-adds are the sum of its leaf layers'.

    Args:
        model: a module or a :class:`~introspect.models.LoadedModel`.
        input_size: side of a square input, or a full input shape ``(N, C, H, W)``.
        depth: how many levels of submodules get rows.
        num_inputs: how many tensors of that shape the model takes (2 for RAFT's pair of frames).
        on_meta: try the free run on the meta device first; False runs a real forward (detectors cache
            anchors as plain attributes, which a meta run would leave on the meta device).

    Returns:
        A :class:`~introspect.records.StructureSummary` (renders as a table).
    """
    import torchinfo

    module, loaded = unwrap(model)
    if loaded is not None and input_size is None:  # the task's own input: a clip, a pair of frames...
        from ..tasks import TASKS

        task = TASKS[loaded.task]
        example = task.example_input(loaded)
        examples = example if isinstance(example, tuple) else (example,)
        input_size, num_inputs, on_meta = tuple(examples[0].shape), len(examples), on_meta and task.runs_on_meta
    size = input_size or (loaded.input_size if loaded else 224)
    shape = (1, 3, size, size) if isinstance(size, int) else tuple(size)
    device, dtype = device_and_dtype(module)
    names = {id(m): n for n, m in module.named_modules()}
    with inspecting(module):
        stats = None
        if on_meta:
            try:
                with _weights_on_meta(module):
                    example = [torch.zeros(shape, device="meta", dtype=dtype)] * num_inputs
                    stats = torchinfo.summary(module, input_data=example, depth=max(depth, 1), verbose=0,
                                              device=torch.device("meta"), mode="eval")
            except Exception:  # data-dependent code, tensors kept outside parameters and buffers...
                stats = None
        if stats is None:  # run it for real
            example = [torch.zeros(shape, device=device, dtype=dtype)] * num_inputs
            stats = torchinfo.summary(module, input_data=example,
                                      depth=max(depth, 1), verbose=0, device=device, mode="eval")
    leaf_macs: dict[int, int] = {}
    for info in stats.summary_list:
        if info.is_leaf_layer:
            leaf_macs[info.layer_id] = leaf_macs.get(info.layer_id, 0) + int(info.macs)

    def mult_adds(info) -> int:  # torchinfo's own figure for a container counts its whole subtree wrongly
        if info.is_leaf_layer:
            return int(info.macs)
        return sum(leaf_macs.get(id(m), 0) for m in info.module.modules())

    rows = tuple(
        LayerRow(
            name=names.get(info.layer_id, info.var_name) or info.var_name,
            type=info.class_name,
            depth=info.depth,
            output_shape=tuple(int(s) for s in (info.output_size or ())),
            num_params=max(int(info.num_params), 0),
            trainable_params=max(int(info.trainable_params), 0),
            mult_adds=mult_adds(info),
        )
        for info in stats.summary_list
        if 0 < info.depth <= depth
    )
    return StructureSummary(
        model_name=loaded.name if loaded else type(module).__name__,
        input_shape=shape,
        rows=rows,
        total_params=int(stats.total_params),
        trainable_params=int(stats.trainable_params),
        total_mult_adds=int(stats.total_mult_adds),
    )
