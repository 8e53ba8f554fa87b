"""Regenerate docs/images/dense-vs-tile.png: a tile map and a dense (token) map of the same
region, side by side, over a slide with a planted ellipse whose outline is known.

    python docs/make_dense_figure.py

Drawn with Pillow from the library's own results: the colour toy (64 µm tiles at 50 %
overlap: 32 µm tile-map cells; 8 µm tokens) on a slide at 1 µm/px holding a tumour ellipse
in stroma. The ellipse's true outline is drawn in white on both maps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import napari_conch as nc
from napari_conch.synthetic import CLASS_COLORS

OUT = Path(__file__).resolve().parent / "images" / "dense-vs-tile.png"
SIZE = 640  # µm = px at 1 µm/px
CENTRE, RADII = (320.0, 320.0), (170.0, 230.0)
REGION = (64.0, 32.0, 576.0, 608.0)  # µm
PANEL_SCALE = 0.75  # figure px per µm
LABEL_RGB = {1: (200, 0, 0), 2: (150, 200, 150)}  # tumor, stroma (QuPath's colours)


def planted_slide():
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    inside = ((yy - CENTRE[0]) / RADII[0]) ** 2 + ((xx - CENTRE[1]) / RADII[1]) ** 2 <= 1
    image = np.where(inside[..., None], CLASS_COLORS["tumor"], CLASS_COLORS["stroma"])
    noise = np.random.default_rng(0).integers(-6, 7, image.shape)
    image = np.clip(image + noise, 0, 255).astype(np.uint8)
    return nc.Slide.from_array(image, mpp=1.0, name="planted ellipse"), image


def panel(image: np.ndarray, seg, title: str) -> Image.Image:
    y0, x0, y1, x1 = REGION
    crop = Image.fromarray(image[int(y0) : int(y1), int(x0) : int(x1)])
    size = (round((x1 - x0) * PANEL_SCALE), round((y1 - y0) * PANEL_SCALE))
    out = crop.resize(size)
    draw = ImageDraw.Draw(out, "RGBA")
    step = seg.scale_um[0]
    top = seg.translate_um[0] - (step - 1) / 2  # µm of the first cell's top edge
    left = seg.translate_um[1] - (step - 1) / 2
    for (i, j), value in np.ndenumerate(seg.labels):
        if not value:
            continue
        cy, cx = top + i * step, left + j * step
        box = [
            (cx - x0) * PANEL_SCALE,
            (cy - y0) * PANEL_SCALE,
            (cx + step - x0) * PANEL_SCALE - 1,
            (cy + step - y0) * PANEL_SCALE - 1,
        ]
        draw.rectangle(box, fill=(*LABEL_RGB[int(value)], 170))
    ellipse = [
        (CENTRE[1] - RADII[1] - x0) * PANEL_SCALE,
        (CENTRE[0] - RADII[0] - y0) * PANEL_SCALE,
        (CENTRE[1] + RADII[1] - x0) * PANEL_SCALE,
        (CENTRE[0] + RADII[0] - y0) * PANEL_SCALE,
    ]
    draw.ellipse(ellipse, outline=(255, 255, 255, 255), width=2)
    titled = Image.new("RGB", (out.width, out.height + 26), "white")
    titled.paste(out, (0, 26))
    try:  # a font with "µ" where there is one
        font = ImageFont.truetype("DejaVuSans.ttf", 14)
    except OSError:
        font, title = ImageFont.load_default(), title.replace("µ", "u")
    ImageDraw.Draw(titled).text((4, 4), title, fill=(0, 0, 0), font=font)
    return titled


def main() -> None:
    slide, image = planted_slide()
    model = nc.load_model("colour-toy")
    classes = ["tumor", "stroma"]
    grid = nc.tile_grid(slide, model, overlap=0.5)
    tiles = nc.zero_shot_segment(nc.embed(slide, model, grid, cache=None), model, classes)
    dense = nc.dense_segment(slide, model, classes, region=REGION, overlap=0.5)
    left = panel(image, tiles, f"tile map: {tiles.scale_um[0]:.0f} µm cells")
    right = panel(image, dense, f"dense map (experimental): {dense.scale_um[0]:.0f} µm tokens")
    figure = Image.new("RGB", (left.width + right.width + 12, left.height), "white")
    figure.paste(left, (0, 0))
    figure.paste(right, (left.width + 12, 0))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    figure.save(OUT, optimize=True)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
