"""The per-image table: Parquet parts written as batches finish, merged into one file at the end.

Each process writes its own parts (``table/rank<R>-part<K>.parquet``), each a closed, readable
file, before the state file that lists it is replaced: a killed run keeps every part its state
names, and a resumed one deletes the parts written after the last state (they are redone).
Parquet (through pyarrow) because pandas, Polars and DuckDB read it directly, it stores the
top-5 lists as list columns, and it compresses a 50,000-row table to a few MB.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import UsageError

__all__ = ["table_rows", "table_schema", "write_part", "merge_parts", "read_table", "arrow"]


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise UsageError("the audit's per-image table needs pyarrow: pip install pyarrow "
                         "(or pass out_dir=None for no table)") from None
    return pyarrow, pyarrow.parquet


def arrow():
    """The pyarrow module (a one-line UsageError naming the extra to install when it is missing)."""
    return _pyarrow()[0]


def table_rows(stats, files: Sequence[str], names: Sequence[str], methods: Sequence[str],
               has_boxes: bool) -> dict[str, list]:
    """Columns of one batch's rows (see :func:`introspect.audit.aggregate.batch_stats`)."""

    def name(i: int) -> str | None:
        return None if i < 0 else (names[i] if i < len(names) else f"class {i}")

    labels = [int(v) for v in stats.labels]
    rows: dict[str, list] = {
        "index": [int(i) for i in stats.indices],
        "file": list(files),
        "label": labels,
        "label_name": [name(v) for v in labels],
        "top5": [[int(c) for c in row] for row in stats.top5],
        "top5_names": [[name(int(c)) for c in row] for row in stats.top5],
        "top5_prob": [[float(p) for p in row] for row in stats.top5_prob],
        "correct": [None if v < 0 else bool(stats.top5[i, 0] == v) for i, v in enumerate(labels)],
        "cam_class": [int(c) for c in stats.cam_class],
    }
    for m, method in enumerate(methods):
        rows[f"{method}_peak_y"] = [int(v) for v in stats.peaks[m, :, 0]]
        rows[f"{method}_peak_x"] = [int(v) for v in stats.peaks[m, :, 1]]
    if has_boxes:
        rows["boxed"] = [bool(b) for b in stats.boxed]
        rows["centre_hit"] = [bool(h) if b else None for h, b in zip(stats.centre, stats.boxed)]
        for m, method in enumerate(methods):
            rows[f"{method}_hit"] = [bool(h) if b else None for h, b in zip(stats.hits[m], stats.boxed)]
            rows[f"{method}_energy"] = [None if math.isnan(e) else float(e) for e in stats.energy[m]]
    return rows


def table_schema(methods: Sequence[str], has_boxes: bool):
    """The table's pyarrow schema (fixed, so that parts with only empty labels still merge)."""
    pa, _ = _pyarrow()
    fields = [("index", pa.int64()), ("file", pa.string()), ("label", pa.int64()), ("label_name", pa.string()),
              ("top5", pa.list_(pa.int64())), ("top5_names", pa.list_(pa.string())),
              ("top5_prob", pa.list_(pa.float32())), ("correct", pa.bool_()), ("cam_class", pa.int64())]
    for method in methods:
        fields += [(f"{method}_peak_y", pa.int32()), (f"{method}_peak_x", pa.int32())]
    if has_boxes:
        fields += [("boxed", pa.bool_()), ("centre_hit", pa.bool_())]
        for method in methods:
            fields += [(f"{method}_hit", pa.bool_()), (f"{method}_energy", pa.float64())]
    return pa.schema(fields)


def write_part(path: Path, columns: dict[str, list], schema) -> None:
    """Write one part file (closed and complete when this returns; written beside, then renamed)."""
    pa, pq = _pyarrow()
    table = pa.table(columns, schema=schema)
    partial = path.with_name(path.name + ".partial")
    pq.write_table(table, partial)
    partial.replace(path)


def merge_parts(parts: Sequence[Path], target: Path) -> int:
    """Concatenate part files (in order of their first index) into ``target``, one row group per part.

    Returns the number of rows. Memory holds one part at a time.
    """
    pa, pq = _pyarrow()
    firsts = []
    for part in parts:
        column = pq.read_table(part, columns=["index"]).column("index")
        firsts.append((column[0].as_py() if len(column) else -1, part))
    firsts.sort(key=lambda item: item[0])
    rows = 0
    writer = None
    partial = target.with_name(target.name + ".partial")
    try:
        for _, part in firsts:
            table = pq.read_table(part)
            if writer is None:
                writer = pq.ParquetWriter(partial, table.schema)
            else:
                table = table.cast(writer.schema)
            writer.write_table(table)
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    if writer is not None:
        partial.replace(target)
    return rows


def read_table(path: str | Path) -> dict[str, np.ndarray | list]:
    """A Parquet table as a dict of columns (lists), without pandas."""
    _, pq = _pyarrow()
    return pq.read_table(path).to_pydict()
