"""bench/gpu.py runs: the CPU smoke run of the GPU benchmark (the figures mean nothing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_smoke_run_reports_every_figure(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--smoke", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["smoke"] is True and result["model"] == "conch_tiny"
    assert result["agreement"]["fp32"]["min_cosine"] > 0.9999
    assert all(rate > 0 for rate in result["model_only"].values())
    assert result["end_to_end"]["tiles"] > 0 and result["end_to_end"]["tiles_per_s"] > 0
    for decode in ("jpeg_fast", "jpeg_device"):  # from a JPEG SVS, decoded on CPU / device
        assert result["end_to_end"][decode]["tiles"] > 0
        assert result["end_to_end"][decode]["tiles_per_s"] > 0
    assert "end-to-end" in proc.stdout and "model-only" in proc.stdout
