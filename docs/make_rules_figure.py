"""Regenerate docs/images/map-rules.png: the tissue, edge and background rules on a planted
slide (two squares touching at a corner, a block running off the image's edge).

    python docs/make_rules_figure.py

Three panels, drawn with Pillow from the library's own results (colour toy, 64 µm tiles at
50 % overlap): the label map over the slide; each cell's tissue fraction with the cells the
tissue rule keeps outlined; each tile's answer in the tile table (grey: the background class
won).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import napari_conch as nc
from napari_conch.synthetic import BACKGROUND_COLOR, CLASS_COLORS

OUT = Path(__file__).resolve().parent / "images" / "map-rules.png"
MPP = 0.5
PANEL = 380  # px per panel side
CLASSES = ["tumor", "stroma"]
LABEL_RGB = {1: (228, 26, 28), 2: (55, 126, 184)}
GLASS_RGB = (160, 160, 160)


def planted_slide():
    height, width = 2100, 2300  # level-0 px; the block runs off the right edge
    truth = np.zeros((height, width), np.uint8)
    truth[300:900, 300:900] = 1
    truth[900:1500, 900:1500] = 2
    truth[1600:2000, 1500:width] = 2
    palette = np.array([BACKGROUND_COLOR, *(CLASS_COLORS[n] for n in CLASSES)], np.int16)
    noise = np.random.default_rng(0).integers(-6, 7, (height, width, 3), dtype=np.int16)
    image = np.clip(palette[truth] + noise, 0, 255).astype(np.uint8)
    return nc.Slide.from_array(image, mpp=MPP, name="planted"), image


def main() -> None:
    slide, image = planted_slide()
    model = nc.load_model("colour-toy")
    grid = nc.tile_grid(slide, model, tile_um=64.0, overlap=0.5)
    emb = nc.embed(slide, model, grid, cache=None)
    seg = nc.zero_shot_segment(emb, model, [*CLASSES, "background"], background="background")
    full = nc.tile_grid(slide, model, tile_um=64.0, tissue=False)
    all_tiles = nc.embed(slide, model, full, cache=None)
    tiles = nc.zero_shot_segment(
        all_tiles, model, [*CLASSES, "background"], background="background"
    )

    height, width = slide.shape
    scale = PANEL / max(height, width)
    base = Image.fromarray(image).resize((round(width * scale), round(height * scale)))
    s = grid.stride_px * scale

    labels = base.copy()
    draw = ImageDraw.Draw(labels, "RGBA")
    for (i, j), value in np.ndenumerate(seg.labels):
        if value:
            box = (j * s, i * s, (j + 1) * s, (i + 1) * s)
            draw.rectangle(box, fill=(*LABEL_RGB[int(value)], 150))

    fractions = Image.new("RGB", base.size, "white")
    draw = ImageDraw.Draw(fractions)
    kept = grid.cell_is_tissue
    for (i, j), f in np.ndenumerate(grid.cell_tissue_fraction):
        grey = round(255 * (1 - f))
        box = (j * s, i * s, (j + 1) * s - 1, (i + 1) * s - 1)
        draw.rectangle(box, fill=(grey, grey, grey), outline=(0, 150, 0) if kept[i, j] else None)

    decisions = Image.blend(base, Image.new("RGB", base.size, "white"), 0.6)
    draw = ImageDraw.Draw(decisions, "RGBA")
    t = full.tile_px * scale
    names = tiles.tile_classes()
    for (y, x), name in zip(full.coords, names, strict=True):
        colour = LABEL_RGB[CLASSES.index(name) + 1] if name in CLASSES else GLASS_RGB
        box = (x * scale + 1, y * scale + 1, x * scale + t - 1, y * scale + t - 1)
        draw.rectangle(box, fill=(*colour, 140))

    gap, caption = 12, 34
    canvas = Image.new("RGB", (3 * base.width + 4 * gap, base.height + caption + gap), "white")
    titles = (
        "labels: cells at least half tissue",
        "tissue per cell (green: labelled)",
        "tile table: grey = background won",
    )
    for k, (panel, title) in enumerate(zip((labels, fractions, decisions), titles, strict=True)):
        left = gap + k * (base.width + gap)
        canvas.paste(panel, (left, caption))
        ImageDraw.Draw(canvas).rectangle(
            (left - 1, caption - 1, left + base.width, caption + base.height), outline=(0, 0, 0)
        )
        ImageDraw.Draw(canvas).text((left, 10), title, fill=(0, 0, 0))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(OUT, optimize=True)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
