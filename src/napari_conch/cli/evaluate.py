"""``napari-conch evaluate``: zero-shot tile classification metrics on a labelled dataset, or
a slide's maps scored against a pathologist's annotations (zero-shot and few-shot)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import SlideReadError
from .checks import check_prompts, prepare
from .options import command, model_options, prompt_options, slide_options
from .steps import embed_slide, load_models


def register(sub) -> None:
    parser = command(
        sub,
        "evaluate",
        "zero-shot tile classification metrics on a labelled dataset",
        "Classify a folder of class subfolders (or a CSV path,label) zero-shot and report "
        "balanced accuracy, weighted F1, Cohen's kappa (plain and quadratic), AUC and the "
        "confusion matrix. With --annotations, DATASET is a slide: its zero-shot map is "
        "scored against the annotated regions, beside a few-shot classifier taught on them "
        "and scored on held-out folds.",
        [
            "napari-conch evaluate CRC-VAL-HE-7K/ --prompts crc100k_prompts_all_per_class.json "
            "-o metrics.json",
            "napari-conch evaluate case.svs --annotations case.geojson "
            "--classes tumor stroma necrosis -o agreement.json",
        ],
    )
    parser.add_argument("dataset", type=Path, help="tile dataset, or a slide with --annotations")
    parser.add_argument(
        "--annotations", type=Path, help="GeoJSON of annotated regions on the slide (QuPath)"
    )
    model_options(parser)
    prompt_options(parser)
    parser.add_argument("--label-map", type=Path, help="JSON {dataset label: prompt class}")
    parser.add_argument(
        "--background", help="with --annotations: the class whose cells become label 0"
    )
    slide_options(parser)
    parser.add_argument("-o", "--output", type=Path, help="also write the metrics (.json)")
    parser.set_defaults(func=run)


def run(args) -> int:
    if args.annotations is not None:
        return run_annotations(args)
    if not args.dataset.exists():
        raise SlideReadError(
            f"No such dataset: {args.dataset} (a folder of class folders or a CSV)."
        )
    label_map = json.loads(args.label_map.read_text(encoding="utf-8")) if args.label_map else None
    names, prompts = prepare(args, file=args.output, prompts=True)
    from ..evaluate import evaluate_tiles
    from ..formats.files import write_text

    models = load_models(args, names)
    check_prompts(models, prompts)
    payloads = {}
    for model in models:
        result = evaluate_tiles(
            model, args.dataset, prompts, label_map=label_map, batch_size=args.batch_size or 32
        )
        if len(models) > 1:
            print(f"== {model.name} ==")
        payloads[model.name] = _report(result)
    if args.output:
        payload = payloads if len(models) > 1 else next(iter(payloads.values()))
        write_text(args.output, json.dumps(payload, indent=2))
    return 0


def _report(result) -> dict:
    for key, value in result.metrics.items():
        print(f"{key:>18}: {value:.4f}" if isinstance(value, float) else f"{key:>18}: {value}")
    print("confusion (rows = truth, columns = predicted):")
    print("  " + " ".join(f"{n[:10]:>10}" for n in result.class_names))
    for name, row in zip(result.class_names, result.confusion, strict=True):
        print(f"  {' '.join(f'{v:>10d}' for v in row)}  {name}")
    return {
        **result.metrics,
        "confusion": result.confusion.tolist(),
        "class_names": result.class_names,
        **result.metadata,
    }


def run_annotations(args) -> int:
    """Zero-shot and few-shot maps of one slide scored against its annotations."""
    if not args.annotations.exists():
        raise ValueError(f"No such annotations file: {args.annotations}.")
    names, prompts = prepare(args, slides=[args.dataset], file=args.output, prompts=True)
    from ..agreement import agreement, cross_validate
    from ..annotations import read_annotations
    from ..formats.files import write_text
    from ..zeroshot import zero_shot_segment
    from .teach import print_agreement

    read_annotations(args.annotations)  # a file that is not annotations fails before work
    models = load_models(args, names)
    check_prompts(models, prompts, args.background)
    payloads = {}
    for model in models:
        slide, emb = embed_slide(args.dataset, model, args)
        annotations = read_annotations(args.annotations, slide=slide)
        zero = zero_shot_segment(emb, model, prompts, background=args.background)
        columns = {"zero-shot": agreement(zero, annotations)}
        try:
            columns["few-shot (held out)"] = cross_validate(
                emb, annotations, model=model, prompts=prompts, background=args.background
            )
        except ValueError as exc:
            print(f"few-shot: not scored ({exc})")
        if len(models) > 1:
            print(f"== {model.name} ==")
        print(f"{args.dataset}: agreement with {args.annotations.name}")
        print_agreement(columns["zero-shot"], columns)
        payloads[model.name] = columns
    if args.output:
        payload = payloads if len(models) > 1 else next(iter(payloads.values()))
        write_text(args.output, json.dumps(payload, indent=2, default=float))
    return 0
