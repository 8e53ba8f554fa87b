"""Steps the commands share: the models of ``--model``, slides embedded with a progress bar,
tables and files written, the command as the user typed it."""

from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path

UNTRAINED_BANNER = """\
**********************************************************************************
*  UNTRAINED MODEL: the weights are random. The numbers below check that the     *
*  pipeline runs; they are NOT results. Get the CONCH weights (gated: request    *
*  access at https://huggingface.co/MahmoodLab/conch) and pass --checkpoint      *
*  PATH, set NAPARI_CONCH_CHECKPOINT, or set HF_TOKEN to download them.          *
**********************************************************************************"""


def model_names(args) -> list[str]:
    names = [n.strip() for n in str(args.model).split(",") if n.strip()]
    if not names:
        raise ValueError("--model is empty; give a model name such as conch, plip or quiltnet.")
    if len(set(names)) != len(names):
        raise ValueError(f"--model names a model twice: {args.model!r}.")
    return names


def checkpoints(args, names: list[str]) -> list:
    """``--checkpoint``: one value for all models, or one per model (comma-separated)."""
    if args.checkpoint and len(names) > 1 and "," in args.checkpoint:
        values = [c.strip() or None for c in args.checkpoint.split(",")]
        if len(values) != len(names):
            raise ValueError(
                f"--checkpoint lists {len(values)} values for {len(names)} models; give "
                "one for all or one per model, in the same order."
            )
        return values
    return [args.checkpoint] * len(names)


def single_model(args) -> str:
    names = model_names(args)
    if len(names) > 1:
        raise ValueError(
            "This command takes one model; compare models with segment, similarity, "
            "classify, retrieve or evaluate."
        )
    return names[0]


def load_one(args, name: str, checkpoint):
    """The model ``name`` with the command's options; the untrained banner when it is."""
    from ..models import load_model
    from ..protocol import is_trained

    options = dict(tokenizer=args.tokenizer, device=args.device, precision=args.precision)
    model = load_model(name, checkpoint=checkpoint, **options)
    if not is_trained(model):
        print(UNTRAINED_BANNER, file=sys.stderr)
    return model


def load_models(args, names: list[str]) -> list:
    """The models of ``--model a,b`` with their ``--checkpoint`` (one for all, or one each)."""
    return [load_one(args, n, c) for n, c in zip(names, checkpoints(args, names), strict=True)]


def tagged(stem: str, model, models: list) -> str:
    """File stem; with several models each one's files carry its name."""
    return f"{stem}.{model.name}" if len(models) > 1 else stem


def prompt_set(args):
    from ..prompts import PromptSet

    return PromptSet.from_json(args.prompts) if args.prompts else PromptSet(args.classes)


def embed_slide(path, model, args):
    """Open, tile and embed one slide file with the command's options."""
    from ..slide import open_slide
    from ..tiling import tile_grid

    slide = open_slide(path, mpp=args.mpp)
    grid = tile_grid(
        slide, model, tile_um=args.tile_um, overlap=args.overlap or None, min_tissue=args.min_tissue
    )
    with progress_bar(slide.name, len(grid), quiet=args.quiet) as progress:
        from .. import engine  # looked up on each call: tests replace engine.embed

        emb = engine.embed(
            slide,
            model,
            grid,
            cache=args.cache,
            progress=progress,
            batch_size=args.batch_size,
            decode=getattr(args, "decode", "fast"),
        )
    return slide, emb


@contextlib.contextmanager
def progress_bar(label: str, total: int, *, quiet: bool = False, unit: str = "tile"):
    """A progress bar on stderr, as a ``progress(done, total, rate)`` callback; log lines
    print above it while it is shown."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    bar = tqdm(total=total, unit=unit, desc=label[:30], disable=quiet, file=sys.stderr)

    def progress(done: int, total: int, rate: float = 0.0) -> None:
        bar.total = total
        bar.update(done - bar.n)  # redraws at most every mininterval, also on a pipe

    try:
        with logging_redirect_tqdm():
            yield progress
    finally:
        bar.close()


def print_comparison(rows: list[dict], what: str, path=None) -> None:
    import pandas as pd

    from ..formats.files import write_csv

    table = pd.DataFrame(rows)
    print(f"\nmodel comparison — {what}:")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if path is not None:
        write_csv(table, path)


def program_name() -> str:
    """The command as the user typed it: `.venv/bin/napari-conch` stays that, so the commands
    we suggest run as shown; plain `napari-conch` when that is what PATH finds."""
    called = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if Path(called).name != "napari-conch":
        return "napari-conch"
    on_path = shutil.which("napari-conch")
    if on_path and Path(on_path).resolve() == Path(called).resolve():
        return "napari-conch"
    return called
