"""Option groups several commands share, and the way every command is declared."""

from __future__ import annotations

import argparse
from pathlib import Path

MODEL_HELP = (
    "model name: conch (default), plip, quiltnet, colour-toy or a registered one; several "
    "separated by commas (plip,quiltnet) to compare them on the same slides"
)


def command(sub, name: str, help_text: str, description: str, examples: list[str]):
    """A subcommand with its description and examples (shown by ``--help``)."""
    return sub.add_parser(
        name,
        help=help_text,
        description=description,
        epilog="examples:\n" + "\n".join(f"  {e}" for e in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def model_options(
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


def slide_options(parser: argparse.ArgumentParser) -> None:
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


def dense_options(parser: argparse.ArgumentParser) -> None:
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


def prompt_options(
    parser: argparse.ArgumentParser, *, required: bool = True, classifier: bool = False
) -> None:
    group = parser.add_argument_group("prompts")
    choice = group.add_mutually_exclusive_group(required=required)
    choice.add_argument("--prompts", type=Path, help="prompt JSON in CONCH's format")
    choice.add_argument("--classes", nargs="+", help="class names (our default templates)")
    if classifier:
        choice.add_argument(
            "--classifier",
            type=Path,
            help="instead of text: a classifier 'napari-conch teach' made (few-shot maps)",
        )
