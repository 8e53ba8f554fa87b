"""Shared by the benchmark scripts."""

from __future__ import annotations

import json
from pathlib import Path


def machine() -> dict:
    """Which CPU (and how many cores) a figure comes from: results differ between CPUs
    (bf16 most of all), so every result records it."""
    import os

    from napari_conch.models.device import cpu_bf16, cpu_name

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "bf16_instructions": cpu_bf16()}


def save_result(result: dict, output: Path) -> None:
    """Write a benchmark's result as JSON (with the machine it ran on) and say where."""
    result.setdefault("machine", machine())
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {output}")
