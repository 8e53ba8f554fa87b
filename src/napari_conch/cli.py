"""The ``napari-conch`` command.

Examples
--------
    napari-conch info                       # versions, devices, where weights/tokenizer are found
    napari-conch info slide.svs             # … and what napari-conch reads from a slide
    napari-conch demo                       # zero-shot tile calls on the bundled sample image
    napari-conch demo --checkpoint random   # the same pipeline on an untrained model
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger("napari_conch.cli")

UNTRAINED_BANNER = """\
**********************************************************************************
*  UNTRAINED MODEL: the weights are random. The numbers below check that the     *
*  pipeline runs; they are NOT results. Get the CONCH weights (gated: request    *
*  access at https://huggingface.co/MahmoodLab/conch) and pass --checkpoint      *
*  PATH, set NAPARI_CONCH_CHECKPOINT, or set HF_TOKEN to download them.          *
**********************************************************************************"""


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="conch", help="model name (default: conch)")
    group.add_argument(
        "--checkpoint",
        help="weights file or directory, 'hf_hub:REPO', or 'random' (untrained; pipeline check)",
    )
    group.add_argument("--tokenizer", help="CONCH tokenizer JSON (default: found automatically)")
    group.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] | mps")
    group.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="napari-conch",
        description="CONCH zero-shot pathology on whole-slide images.",
        epilog="Run 'napari-conch COMMAND --help' for the options and examples of a command.",
    )
    parser.add_argument("--version", action="version", version=f"napari-conch {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = sub.add_parser(
        "info",
        help="show versions, devices and where model weights and the tokenizer are found",
        description="Report the environment: package versions, compute devices, and which "
        "CONCH weights and tokenizer load_model would use (nothing is downloaded).",
        epilog="examples:\n  napari-conch info\n  napari-conch info slide.svs other.ndpi",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    info.add_argument("slides", nargs="*", help="slides to describe (levels, µm/px, vendor)")
    info.set_defaults(func=cmd_info)

    demo = sub.add_parser(
        "demo",
        help="zero-shot tile classification on the bundled sample image",
        description="Load the model, embed the four quadrants of scikit-image's "
        "immunohistochemistry sample and call each against text prompts. Without CONCH "
        "weights it says so loudly and runs on an untrained model (a pipeline check).",
        epilog="examples:\n  napari-conch demo\n  napari-conch demo --checkpoint "
        "~/weights/conch/pytorch_model.bin --classes gland stroma 'immune cells'\n"
        "  napari-conch demo --checkpoint random -o demo.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_options(demo)
    demo.add_argument(
        "--classes",
        nargs="+",
        default=["colonic gland", "stroma", "immune cells", "background"],
        help="class names to call (default: %(default)s)",
    )
    demo.add_argument("-o", "--output", type=Path, help="also write the calls as JSON here")
    demo.set_defaults(func=cmd_demo)

    view = sub.add_parser(
        "view",
        help="open napari with the slide and the napari-conch widget docked",
        description="Open napari with SLIDE shown in micrometres and the napari-conch widget "
        "docked. With --checkpoint (or --model conch_tiny --checkpoint random) the model is "
        "loaded first; otherwise load it in the widget.",
        epilog="examples:\n  napari-conch view case.svs\n  napari-conch view case.svs "
        "--checkpoint ~/weights/conch/pytorch_model.bin --classes tumor stroma necrosis",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    view.add_argument("slide", nargs="?", help="slide or image file (optional)")
    view.add_argument("--mpp", type=float, help="µm/px when the file does not record it")
    _add_model_options(view)
    view.add_argument("--classes", nargs="+", help="classes for the segmentation table")
    view.set_defaults(func=cmd_view)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose else logging.INFO)
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if args.command is None:
        parser.print_help()
        return 2
    from .errors import NapariConchError

    try:
        return int(args.func(args) or 0)
    except NapariConchError as exc:
        print(f"napari-conch: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("napari-conch: interrupted", file=sys.stderr)
        return 130


def cmd_info(args) -> int:
    import platform

    import torch

    from . import __version__
    from .errors import NapariConchError
    from .models.device import available_devices
    from .models.tokenizer import find_tokenizer
    from .models.weights import find_checkpoint

    versions = f"Python {platform.python_version()}, torch {torch.__version__}"
    print(f"napari-conch {__version__}  ({versions})")
    print(f"devices: {', '.join(available_devices())}")
    try:
        source = find_checkpoint(None, repo_id="MahmoodLab/conch", token=False)
        print(f"CONCH weights: {source.describe()}")
        checkpoint_path = source.path
    except NapariConchError as exc:
        print("CONCH weights: not found")
        print("  " + str(exc).replace("\n", "\n  "))
        checkpoint_path = None
    try:
        print(f"CONCH tokenizer: {find_tokenizer(None, checkpoint_path)}")
    except NapariConchError as exc:
        print(f"CONCH tokenizer: not found. {exc}")
    failed = 0
    for path in getattr(args, "slides", []):
        failed += not _describe_slide(path)
    return 1 if failed else 0


def _describe_slide(path) -> bool:
    from .errors import SlideReadError
    from .slide import open_slide

    try:
        slide = open_slide(path)
    except SlideReadError as exc:
        print(f"\n{path}: {exc}")
        return False
    meta = slide.metadata
    mpp = (
        f"{slide.mpp:.4g} µm/px ({meta.get('mpp_source')})"
        if slide.mpp
        else "unknown (the file records none)"
    )
    print(f"\n{path}")
    print(
        f"  reader: {meta['backend']}, vendor: {meta.get('vendor')}, "
        f"objective: {meta.get('objective_power')}"
    )
    print(f"  pixel size: {mpp}")
    for i, level in enumerate(slide.levels):
        lmpp = f", {slide.level_mpp(i):.3g} µm/px" if slide.mpp else ""
        print(
            f"  level {i}: {level.shape[0]} × {level.shape[1]} px (downsample "
            f"{slide.downsamples[i]:.4g}{lmpp}), chunks {level.chunksize[:2]}"
        )
    print(f"  pyramid: {meta.get('pyramid_source')}")
    slide.close()
    return True


def cmd_demo(args) -> int:
    import numpy as np
    from skimage import data

    from .errors import WeightsNotFoundError
    from .models import load_model
    from .prompts import class_embeddings, softmax_probabilities

    options = dict(tokenizer=args.tokenizer, device=args.device, precision=args.precision)
    try:
        model = load_model(args.model, checkpoint=args.checkpoint, **options)
    except WeightsNotFoundError as exc:
        if args.checkpoint is not None:
            raise
        logger.warning("%s", exc)
        model = load_model(args.model, checkpoint="random", **options)
    trained = bool(getattr(model, "trained", True))
    if not trained:
        print(UNTRAINED_BANNER, file=sys.stderr)

    image = data.immunohistochemistry()  # 512 × 512 RGB, bundled with scikit-image
    half = image.shape[0] // 2
    origins = [(y, x) for y in (0, half) for x in (0, half)]
    tiles = np.stack([image[y : y + half, x : x + half] for y, x in origins])

    features = model.encode_images(tiles)
    names, weights = class_embeddings(model, args.classes)
    similarity = model.project(features) @ weights.T
    probs = softmax_probabilities(similarity, model.logit_scale)

    tag = "" if trained else "  [UNTRAINED — not a result]"
    print(f"model: {model!r}{tag}")
    width = max(len(n) for n in names)
    print(f"{'tile (y, x)':<14} {'call':<{width}}  " + "  ".join(f"{n[:10]:>10}" for n in names))
    rows = []
    for (y, x), p in zip(origins, probs, strict=True):
        call = names[int(np.argmax(p))]
        print(f"({y:>3}, {x:>3})     {call:<{width}}  " + "  ".join(f"{v:>10.3f}" for v in p))
        rows.append(
            {
                "y": y,
                "x": x,
                "call": call,
                "probabilities": dict(zip(names, p.tolist(), strict=True)),
            }
        )
    if args.output:
        payload = {
            "model": model.name,
            "trained": trained,
            "note": None if trained else "untrained weights: pipeline check, not a result",
            "tile_px": half,
            "tiles": rows,
        }
        args.output.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.output}")
    return 0


def cmd_view(args) -> int:
    from . import view
    from .models import load_model
    from .slide import open_slide

    slide = open_slide(args.slide, mpp=args.mpp) if args.slide else None
    model = None
    if args.checkpoint:
        model = load_model(
            args.model,
            checkpoint=args.checkpoint,
            tokenizer=args.tokenizer,
            device=args.device,
            precision=args.precision,
        )
    view(slide, model=model, classes=args.classes, block=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
