"""The **introspect** TensorBoard plugin: routes under ``/data/plugin/introspect/`` and the tab's ES module.

TensorBoard finds it through the ``tensorboard_plugins`` entry point (:class:`IntrospectLoader`).
Nothing here imports torch: the first request that needs a model imports :mod:`introspect.tab`.

Security: the browser names a run (one of those the log dir holds), an image of that run or an upload
it sent, methods, a layer and a class; never a file or code. A run's weights come only from the path
its record holds, loaded with ``weights_only=True``. Uploads are bounded in bytes and pixels, of a few
image types, decoded with PIL's decompression-bomb guard, and must come with an ``image/*`` content
type (a cross-site form cannot send one without a CORS preflight, which TensorBoard does not grant).
Every bad request gets a 4xx with a one-line JSON message ``{"error": ...}``; an unexpected failure a
500 with one line, never a traceback page.
"""

from __future__ import annotations

import hashlib
import io
import logging
import sys
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from importlib import resources
from typing import Any

from tensorboard.backend import http_util
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from .runs import Run, RunCatalogue

__all__ = ["IntrospectLoader", "IntrospectPlugin", "PLUGIN_NAME", "MAX_UPLOAD_BYTES", "MAX_UPLOAD_PIXELS"]

logger = logging.getLogger(__name__)

PLUGIN_NAME = "introspect"
MAX_UPLOAD_BYTES = 8 << 20
MAX_UPLOAD_PIXELS = 40_000_000
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
UPLOADS_KEPT = 16
MAX_TOPK = 20
STATIC = {"/index.js": ("index.js", "text/javascript")}

_bench_lock = threading.Lock()
_bench: Any = None


def workbench() -> Any:
    """The process's one :class:`~introspect.tab.Workbench` (torch is imported here, on first use)."""
    global _bench
    with _bench_lock:
        if _bench is None:
            from introspect.tab import Workbench

            _bench = Workbench()
        return _bench


class HttpError(Exception):
    """A bad request: its HTTP status and one line for the tab."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _status_of(error: BaseException) -> int | None:
    """400 for introspect's usage errors (bad layer, class, method...), None for anything else."""
    errors = sys.modules.get("introspect.errors")
    if errors is not None and isinstance(error, errors.UsageError):
        return 400
    return None


def _json(request: Any, payload: Any, code: int = 200) -> Any:
    return http_util.Respond(request, payload, "application/json", code=code)


def _route(handler: Callable[[Any, Any], Any]) -> Callable:
    """A werkzeug app from ``handler(plugin, request)``: errors answered as one-line JSON, never a traceback."""

    def app(self: IntrospectPlugin, environ: Any, start_response: Any) -> Any:
        request = wrappers.Request(environ)
        try:
            response = handler(self, request)
        except HttpError as error:
            response = _json(request, {"error": error.message}, error.code)
        except Exception as error:  # noqa: BLE001 - the server keeps serving whatever happened
            code = _status_of(error)
            if code is None:
                logger.exception("introspect tab: %s failed", request.path)
                response = _json(request, {"error": f"the server failed: {type(error).__name__}: "
                                                    f"{_one_line(error)}"}, 500)
            else:
                response = _json(request, {"error": _one_line(error)}, code)
        return response(environ, start_response)

    app.__name__ = handler.__name__
    return app


