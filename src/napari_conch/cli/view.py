"""``napari-conch view``: napari with the slide, the widget docked and exported results."""

from __future__ import annotations

from pathlib import Path

from .checks import check_slides
from .options import command, model_options
from .steps import load_one, single_model


def register(sub) -> None:
    parser = command(
        sub,
        "view",
        "napari with the slide and the napari-conch widget docked",
        "Open napari with SLIDE shown in micrometres and the widget docked. With --results, "
        "the results exported into that folder (its .ome.zarr files) are shown on top. With "
        "--checkpoint the model is loaded first; otherwise load it in the widget.",
        [
            "napari-conch view case.svs",
            "napari-conch view case.svs --results results/",
            "napari-conch view case.svs --checkpoint pytorch_model.bin --classes tumor stroma",
        ],
    )
    parser.add_argument("slide", nargs="?", help="slide or image file (optional)")
    parser.add_argument(
        "--results", type=Path, help="folder of napari-conch exports to show over the slide"
    )
    parser.add_argument("--mpp", type=float, help="µm/px when the file does not record it")
    model_options(parser)
    parser.add_argument("--classes", nargs="+", help="classes for the segmentation table")
    parser.set_defaults(func=run)


def run(args) -> int:
    from .. import view

    if args.slide:
        check_slides([args.slide], args.mpp)
    results = None
    if args.results is not None:
        from ..formats import read_results

        results = read_results(args.results)
    model = None
    if args.checkpoint:
        model = load_one(args, single_model(args), args.checkpoint)
    slide = None
    if args.slide:
        from ..slide import open_slide

        slide = open_slide(args.slide, mpp=args.mpp)
    view(slide, model=model, classes=args.classes, results=results, block=True)
    return 0
