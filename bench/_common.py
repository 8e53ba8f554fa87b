"""Shared by the benchmark scripts."""

from __future__ import annotations

import json
from pathlib import Path


def save_result(result: dict, output: Path) -> None:
    """Write a benchmark's result as JSON (creating the folder) and say where."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {output}")
