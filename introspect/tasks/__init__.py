"""The task registry: every torchvision model family and what introspect shows for it.

Each :class:`Task` describes itself (name, summary, torchvision module, input kind, what it
can show and why not the rest) and carries its behaviour on the one run path (inputs, the
forward pass, predictions, feature maps, CAMs, layers: :mod:`introspect.tasks.base`). ``task_of(name)`` finds the
task of a torchvision model name; ``models_by_task()`` is the ``--list-models`` listing.
"""

from __future__ import annotations

from functools import lru_cache

from ..errors import ArgumentError
from .base import Task
from .classification import ClassificationTask, QuantizedTask
from .detection import DetectionTask
from .flow import FlowTask
from .hf import HFDetectionTask, HFSegmentationTask
from .segmentation import SegmentationTask
from .video import VideoTask

__all__ = ["Task", "TASKS", "register_task", "task_of", "task_of_module", "models_by_task", "all_model_names"]

_CLASSIFIER_ONLY = "written for one class score per image (classifiers)"
# not_applicable["audit"]: why the dataset audit (audit(), --dataset) refuses the task's models; a task whose
# skip_reason("audit") is None (classifiers, quantized classifiers) can be audited.
_AUDIT_CLASSIFIER_ONLY = "the dataset audit scores one class per image (accuracy, pointing game)"

TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add ``task`` to the registry (its name must be new); returns it."""
    if task.name in TASKS:
        raise ArgumentError(f"task={task.name!r} is already registered", parameter="task")
    TASKS[task.name] = task
    return task


register_task(ClassificationTask(
    name="classification",
    summary="image classifiers: top-k classes, CAMs, saliency, filters, embeddings",
    module="torchvision.models",
    input_kind="image",
    capabilities=frozenset({"images", "class_scores", "targets", "autograd", "graph"}),
    reads_class_count=True,
))
register_task(QuantizedTask(
    name="quantized",
    summary="int8 quantized classifiers: kernels dequantized, activation-only CAMs (eigencam, fem)",
    module="torchvision.models.quantization",
    input_kind="image",
    capabilities=frozenset({"images", "class_scores", "targets", "graph"}),
    not_applicable={
        "saliency": "needs input gradients, and quantized int8 kernels have no autograd",
        "filters": "gradient ascent on the input needs autograd, which quantized int8 kernels lack",
        "embeddings": "not wired for quantized models yet",
        "quality": "not wired for quantized models yet",
    },
    cam_methods=frozenset({"eigencam", "fem"}),
    default_cam="eigencam",
    build_kwargs={"quantize": True},
    notes=("CAM: quantized int8 kernels have no autograd, so only the activation-only methods (eigencam, fem) "
           "run; the default is eigencam",),
))
register_task(DetectionTask(
    name="detection",
    summary="object detectors (Faster/Mask/Keypoint R-CNN, RetinaNet, FCOS, SSD): boxes drawn with COCO names, "
            "a CAM per top detection",
    module="torchvision.models.detection",
    input_kind="image",
    capabilities=frozenset({"images", "targets", "autograd"}),
    not_applicable={
        "graph": "detection models take a list of images and return a list of dicts, which the graph tracer "
                 "cannot record",
        "saliency": _CLASSIFIER_ONLY, "filters": _CLASSIFIER_ONLY, "embeddings": _CLASSIFIER_ONLY,
        "quality": _CLASSIFIER_ONLY,
        "audit": f"{_AUDIT_CLASSIFIER_ONLY}; a detector gives boxes per object",
    },
    build_kwargs={"weights_backbone": None},
    runs_on_meta=False,
))
register_task(SegmentationTask(
    name="segmentation",
    summary="semantic segmentation (FCN, DeepLabV3, LR-ASPP): the predicted mask with a legend of classes, a CAM "
            "per class present",
    module="torchvision.models.segmentation",
    input_kind="image",
    capabilities=frozenset({"images", "targets", "autograd"}),
    not_applicable={
        "graph": "segmentation models return a dict, which the graph tracer cannot record",
        "saliency": _CLASSIFIER_ONLY, "filters": _CLASSIFIER_ONLY, "embeddings": _CLASSIFIER_ONLY,
        "quality": _CLASSIFIER_ONLY,
        "audit": f"{_AUDIT_CLASSIFIER_ONLY}; a segmentation model gives a class per pixel",
    },
    build_kwargs={"weights_backbone": None, "aux_loss": False},
))
register_task(HFDetectionTask(
    name="hf_detection",
    summary="Hugging Face object detection (hf:FOLDER_OR_ID: DETR, Conditional/Deformable DETR, RT-DETR, Table "
            "Transformer): boxes with id2label names, a CAM per detection (its query)",
    module="transformers",  # loaded by hf: only, never listed by torchvision name
    input_kind="image",
    capabilities=TASKS["detection"].capabilities,
    not_applicable=TASKS["detection"].not_applicable,
    runs_on_meta=False,
))
register_task(HFSegmentationTask(
    name="hf_segmentation",
    summary="Hugging Face semantic segmentation (hf:FOLDER_OR_ID: SegFormer, UperNet, DPT, BEiT, MobileViT): the "
            "mask with id2label names, a CAM per class present",
    module="transformers",  # loaded by hf: only, never listed by torchvision name
    input_kind="image",
    capabilities=TASKS["segmentation"].capabilities,
    not_applicable=TASKS["segmentation"].not_applicable,
))
register_task(VideoTask(
    name="video",
    summary="video classifiers (R3D, MC3, R(2+1)D, S3D, MViT, Swin3D): Kinetics-400 top-k, CAM over time",
    module="torchvision.models.video",
    input_kind="clip",
    capabilities=frozenset({"class_scores", "targets", "autograd"}),
    not_applicable={
        "graph": "not traced for video models (large 5-d graphs); structure lists every layer",
        "saliency": "written for single images, not clips", "filters": "written for single images, not clips",
        "embeddings": "written for single images, not clips", "quality": "written for single images, not clips",
        "audit": "the dataset audit reads single images, not clips",
    },
))
register_task(FlowTask(
    name="optical_flow",
    summary="optical flow (RAFT): two frames -> the flow image and the feature encoder's maps",
    module="torchvision.models.optical_flow",
    input_kind="frame pair",
    capabilities=frozenset({"autograd"}),
    not_applicable={
        "graph": "RAFT's iterative refinement loop is not traced (the graph would repeat it 12 times)",
        "cam": "RAFT outputs a flow field, not class scores: there is no class to explain",
        "saliency": "RAFT outputs a flow field, not class scores", "filters": "RAFT outputs a flow field, "
        "not class scores", "embeddings": "RAFT outputs a flow field, not class scores",
        "quality": "RAFT outputs a flow field, not class scores: there are no CAMs to score",
        "audit": "RAFT outputs a flow field, not class scores: there is no accuracy or CAM to audit",
    },
))

_ORDER = ("detection", "segmentation", "video", "optical_flow", "quantized")  # sub-modules before the top level


@lru_cache(maxsize=1)
def _name_to_task() -> dict[str, str]:
    mapping: dict[str, str] = {}
    for key in _ORDER:
        for name in TASKS[key].model_names():
            mapping.setdefault(name, key)
    for name in TASKS["classification"].model_names():
        mapping.setdefault(name, "classification")
    return mapping


def all_model_names() -> list[str]:
    """Every model name torchvision registers, over all its modules (121 in torchvision 0.29)."""
    import torchvision

    return sorted(torchvision.models.list_models())


def task_of(name: str) -> Task:
    """The task of a torchvision model name (KeyError for an unknown name)."""
    return TASKS[_name_to_task()[name]]


def task_of_module(module: object) -> Task:
    """The task of a bare module, from its structure (the first registered task, sub-modules first, that
    :meth:`~Task.recognizes` it); classification when none does."""
    order = [*(key for key in _ORDER if key in TASKS), *(key for key in TASKS if key not in _ORDER)]
    for key in order:
        if key != "classification" and TASKS[key].recognizes(module):
            return TASKS[key]
    return TASKS["classification"]


def models_by_task() -> dict[str, list[str]]:
    """Task name -> its model names (sorted), in the registry's order; every name appears once."""
    grouped: dict[str, list[str]] = {key: [] for key in TASKS}
    for name, key in sorted(_name_to_task().items()):
        grouped[key].append(name)
    return {key: names for key, names in grouped.items() if names}