class IntrospectPlugin(base_plugin.TBPlugin):
    """The introspect tab: a run's model kept warm, and maps computed on demand."""

    plugin_name = PLUGIN_NAME

    def __init__(self, context: base_plugin.TBContext) -> None:
        self.catalogue = RunCatalogue(getattr(context, "logdir", None))
        self._uploads: OrderedDict[str, Any] = OrderedDict()
        self._uploads_lock = threading.Lock()

    # -- TensorBoard's side ------------------------------------------------------------------

    def get_plugin_apps(self) -> dict[str, Callable]:
        def bound(method: Callable) -> Callable:
            return lambda environ, start_response: method(self, environ, start_response)

        apps = {path: bound(_route(self._static_handler(file, kind))) for path, (file, kind) in STATIC.items()}
        routes = {"/runs": _runs, "/images": _images, "/image": _image, "/upload": _upload, "/model": _model,
                  "/status": _status, "/explain": _explain, "/map.png": _map_png, "/map.npy": _map_npy}
        apps.update({path: bound(_route(handler)) for path, handler in routes.items()})
        return apps

    def is_active(self) -> bool:
        """Active where the log dir holds an introspect run."""
        return bool(self.catalogue.runs())

    def frontend_metadata(self) -> base_plugin.FrontendMetadata:
        return base_plugin.FrontendMetadata(es_module_path="/index.js", tab_name="introspect", disable_reload=True)

    @staticmethod
    def _static_handler(file: str, kind: str) -> Callable:
        def serve(self: IntrospectPlugin, request: Any) -> Any:
            body = resources.files(__package__).joinpath("static", file).read_bytes()
            return http_util.Respond(request, body, kind)

        serve.__name__ = f"static_{file}"
        return serve

    # -- what a request names ------------------------------------------------------------------

    def run_of(self, request: Any) -> Run:
        name = request.args.get("run", "")
        run = self.catalogue.run(name)
        if run is None:
            raise HttpError(404, f"unknown run {name!r}: pick one of the runs the log dir holds")
        return run

    def load_of(self, run: Run) -> dict[str, Any]:
        load = run.load
        if load is None:
            raise HttpError(409, f"run {run.name!r} {run.note}")
        return load

    def picture(self, request: Any, run: Run) -> tuple[Any, str]:
        """The PIL image a request names (``image=run:<name>`` or ``upload:<id>``) and its cache key."""
        from PIL import Image

        key = request.args.get("image", "")
        kind, _, name = key.partition(":")
        if kind == "run":
            images = self.catalogue.images(run)
            if name not in images:
                raise HttpError(404, f"run {run.name!r} has no image {name!r}: pick one of its images or upload one")
            photo = run.image_file(name, images)
            if photo is not None:  # the photo itself, read as the command line read it (resize and crop again)
                from introspect.images import load_image

                return load_image(photo), f"{key}@{photo.stat().st_mtime_ns}"
            return Image.open(io.BytesIO(images[name])).convert("RGB"), key  # the input as the model saw it
        if kind == "upload":
            with self._uploads_lock:
                image = self._uploads.get(name)
            if image is None:
                raise HttpError(404, f"no upload {name!r} (uploads are kept for the last {UPLOADS_KEPT}): "
                                     "upload the photo again")
            return image, key
        raise HttpError(400, f"image={key!r}: give run:<name> or upload:<id>")

    def keep_upload(self, body: bytes, content_type: str) -> tuple[str, Any]:
        """Decode an uploaded photo (bounded, a known type, PIL's bomb guard) and keep it; its id and image."""
        from PIL import Image, ImageOps

        if not content_type.startswith("image/"):
            raise HttpError(415, f"upload type {content_type or 'none'!r} is not an image: send a PNG, JPEG, WebP, "
                                 "GIF or BMP with its image/* type")
        if len(body) > MAX_UPLOAD_BYTES:
            raise HttpError(413, f"upload of {len(body)} bytes is over {MAX_UPLOAD_BYTES >> 20} MiB: send a smaller photo")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(body), formats=UPLOAD_FORMATS)
                if image.width * image.height > MAX_UPLOAD_PIXELS:
                    raise HttpError(413, f"upload of {image.width}x{image.height} pixels is over "
                                         f"{MAX_UPLOAD_PIXELS:,}: send a smaller photo")
                image = ImageOps.exif_transpose(image).convert("RGB")
        except HttpError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise HttpError(413, "upload refused: too many pixels (PIL's decompression-bomb guard)") from None
        except Exception:  # noqa: BLE001 - whatever PIL makes of a file that is not an image
            raise HttpError(415, "upload is not an image PIL can read (PNG, JPEG, WebP, GIF or BMP)") from None
        upload_id = hashlib.sha256(body).hexdigest()[:16]
        with self._uploads_lock:
            self._uploads[upload_id] = image
            self._uploads.move_to_end(upload_id)
            while len(self._uploads) > UPLOADS_KEPT:
                self._uploads.popitem(last=False)
        return upload_id, image

    def explanation(self, request: Any) -> Any:
        """The :class:`~introspect.tab.Explanation` the request's parameters ask for."""
        run = self.run_of(request)
        load = self.load_of(run)
        image, image_key = self.picture(request, run)
        methods = [m.strip() for m in request.args.get("methods", "").split(",") if m.strip()]
        methods = methods or list(run.record.get("cam_methods") or []) or ["gradcam"]
        layer = request.args.get("layer") or None
        target = request.args.get("target") or None
        topk = _int_arg(request, "topk", 5, 1, MAX_TOPK)
        subject = _int_arg(request, "subject", 0, 0, 10_000)
        return workbench().explain(run.name, load, image, image_key, methods=methods, layer=layer, target=target,
                                   topk=topk, pick=subject)


