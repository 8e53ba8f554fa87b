"""``napari-conch evaluate``: zero-shot tile classification metrics on a labelled dataset."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import SlideReadError
from .checks import check_prompts, prepare
from .options import command, model_options, prompt_options
from .steps import load_models


def register(sub) -> None:
    parser = command(
        sub,
        "evaluate",
        "zero-shot tile classification metrics on a labelled dataset",
        "Classify a folder of class subfolders (or a CSV path,label) zero-shot and report "
        "balanced accuracy, weighted F1, Cohen's kappa (plain and quadratic), AUC and the "
        "confusion matrix.",
        [
            "napari-conch evaluate CRC-VAL-HE-7K/ --prompts crc100k_prompts_all_per_class.json "
            "-o metrics.json"
        ],
    )
    parser.add_argument("dataset", type=Path)
    model_options(parser)
    prompt_options(parser)
    parser.add_argument("--label-map", type=Path, help="JSON {dataset label: prompt class}")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("-o", "--output", type=Path, help="also write the metrics (.json)")
    parser.set_defaults(func=run)


def run(args) -> int:
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
            model, args.dataset, prompts, label_map=label_map, batch_size=args.batch_size
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
