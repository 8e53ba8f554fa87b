"""Regenerate the napari pictures of the docs: a first session, one picture per tab.

Writes docs/images/screenshot.png (the whole window over a segmented slide) and
docs/images/tab-<name>.png (the widget at each step of docs/napari.md's walkthrough). It
drives the widget the way a pathologist does — pick the model, load it, choose the slide,
run, type a prompt, find tiles, call the slide — through the same controls, then grabs
the widget.

Runs napari under a virtual display (re-executes itself with ``xvfb-run`` when there is no
display). CONCH's weights are gated and not available to CI, so the session uses the
synthetic sample slide and the colour toy (``load_model("colour-toy")``, a demonstration
model that tells the synthetic slide's colours apart) — the same widget and code paths;
the captions say so.

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
IMAGES = HERE / "images"
OUT = IMAGES / "screenshot.png"
SLIDE = "synthetic slide (not real tissue)"


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
    from qtpy.QtCore import QSettings

    import napari_conch as nc

    IMAGES.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="napari-conch")
    viewer.window.resize(1500, 900)
    viewer.open_sample("napari-conch", "synthetic")
    viewer.layers["synthetic ground truth"].visible = False
    from napari_conch._napari.widget import ConchWidget

    # fresh settings: the pictures show the defaults, not this machine's last session
    store = QSettings(str(IMAGES / ".screenshot-settings.ini"), QSettings.Format.IniFormat)
    store.clear()
    widget = ConchWidget(viewer, settings=store)
    viewer.window.add_dock_widget(widget, name="napari-conch", area="right")
    widget.setMinimumWidth(520)

    # 1. Model: the colour toy (offered first when no CONCH weights are found), loaded
    show(widget, "Model")
    widget.choose_model("colour-toy")
    widget.load_model()
    settle(widget)
    grab(widget, "model")

    # 2. Slide: the sample layer, small tiles for a quick run, tissue shown, estimate
    show(widget, "Slide")
    widget.choose_slide(SLIDE)
    widget.tile_um.value = 32.0
    widget.overlap.value = 0.5
    widget.estimate_work()
    settle(widget)
    grab(widget, "slide")

    # 3. Segment: the classes, Run; the map lands on the slide
    show(widget, "Segment")
    widget.set_classes(["tumor", "stroma", "necrosis", "background"])
    widget.run_segmentation()
    settle(widget)
    viewer.reset_view()
    viewer.layers.selection.active = viewer.layers["colour-toy labels"]  # named after the model
    settle(widget, frames=100)
    grab(widget, "segment")
    viewer.screenshot(str(OUT), canvas_only=False)
    print(f"wrote {OUT}")

    # 4. Explore: a typed prompt's heatmap, then the top tiles
    show(widget, "Explore")
    widget.prompt.value = "necrosis"
    settle(widget, until=lambda: widget.last_similarity is not None)
    widget.k.value = 5
    widget.run_retrieval()
    settle(widget)
    grab(widget, "explore")

    # 5. Slide call
    show(widget, "Slide call")
    widget.top_k.value = 10
    widget.run_slide_call()
    settle(widget)
    grab(widget, "call")

    # 6. Teach: two strokes per region under names the model cannot read, the map learns
    show(widget, "Teach")
    widget.teach.use_text.value = False  # as if the model could not read the class names
    widget.teach.live.value = False
    layer = widget.new_annotation_layer()
    paint_strokes(widget, layer)
    widget.teach.teach()
    settle(widget, until=lambda: widget.teach.lesson is not None)
    viewer.reset_view()
    viewer.layers.selection.active = layer
    for name in ("colour-toy labels", "colour-toy similarity", "colour-toy evidence"):
        if name in viewer.layers:
            viewer.layers[name].visible = False
    settle(widget, frames=100)
    grab(widget, "teach")
    viewer.screenshot(str(IMAGES / "teach.png"), canvas_only=False)
    print(f"wrote {IMAGES / 'teach.png'}")
    viewer.close()
    nc  # noqa: B018 (imported for its side effects: the reader and sample are registered)
    (IMAGES / ".screenshot-settings.ini").unlink(missing_ok=True)


def paint_strokes(widget, layer) -> None:
    """Two small squares of annotation in each planted region, in its class's label."""
    import numpy as np

    import napari_conch as nc

    grid = widget.session.grid
    names = widget.teach.class_names()
    data = np.asarray(layer.data).copy()
    synth = nc.synthetic_slide()
    for region in synth.regions_um:
        (cy, cx), (_hy, hx) = region["centre_um"], region["half_size_um"]
        for dx in (-0.6, -0.2, 0.5):  # two or three strokes per region
            if synth.class_names[synth.label_at_um(cy, cx + dx * hx) - 1] != region["class"]:
                continue  # regions overlap: the stroke would mislabel another class
            r, c = (
                int((v - t) / grid.cell_scale_um[0] + 0.5)
                for v, t in zip((cy, cx + dx * hx), grid.cell_translate_um, strict=True)
            )
            data[r - 1 : r + 2, c - 1 : c + 2] = names.index(region["class"]) + 1
    layer.data = data


def show(widget, title: str) -> None:
    tabs = widget.tabs
    tabs.setCurrentIndex(next(i for i in range(tabs.count()) if tabs.tabText(i) == title))


def settle(widget, frames: int = 30, until=lambda: True, timeout: float = 300.0) -> None:
    """Let the workers finish and the GUI draw."""
    from qtpy.QtWidgets import QApplication

    deadline = time.monotonic() + timeout
    while (widget._workers or not until()) and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.02)
    for _ in range(frames):
        QApplication.processEvents()
        time.sleep(0.02)


def grab(widget, name: str) -> None:
    path = IMAGES / f"tab-{name}.png"
    widget.grab().save(str(path))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
