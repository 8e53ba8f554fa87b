"""``napari-conch info``: versions, devices, where weights and the tokenizer are found, and
what napari-conch reads from slides."""

from __future__ import annotations

from ..errors import NapariConchError, SlideReadError, describe
from .options import command


def register(sub) -> None:
    parser = command(
        sub,
        "info",
        "versions, devices, where weights and the tokenizer are found; describe slides",
        "Report the environment and which CONCH weights and tokenizer load_model would use "
        "(nothing is downloaded); with slides, what napari-conch reads from them.",
        ["napari-conch info", "napari-conch info slide.svs other.ndpi"],
    )
    parser.add_argument("slides", nargs="*", help="slides to describe")
    parser.set_defaults(func=run)


def run(args) -> int:
    import platform

    import torch

    from .. import __version__
    from ..models import available_models
    from ..models.device import available_devices
    from ..models.registry import model_entry
    from ..models.tokenizer import find_tokenizer
    from ..models.weights import find_checkpoint

    versions = f"Python {platform.python_version()}, torch {torch.__version__}"
    print(f"napari-conch {__version__}  ({versions})")
    print(f"devices: {', '.join(available_devices())}")
    try:
        source = find_checkpoint(None, repo_id="MahmoodLab/conch", token=False)
        print(f"CONCH weights: {source.description}")
        checkpoint_path = source.path
    except NapariConchError as exc:
        print("CONCH weights: not found")
        print("  " + describe(exc, "cli").replace("\n", "\n  "))
        checkpoint_path = None
    try:
        print(f"CONCH tokenizer: {find_tokenizer(None, checkpoint_path)}")
    except NapariConchError as exc:
        print(f"CONCH tokenizer: not found. {describe(exc, 'cli')}")
    print("models (--model):")
    for name in available_models():
        entry = model_entry(name)
        print(f"  {name:<12} {entry.description or entry.source}")
    failed = sum(not _describe_slide(path) for path in args.slides)
    return 1 if failed else 0


def _describe_slide(path) -> bool:
    from ..slide import open_slide

    try:
        slide = open_slide(path)
    except SlideReadError as exc:
        print(f"\n{path}: {describe(exc, 'cli')}")
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
