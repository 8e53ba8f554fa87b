"""``napari-conch embed``: fill the embedding caches of slides, here or on a dask cluster."""

from __future__ import annotations

import sys

from .checks import check_models, check_slides
from .options import command, model_options, slide_options
from .steps import embed_slide, load_one, model_names, single_model


def register(sub) -> None:
    parser = command(
        sub,
        "embed",
        "fill the embedding caches of slides, locally or on a dask cluster",
        "Embed every slide's tissue tiles into the cache (resumable). With --scheduler the "
        "slides (and shards of big slides) go to a dask.distributed cluster; --workers N starts "
        "a local cluster of N processes.",
        [
            "napari-conch embed *.svs",
            "napari-conch embed *.svs --scheduler tcp://10.0.0.1:8786 --cache /shared/cache",
            "napari-conch embed big.svs --device cuda --decode device  # JPEG decoded on the GPU",
        ],
    )
    parser.add_argument("slides", nargs="+")
    model_options(parser)
    slide_options(parser)
    parser.add_argument("--scheduler", help="address of a dask.distributed scheduler")
    parser.add_argument(
        "--workers", type=int, help="start a local cluster with this many processes"
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    if args.scheduler or args.workers:
        return _on_cluster(args)
    check_slides(args.slides, args.mpp)
    name = single_model(args)
    check_models(args, [name], text=False)
    model = load_one(args, name, args.checkpoint)
    for path in args.slides:
        _, emb = embed_slide(path, model, args)
        print(f"{path}: {emb.n_done}/{len(emb)} tiles → {emb.store_path or '(memory)'}")
    return 0


def _on_cluster(args) -> int:
    from ..distributed import cluster_client, embed_slides
    from ..store import uses_cache

    if not uses_cache(args.cache):
        raise ValueError("Distributed embedding writes to a shared cache: give --cache PATH.")
    names = model_names(args)
    if len(names) > 1:
        raise ValueError("embed on a cluster takes one model at a time.")
    spec = {
        k: getattr(args, k)
        for k in ("checkpoint", "tokenizer", "device", "precision")
        if getattr(args, k)
    }
    spec["name"] = names[0]
    grid = {"tile_um": args.tile_um, "overlap": args.overlap or None, "min_tissue": args.min_tissue}
    with cluster_client(scheduler=args.scheduler, workers=args.workers) as client:
        results = embed_slides(
            args.slides,
            spec,
            client,
            cache=args.cache,
            mpp=args.mpp,
            batch_size=args.batch_size,
            progress=lambda done, total, rate: print(
                f"{done}/{total} slides done", file=sys.stderr
            ),
            decode=args.decode,
            **grid,
        )
    for path, emb in zip(args.slides, results, strict=True):
        print(f"{path}: {emb.n_done}/{len(emb)} tiles → {emb.store_path}")
    return 0
