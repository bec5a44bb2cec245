"""Command line: parse, call the library, print what was written, map errors to exit codes.

Exit codes: 0 done, 1 a failure at run time, 2 a usage error (bad model, layer,
method, image, target, weights, device...), 130 interrupted. Errors print one
line; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from .errors import IntrospectError, interrupted_by_user, worded_as_flags

__all__ = ["main", "build_parser", "tensorboard_command"]

EXAMPLES = """examples:
  python -m introspect vgg11 --image sample_images/cat.png --logdir runs
  python -m introspect resnet50 --image sample_images/ --cam gradcam,layercam,eigencam --topk 5
  python -m introspect mobilenet_v2 --weights my_mobilenet_v2.pth --image sample_images/cat.png
      (a file saved with torch.save(model.state_dict(), "my_mobilenet_v2.pth"))
  python -m introspect resnet18 --weights none --sections structure,kernels,histograms
  python -m introspect resnet18 --weights finetuned.pth --labels labels.txt --image photo.jpg
      (a resnet18 whose head was replaced: its class count is read from the file, names one a line)
  python -m introspect my_project.models:build_net --model-arg depth=18 --weights ckpt.pth --image photo.jpg
      (a function or class of your own that returns the nn.Module, imported from the current folder)
  python -m introspect resnet18 --list-layers
  python -m introspect --list-models
  python -m introspect resnet50 --dataset val/ --boxes val_boxes.json --cam gradcam,layercam --workers 8
  torchrun --nproc_per_node 8 -m introspect resnet50 --dataset val/ --boxes val_boxes.json --device cuda
  python -m introspect resnet50 --dataset val/ --resume runs/resnet50-20260101-120000
