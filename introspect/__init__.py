"""introspect: open up a PyTorch vision model and show what is inside it in TensorBoard.

Library use in a notebook or a debugger::

    import introspect
    loaded = introspect.load_model("resnet18", weights="none")
    introspect.summarize(loaded)                       # layer table (renders as HTML)
    introspect.cam(loaded, "sample_images/cat.png")[0]  # Grad-CAM panel (renders as PNG)
    introspect.report(loaded, ["sample_images/cat.png"], logdir="runs")

Heavy optional dependencies (tensorboard, pytorch-grad-cam, cv2) are imported only
by the functions that need them.
"""

from __future__ import annotations

from .analyzers.cam import CAM_METHODS, cam, list_cam_methods
from .analyzers.compare import compare_cams
from .analyzers.embeddings import embeddings
from .analyzers.features import feature_maps
from .analyzers.filters import visualize_filters
from .analyzers.kernels import kernel_grids
from .analyzers.parameters import parameter_summary
from .analyzers.pointing import pointing_game
from .analyzers.predictions import predict
from .analyzers.quality import cam_quality
from .analyzers.saliency import SALIENCY_METHODS, saliency
from .analyzers.structure import summarize
from .errors import IntrospectError, IntrospectWarning, UsageError
from .models import LoadedModel, list_models, load_model
from .options import CamOptions, FeatureOptions, FilterOptions, LoadOptions, SaliencyOptions
from .report import RunSummary, report
from .sections import SECTIONS, RunContext, Section, register_section
from .watch import Watch, WatchOptions, watch

__version__ = "0.1.0"

__all__ = [
    "CAM_METHODS",
    "CamOptions",
    "FeatureOptions",
    "FilterOptions",
    "LoadOptions",
    "RunContext",
    "SECTIONS",
    "SaliencyOptions",
    "Section",
    "register_section",
    "IntrospectError",
    "IntrospectWarning",
    "LoadedModel",
    "Reporter",
    "RunSummary",
    "SALIENCY_METHODS",
    "UsageError",
    "Watch",
    "WatchOptions",
    "cam",
    "cam_quality",
    "compare_cams",
    "embeddings",
    "feature_maps",
    "kernel_grids",
    "list_cam_methods",
    "list_models",
    "load_model",
    "parameter_summary",
    "pointing_game",
    "predict",
    "report",
    "saliency",
    "summarize",
    "visualize_filters",
    "watch",
]


def __getattr__(name: str):
    if name == "Reporter":  # imported on use: the reporter is the only tensorboard user
        from .tensorboard import Reporter

        return Reporter
    raise AttributeError(f"module 'introspect' has no attribute {name!r}")
