"""The ``napari-conch`` command: the library's main jobs from a shell, for one slide or many.

Examples
--------
    napari-conch info slide.svs
    napari-conch demo
    napari-conch view slide.svs --results results/
    napari-conch embed *.svs --scheduler tcp://scheduler:8786
    napari-conch segment slide.svs --classes tumor stroma necrosis -o results/
    napari-conch similarity slide.svs --text "mitotic figure" -o results/
    napari-conch classify *.svs --prompts nsclc_prompts.json --top-k 10 -o calls.csv
    napari-conch retrieve *.svs --text "signet ring cells" -k 20
    napari-conch evaluate CRC-VAL-HE-7K/ --prompts crc100k_prompts.json -o metrics.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from .export import FORMATS
from .samples import DEMO_SAMPLES

logger = logging.getLogger("napari_conch.cli")

UNTRAINED_BANNER = """\
**********************************************************************************
*  UNTRAINED MODEL: the weights are random. The numbers below check that the     *
*  pipeline runs; they are NOT results. Get the CONCH weights (gated: request    *
*  access at https://huggingface.co/MahmoodLab/conch) and pass --checkpoint      *
*  PATH, set NAPARI_CONCH_CHECKPOINT, or set HF_TOKEN to download them.          *
**********************************************************************************"""
DEFAULT_FORMATS = ("geojson", "ome-zarr", "ome-tiff", "csv")


# -- options ---------------------------------------------------------------------------------


MODEL_HELP = (
    "model name: conch (default), plip, quiltnet, colour-toy or a registered one; several "
    "separated by commas (plip,quiltnet) to compare them on the same slides"
)


def _model_options(
    parser: argparse.ArgumentParser, default_model: str | None = "conch", help_text=MODEL_HELP
) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=default_model, help=help_text)
    group.add_argument(
        "--checkpoint",
        help="weights file or folder, 'hf_hub:REPO', or 'random' (untrained: a pipeline "
        "check); with several models, one value for all or one per model, comma-separated",
    )
    group.add_argument(
        "--tokenizer", help="tokenizer file or folder (default: found automatically)"
    )
    group.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] | mps")
    group.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16")


def _slide_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("slides and tiles")
    group.add_argument("--mpp", type=float, help="µm per pixel, for files that do not record it")
    group.add_argument("--tile-um", type=float, help="tile side in µm (default: from the model)")
    group.add_argument(
        "--overlap", type=float, default=0.0, help="tile overlap: 0, 0.5, 0.75 (default 0)"
    )
    group.add_argument(
        "--min-tissue", type=float, default=0.1, help="min. tissue fraction per tile"
    )
    group.add_argument("--batch-size", type=int, help="tiles per model call")
    group.add_argument(
        "--cache", default="auto", help="embedding cache folder, 'auto' (default) or 'none'"
    )
    decoding = group.add_mutually_exclusive_group()
    decoding.add_argument(
        "--exact-decode",
        action="store_const",
        const="exact",
        default="fast",
        dest="decode",
        help="decode JPEG tiles in full and resize them as the reference does, instead of "
        "decoding them 2-8× smaller when the model reads a coarser resolution (slower; "
        "cached apart); the same as --decode exact",
    )
    decoding.add_argument(
        "--decode",
        choices=("fast", "exact", "device"),
        dest="decode",
        help="fast (default): JPEG tiles 2-8× smaller when the model reads a coarser "
        "resolution; exact: full decode + the reference resize; device: a batch's JPEG tiles "
        "decoded in full on the model's device (nvJPEG on a GPU), then resized there (slides "
        "without plain JPEG tiles fall back to fast, with a log line). Each is cached apart",
    )


def _dense_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sub-tile maps (experimental)")
    group.add_argument(
        "--dense",
        action="store_true",
        help="a map at token resolution (8 µm for CONCH) over --region instead of the tile map "
        "(experimental; conch only; --overlap defaults to 0.5 here)",
    )
    group.add_argument(
        "--region",
        nargs=4,
        type=float,
        metavar=("Y0", "X0", "Y1", "X1"),
        help="the region of a dense map, in µm from the slide's top-left corner",
    )


def _check_dense(args) -> None:
    """--dense needs --region (said before any model loads); --region alone is a mistake."""
    if getattr(args, "dense", False) and not args.region:
        raise ValueError(
            "--dense needs --region Y0 X0 Y1 X1 (µm): a dense map's work grows with it."
        )
    if getattr(args, "region", None) and not args.dense:
        raise ValueError("--region is for dense maps: add --dense (or leave --region out).")


def _check_dense_models(args, models) -> None:
    from .protocol import gives_token_embeddings

    if args.dense:
        without = [m.name for m in models if not gives_token_embeddings(m)]
        if without:
            raise ValueError(
                f"--dense: {', '.join(without)} gives no token embeddings; dense maps work "
                "with conch only (experimental)."
            )


def _dense_tokens(path, model, args):
    from .dense import dense_tokens
    from .slide import open_slide

    slide = open_slide(path, mpp=args.mpp)
    return dense_tokens(slide, model, args.region, args.tile_um, args.overlap or 0.5)


DENSE_FORMATS = ("geojson", "ome-zarr", "ome-tiff")


def _prompt_options(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    group = parser.add_argument_group("prompts")
    choice = group.add_mutually_exclusive_group(required=required)
    choice.add_argument("--prompts", type=Path, help="prompt JSON in CONCH's format")
    choice.add_argument("--classes", nargs="+", help="class names (our default templates)")


def _command(sub, name: str, help_text: str, description: str, examples: list[str]):
    return sub.add_parser(
        name,
        help=help_text,
        description=description,
        epilog="examples:\n" + "\n".join(f"  {e}" for e in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


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

    info = _command(
        sub,
        "info",
        "versions, devices, where weights and the tokenizer are found; describe slides",
        "Report the environment and which CONCH weights and tokenizer load_model would use "
        "(nothing is downloaded); with slides, what napari-conch reads from them.",
        ["napari-conch info", "napari-conch info slide.svs other.ndpi"],
    )
    info.add_argument("slides", nargs="*", help="slides to describe")
    info.set_defaults(func=cmd_info)

    demo = _command(
        sub,
        "demo",
        "the main job end to end on a sample, checked against its known truth",
        "Segment a sample zero-shot, call it with MI-Zero and write every export (with the "
        "sample itself) into OUTPUT. With CONCH weights (--checkpoint, "
        "$NAPARI_CONCH_CHECKPOINT or the Hugging Face cache) it runs CONCH on scikit-image's "
        "IHC colon sample. Without, it runs the colour toy — a demonstration model that "
        "tells colours apart, not pathology — on the synthetic slide, whose planted regions "
        "are known, and prints how well the segmentation agrees with them (Dice per class). "
        "--checkpoint random runs untrained CONCH: a pipeline check, not a result.",
        [
            "napari-conch demo",
            "napari-conch demo -o my-demo/",
            "napari-conch demo --checkpoint ~/weights/conch/pytorch_model.bin",
            "napari-conch demo --checkpoint random --sample synthetic   # untrained CONCH",
        ],
    )
    _model_options(
        demo,
        default_model=None,
        help_text="model name (default: conch when its weights are found, else colour-toy); "
        "plip, quiltnet or a registered one also work",
    )
    demo.add_argument(
        "--sample",
        choices=DEMO_SAMPLES,
        help="synthetic (planted regions, scored against the truth) or ihc (real tissue); "
        "default: synthetic for the colour toy, ihc for CONCH",
    )
    demo.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("napari-conch-demo"),
        help="output folder (default: napari-conch-demo)",
    )
    demo.set_defaults(func=cmd_demo)

    view = _command(
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
    view.add_argument("slide", nargs="?", help="slide or image file (optional)")
    view.add_argument(
        "--results", type=Path, help="folder of napari-conch exports to show over the slide"
    )
    view.add_argument("--mpp", type=float, help="µm/px when the file does not record it")
    _model_options(view)
    view.add_argument("--classes", nargs="+", help="classes for the segmentation table")
    view.set_defaults(func=cmd_view)

    embed = _command(
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
    embed.add_argument("slides", nargs="+")
    _model_options(embed)
    _slide_options(embed)
    embed.add_argument("--scheduler", help="address of a dask.distributed scheduler")
    embed.add_argument("--workers", type=int, help="start a local cluster with this many processes")
    embed.set_defaults(func=cmd_embed)

    segment = _command(
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
        ],
    )
    segment.add_argument("slides", nargs="+")
    _model_options(segment)
    _slide_options(segment)
    _prompt_options(segment)
    segment.add_argument("--background", help="class (or phrase) whose cells become label 0")
    segment.add_argument("--min-confidence", type=float, help="cells below this probability → 0")
    segment.add_argument(
        "--formats",
        nargs="+",
        default=list(DEFAULT_FORMATS),
        choices=FORMATS,
        help=f"what to write (default: {' '.join(DEFAULT_FORMATS)})",
    )
    segment.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    _dense_options(segment)
    segment.set_defaults(func=cmd_segment)

    similarity = _command(
        sub,
        "similarity",
        "similarity heatmap of slides to a text prompt",
        "Write the cosine-similarity map of each slide to --text (minus --negative) as an "
        "OME-TIFF in µm, plus a tile table and a summary.",
        ['napari-conch similarity case.svs --text "mitotic figure" -o out/'],
    )
    similarity.add_argument("slides", nargs="+")
    _model_options(similarity)
    _slide_options(similarity)
    similarity.add_argument("--text", required=True)
    similarity.add_argument("--negative")
    similarity.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    _dense_options(similarity)
    similarity.set_defaults(func=cmd_similarity)

    classify = _command(
        sub,
        "classify",
        "MI-Zero slide-level calls (a table)",
        "Call each slide with MI-Zero: per class, the mean of its top-K tile similarities. "
        "Choose K before looking at labels.",
        ["napari-conch classify *.svs --prompts nsclc_prompts.json --top-k 10 -o calls.csv"],
    )
    classify.add_argument("slides", nargs="+")
    _model_options(classify)
    _slide_options(classify)
    _prompt_options(classify)
    classify.add_argument("--top-k", type=int, default=10)
    classify.add_argument(
        "--background",
        help="class (or phrase) for non-tissue: its tiles are left out and it is never the call",
    )
    classify.add_argument("-o", "--output", type=Path, help="also write the table (.csv)")
    classify.set_defaults(func=cmd_classify)

    retrieve = _command(
        sub,
        "retrieve",
        "the tiles most similar to a prompt across slides",
        "Rank the tiles of all slides by similarity to --text and list the top k.",
        ['napari-conch retrieve *.svs --text "signet ring cells" -k 20 -o hits.csv'],
    )
    retrieve.add_argument("slides", nargs="+")
    _model_options(retrieve)
    _slide_options(retrieve)
    retrieve.add_argument("--text", required=True)
    retrieve.add_argument("-k", type=int, default=20)
    retrieve.add_argument(
        "--background", help="phrase for non-tissue: tiles it wins over --text are not hits"
    )
    retrieve.add_argument("--negative", help="rank by similarity to --text minus this prompt")
    retrieve.add_argument("-o", "--output", type=Path, help="also write the hits (.csv)")
    retrieve.set_defaults(func=cmd_retrieve)

    evaluate = _command(
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
    evaluate.add_argument("dataset", type=Path)
    _model_options(evaluate)
    _prompt_options(evaluate)
    evaluate.add_argument("--label-map", type=Path, help="JSON {dataset label: prompt class}")
    evaluate.add_argument("--batch-size", type=int, default=32)
    evaluate.add_argument("-o", "--output", type=Path, help="also write the metrics (.json)")
    evaluate.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose else logging.INFO)
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_command_line_wording)
    if args.command is None:
        parser.print_help()
        return 2
    from .errors import NapariConchError, describe

    try:
        return int(args.func(args) or 0)
    except (NapariConchError, OSError, ValueError, ImportError) as exc:
        print(f"napari-conch: error: {describe(exc, 'cli')}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "napari-conch: interrupted (finished tiles stay cached; run again to resume)",
            file=sys.stderr,
        )
        return 130


def _command_line_wording(record: logging.LogRecord) -> bool:
    """Library warnings that carry an error say how to fix it with this command's options."""
    from .errors import NapariConchError, describe

    if isinstance(record.args, tuple) and any(isinstance(a, NapariConchError) for a in record.args):
        record.args = tuple(
            describe(a, "cli") if isinstance(a, NapariConchError) else a for a in record.args
        )
    return True


# -- checks before any model is built --------------------------------------------------------
#
# A command checks what the user gave it — slides exist and open with a pixel size, outputs
# can be written, prompts parse, the model's text side (CONCH's tokenizer) is there — before
# it builds a model or reads a tile, so a typo costs a second, not an embedded slide.


def _check_slides(paths, mpp: float | None) -> None:
    """Every slide exists, opens and knows (or is given) its µm per pixel."""
    from .errors import SlideReadError

    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:  # before any import of the readers: answers at once
        raise SlideReadError(f"No such file: {', '.join(missing)}.")
    from .slide import open_slide

    for path in paths:
        slide = open_slide(path, mpp=mpp)
        try:
            slide.require_mpp("tiling")
        finally:
            slide.close()


def _output_folder(path: Path) -> Path:
    """Check that ``path`` is (or can become) a folder we can write into — without creating
    it, so a command that fails later leaves nothing behind (it is made when the first file
    is written)."""
    from .errors import OutputError

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


def _output_file(path: Path | None) -> Path | None:
    """The folder of an output file (-o FILE) exists or can be made, and is writable."""
    if path is None:
        return None
    _output_folder(Path(path).expanduser().parent)
    return Path(path).expanduser()


def _check_formats(formats) -> None:
    """Formats that need an optional library say so before any work starts."""
    import importlib.util

    from .errors import OutputError

    if "parquet" in formats and importlib.util.find_spec("pyarrow") is None:
        raise OutputError(
            "Writing Parquet needs pyarrow: pip install pyarrow, or leave parquet out of --formats."
        )


def _check_prompts(models, prompts=None, background=None, texts=()) -> None:
    """Encode the prompts with every model now: a prompt a model cannot read fails here,
    before any tile is embedded (the encodings stay in the models' text caches)."""
    from .zeroshot import encode_prompts

    for model in models:
        if prompts is not None:
            encode_prompts(model, prompts, background)
        elif background is not None:
            model.encode_texts([background])
        if texts:
            model.encode_texts(list(texts))


def _program() -> str:
    """The command as the user typed it: `.venv/bin/napari-conch` stays that, so the commands
    we suggest run as shown; plain `napari-conch` when that is what PATH finds."""
    import shutil

    called = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if Path(called).name != "napari-conch":
        return "napari-conch"
    on_path = shutil.which("napari-conch")
    if on_path and Path(on_path).resolve() == Path(called).resolve():
        return "napari-conch"
    return called


def _check_models(args, names: list[str], *, text: bool) -> None:
    """Every model name is known, and (for commands with prompts) its text side works."""
    from .models.registry import check_text_side, model_entry

    for name, checkpoint in zip(names, _checkpoints(args, names), strict=True):
        model_entry(name)
        if text:
            check_text_side(name, checkpoint=checkpoint, tokenizer=args.tokenizer)


# -- shared steps ----------------------------------------------------------------------------


def _model_names(args) -> list[str]:
    names = [n.strip() for n in str(args.model).split(",") if n.strip()]
    if not names:
        raise ValueError("--model is empty; give a model name such as conch, plip or quiltnet.")
    if len(set(names)) != len(names):
        raise ValueError(f"--model names a model twice: {args.model!r}.")
    return names


def _checkpoints(args, names: list[str]) -> list:
    """``--checkpoint``: one value for all models, or one per model (comma-separated)."""
    if args.checkpoint and len(names) > 1 and "," in args.checkpoint:
        checkpoints = [c.strip() or None for c in args.checkpoint.split(",")]
        if len(checkpoints) != len(names):
            raise ValueError(
                f"--checkpoint lists {len(checkpoints)} values for {len(names)} models; give "
                "one for all or one per model, in the same order."
            )
        return checkpoints
    return [args.checkpoint] * len(names)


def _load_model(args, name: str, checkpoint):
    from .models import load_model

    options = dict(tokenizer=args.tokenizer, device=args.device, precision=args.precision)
    model = load_model(name, checkpoint=checkpoint, **options)
    if not getattr(model, "trained", True):
        print(UNTRAINED_BANNER, file=sys.stderr)
    return model


def _single_model(args) -> str:
    names = _model_names(args)
    if len(names) > 1:
        raise ValueError(
            "This command takes one model; compare models with segment, similarity, "
            "classify, retrieve or evaluate."
        )
    return names[0]


def _load_models(args, names: list[str]) -> list:
    """The models of ``--model a,b`` with their ``--checkpoint`` (one for all, or one each)."""
    return [_load_model(args, n, c) for n, c in zip(names, _checkpoints(args, names), strict=True)]


def _prepare(args, *, slides=(), folder=None, file=None, prompts=False, text=False):
    """The checks every command runs, in order of cost; returns (model names, prompt set)."""
    _check_slides(slides, getattr(args, "mpp", None))
    if folder is not None:
        _output_folder(folder)
    _output_file(file)
    prompt_set = _prompts(args) if prompts else None
    names = _model_names(args)
    _check_models(args, names, text=text or prompts)
    return names, prompt_set


def _tagged(stem: str, model, models: list) -> str:
    """File stem; with several models each one's files carry its name."""
    return f"{stem}.{model.name}" if len(models) > 1 else stem


def _prompts(args):
    from .prompts import PromptSet

    return PromptSet.from_json(args.prompts) if args.prompts else PromptSet(args.classes)


def _cache(args):
    return None if str(args.cache).lower() in ("none", "off", "") else args.cache


def _embed(path, model, args):
    """Open, tile and embed one slide file with the command's options."""
    from .slide import open_slide
    from .tiling import tile_grid

    slide = open_slide(path, mpp=args.mpp)
    grid = tile_grid(
        slide, model, tile_um=args.tile_um, overlap=args.overlap or None, min_tissue=args.min_tissue
    )
    emb = _embed_grid(
        slide,
        model,
        grid,
        cache=_cache(args),
        batch_size=args.batch_size,
        quiet=args.quiet,
        decode=getattr(args, "decode", "fast"),
    )
    return slide, emb


def _embed_grid(slide, model, grid, *, cache, batch_size=None, quiet=False, decode="fast"):
    """Embed ``grid`` with a progress bar on stderr (log lines print above it)."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .engine import embed

    bar = tqdm(total=len(grid), unit="tile", desc=slide.name[:30], disable=quiet, file=sys.stderr)

    def progress(done, total, rate):
        bar.total = total
        bar.update(done - bar.n)  # redraws at most every mininterval, also on a pipe

    try:
        with logging_redirect_tqdm():
            return embed(
                slide,
                model,
                grid,
                cache=cache,
                progress=progress,
                batch_size=batch_size,
                decode=decode,
            )
    finally:
        bar.close()


def _write_text(path: Path, text: str) -> None:
    from .export import _atomic

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with _atomic(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _write_csv(table, path: Path) -> None:
    from .export import _atomic

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with _atomic(path) as tmp:
        table.to_csv(tmp, index=False)


# -- commands --------------------------------------------------------------------------------


def cmd_info(args) -> int:
    import platform

    import torch

    from . import __version__
    from .errors import NapariConchError, describe
    from .models import available_models
    from .models.device import available_devices
    from .models.registry import model_entry
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
    from .errors import SlideReadError, describe
    from .slide import open_slide

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


def cmd_demo(args) -> int:
    out = _output_folder(args.output)
    _check_formats(FORMATS)
    from .models.colour_toy import COLOUR_TOY
    from .samples import demo_sample

    name, checkpoint, why = _demo_model(args)
    sample = demo_sample(args.sample or ("synthetic" if name == COLOUR_TOY else "ihc"))
    _check_models(args, [name], text=True)
    model = _load_model(args, name, checkpoint)
    _check_prompts([model], sample.classes, sample.background, texts=[sample.query])
    if why:
        print(why)
    return _run_demo(model, sample, out, quiet=args.quiet)


def _demo_model(args) -> tuple[str, object, str]:
    """The model the demo runs: the one asked for; else CONCH when its weights are on this
    machine; else the colour toy. Returns (name, checkpoint, why that model)."""
    if args.model:
        return _single_model(args), args.checkpoint, ""
    if args.checkpoint:
        return "conch", args.checkpoint, ""
    from .models import default_model

    name = default_model()
    if name == "conch":
        return name, None, ""
    return (
        name,
        None,
        "No CONCH weights on this machine: running the colour toy, a demonstration model "
        "that tells colours apart (not pathology), on the synthetic slide with planted "
        "regions.",
    )


def _run_demo(model, sample, out: Path, *, quiet: bool) -> int:
    from .evaluate import segmentation_scores
    from .export import FORMATS, export_all, slide_to_ome_tiff
    from .prompts import PromptSet
    from .tiling import tile_grid
    from .zeroshot import classify_slide, similarity_map, zero_shot_segment

    slide = sample.slide
    grid = tile_grid(slide, model, overlap=0.5)
    emb = _embed_grid(slide, model, grid, cache=None, quiet=quiet)
    prompts = PromptSet(sample.classes)
    seg = zero_shot_segment(emb, model, prompts, background=sample.background)
    sim = similarity_map(emb, model, text=sample.query)
    call = classify_slide(emb, model, prompts, top_k=3, background=sample.background)
    stem = f"{sample.name}-{model.name}"
    written = list(
        export_all(seg, out, stem, emb=emb, similarities=[sim], formats=FORMATS).values()
    )
    slide_file = slide_to_ome_tiff(slide, out / f"{sample.name}-slide.ome.tif")
    written.append(slide_file)
    trained = bool(getattr(model, "trained", True))
    if not trained:
        _write_text(
            out / "UNTRAINED.txt",
            "These files were made with an UNTRAINED (random) model: they check that the "
            "pipeline runs and are NOT results.\n",
        )
    tag = "" if trained else "  [UNTRAINED — not a result]"
    print(f"model: {model!r}{tag}")
    print(f"sample: {slide.name}, {len(emb)} tiles of {emb.grid.tile_um:.0f} µm")
    print("areas (mm²): " + ", ".join(f"{k} {v:.4f}" for k, v in seg.areas_mm2.items()))
    if sample.truth is not None:
        truth = sample.truth
        scores = segmentation_scores(
            seg, truth.labels, truth.labels_downsample, truth_names=truth.class_names
        )
        print("agreement with the planted truth (Dice per class, 1 = perfect):")
        for name in truth.class_names:
            print(f"  {name:<10} {scores[name]['dice']:.3f}")
        print(f"  {'mean':<10} {scores['mean_dice']:.3f}{tag}")
        written.append(out / f"{stem}.agreement.json")
        _write_text(written[-1], json.dumps(scores, indent=2, default=float))
    print(f"slide call (MI-Zero, top 3): {call.call}{tag}")
    print(f"wrote {len(written)} files to {out}/")
    print(_next_steps(model, slide_file, out))
    return 0


def _next_steps(model, slide_file: Path, out: Path) -> str:
    program = _program()
    lines = [
        "",
        "Next:",
        f"  see it in napari:   {program} view {slide_file} --results {out}",
        f"  your own slide:     {program} segment case.svs --classes tumor stroma "
        "necrosis background --background background -o results/",
    ]
    if model.name != "conch" or not getattr(model, "trained", True):
        lines += [
            "  CONCH weights:      request access at https://huggingface.co/MahmoodLab/conch, "
            "download pytorch_model.bin, then",
            "                      export NAPARI_CONCH_CHECKPOINT=/path/to/pytorch_model.bin",
            f"                      (or pass --checkpoint PATH); `{program} info` shows what "
            f"is found, and `{program} demo` then runs CONCH.",
        ]
    return "\n".join(lines)


def cmd_view(args) -> int:
    from . import view

    if args.slide:
        _check_slides([args.slide], args.mpp)
    results = None
    if args.results is not None:
        from .readback import read_results

        results = read_results(args.results)
    model = None
    if args.checkpoint:
        name = _single_model(args)
        model = _load_model(args, name, args.checkpoint)
    slide = None
    if args.slide:
        from .slide import open_slide

        slide = open_slide(args.slide, mpp=args.mpp)
    view(slide, model=model, classes=args.classes, results=results, block=True)
    return 0


def cmd_embed(args) -> int:
    if args.scheduler or args.workers:
        return _embed_distributed(args)
    _check_slides(args.slides, args.mpp)
    name = _single_model(args)
    _check_models(args, [name], text=False)
    model = _load_model(args, name, args.checkpoint)
    for path in args.slides:
        _, emb = _embed(path, model, args)
        print(f"{path}: {emb.n_done}/{len(emb)} tiles → {emb.store_path or '(memory)'}")
    return 0


def _embed_distributed(args) -> int:
    from dask.distributed import Client, LocalCluster

    from .distributed import embed_slides

    if _cache(args) is None:
        raise ValueError("Distributed embedding writes to a shared cache: give --cache PATH.")
    spec = {
        k: getattr(args, k)
        for k in ("checkpoint", "tokenizer", "device", "precision")
        if getattr(args, k)
    }
    names = _model_names(args)
    if len(names) > 1:
        raise ValueError("embed on a cluster takes one model at a time.")
    spec["name"] = names[0]
    grid = {"tile_um": args.tile_um, "overlap": args.overlap or None, "min_tissue": args.min_tissue}
    if args.scheduler:
        client, cluster = Client(args.scheduler), None
    else:
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True)
        client = Client(cluster)
    try:
        results = embed_slides(
            args.slides,
            spec,
            client,
            cache=args.cache,
            mpp=args.mpp,
            batch_size=args.batch_size,
            progress=lambda d, t: print(f"{d}/{t} slides done", file=sys.stderr),
            decode=args.decode,
            **grid,
        )
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    for path, emb in zip(args.slides, results, strict=True):
        print(f"{path}: {emb.n_done}/{len(emb)} tiles → {emb.store_path}")
    return 0


def cmd_segment(args) -> int:
    _check_formats(args.formats)
    _check_dense(args)
    names, prompts = _prepare(args, slides=args.slides, folder=args.output, prompts=True)
    from .export import export_all, file_stem
    from .zeroshot import zero_shot_segment

    models = _load_models(args, names)
    _check_prompts(models, prompts, args.background)
    _check_dense_models(args, models)
    formats = tuple(args.formats)
    rows = []
    if args.dense:
        formats = tuple(f for f in formats if f in DENSE_FORMATS) or DENSE_FORMATS
    for path in args.slides:
        for model in models:
            stem = _tagged(file_stem(path), model, models)
            if args.dense:  # experimental: token cells over the region; no tile table
                seg = _dense_tokens(path, model, args).segment(
                    model, prompts, args.background, args.min_confidence
                )
                emb, stem = None, f"{stem}.dense"
            else:
                _, emb = _embed(path, model, args)
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
        _print_comparison(rows, "area (mm²) per class", args.output / "comparison.csv")
    return 0


def _print_comparison(rows: list[dict], what: str, path=None) -> None:
    import pandas as pd

    table = pd.DataFrame(rows)
    print(f"\nmodel comparison — {what}:")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if path is not None:
        _write_csv(table, path)


def cmd_similarity(args) -> int:
    if not args.text.strip():
        raise ValueError("--text is empty; give the phrase to map, e.g. --text necrosis.")
    _check_dense(args)
    names, _ = _prepare(args, slides=args.slides, folder=args.output, text=True)
    from .export import file_stem, tile_table, to_ome_tiff
    from .zeroshot import similarity_map

    models = _load_models(args, names)
    _check_prompts(models, texts=[args.text, *([args.negative] if args.negative else [])])
    _check_dense_models(args, models)
    out = args.output
    for path, model in ((p, m) for p in args.slides for m in models):
        stem = _tagged(file_stem(path), model, models)
        if args.dense:  # experimental: token cells over the region; no tile table
            sim = _dense_tokens(path, model, args).similarity(model, args.text, args.negative)
            stem = f"{stem}.dense"
        else:
            _, emb = _embed(path, model, args)
            sim = similarity_map(emb, model, text=args.text, negative=args.negative)
        out.mkdir(parents=True, exist_ok=True)
        to_ome_tiff(sim, out / f"{stem}.similarity.ome.tif", what="similarity")
        if not args.dense:
            tile_table(emb, similarities=[sim], path=out / f"{stem}.similarity.csv")
        summary = {"query": sim.queries, "contrast_limits": sim.contrast_limits, **sim.metadata}
        _write_text(out / f"{stem}.similarity.json", json.dumps(summary, indent=2, default=str))
        print(
            f"{path}: similarity {sim.contrast_limits[0]:.3f} … {sim.contrast_limits[1]:.3f} "
            f"→ {out}/"
        )
    return 0


def cmd_classify(args) -> int:
    names, prompts = _prepare(args, slides=args.slides, file=args.output, prompts=True)
    import pandas as pd

    from .zeroshot import classify_slide

    models = _load_models(args, names)
    _check_prompts(models, prompts, args.background)
    rows = []
    for path, model in ((p, m) for p in args.slides for m in models):
        _, emb = _embed(path, model, args)
        call = classify_slide(emb, model, prompts, top_k=args.top_k, background=args.background)
        rows.append(
            {
                "slide": str(path),
                **({"model": model.name} if len(models) > 1 else {}),
                "call": call.call,
                "top_k": call.top_k,
                "trained": call.trained,
                **{f"score({n})": s for n, s in call.scores.items()},
            }
        )
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    if args.output:
        _write_csv(table, args.output)
    return 0


def cmd_retrieve(args) -> int:
    if not args.text.strip():
        raise ValueError("--text is empty; give the phrase to search for.")
    names, _ = _prepare(args, slides=args.slides, file=args.output, text=True)
    import pandas as pd

    from .zeroshot import retrieve

    models = _load_models(args, names)
    texts = [args.text, *([args.negative] if args.negative else [])]
    _check_prompts(models, background=args.background, texts=texts)
    frames = []
    for model in models:
        sources = [_embed(path, model, args)[1] for path in args.slides]
        found = retrieve(
            sources,
            model,
            args.text,
            k=args.k,
            background=args.background,
            negative=args.negative,
        )
        hits = pd.DataFrame([vars(h) for h in found])
        if len(models) > 1:
            hits.insert(0, "model", model.name)
        frames.append(hits)
    table = pd.concat(frames, ignore_index=True)
    print(table.to_string(index=False) if len(table) else "no tiles")
    if args.output:
        _write_csv(table, args.output)
    return 0


def cmd_evaluate(args) -> int:
    from .errors import SlideReadError

    if not args.dataset.exists():
        raise SlideReadError(
            f"No such dataset: {args.dataset} (a folder of class folders or a CSV)."
        )
    label_map = json.loads(args.label_map.read_text(encoding="utf-8")) if args.label_map else None
    names, prompts = _prepare(args, file=args.output, prompts=True)
    from .evaluate import evaluate_tiles

    models = _load_models(args, names)
    _check_prompts(models, prompts)
    payloads = {}
    for model in models:
        result = evaluate_tiles(
            model, args.dataset, prompts, label_map=label_map, batch_size=args.batch_size
        )
        if len(models) > 1:
            print(f"== {model.name} ==")
        payloads[model.name] = _report_evaluation(result)
    if args.output:
        payload = payloads if len(models) > 1 else next(iter(payloads.values()))
        _write_text(args.output, json.dumps(payload, indent=2))
    return 0


def _report_evaluation(result) -> dict:
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
