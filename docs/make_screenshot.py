"""Regenerate docs/images/screenshot.png: the docked widget over a segmented slide.

Runs napari under a virtual display (re-executes itself with ``xvfb-run`` when there is no
display). CONCH's weights are gated and not available to CI, so the picture uses the
synthetic sample slide and the colour toy (``load_model("colour-toy")``, a demonstration
model that tells the synthetic slide's colours apart) — the same widget and code paths; the
caption in the README says so.

    python docs/make_screenshot.py
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "images" / "screenshot.png"


def main() -> None:
    if (
        not os.environ.get("DISPLAY")
        and shutil.which("xvfb-run")
        and not os.environ.get("_NC_SHOT")
    ):
        env = {**os.environ, "_NC_SHOT": "1"}
        cmd = ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", sys.executable, __file__]
        raise SystemExit(subprocess.call(cmd, env=env))
    # torch (the models) before napari starts OpenGL, or triton can crash it (see view.py)
    importlib.import_module("napari_conch.models.conch")
    import napari
    from qtpy.QtWidgets import QApplication

    import napari_conch as nc

    viewer = napari.Viewer(title="napari-conch")
    viewer.window.resize(1500, 900)
    viewer.open_sample("napari-conch", "synthetic")
    viewer.layers["synthetic ground truth"].visible = False
    _, widget = nc.view(
        viewer=viewer,
        model=nc.load_model("colour-toy"),
        block=False,
        classes={
            "tumor": ["tumor"],
            "stroma": ["stroma"],
            "necrosis": ["necrosis"],
            "background": ["background"],
        },
    )
    widget.layer_combo.setCurrentText("synthetic slide (not real tissue)")
    widget.tile_um.setValue(32.0)
    widget.overlap.setCurrentIndex(1)
    widget.tabs.setCurrentIndex(2)
    widget.run_segmentation()
    deadline = time.monotonic() + 300
    while widget._workers and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.02)
    viewer.reset_view()
    viewer.layers.selection.active = viewer.layers["colour-toy labels"]  # named after the model
    for _ in range(100):
        QApplication.processEvents()
        time.sleep(0.02)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(OUT), canvas_only=False)
    print(f"wrote {OUT}")
    viewer.close()


if __name__ == "__main__":
    main()