then: tensorboard --logdir runs      (or .venv/bin/tensorboard where it is not on PATH)
"""

# Which flag sets which option: (options group, field) -> flag. The library's errors name the
# parameter (``steps=0``); the CLI says the flag instead (``--filter-steps 0``).
FLAGS: dict[tuple[str, str], str] = {
    ("cam", "methods"): "--cam",
    ("cam", "layer"): "--cam-layer",
    ("cam", "topk"): "--topk",
    ("cam", "targets"): "--target",
    ("features", "layers"): "--layers",
    ("saliency", "methods"): "--saliency",
    ("filters", "layers"): "--filter-layers",
    ("filters", "count"): "--filter-count",
    ("filters", "steps"): "--filter-steps",
    ("filters", "size"): "--filter-size",
    ("filters", "budget_s"): "--filter-budget",
    ("detection", "score_threshold"): "--score-threshold",
    ("load", "weights"): "--weights",
    ("load", "device"): "--device",
    ("load", "input_size"): "--input-size",
    ("load", "categories"): "--labels",
    ("load", "model_args"): "--model-arg",
    ("run", "images"): "--image",
    ("run", "sections"): "--sections",
    ("run", "logdir"): "--logdir",
    ("run", "run_name"): "--run-name",
    ("audit", "methods"): "--cam",
    ("audit", "layer"): "--cam-layer",
    ("audit", "batch_size"): "--batch-size",
    ("audit", "num_workers"): "--workers",
    ("audit", "boxes"): "--boxes",
    ("audit", "sanity"): "--sanity",
    ("audit", "dataset"): "--dataset",
    ("audit", "resume"): "--resume",
    ("audit", "masks"): "--masks",
}
# Parameters that only one group has: an error raised deep in the library names them alone.
_UNAMBIGUOUS = {field: flag for (group, field), flag in FLAGS.items()
                if sum(1 for g, f in FLAGS if f == field) == 1}
_UNAMBIGUOUS.update({"target": "--target", "layer": "--cam-layer"})


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to render --help); defaults come from the option dataclasses."""
    from .analyzers.cam import CAM_METHODS
    from .options import DEFAULT_LOGDIR, CamOptions, DetectionOptions, FilterOptions, LoadOptions, SaliencyOptions
    from .sections import SECTIONS, default_sections, selectable_sections

    parser = argparse.ArgumentParser(
        prog="introspect",
        description="Open up a PyTorch vision model and write what is inside it to TensorBoard.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    section_help = "; ".join(f"{name}{' (slow)' if SECTIONS[name].slow else ''}: {SECTIONS[name].summary}"
                             for name in selectable_sections())
    parser.add_argument("model", nargs="?",
                        help="any torchvision model name (see --list-models), e.g. resnet18, fasterrcnn_resnet50_fpn, "
                             "deeplabv3_resnet50, r3d_18, raft_small, quantized_resnet18; timm:NAME; hf:PATH_OR_ID; "
                             "or your own, package.module:callable (a function or class returning the nn.Module, "
                             "imported from the current folder first)")
    parser.add_argument("--image", action="append", default=[], metavar="PATH",
                        help="a photo or a folder of photos; repeat for several (e.g. --image sample_images/cat.png); "
                             "video models: a clip each (animated GIF, folder of frames, video file with "
                             "introspect[video], or a photo repeated); RAFT: two photos or one clip")
    parser.add_argument("--logdir", default=DEFAULT_LOGDIR, help=f"where runs go (default: {DEFAULT_LOGDIR})")
    parser.add_argument("--run-name", help="run folder name under LOGDIR (default: MODEL-TIMESTAMP; never reused)")
    parser.add_argument("--weights", default=LoadOptions.weights,
                        help="auto (default: DEFAULT weights if cached or downloadable, else random with a warning), "
                             "DEFAULT, an enum name like IMAGENET1K_V1, none (random), or a state_dict file PATH")
    parser.add_argument("--labels", metavar="FILE",
                        help="class names, one a line (class 0 first) or a JSON list; as many as the model's "
                             "output classes (default: the checkpoint's 'classes'/'idx_to_class'/'id2label' entry, "
                             "else the weights' own names, else 'class N')")
    parser.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                        help="a keyword argument of a package.module:callable model, repeatable (values read as "
                             "Python literals where they parse, else strings), e.g. --model-arg num_classes=3")
    parser.add_argument("--sections", default=None, metavar="NAME[,NAME]",
                        help=f"comma list of sections, or all (default: {','.join(default_sections())}). "
                             f"{section_help}".replace("%", "%%"))
    parser.add_argument("--layers", nargs="+", metavar="NAME",
                        help="layers for feature maps (default: each stage's output; see --list-layers)")
    parser.add_argument("--cam", default=CamOptions.methods, metavar="METHOD[,METHOD]",
                        help=f"CAM methods, comma separated (default gradcam; eigencam for int8 quantized models): "
                             f"{', '.join(CAM_METHODS)}")
    parser.add_argument("--cam-layer", metavar="NAME",
                        help="CAM target layer (default: picked from the model's structure)")
    parser.add_argument("--saliency", default=SaliencyOptions.methods, metavar="METHOD[,METHOD]",
                        help=f"saliency methods for --sections saliency (default {SaliencyOptions.methods})")
    parser.add_argument("--filter-layers", nargs="+", metavar="NAME",
                        help="layers for --sections filters (default: first, middle and last stage output)")
    parser.add_argument("--filter-count", type=int, default=FilterOptions.count, metavar="N",
                        help=f"filters per layer to visualise: the first N (default {FilterOptions.count})")
    parser.add_argument("--filter-steps", type=int, default=FilterOptions.steps, metavar="N",
                        help=f"gradient-ascent steps per layer (default {FilterOptions.steps})")
    parser.add_argument("--filter-size", type=int, default=FilterOptions.size, metavar="PX",
                        help="side of the synthesised images (default 96, or the model's fixed input size)")
    parser.add_argument("--filter-budget", type=float, default=FilterOptions.budget_s, metavar="SECONDS",
                        help=f"time budget of the filters section, all layers together "
                             f"(default {FilterOptions.budget_s:g})")
    parser.add_argument("--topk", type=int, default=CamOptions.topk,
                        help=f"classes to explain and list (default {CamOptions.topk})")
    parser.add_argument("--score-threshold", type=float, default=DetectionOptions.score_threshold, metavar="S",
                        help=f"detection models: lowest score drawn and listed "
                             f"(default {DetectionOptions.score_threshold:g})")
    parser.add_argument("--target", action="append", metavar="CLASS",
                        help="explain this class (index or ImageNet name, e.g. 281 or 'tabby'); repeatable")
    parser.add_argument("--device", default=LoadOptions.device, help=f"cpu (default {LoadOptions.device}) or cuda")
    parser.add_argument("--input-size", type=int, default=LoadOptions.input_size,
                        help="square input size (default: the weights' crop size)")
    from .audit.run import AuditOptions

    audit = parser.add_argument_group(
        "dataset audit", "a whole folder of images (not a per-photo report): accuracy, pointing game, per-class "
        "figures, galleries and a per-image Parquet table; runs on several processes under torchrun")
    audit.add_argument("--dataset", metavar="DIR",
                       help="an ImageFolder tree (class folders named by category, WordNet id or index) or a flat "
                            "folder (no labels); uses --cam and --cam-layer")
    audit.add_argument("--boxes", metavar="FILE_OR_DIR",
                       help="object boxes for the pointing game: COCO JSON, a folder of Pascal VOC XML, or a CSV "
                            "file whose first line is the header file,x0,y0,x1,y1,label and each further line one "
                            "box: file as a path relative to --dataset (e.g. tabby/cat.png; a base name also "
                            "matches), corners in the original photo's pixels (x1, y1 exclusive), label optional")
    audit.add_argument("--masks", metavar="DIR",
                       help="segmentation models: the ground-truth mask PNGs, one per image named as it (Pascal VOC's "
                            "SegmentationClass: pixel = class index, 255 = ignore); detectors take --boxes")
    audit.add_argument("--sanity", action="store_true",
                       help=f"model-parameter randomisation check on {AuditOptions.sanity_samples} images: flags CAM "
                            "methods whose maps do not change when the weights are random")
    audit.add_argument("--resume", metavar="RUN_DIR", help="continue the audit in RUN_DIR where it stopped")
    audit.add_argument("--batch-size", type=int, metavar="N",
                       help=f"images per forward pass (default {AuditOptions.batch_size})")
    audit.add_argument("--workers", type=int, metavar="N",
                       help=f"DataLoader processes decoding images (default {AuditOptions.num_workers})")
    parser.add_argument("--list-models", action="store_true", help="print the model names and exit")
    parser.add_argument("--list-layers", action="store_true", help="print MODEL's layer names and exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _options(group: str, kind: type, **values):
    """``kind(**values)``; an error names the parameter, which :func:`_in_flags` turns into the flag."""
    try:
        return kind(**values)
    except IntrospectError as exc:
        if exc.parameter is not None:
            exc.flag = FLAGS.get((group, exc.parameter))
        raise


def _in_flags(exc: IntrospectError) -> str:
    """The error's message with each parameter (``steps=0``) said as its CLI flag (``--filter-steps 0``)."""
    flags = dict(_UNAMBIGUOUS)
    parameter = getattr(exc, "parameter", None)
    if parameter and getattr(exc, "flag", None):
        flags[parameter] = exc.flag
    return exc.with_flags(flags).replace("introspect.list_models()", "--list-models")


def _audit(args: argparse.Namespace) -> int:
    """``--dataset DIR``: the dataset audit, on this process or as one rank under torchrun.

    Once the run folder exists, the audit goes through :func:`~introspect.run_scope.recorded_run`: ``run/info``
    says whether it completed, failed (and why) or was interrupted. Only rank 0 writes TensorBoard.
    """
    import time
    from contextlib import nullcontext
    from pathlib import Path

    from .audit.distributed import broadcast, init_world
    from .audit.run import audit, options_from, prepare_audit
    from .errors import ArgumentError
    from .models import load_model
    from .options import LoadOptions
    from .tensorboard import Reporter, new_run_dir
    from .run_scope import audit_facts, recorded_run, run_record
    from .tasks import task_of

    if not args.dataset:
        raise ArgumentError("resume= needs the dataset: give --dataset DIR with --resume RUN_DIR", parameter="dataset")
    if args.image:
        raise ArgumentError("give either --image (a per-photo report) or --dataset (an audit), not both",
                            parameter="dataset")
    try:
        task = task_of(args.model)
    except KeyError:  # timm:, hf: (classifiers) or an unknown name, which load_model names below
        task = None
    refusal = task.skip_reason("audit") if task is not None else None
    if refusal:  # before any weights are loaded or anything is written
        raise ArgumentError(f"--dataset cannot audit {args.model} ({task.name} model): {refusal}; give it --image "
                            "for its per-photo report", parameter="dataset")
    for flag, given in (("--dataset", args.dataset), ("--boxes", args.boxes), ("--resume", args.resume)):
        if given and not Path(given).exists():  # before any weights are downloaded
            raise ArgumentError(f"{flag} {given}: no such file or folder; check the path and spelling",
                                parameter=flag.lstrip("-"))
    started = time.perf_counter()
    world = init_world(args.device)
    try:
        load = _options("load", LoadOptions, weights=args.weights, device=args.device, input_size=args.input_size,
                        categories=args.labels, model_args=args.model_arg)
        options = _options("audit", options_from, methods=args.cam or (task and task.default_cam),
                           layer=args.cam_layer, batch_size=args.batch_size, num_workers=args.workers,
                           boxes=args.boxes, sanity=args.sanity or None, masks=args.masks,
                           score_threshold=args.score_threshold)
        loaded = load_model(args.model, load.weights, world.device, load.input_size, categories=load.categories,
                            model_args=load.model_args)
        # --cam its task cannot run, a bad dataset (class folders), boxes or masks: refused now, before the run
        # folder exists
        prepared = _options("audit", prepare_audit, model=loaded, dataset=args.dataset, options=options)
        if args.resume:
            run_dir = Path(args.resume)
            if not (run_dir / "audit").is_dir():
                raise ArgumentError(f"resume={run_dir} holds no audit to continue: give the run folder an audit "
                                    "wrote", parameter="resume")
        else:
            run_dir = broadcast(new_run_dir(args.logdir, args.run_name, loaded.name) if world.is_main else None,
                                world)
        reporter = Reporter(run_dir) if world.is_main else None
        info: dict[str, object] = {"model": loaded.name, "weights": loaded.weights,
                                   "weights from": loaded.weights_source, "class names": loaded.categories_source,
                                   "dataset": str(args.dataset),
                                   "device": str(world.device), "processes": world.size}
        if args.resume:
            info["resumed"] = "yes: this run continues an earlier one in the same folder"
        record = run_record("audit", loaded, dataset=str(Path(args.dataset).resolve()))
        scope = recorded_run(reporter, info, caught=loaded.warnings, started=started, record=record) \
            if reporter is not None else nullcontext()
        with scope as end:
            if world.is_main:
                print(f"auditing {args.dataset} with {loaded.name} ({loaded.weights}) on {world.size} process(es); "
                      f"table and state in {run_dir}", file=sys.stderr)
            result = audit(loaded, prepared, options=options, out_dir=run_dir, resume=bool(args.resume),
                           world=world)
            if result is None:  # not rank 0: rank 0 writes
                return 0
            reporter.audit(result)
            record.update(audit_facts(result, args.dataset))
            info.update(_audit_info(result))
        for line in result.summary_lines():
            print(line)
        counts = ", ".join(f"{section} {count}" for section, count in sorted(end.tags.items()))
        print(f"wrote {sum(end.tags.values())} summaries ({counts}) and the table {result.table}")
        print(f"open it with: {tensorboard_command(run_dir.parent)}")
        return 0
    finally:
        world.close()


# The audit's settings under the names the per-photo report's run/info gives them.
_AUDIT_INFO_KEYS = {"methods": "cam methods", "layer": "cam layer", "tolerance_px": "pointing tolerance (px)"}


def _audit_info(result) -> dict[str, object]:
    """The audit's lines of ``run/info``: its settings (the report's key names: spaces, lower case) and counts."""
    from .tensorboard.layouts import whole

    info = {_AUDIT_INFO_KEYS.get(key, key.replace("_", " ")): whole(value) for key, value in result.settings.items()
            if key not in ("model", "weights", "dataset", "processes")}
    info.update({"images audited": result.images, "unreadable skipped": result.skipped, "table": result.table})
    return info


def _list_layers(args: argparse.Namespace) -> None:
    from .layers import layer_table
    from .models import load_model
    from .options import LoadOptions
    from .tasks import TASKS

    load = _options("load", LoadOptions, weights=args.weights, categories=args.labels, model_args=args.model_arg,
                    input_size=args.input_size)
    loaded = load_model(args.model, weights="none" if load.weights == "auto" else load.weights,
                        categories=load.categories, model_args=load.model_args, input_size=load.input_size)
    task = TASKS[loaded.task]
    if task.input_kind == "image" and "class_scores" in task.capabilities:  # probed output shapes of every layer
        rows = layer_table(loaded.model, loaded.input_size)
        width = max((len(row.name) for row in rows), default=0)
        for row in rows:
            marks = (" [features]" if row.features else "") + (" [cam]" if row.cam else "")
            print(f"{row.name:<{width}}  {row.kind:<24} {row.output}{marks}")
        return
    features = set(task.feature_layer_names(loaded))  # found on the task's own input
    target = task.cam_layer_name(loaded) if task.skip_reason("cam", ("targets",)) is None else None
    for name, layer in loaded.model.named_modules():
        if name:
            marks = (" [features]" if name in features else "") + (" [cam]" if name == target else "")
            print(f"{name}  {type(layer).__name__}{marks}")


def tensorboard_command(logdir) -> str:
    """The command that opens ``logdir`` in TensorBoard here: ``tensorboard`` where it is on PATH, else the one
    beside this Python (``.venv/bin/tensorboard``), else ``python -m tensorboard.main``."""
    import os
    import shlex
    import shutil
    from pathlib import Path

    if shutil.which("tensorboard"):
        program = ["tensorboard"]
    else:
        beside = Path(sys.executable).parent / ("tensorboard.exe" if os.name == "nt" else "tensorboard")
        if beside.is_file():
            try:
                shown = os.path.relpath(beside)
            except ValueError:  # another drive
                shown = str(beside)
            program = [shown if not shown.startswith("..") else str(beside)]
        else:
            program = [Path(sys.executable).name, "-m", "tensorboard.main"]
    return shlex.join([*program, "--logdir", str(logdir)])


def _progress(step: str, said: set[str]) -> None:
    """A progress line on stderr (``... kernels``); a warning (``WARNING: ...``) in flags, remembered in ``said``."""
    from .errors import in_flags

    if step.startswith("WARNING: "):
        said.add(step[len("WARNING: "):])
        print(in_flags(step, _UNAMBIGUOUS), file=sys.stderr, flush=True)
    else:
        print(f"... {step}", file=sys.stderr, flush=True)


def _interrupted(args: argparse.Namespace) -> int:
    """Ctrl-C: say that what was written is kept (and how to go on with an audit); exit code 130."""
    hint = " (continue with --resume RUN_DIR)" if getattr(args, "dataset", None) else ""
    print(f"introspect: interrupted; what was written so far is kept{hint}", file=sys.stderr)
    return 130


def _print_summary(summary, said: set[str] = frozenset()) -> None:
    from .errors import in_flags

    for message in summary.warnings:
        if message not in said:
            print(f"WARNING: {in_flags(message, _UNAMBIGUOUS)}", file=sys.stderr)
    for name, reason in summary.skipped.items():
        print(f"skipped {name}: {in_flags(reason, _UNAMBIGUOUS)}", file=sys.stderr)
    for record in summary.predictions:
        print(record.headline())
    counts = ", ".join(f"{section} {count}" for section, count in sorted(summary.tags.items()))
    print(f"wrote {sum(summary.tags.values())} summaries ({counts}) in {summary.seconds:.1f} s to {summary.run_dir}")
    print(f"open it with: {tensorboard_command(summary.run_dir.parent)}")


def _one_line(exc: BaseException | str, limit: int = 400) -> str:
    """A message on one line (torch's own messages span several), cut to ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _library_chatter(debug: bool) -> None:
    """transformers' log lines and progress bars off the console unless --debug (the CLI owns the process)."""
    from .notices import DEBUG_ENV

    if debug:
        os.environ[DEBUG_ENV] = "1"
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    transformers = sys.modules.get("transformers")  # already imported (in process, as in tests): tell it directly
    if transformers is not None:
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code. ``--debug`` holds for this call only (a caller's process, such as a
    test session running the CLI in process, gets its environment back)."""
    from .notices import DEBUG_ENV

    before = os.environ.get(DEBUG_ENV)
    try:
        return _main(argv)
    finally:
        if before is None:
            os.environ.pop(DEBUG_ENV, None)
        else:
            os.environ[DEBUG_ENV] = before


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _library_chatter(args.debug)
    try:
        if args.list_models:
            from .tasks import TASKS, models_by_task

            for task, names in models_by_task().items():
                print(f"# {task} ({len(names)}): {TASKS[task].summary}")
                print("\n".join(names))
            return 0
        if not args.model:
            parser.print_usage(sys.stderr)
            print("introspect: error: give a MODEL (see --list-models)", file=sys.stderr)
            return 2
        if args.list_layers:
            _list_layers(args)
            return 0
        if args.dataset or args.resume:
            with worded_as_flags(_UNAMBIGUOUS):
                return _audit(args)
        for flag, value in (("--boxes", args.boxes), ("--sanity", args.sanity), ("--batch-size", args.batch_size),
                            ("--workers", args.workers), ("--masks", args.masks)):
            if value:
                print(f"introspect: error: {flag} belongs to a dataset audit: add --dataset DIR", file=sys.stderr)
                return 2
        from .options import CamOptions, DetectionOptions, FeatureOptions, FilterOptions, LoadOptions, \
            SaliencyOptions
        from .report import report

        said: set[str] = set()  # warnings printed as they came (first), not again at the end
        with worded_as_flags(_UNAMBIGUOUS):
            summary = report(
                args.model,
                args.image,
                logdir=args.logdir,
                run_name=args.run_name,
                sections=args.sections,
                load=_options("load", LoadOptions, weights=args.weights, device=args.device,
                              input_size=args.input_size, categories=args.labels, model_args=args.model_arg),
                cam=_options("cam", CamOptions, methods=args.cam, layer=args.cam_layer, topk=args.topk,
                             targets=args.target),
                features=_options("features", FeatureOptions, layers=args.layers),
                saliency=_options("saliency", SaliencyOptions, methods=args.saliency),
                filters=_options("filters", FilterOptions, layers=args.filter_layers, count=args.filter_count,
                                 steps=args.filter_steps, size=args.filter_size, budget_s=args.filter_budget),
                detection=_options("detection", DetectionOptions, score_threshold=args.score_threshold),
                progress=lambda step: _progress(step, said),
            )
        _print_summary(summary, said)
        return 0
    except IntrospectError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"introspect: error: {_one_line(_in_flags(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return _interrupted(args)
    except Exception as exc:  # a failure at run time: one line unless --debug
        if interrupted_by_user(exc):  # Ctrl-C re-raised as another error (during an import, say)
            return _interrupted(args)
        if args.debug:
            traceback.print_exc()
        print(f"introspect: error: {type(exc).__name__}: {_one_line(exc)} (run again with --debug for the "
              "traceback)", file=sys.stderr)
        return 1
