"""Checks before any model is built.

A command checks what the user gave it — slides exist and open with a pixel size, outputs
can be written, prompts parse, the model's text side (CONCH's tokenizer) is there — before
it builds a model or reads a tile, so a typo costs a second, not an embedded slide.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import OutputError, SlideReadError
from .steps import checkpoints, model_names, prompt_set


def check_slides(paths, mpp: float | None) -> None:
    """Every slide exists, opens and knows (or is given) its µm per pixel."""
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:  # before any import of the readers: answers at once
        raise SlideReadError(f"No such file: {', '.join(missing)}.")
    from ..slide import open_slide

    for path in paths:
        slide = open_slide(path, mpp=mpp)
        try:
            slide.require_mpp("tiling")
        finally:
            slide.close()


def output_folder(path: Path) -> Path:
    """Check that ``path`` is (or can become) a folder we can write into — without creating
    it, so a command that fails later leaves nothing behind (it is made when the first file
    is written)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputError(f"The output {path} is a file; give a folder (-o FOLDER).")
    existing = path
    while not existing.exists():
        existing = existing.parent
    problem = None
    if not existing.is_dir():
        problem = f"{existing} is a file"
    elif existing == path:
        try:
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as exc:
            problem = exc.strerror or str(exc)
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    if problem:
        raise OutputError(f"Cannot write into {path} ({problem}); choose another folder with -o.")
    return path


def output_file(path: Path | None) -> Path | None:
    """The folder of an output file (-o FILE) exists or can be made, and is writable."""
    if path is None:
        return None
    output_folder(Path(path).expanduser().parent)
    return Path(path).expanduser()


def check_formats(formats) -> None:
    """Formats that need an optional library say so before any work starts."""
    from ..formats import missing_requirements

    for name, module in missing_requirements(formats):
        raise OutputError(
            f"Writing {name.capitalize()} needs {module}: pip install {module}, or leave "
            f"{name} out of --formats."
        )


def check_prompts(models, prompts=None, background=None, texts=()) -> None:
    """Encode the prompts with every model now: a prompt a model cannot read fails here,
    before any tile is embedded (the encodings stay in the models' text caches)."""
    from ..prompts import encode_prompts

    for model in models:
        if prompts is not None:
            encode_prompts(model, prompts, background)
        elif background is not None:
            model.encode_texts([background])
        if texts:
            model.encode_texts(list(texts))


def check_models(args, names: list[str], *, text: bool) -> None:
    """Every model name is known, and (for commands with prompts) its text side works."""
    from ..models.registry import check_text_side, model_entry

    for name, checkpoint in zip(names, checkpoints(args, names), strict=True):
        model_entry(name)
        if text:
            check_text_side(name, checkpoint=checkpoint, tokenizer=args.tokenizer)


def check_dense(args) -> None:
    """--dense needs --region (said before any model loads); --region alone is a mistake."""
    if getattr(args, "dense", False) and not args.region:
        raise ValueError(
            "--dense needs --region Y0 X0 Y1 X1 (µm): a dense map's work grows with it."
        )
    if getattr(args, "region", None) and not args.dense:
        raise ValueError("--region is for dense maps: add --dense (or leave --region out).")


def check_dense_models(args, models) -> None:
    from ..protocol import gives_token_embeddings

    if args.dense:
        without = [m.name for m in models if not gives_token_embeddings(m)]
        if without:
            raise ValueError(
                f"--dense: {', '.join(without)} gives no token embeddings; dense maps work "
                "with conch only (experimental)."
            )


def prepare(args, *, slides=(), folder=None, file=None, prompts=False, text=False):
    """The checks every command runs, in order of cost; returns (model names, prompt set)."""
    check_slides(slides, getattr(args, "mpp", None))
    if folder is not None:
        output_folder(folder)
    output_file(file)
    chosen = prompt_set(args) if prompts else None
    names = model_names(args)
    check_models(args, names, text=text or prompts)
    return names, chosen
