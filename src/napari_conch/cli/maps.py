"""``napari-conch segment`` and ``similarity``: maps of slides, with their exports."""

from __future__ import annotations

import json
from pathlib import Path

from ..formats import FORMATS, REGISTRY, default_formats
from .checks import check_dense, check_dense_models, check_formats, check_prompts, prepare
from .options import command, dense_options, model_options, prompt_options, slide_options
from .steps import embed_slide, load_models, print_comparison, tagged

# A dense map has no tiles of its own: only the formats that need none.
DENSE_FORMATS = tuple(f.name for f in REGISTRY if not f.needs_tiles)


def register(sub) -> None:
    defaults = default_formats()
    segment = command(
        sub,
        "segment",
        "zero-shot segmentation of slides, with exports",
        "Segment each slide zero-shot and write QuPath GeoJSON, OME-Zarr, an OME-TIFF label "
        "image, a tile table and a summary into OUT.",
        [
            "napari-conch segment case.svs --classes tumor stroma background "
            "--background background -o out/",
            "napari-conch segment *.svs --prompts crc100k_prompts.json --overlap 0.75 -o out/ "
            "--formats geojson csv",
            "napari-conch segment case.svs --classes tumor stroma --model conch,plip,quiltnet "
            "-o compare/   # one set of files per model + comparison.csv",
            "napari-conch segment *.svs --classifier clf/classifier.npz -o out/   # few-shot",
        ],
    )
    segment.add_argument("slides", nargs="+")
    model_options(segment)
    slide_options(segment)
    prompt_options(segment, classifier=True)
    segment.add_argument("--background", help="class (or phrase) whose cells become label 0")
    segment.add_argument("--min-confidence", type=float, help="cells below this probability → 0")
    segment.add_argument(
        "--formats",
        nargs="+",
        default=list(defaults),
        choices=FORMATS,
        help=f"what to write (default: {' '.join(defaults)})",
    )
    segment.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    dense_options(segment)
    segment.set_defaults(func=run_segment)

    similarity = command(
        sub,
        "similarity",
        "similarity heatmap of slides to a text prompt",
        "Write the cosine-similarity map of each slide to --text (minus --negative) as an "
        "OME-TIFF in µm, plus a tile table and a summary.",
        ['napari-conch similarity case.svs --text "mitotic figure" -o out/'],
    )
    similarity.add_argument("slides", nargs="+")
    model_options(similarity)
    slide_options(similarity)
    similarity.add_argument("--text", required=True)
    similarity.add_argument("--negative")
    similarity.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    dense_options(similarity)
    similarity.set_defaults(func=run_similarity)


def _dense_tokens(path, model, args):
    from ..dense import dense_tokens
    from ..slide import open_slide

    slide = open_slide(path, mpp=args.mpp)
    return dense_tokens(slide, model, args.region, args.tile_um, args.overlap or 0.5)


def run_segment(args) -> int:
    check_formats(args.formats)
    check_dense(args)
    taught = args.classifier is not None
    if taught and args.dense:
        raise ValueError("--classifier makes tile maps: leave out --dense.")
    names, prompts = prepare(args, slides=args.slides, folder=args.output, prompts=not taught)
    from ..formats import export_all, file_stem
    from ..zeroshot import zero_shot_segment

    classifier = _classifier(args) if taught else None
    models = load_models(args, names)
    if taught:
        from ..classifier import load_classifier

        for model in models:  # refused before any tile is embedded
            load_classifier(args.classifier, model=model)
    else:
        check_prompts(models, prompts, args.background)
    check_dense_models(args, models)
    formats = tuple(args.formats)
    rows = []
    if args.dense:
        formats = tuple(f for f in formats if f in DENSE_FORMATS) or DENSE_FORMATS
    for path in args.slides:
        for model in models:
            stem = tagged(file_stem(path), model, models)
            if args.dense:  # experimental: token cells over the region; no tile table
                seg = _dense_tokens(path, model, args).segment(
                    model, prompts, args.background, args.min_confidence
                )
                emb, stem = None, f"{stem}.dense"
            elif taught:
                from ..fewshot import few_shot_segment

                _, emb = embed_slide(path, model, args)
                seg = few_shot_segment(
                    emb,
                    classifier,
                    background=args.background,
                    min_confidence=args.min_confidence,
                )
            else:
                _, emb = embed_slide(path, model, args)
                seg = zero_shot_segment(
                    emb,
                    model,
                    prompts,
                    background=args.background,
                    min_confidence=args.min_confidence,
                )
            written = export_all(seg, args.output, stem, emb=emb, formats=formats)
            areas = ", ".join(f"{k} {v:.3f}" for k, v in seg.areas_mm2.items())
            tag = f" [{model.name}]" if len(models) > 1 else ""
            print(f"{path}{tag}: areas (mm²) {areas} → {len(written)} files in {args.output}/")
            rows.append({"slide": str(path), "model": model.name, **seg.areas_mm2})
    if len(models) > 1:
        print_comparison(rows, "area (mm²) per class", args.output / "comparison.csv")
    return 0


def _classifier(args):
    from ..classifier import load_classifier

    classifier = load_classifier(args.classifier)
    if args.background is not None and args.background not in classifier.class_names:
        raise ValueError(
            f"--background {args.background!r} is not a class of the classifier "
            f"({', '.join(classifier.class_names)})."
        )
    return classifier


def run_similarity(args) -> int:
    if not args.text.strip():
        raise ValueError("--text is empty; give the phrase to map, e.g. --text necrosis.")
    check_dense(args)
    names, _ = prepare(args, slides=args.slides, folder=args.output, text=True)
    from ..formats import file_stem
    from ..formats.files import write_text
    from ..formats.ome_tiff import to_ome_tiff
    from ..formats.tables import tile_table
    from ..zeroshot import similarity_map

    models = load_models(args, names)
    check_prompts(models, texts=[args.text, *([args.negative] if args.negative else [])])
    check_dense_models(args, models)
    out = args.output
    for path, model in ((p, m) for p in args.slides for m in models):
        stem = tagged(file_stem(path), model, models)
        if args.dense:  # experimental: token cells over the region; no tile table
            sim = _dense_tokens(path, model, args).similarity(model, args.text, args.negative)
            stem = f"{stem}.dense"
        else:
            _, emb = embed_slide(path, model, args)
            sim = similarity_map(emb, model, text=args.text, negative=args.negative)
        out.mkdir(parents=True, exist_ok=True)
        to_ome_tiff(sim, out / f"{stem}.similarity.ome.tif", what="similarity")
        if not args.dense:
            tile_table(emb, similarities=[sim], path=out / f"{stem}.similarity.csv")
        summary = {"query": sim.queries, "contrast_limits": sim.contrast_limits, **sim.metadata}
        write_text(out / f"{stem}.similarity.json", json.dumps(summary, indent=2, default=str))
        print(
            f"{path}: similarity {sim.contrast_limits[0]:.3f} … {sim.contrast_limits[1]:.3f} "
            f"→ {out}/"
        )
    return 0
