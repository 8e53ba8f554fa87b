"""bench/teach.py runs and docs/benchmarks.md renders its section (a small run: the figures
mean nothing here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_teach_benchmark_small_run_reports_every_figure(tmp_path):
    out = tmp_path / "teach.json"
    args = ["--tiles", "3000", "--tiny", "--regions", "1", "--slides", "1", "--slide-px", "3072"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "teach.py"), *args, "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["cost"]["ratio_refit_remap_vs_zero_shot"] > 0
    for label in ("colour toy", "untrained CONCH"):
        row = result["value"][label]["by_regions"]["1"]
        assert 0 <= row["few_shot_dice"] <= 1 and 0 <= row["zero_shot_dice"] <= 1
    assert result["value"]["colour toy"]["by_regions"]["1"]["few_shot_dice"] > 0.9

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import run_all
    finally:
        sys.path.remove(str(ROOT / "bench"))
    section = "\n".join(run_all._teach_section(result))
    assert "Teaching from annotations" in section and "refit + remap" in section
