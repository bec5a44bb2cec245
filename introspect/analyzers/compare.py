"""Side-by-side comparison of CAM methods, built from CamResults already computed (no forward pass), any task."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import ArgumentError
from ..inputs import InputBatch
from ..records import CamComparison, CamResult

__all__ = ["compare_cams"]


def compare_cams(results: Sequence[CamResult], photos: InputBatch | Mapping[str, np.ndarray]) -> list[CamComparison]:
    """One image per input: the photo, then each method's overlay, one row per explained subject.

    ``photos`` maps image names to the uint8 HWC pixels the model saw (an
    :class:`~introspect.inputs.InputBatch` will do). Each row is ``1 + len(methods)``
    labelled tiles wide: the subject's caption ("<class> <probability>", a detection's
    score, a mask class's share) on the photo, "<method>: <class>" on each overlay.
    Results without a map, and clips (their maps run over frames), are left out.
    Example: ``compare_cams(introspect.cam(m, batch, "gradcam,layercam"), batch)``.

    Args:
        results: CAM results, several methods of the same images and subjects.
        photos: image name -> uint8 ``(H, W, 3)`` pixels, or an ``InputBatch``.

    Returns:
        One :class:`~introspect.records.CamComparison` per image, in the order first seen.

    Raises:
        ArgumentError: ``photos`` lacks an image of the results.
    """
    from PIL import Image

    from ..drawing import labelled_panels

    if isinstance(photos, InputBatch):
        photos = dict(zip(photos.names, photos.photos))
    by_image: dict[str, list[CamResult]] = {}
    for result in results:
        if result.maps and result.maps[0].heatmap.ndim == 2:
            by_image.setdefault(result.image_name, []).append(result)
    comparisons = []
    for image_name, group in by_image.items():
        if image_name not in photos:
            raise ArgumentError(f"photos has no photo of image {image_name!r}: give one per image of the results",
                                parameter="photos")
        photo = np.asarray(photos[image_name], dtype=np.uint8)
        rows = min(len(r.maps) for r in group)
        height, width = group[0].maps[0].image.shape[:2] if rows else photo.shape[:2]

        def sized(picture: np.ndarray) -> np.ndarray:  # a detector's overlays are drawn enlarged: all one size
            if picture.shape[:2] == (height, width):
                return picture
            return np.asarray(Image.fromarray(picture).resize((width, height), Image.Resampling.BILINEAR))

        tiles, labels = [], []
        for j in range(rows):
            first = group[0].maps[j]
            tiles.append(sized(photo))
            labels.append(first.subject.caption)
            for result in group:
                entry = result.maps[j]
                tiles.append(sized(entry.image))
                labels.append(f"{result.method}: {entry.subject.name}")
        grid = labelled_panels(tiles, labels, columns=1 + len(group), padding=4)
        comparisons.append(CamComparison(image_name=image_name, methods=tuple(r.method for r in group),
                                         class_indices=tuple(group[0].maps[j].subject.index for j in range(rows)),
                                         image=grid))
    return comparisons
