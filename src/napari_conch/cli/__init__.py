"""The ``napari-conch`` command: the library's main jobs from a shell, for one slide or many.

Examples
--------
    napari-conch info slide.svs
    napari-conch demo
    napari-conch view slide.svs --results results/
    napari-conch embed *.svs --scheduler tcp://scheduler:8786
    napari-conch segment slide.svs --classes tumor stroma necrosis -o results/
    napari-conch teach slide.svs --annotations slide.geojson -o classifier/
    napari-conch similarity slide.svs --text "mitotic figure" -o results/
    napari-conch classify *.svs --prompts nsclc_prompts.json --top-k 10 -o calls.csv
    napari-conch retrieve *.svs --text "signet ring cells" -k 20
    napari-conch evaluate CRC-VAL-HE-7K/ --prompts crc100k_prompts.json -o metrics.json

Each command family is one module of this package, its options beside its handler
(``register(sub)`` adds the subcommand, whose ``func`` runs it).
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import calls, demo, embed, evaluate, info, maps, teach, view

# In the order ``--help`` lists them.
COMMANDS = (info, demo, view, embed, maps, teach, calls, evaluate)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="napari-conch",
        description="CONCH zero-shot pathology on whole-slide images.",
        epilog="Run 'napari-conch COMMAND --help' for the options and examples of a command.",
    )
    parser.add_argument("--version", action="version", version=f"napari-conch {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
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
    from ..errors import NapariConchError, describe

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
    from ..errors import NapariConchError, describe

    if isinstance(record.args, tuple) and any(isinstance(a, NapariConchError) for a in record.args):
        record.args = tuple(
            describe(a, "cli") if isinstance(a, NapariConchError) else a for a in record.args
        )
    return True
