"""``napari-conch teach``: a few-shot classifier from a pathologist's annotations, scored on
folds of them; ``segment --classifier`` then maps any slide with it."""

from __future__ import annotations

import json
from pathlib import Path

from .checks import check_slides, output_folder
from .options import command, model_options, prompt_options, slide_options
from .steps import embed_slide, prompt_set, single_model


def register(sub) -> None:
    parser = command(
        sub,
        "teach",
        "teach a few-shot classifier from annotations (QuPath GeoJSON)",
        "Embed the slide, teach a tile classifier from the annotated regions (with --classes "
        "or --prompts: starting from the zero-shot classifier of that text), score it on "
        "held-out folds of the annotations and save it as OUT/classifier.npz for "
        "'segment --classifier'.",
        [
            "napari-conch teach case.svs --annotations case.geojson -o clf/",
            "napari-conch teach case.svs --annotations tumor-only.geojson "
            "--classes tumor stroma necrosis -o clf/   # text for what is not annotated",
            "napari-conch segment *.svs --classifier clf/classifier.npz -o maps/",
        ],
    )
    parser.add_argument("slide")
    parser.add_argument(
        "--annotations",
        type=Path,
        required=True,
        help="GeoJSON of annotated regions (QuPath: File > Export objects as GeoJSON)",
    )
    model_options(parser)
    slide_options(parser)
    prompt_options(parser, required=False)
    parser.add_argument(
        "--regularization",
        type=float,
        help="pull toward the starting weights (default 0.01 with text, 1e-4 without)",
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    parser.set_defaults(func=run)


def run(args) -> int:
    check_slides([args.slide], args.mpp)
    output_folder(args.output)
    from ..annotations import read_annotations

    annotations = read_annotations(args.annotations)
    text = args.prompts is not None or args.classes is not None
    prompts = prompt_set(args) if text else None
    from ..agreement import cross_validate
    from ..classifier import fit_classifier
    from ..formats.files import write_text
    from ..models.registry import check_text_side, model_entry
    from .steps import load_one

    name = single_model(args)
    model_entry(name)
    if text:
        check_text_side(name, checkpoint=args.checkpoint, tokenizer=args.tokenizer)
    model = load_one(args, name, args.checkpoint)
    slide, emb = embed_slide(args.slide, model, args)
    annotations = read_annotations(args.annotations, slide=slide)
    options = {"model": model, "prompts": prompts} if text else {}
    classifier = fit_classifier(emb, annotations, regularization=args.regularization, **options)
    path = classifier.save(args.output)
    examples = classifier.details["annotations"]["examples"]
    print(f"{classifier.method} on {model.name}, taught on {args.annotations.name}:")
    for class_name in classifier.class_names:
        print(f"  {class_name:>20}: {examples.get(class_name, 0)} example tiles")
    report = {"classifier": str(path), "examples": examples}
    try:
        scores = cross_validate(emb, annotations, regularization=args.regularization, **options)
    except ValueError as exc:  # one region per class: nothing to hold out
        print(f"held-out scores: none ({exc})")
    else:
        print(f"held-out agreement ({scores['folds']} spatial folds of whole regions):")
        print_agreement(scores)
        report["held_out"] = scores
    write_text(args.output / "teach.json", json.dumps(report, indent=2, default=_plain))
    print(f"→ {path}  (use: segment SLIDES --classifier {path})")
    return 0


def print_agreement(scores: dict, columns: dict | None = None) -> None:
    """Per-class Dice / IoU / precision / recall / areas; several reports side by side when
    ``columns`` maps a title to each."""
    columns = columns or {"": scores}
    names = [k for k, v in next(iter(columns.values())).items() if isinstance(v, dict)]
    header = "".join(f"{title:>34}" for title in columns) if len(columns) > 1 else ""
    if header:
        print(f"  {'':>20}{header}")
    print(
        f"  {'class':>20}" + "".join(f"{'dice':>8}{'iou':>8}{'annotated mm²':>18}" for _ in columns)
    )
    for name in names:
        cells = []
        for report in columns.values():
            row = report.get(name) or {}
            cells.append(
                f"{row.get('dice', float('nan')):>8.3f}{row.get('iou', float('nan')):>8.3f}"
                f"{row.get('annotated_mm2', 0.0):>18.4f}"
            )
        print(f"  {name:>20}" + "".join(cells))
    means = "".join(
        f"{r['mean_dice']:>8.3f}{r['mean_iou']:>8.3f}{'':>18}" for r in columns.values()
    )
    print(f"  {'mean':>20}{means}")
    for title, report in columns.items():
        if report.get("note"):
            print(f"  {title + ': ' if title else ''}{report['note']}")


def _plain(value):
    return float(value) if hasattr(value, "__float__") else str(value)
