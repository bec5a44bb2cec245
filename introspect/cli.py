"""Command line: parse, call the library, print what was written, map errors to exit codes.

Exit codes: 0 done, 1 a failure at run time, 2 a usage error (bad model, layer,
method, image, target, weights, device...), 130 interrupted. Errors print one
line; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from .errors import IntrospectError

__all__ = ["main", "build_parser"]

EXAMPLES = """examples:
  python -m introspect vgg11 --image sample_images/cat.png --logdir runs
  python -m introspect resnet50 --image sample_images/ --cam gradcam,layercam,eigencam --topk 5
  python -m introspect mobilenet_v2 --weights ../shared/weights/mobilenet_v2_imagenet.pth --image sample_images/cat.png
  python -m introspect resnet18 --weights none --sections structure,kernels,histograms
  python -m introspect resnet18 --list-layers
  python -m introspect --list-models
then: tensorboard --logdir runs
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to render --help)."""
    from .analyzers.cam import CAM_METHODS
    from .analyzers.saliency import SALIENCY_METHODS
    from .report import DEFAULT_SECTIONS, SECTIONS

    parser = argparse.ArgumentParser(
        prog="introspect",
        description="Open up a PyTorch vision model and write what is inside it to TensorBoard.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", nargs="?", help="a torchvision classification model name, e.g. resnet18, vgg11")
    parser.add_argument("--image", action="append", default=[], metavar="PATH",
                        help="a photo or a folder of photos; repeat for several (e.g. --image sample_images/cat.png)")
    parser.add_argument("--logdir", default="runs", help="where runs go (default: runs)")
    parser.add_argument("--run-name", help="run folder name under LOGDIR (default: MODEL-TIMESTAMP; never reused)")
    parser.add_argument("--weights", default="auto",
                        help="auto (default: DEFAULT weights if cached or downloadable, else random with a warning), "
                             "DEFAULT, an enum name like IMAGENET1K_V1, none (random), or a state_dict file PATH")
    parser.add_argument("--sections", default=None,
                        help=f"comma list from {','.join(SECTIONS)} or all (default: {','.join(DEFAULT_SECTIONS)}; "
                             "saliency, filters, embeddings and quality are slower and run only when named or "
                             "with all; quality scores the --cam maps by keeping / removing their top 20%%)")
    parser.add_argument("--layers", nargs="+", metavar="NAME",
                        help="layers for feature maps (default: each stage's output; see --list-layers)")
    parser.add_argument("--cam", default="gradcam", metavar="METHOD[,METHOD]",
                        help=f"CAM methods, comma separated (default gradcam): {', '.join(CAM_METHODS)}")
    parser.add_argument("--cam-layer", metavar="NAME", help="CAM target layer (default: picked per model family)")
    parser.add_argument("--saliency", default=",".join(SALIENCY_METHODS), metavar="METHOD[,METHOD]",
                        help=f"saliency methods for --sections saliency (default all): {', '.join(SALIENCY_METHODS)}")
    parser.add_argument("--filter-layers", nargs="+", metavar="NAME",
                        help="layers for --sections filters (default: first, middle and last stage output)")
    parser.add_argument("--filter-count", type=int, default=8, metavar="N",
                        help="filters per layer to visualise: the first N (default 8)")
    parser.add_argument("--filter-steps", type=int, default=64, metavar="N",
                        help="gradient-ascent steps per layer (default 64)")
    parser.add_argument("--filter-size", type=int, metavar="PX", help="side of the synthesised images (default 96)")
    parser.add_argument("--filter-budget", type=float, default=60.0, metavar="SECONDS",
                        help="time budget of the filters section, all layers together (default 60)")
    parser.add_argument("--topk", type=int, default=3, help="classes to explain and list (default 3)")
    parser.add_argument("--target", action="append", metavar="CLASS",
                        help="explain this class (index or ImageNet name, e.g. 281 or 'tabby'); repeatable")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--input-size", type=int, help="square input size (default: the weights' crop size)")
    parser.add_argument("--list-models", action="store_true", help="print the model names and exit")
    parser.add_argument("--list-layers", action="store_true", help="print MODEL's layer names and exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _list_layers(model_name: str, weights: str) -> None:
    from .layers import layer_table
    from .models import load_model

    loaded = load_model(model_name, weights="none" if weights == "auto" else weights)
    rows = layer_table(loaded.model, loaded.input_size)
    width = max((len(row.name) for row in rows), default=0)
    for row in rows:
        marks = (" [features]" if row.features else "") + (" [cam]" if row.cam else "")
        print(f"{row.name:<{width}}  {row.kind:<24} {row.output}{marks}")


def _print_summary(summary) -> None:
    for message in summary.warnings:
        print(f"WARNING: {message}", file=sys.stderr)
    for preds in summary.predictions:
        top = ", ".join(f"{n} {p:.1%}" for n, p in zip(preds.names[:3], preds.probabilities[:3]))
        print(f"{preds.image_name}: {top}")
    counts = ", ".join(f"{section} {count}" for section, count in sorted(summary.tags.items()))
    print(f"wrote {sum(summary.tags.values())} summaries ({counts}) in {summary.seconds:.1f} s to {summary.run_dir}")
    print(f"open it with: tensorboard --logdir {summary.run_dir.parent}")


def _one_line(exc: BaseException, limit: int = 400) -> str:
    """An exception's message on one line (torch's own messages span several), cut to ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.list_models:
            from .models import list_models

            print("\n".join(list_models()))
            return 0
        if not args.model:
            parser.print_usage(sys.stderr)
            print("introspect: error: give a MODEL (see --list-models)", file=sys.stderr)
            return 2
        if args.list_layers:
            _list_layers(args.model, args.weights)
            return 0
        from .report import report

        summary = report(
            args.model,
            images=args.image,
            logdir=args.logdir,
            run_name=args.run_name,
            sections=args.sections,
            saliency_methods=args.saliency,
            filter_layers=args.filter_layers,
            filter_count=args.filter_count,
            filter_steps=args.filter_steps,
            filter_size=args.filter_size,
            filter_budget=args.filter_budget,
            layers=args.layers,
            cam_methods=args.cam,
            cam_layer=args.cam_layer,
            topk=args.topk,
            targets=args.target,
            weights=args.weights,
            device=args.device,
            input_size=args.input_size,
            progress=lambda step: print(f"... {step}", file=sys.stderr, flush=True),
        )
        _print_summary(summary)
        return 0
    except IntrospectError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"introspect: error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("introspect: interrupted; what was written so far is kept", file=sys.stderr)
        return 130
    except Exception as exc:  # a failure at run time: one line unless --debug
        if args.debug:
            traceback.print_exc()
        print(f"introspect: error: {type(exc).__name__}: {_one_line(exc)} (run again with --debug for the "
              "traceback)", file=sys.stderr)
        return 1
