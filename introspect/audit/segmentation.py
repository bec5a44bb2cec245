"""The segmentation audit (``audit_kind="masks"``): mIoU over images and their mask PNGs, and where the model
looked for each class.

Masks are laid out as Pascal VOC's ``SegmentationClass``: one PNG per image, named by the image's path with
``.png`` (or its stem), each pixel its class index (a palette PNG's indices, or a greyscale PNG's values),
255 = ignore. Every mask is read and checked before anything is written (size equal to its image's, values
among the model's classes or 255). Each batch goes through the model's transform (the mask through the same
resize, nearest, and centre crop), one forward pass and one batched backward for the pixel-class targets
of the classes in each image's ground truth (:func:`introspect.tasks.segmentation.segmentation_pass`,
:func:`~introspect.tasks.segmentation.pixel_class_maps`): the class's logit summed over its true pixels,
pytorch-grad-cam's ``SemanticSegmentationTarget`` on the true mask. The confusion matrix is summed over
processes; mIoU, per-class IoU and pixel accuracy come from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UsageError
from ..records import ClassSegmentationAudit, Gallery, MeanCam, SegmentationAuditResult
from .kinds import AuditKind, KeyedAggregates, grid, item_loader

__all__ = ["MaskIndex", "scan_mask_dataset", "read_mask", "SegmentationAudit", "PROTOCOL", "IGNORE"]

IGNORE = 255

PROTOCOL = """**Segmentation audit.** Each image goes through the model's transform (resize of the shorter side,
centre crop) and its mask through the same resize (nearest) and crop; pixels of value 255 are ignored. The
**confusion matrix** counts pixels (rows: ground truth, columns: the predicted class, the argmax of the scores);
a class's **IoU** is its diagonal over its row plus its column minus the diagonal, **mIoU** the mean over the
classes with a ground-truth or predicted pixel, **pixel accuracy** the diagonal over every labelled pixel. An
image's IoU (worst images, table) is the mean over the classes in its ground truth or prediction.
**Where it looked**: for each class in an image's ground truth (at most {explained}, largest first, background
left out when there are others) one CAM whose target is the class's logit summed over its true pixels
(pytorch-grad-cam's SemanticSegmentationTarget on the ground-truth mask), all of a batch's from one forward and
one backward; a class's **mean CAM** averages them at {size}x{size} beside its images' mean."""


@dataclass(frozen=True)
class MaskIndex:
    """The images of a dataset folder and their mask files."""

    root: Path
    files: tuple[str, ...]  # images, relative to root
    masks: tuple[Path, ...]

    def __len__(self) -> int:
        return len(self.files)


def read_mask(path: Path) -> np.ndarray:
    """A mask PNG as (H, W) uint8 class indices (a palette PNG's indices, a greyscale PNG's values)."""
    from PIL import Image

    with Image.open(path) as image:
        if image.mode not in ("P", "L", "I", "I;16"):
            raise UsageError(f"mask {path} is a {image.mode} image: masks are palette or greyscale PNGs whose values "
                             "are class indices (255 = ignore), as Pascal VOC's SegmentationClass", parameter="masks")
        array = np.asarray(image)
    if array.max(initial=0) > 255:
        raise UsageError(f"mask {path} has values above 255: masks hold class indices 0-254 and 255 = ignore",
                         parameter="masks")
    return array.astype(np.uint8)


def scan_mask_dataset(root: Path, masks: str | Path | None, num_classes: int) -> MaskIndex:
    """The images under ``root`` and their masks in ``masks``, every mask checked (size, values): bad input is a
    one-line UsageError before anything is written."""
    from PIL import Image

    from ..images import IMAGE_SUFFIXES

    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"dataset folder {root} does not exist or is not a folder: check dataset=",
                         parameter="dataset")
    if masks is None:
        raise UsageError(f"a segmentation model's audit needs the ground-truth masks: give masks=DIR, a folder of mask "
                         f"PNGs named as the images under {root} (Pascal VOC's SegmentationClass layout)",
                         parameter="masks")
    folder = Path(masks)
    if not folder.is_dir():
        raise UsageError(f"masks folder {folder} does not exist or is not a folder: check masks=", parameter="masks")
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                    and folder.resolve() not in p.resolve().parents)
    if not images:
        raise UsageError(f"{root} holds no image files: check dataset=", parameter="dataset")
    files, found, missing = [], [], []
    for image in images:
        relative = image.relative_to(root)
        candidates = (folder / relative.with_suffix(".png"), folder / f"{image.stem}.png")
        mask = next((c for c in candidates if c.is_file()), None)
        if mask is None:
            missing.append(relative.as_posix())
            continue
        files.append(relative.as_posix())
        found.append(mask)
    if missing:
        raise UsageError(f"{len(missing)} image(s) under {root} have no mask in {folder} (first: {missing[0]!r}, "
                         f"expected {Path(missing[0]).with_suffix('.png').as_posix()}): add them, or move the images "
                         "out", parameter="masks")
    for file, mask in zip(files, found):
        with Image.open(root / file) as image:
            size = image.size
        values = read_mask(mask)
        if (values.shape[1], values.shape[0]) != size:
            raise UsageError(f"mask {mask} is {values.shape[1]}x{values.shape[0]} but its image {file} is "
                             f"{size[0]}x{size[1]}: masks must have their image's size", parameter="masks")
        counts = np.bincount(values.reshape(-1), minlength=256)
        unknown = [v for v in np.nonzero(counts)[0].tolist() if v >= num_classes and v != IGNORE]
        if unknown:
            raise UsageError(f"mask {mask} has values {unknown[:5]} that are not classes of the model (0-"
                             f"{num_classes - 1}) or 255 = ignore: fix the mask, or give a model with those classes",
                             parameter="masks")
    return MaskIndex(root, tuple(files), tuple(found))


class _ImagesAndMasks(torch.utils.data.Dataset):
    """Item ``i``: ((tensor (3, H, W), mask (H, W) uint8) through the transform, i, None) or (None, i, reason)."""

    def __init__(self, index: MaskIndex, transform: Any, geometry: Any) -> None:
        self.index, self.transform, self.geometry = index, transform, geometry

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        import torchvision.transforms.functional as TF
        from torchvision.transforms import InterpolationMode

        from ..errors import ImageError
        from ..images import preprocess
        from .dataset import read_photo

        try:
            image = read_photo(self.index.root / self.index.files[i])
            tensor = preprocess(image, self.transform)[0]
            mask = torch.from_numpy(read_mask(self.index.masks[i]))[None]
        except (ImageError, OSError, ValueError, UsageError) as error:
            return None, i, " ".join(str(error).split())
        if self.geometry.resize is not None:
            mask = TF.resize(mask, [self.geometry.resize], interpolation=InterpolationMode.NEAREST)
        if self.geometry.crop is not None:
            mask = _centre_crop(mask, self.geometry.crop)
        return (tensor, mask[0]), i, None


def _centre_crop(mask: torch.Tensor, crop: tuple[int, int]) -> torch.Tensor:
    """torchvision's centre crop, padding with 255 (ignore) where the mask is smaller."""
    import torchvision.transforms.functional as TF

    height, width = mask.shape[-2:]
    ch, cw = crop
    if ch > height or cw > width:
        pad = [(cw - width) // 2 if cw > width else 0, (ch - height) // 2 if ch > height else 0,
               (cw - width + 1) // 2 if cw > width else 0, (ch - height + 1) // 2 if ch > height else 0]
        mask = TF.pad(mask, pad, fill=IGNORE)
    return TF.center_crop(mask, [ch, cw])


def _dense(c: int, m: int, s: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {
        "counts": ((1,), torch.int64),  # images
        "confusion": ((c, c), torch.int64),
        "class_images": ((c,), torch.int64),
        "cam_sum": ((m, c, s, s), torch.float64),
        "image_sum": ((c, s, s, 3), torch.float32),
        "cam_count": ((c,), torch.int64),
    }


class SegmentationAudit(AuditKind):
    """The segmentation audit (see the module docstring)."""

    def __init__(self, module: torch.nn.Module, loaded: Any, dataset: Path, options: Any) -> None:
        from ..engine.cam import single_pass_methods
        from ..tasks.segmentation import voc_categories
        from .boxes import input_geometry

        self.module, self.loaded, self.options = module, loaded, options
        self.methods = tuple(single_pass_methods(options.methods, "segmentation"))
        self.names = tuple(loaded.categories) or voc_categories()
        self.geometry = input_geometry(loaded.transform)
        self.index = scan_mask_dataset(dataset, options.masks, len(self.names))
        if options.layer:
            from ..layers import resolve_layer

            resolve_layer(module, options.layer)
        from ..tasks import TASKS

        self.explained = TASKS[loaded.task].explained_layer(loaded, options.layer)  # None: the maps the heads read
        self.layer = self.explained or "backbone (the maps the heads read)"
        self.mean = torch.tensor(list(getattr(loaded.transform, "mean", (0.485, 0.456, 0.406)))).view(1, 3, 1, 1)
        self.std = torch.tensor(list(getattr(loaded.transform, "std", (0.229, 0.224, 0.225)))).view(1, 3, 1, 1)
        self.aggregates = KeyedAggregates(_dense(len(self.names), len(self.methods), options.map_size),
                                          ("worst",), limit=options.gallery_size)

    @staticmethod
    def check_options(loaded: Any, options: Any) -> None:
        """Refuse options of other audits (boxes, the sanity check)."""
        if options.boxes is not None:
            raise UsageError(f"boxes={options.boxes} belongs to detection and classifier audits; {loaded.name} is a "
                             "segmentation model: give it masks=DIR", parameter="boxes")
        if options.sanity:
            raise UsageError(f"sanity=True (the randomisation check) is written for classifier audits, not for "
                             f"{loaded.name}: drop it", parameter="sanity")

    def fingerprint(self) -> dict:
        o = self.options
        return {"kind": "masks", "max_explained": o.max_explained, "map_size": o.map_size,
                "gallery_size": o.gallery_size}

    def loader(self, batches, num_workers, pin_memory):
        return item_loader(_ImagesAndMasks(self.index, self.loaded.transform, self.geometry), batches, num_workers)

    def schema(self):
        from .table import arrow

        pa = arrow()
        return pa.schema([("index", pa.int64()), ("file", pa.string()), ("mask", pa.string()),
                          ("pixels", pa.int64()), ("pixel_accuracy", pa.float64()), ("iou", pa.float64()),
                          ("classes", pa.list_(pa.int64())), ("class_names", pa.list_(pa.string())),
                          ("class_iou", pa.list_(pa.float64())), ("true_classes", pa.list_(pa.int64())),
                          ("predicted_classes", pa.list_(pa.int64()))])

    def settings(self) -> dict:
        return {"masks": str(self.options.masks), "explained_per_image": self.options.max_explained}

    def _name(self, c: int) -> str:
        return self.names[c] if 0 <= c < len(self.names) else f"class {c}"

    def run_batch(self, module, batch, files) -> dict[str, list]:
        from ..engine.targets import PixelClass
        from ..tasks.common import TaskImages
        from ..tasks.segmentation import pixel_class_maps, segmentation_pass

        o = self.options
        c = len(self.names)
        x = torch.stack([value[0] for value, _ in batch.items])
        truth = torch.stack([value[1] for value, _ in batch.items]).long()
        pixels = torch.addcmul(self.mean, x.float(), self.std).clamp_(0, 1).mul_(255).round_()  # one new tensor
        photos = tuple(pixels.to(torch.uint8).permute(0, 2, 3, 1).numpy())
        found = segmentation_pass(module, TaskImages(tuple(x.unbind(0)), photos, tuple(files), normalized=True),
                                  methods=self.methods, layer=self.explained, categories=self.names)
        try:
            predicted = found.class_maps.cpu()
            chosen = []
            for n in range(len(files)):
                counts = torch.bincount(truth[n].reshape(-1), minlength=256)[:c]
                present = sorted(torch.nonzero(counts).flatten().tolist(), key=lambda k: (-int(counts[k]), k))
                if len(present) > 1:
                    present = [k for k in present if self.names[k].lower() not in ("__background__", "background")]
                chosen.append(present[: o.max_explained])
            targets = [[PixelClass(k, truth[n].to(found.logits.device)) for k in classes]
                       for n, classes in enumerate(chosen)]
            maps = pixel_class_maps(found, self.methods, targets) if self.methods else {}
        finally:
            found.release()
        d = self.aggregates.dense
        valid = truth != 255
        cells = (truth * c).add_(predicted).add_(torch.arange(len(files)).view(-1, 1, 1) * (c * c))  # one tensor
        confusions = torch.bincount(cells[valid],  # every image's (image, true, predicted) cell, in one count
                                    minlength=len(files) * c * c).reshape(len(files), c, c)
        d["confusion"] += confusions.sum(0)
        d["counts"][0] += len(files)
        s = o.map_size
        small_images = F.interpolate(pixels, size=(s, s), mode="area").div_(255).permute(0, 2, 3, 1)
        rows: dict[str, list] = {k: [] for k in ("index", "file", "mask", "pixels", "pixel_accuracy", "iou", "classes",
                                                 "class_names", "class_iou", "true_classes", "predicted_classes")}
        for n, i in enumerate(batch.indices):
            t, p = truth[n], predicted[n]
            own = confusions[n]  # this image's confusion
            pixels = int(own.sum())
            correct = int(own.diagonal().sum())
            in_truth, in_prediction = own.sum(1), own.sum(0)
            true_classes = torch.nonzero(in_truth).flatten().tolist()
            predicted_classes = torch.nonzero(in_prediction).flatten().tolist()
            classes = sorted(set(true_classes) | set(predicted_classes))
            ious = [int(own[k, k]) / int(in_truth[k] + in_prediction[k] - own[k, k]) for k in classes]
            image_iou = float(np.mean(ious)) if ious else math.nan
            if true_classes:
                d["class_images"].index_add_(0, torch.tensor(true_classes), torch.ones(len(true_classes),
                                                                                     dtype=torch.int64))
            if chosen[n]:
                picked = torch.tensor(chosen[n])
                d["cam_count"].index_add_(0, picked, torch.ones(len(picked), dtype=torch.int64))
                d["image_sum"].index_add_(0, picked, small_images[n][None].expand(len(picked), -1, -1, -1))
                for mi, m in enumerate(self.methods):
                    small = F.interpolate(maps[m][n][: len(picked)][:, None].float(), size=(s, s), mode="area")[:, 0]
                    d["cam_sum"][mi].index_add_(0, picked, small.double())
            key = (image_iou if not math.isnan(image_iou) else 2.0, int(i))
            if self.aggregates.worth("worst", key):
                self.aggregates.offer("worst", {"key": list(key), "file": files[n], "what": f"{image_iou:.3f}",
                                                "iou": image_iou, "photo": torch.from_numpy(photos[n].copy()),
                                                "truth": t.to(torch.uint8), "predicted": p.to(torch.uint8)})
            rows["index"].append(int(i))
            rows["file"].append(files[n])
            rows["mask"].append(str(self.index.masks[i]))
            rows["pixels"].append(pixels)
            rows["pixel_accuracy"].append(correct / pixels if pixels else None)
            rows["iou"].append(None if math.isnan(image_iou) else image_iou)
            rows["classes"].append(classes)
            rows["class_names"].append([self._name(k) for k in classes])
            rows["class_iou"].append([None if math.isnan(v_) else v_ for v_ in ious])
            rows["true_classes"].append(true_classes)
            rows["predicted_classes"].append(predicted_classes)
        return rows

    def _panel(self, entry: dict) -> np.ndarray:
        """A kept image drawn: the photo, the true mask over it, and the predicted one, labelled."""
        from ..drawing import labelled_panels
        from ..tasks.segmentation import draw_class_map

        c = len(self.names)
        photo, t, p = entry["photo"].numpy(), entry["truth"].numpy(), entry["predicted"].numpy()
        file, iou = entry["file"], entry["iou"]
        zoom = max(1, -(-160 // max(photo.shape[:2])))  # small inputs drawn at 160 px or more, nearest
        photo, t, p = (np.repeat(np.repeat(a, zoom, axis=0), zoom, axis=1) for a in (photo, t, p))
        background = [k for k in range(c) if self.names[k].lower() in ("__background__", "background")]
        t_shown, p_shown = (np.where(np.isin(a, background), IGNORE, a) for a in (t, p))  # background undrawn

        def listed(a: np.ndarray) -> str:
            classes = [int(k) for k in np.unique(a) if k < c]
            return ", ".join(self._name(k) for k in classes[:2]) + (" ..." if len(classes) > 2 else "") or "-"

        return labelled_panels([photo, draw_class_map(photo, t_shown, c), draw_class_map(photo, p_shown, c)],
                            [file.rsplit("/", 1)[-1][:20], f"truth: {listed(t_shown)}",
                             f"IoU {iou:.2f}: {listed(p_shown)}"], padding=2)

    def result(self, settings, table, seconds, sanity) -> SegmentationAuditResult:
        from .figures import confusion_figure, mean_cam_panel

        a = self.aggregates
        d = a.dense
        o = self.options
        confusion = d["confusion"]
        truth = confusion.sum(1)
        predicted = confusion.sum(0)
        diagonal = confusion.diagonal()
        present = torch.nonzero((truth > 0) | (predicted > 0)).flatten().tolist()
        classes = tuple(ClassSegmentationAudit(index=k, name=self._name(k), pixels=int(truth[k]),
                                               predicted=int(predicted[k]), intersection=int(diagonal[k]),
                                               images=int(d["class_images"][k])) for k in present)
        ious = [cls.iou for cls in classes]
        pixels = int(confusion.sum())
        accuracy = int(diagonal.sum()) / pixels if pixels else math.nan
        mean_iou = float(np.mean(ious)) if ious else math.nan
        sel = torch.tensor(present, dtype=torch.long)
        matrix = confusion[sel][:, sel].numpy() if present else np.zeros((0, 0), dtype=np.int64)
        image = confusion_figure(matrix, [self._name(k) for k in present], accuracy, measure="pixel accuracy") \
            if present else None
        mean_cams = []
        cam_classes = sorted(torch.nonzero(d["cam_count"]).flatten().tolist(),
                             key=lambda k: (-int(d["cam_count"][k]), k))[: o.max_classes]
        for k in sorted(cam_classes):
            n = int(d["cam_count"][k])
            photo = (d["image_sum"][k] / n).clamp(0, 1).numpy()
            photo = np.repeat(np.repeat((photo * 255).round().astype(np.uint8), 2, axis=0), 2, axis=1)
            maps = (d["cam_sum"][:, k] / n).numpy()
            lo = maps.min(axis=(1, 2), keepdims=True)
            hi = maps.max(axis=(1, 2), keepdims=True)
            maps = ((maps - lo) / np.maximum(hi - lo, 1e-12)).astype(np.float32)
            mean_cams.append(MeanCam(class_index=k, class_name=self._name(k), count=n, methods=self.methods, maps=maps,
                                     image=mean_cam_panel(photo, maps, f"{self._name(k)} ({n})", self.methods)))
        galleries, listed = [], {}
        if a.galleries["worst"]:
            entries = a.galleries["worst"]
            galleries.append(Gallery(name="worst_iou", title="worst images by IoU (photo | truth | prediction)",
                                     items=(), image=grid([self._panel(e) for e in entries])))
            listed["worst_iou"] = tuple((e["file"], e["what"]) for e in entries)
        return SegmentationAuditResult(
            settings=settings, methods=self.methods, images=int(d["counts"][0]), skipped=a.skipped,
            skipped_files=tuple(a.skipped_files), pixels=pixels, pixel_accuracy=accuracy, mean_iou=mean_iou,
            classes=classes, confusion_classes=tuple(present), confusion=matrix, confusion_image=image,
            mean_cams=tuple(mean_cams), galleries=tuple(galleries), listed=listed,
            protocol=PROTOCOL.format(explained=o.max_explained, size=o.map_size), table=table, seconds=seconds,
            category_names=self.names)