def _int_arg(request: Any, name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HttpError(400, f"{name}={raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise HttpError(400, f"{name}={value} is out of range: {low} to {high}")
    return value


def _png(array: Any) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _runs(plugin: IntrospectPlugin, request: Any) -> Any:
    runs = plugin.catalogue.runs()
    return _json(request, {"runs": [run.summary() for run in runs.values()],
                           "warm": workbench().warm_keys() if _bench is not None else []})


def _images(plugin: IntrospectPlugin, request: Any) -> Any:
    run = plugin.run_of(request)
    return _json(request, {"images": sorted(plugin.catalogue.images(run))})


def _image(plugin: IntrospectPlugin, request: Any) -> Any:
    run = plugin.run_of(request)
    name = request.args.get("name", "")
    data = plugin.catalogue.images(run).get(name)
    if data is None:
        raise HttpError(404, f"run {run.name!r} has no image {name!r}")
    return http_util.Respond(request, data, "image/png")


def _upload(plugin: IntrospectPlugin, request: Any) -> Any:
    if request.method != "POST":
        raise HttpError(405, "upload with POST, the photo's bytes as the body")
    if (request.content_length or 0) > MAX_UPLOAD_BYTES:
        raise HttpError(413, f"upload of {request.content_length} bytes is over {MAX_UPLOAD_BYTES >> 20} MiB: "
                             "send a smaller photo")
    body = request.stream.read(MAX_UPLOAD_BYTES + 1)
    upload_id, image = plugin.keep_upload(body, request.mimetype or "")
    return _json(request, {"image": f"upload:{upload_id}", "width": image.width, "height": image.height})


def _model(plugin: IntrospectPlugin, request: Any) -> Any:
    run = plugin.run_of(request)
    return _json(request, {"run": run.summary(), **workbench().describe(run.name, plugin.load_of(run))})


def _status(plugin: IntrospectPlugin, request: Any) -> Any:
    run = plugin.run_of(request)
    if _bench is None:
        return _json(request, {"warm": False, "state": "idle"})
    return _json(request, workbench().status(run.name))


def _map_url(request: Any, route: str, method: str, **extra: str) -> str:
    from urllib.parse import urlencode

    keep = {k: v for k, v in request.args.items() if k in {"run", "image", "methods", "layer", "target", "topk",
                                                           "subject"}}
    return f"{route}?{urlencode({**keep, 'method': method, **extra})}"


def _explain(plugin: IntrospectPlugin, request: Any) -> Any:
    found = plugin.explanation(request)
    maps = [{"method": view.method, "layer": view.layer, "subject": view.subject, "min": view.low,
             "max": view.high, "shape": list(view.heatmap.shape),
             "overlay": _map_url(request, "map.png", view.method),
             "heatmap": _map_url(request, "map.png", view.method, kind="heatmap"),
             "npy": _map_url(request, "map.npy", view.method)} for view in found.maps]
    return _json(request, {"subjects": list(found.subjects), "chosen": found.chosen, "maps": maps,
                           "seconds": round(found.seconds, 4), "cached": found.cached,
                           "warnings": list(found.warnings)})


def _view(plugin: IntrospectPlugin, request: Any) -> Any:
    found = plugin.explanation(request)
    method = request.args.get("method") or found.maps[0].method
    for view in found.maps:
        if view.method == method:
            return view
    raise HttpError(400, f"method={method!r} is not among those asked for (methods=)")


def _map_png(plugin: IntrospectPlugin, request: Any) -> Any:
    view = _view(plugin, request)
    kind = request.args.get("kind", "overlay")
    if kind == "overlay":
        picture = view.overlay
    elif kind == "heatmap":
        from introspect.drawing import colorize

        picture = colorize(view.heatmap)
    else:
        raise HttpError(400, f"kind={kind!r}: give overlay or heatmap")
    name = f"{view.method}-{view.layer}-{view.subject['name']}-{kind}.png".replace("/", "_").replace(" ", "_")
    return http_util.Respond(request, _png(picture), "image/png",
                             headers=[("Content-Disposition", f"inline; filename=\"{_safe(name)}\"")])


def _map_npy(plugin: IntrospectPlugin, request: Any) -> Any:
    import numpy as np

    view = _view(plugin, request)
    buffer = io.BytesIO()
    np.save(buffer, view.heatmap, allow_pickle=False)
    name = f"{view.method}-{view.layer}-{view.subject['name']}.npy"
    return http_util.Respond(request, buffer.getvalue(), "application/octet-stream",
                             headers=[("Content-Disposition", f"attachment; filename=\"{_safe(name)}\"")])


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


class IntrospectLoader(base_plugin.TBLoader):
    """The ``tensorboard_plugins`` entry point: makes the tab for TensorBoard's context."""

    def load(self, context: base_plugin.TBContext) -> IntrospectPlugin:
        return IntrospectPlugin(context)
