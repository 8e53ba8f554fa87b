"""Tiles decoded on the model's device: a batch's JPEG tiles in one nvJPEG call on CUDA.

On a GPU that computes thousands of tiles a second, the CPU's JPEG decoding becomes the
limit (CONCH at 0.5 µm/px from a 0.25 µm/px scan touches about eleven 256-px JPEG tiles
per model tile). Here the CPU only reads the compressed bytes: every JPEG tile a batch of
model tiles touches is decoded once, in one batched ``torchvision.io.decode_jpeg`` call on
the model's device (nvJPEG on CUDA, libjpeg-turbo on the CPU), and the model tiles are cut
from the decoded tiles there. The result is the exact path's input — a full decode, then the
model's own resize — up to the decoders' rounding (nvJPEG's IDCT and chroma upsampling are
not libjpeg-turbo's), so such runs are cached apart.

This module imports torch and torchvision on first use only.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .readers.base import BACKGROUND
from .slide import Slide

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

# The first tile decoded both ways may differ by the decoders' rounding (nvJPEG against
# libjpeg-turbo: a few levels); a wrong colour transform differs by tens of levels.
_AGREEMENT_MEAN_LEVELS = 2.0


@dataclass(frozen=True)
class _Piece:
    """Part of a stored JPEG tile that lands in a model tile."""

    key: tuple[int, int]  # (row, col) of the JPEG tile
    src: tuple[int, int, int, int]  # y0, y1, x0, x1 inside the JPEG tile
    dst: tuple[int, int]  # y, x of its corner inside the model tile


class DeviceTileReader:
    """Read square model tiles of ``size`` level pixels from ``level`` as a uint8 tensor
    (B, 3, size, size) on ``device``, decoding the JPEG tiles there.

    Pixels outside the level read as white (as :meth:`Slide.read_region`). Use
    :func:`device_tile_reader` to get one only where the level allows it.
    """

    def __init__(self, slide: Slide, level: int, size: int, device):
        import torch

        shape = slide.jpeg_tile_shape(level)
        if shape is None:
            raise ValueError(
                f"Level {level} of {slide.name} does not store JPEG tiles that can be decoded on "
                "the device."
            )
        self.slide, self.level, self.size = slide, int(level), int(size)
        self.device = torch.device(device)
        self.tile_shape = shape
        self.level_shape = tuple(slide.levels[level].shape[:2])
        self.downsample = slide.downsamples_yx[level]

    @property
    def label(self) -> str:
        """How tiles were decoded, as stores and results record it."""
        return f"JPEG in full on {self.device.type} (torchvision), then resized"

    def read(self, coords) -> torch.Tensor:
        """Model tiles at level-0 corners ``coords`` (N, 2) as (N, 3, size, size) uint8."""
        import torch

        plans = [self._plan(y, x) for y, x in np.asarray(coords).reshape(-1, 2)]
        keys = sorted({piece.key for plan in plans for piece in plan})
        decoded = self._decode(keys)
        out = torch.full(
            (len(plans), 3, self.size, self.size), BACKGROUND, dtype=torch.uint8, device=self.device
        )
        for b, plan in enumerate(plans):
            for piece in plan:
                tile = decoded.get(piece.key)
                if tile is None:  # never written: stays white
                    continue
                y0, y1, x0, x1 = piece.src
                dy, dx = piece.dst
                out[b, :, dy : dy + y1 - y0, dx : dx + x1 - x0] = tile[:, y0:y1, x0:x1]
        return out

    def agreement(self) -> dict[str, float]:
        """Max and mean difference (levels) between this decoder and the CPU's exact path on
        the level's first stored tile (``{}`` when the level has none)."""
        th, tw = self.tile_shape
        rows = math.ceil(self.level_shape[0] / th)
        cols = math.ceil(self.level_shape[1] / tw)
        for row in range(rows):
            for col in range(cols):
                if self.slide.jpeg_tile(self.level, row, col) is None:
                    continue
                fy, fx = self.downsample
                y, x = row * th, col * tw
                h, w = min(th, self.level_shape[0] - y), min(tw, self.level_shape[1] - x)
                ours = self._decode([(row, col)])[(row, col)][:, :h, :w]
                ours = ours.permute(1, 2, 0).cpu().numpy().astype(np.int16)
                corner = (math.ceil(y * fy), math.ceil(x * fx))  # level-0 corner of the tile
                exact = self.slide.read_region(*corner, h, w, level=self.level)
                diff = np.abs(ours - exact.astype(np.int16))
                return {"max": float(diff.max()), "mean": float(diff.mean())}
        return {}

    def _plan(self, y, x) -> list[_Piece]:
        fy, fx = self.downsample
        ly, lx = math.floor(y / fy), math.floor(x / fx)  # as Slide.read_region
        H, W = self.level_shape
        cy0, cy1 = max(ly, 0), min(ly + self.size, H)
        cx0, cx1 = max(lx, 0), min(lx + self.size, W)
        th, tw = self.tile_shape
        pieces = []
        for row in range(cy0 // th, (cy1 - 1) // th + 1) if cy1 > cy0 else ():
            for col in range(cx0 // tw, (cx1 - 1) // tw + 1) if cx1 > cx0 else ():
                sy, sx = row * th, col * tw
                y0, y1 = max(cy0, sy), min(cy1, sy + th)
                x0, x1 = max(cx0, sx), min(cx1, sx + tw)
                pieces.append(
                    _Piece((row, col), (y0 - sy, y1 - sy, x0 - sx, x1 - sx), (y0 - ly, x0 - lx))
                )
        return pieces

    def _decode(self, keys) -> dict:
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        streams = {key: self.slide.jpeg_tile(self.level, *key) for key in keys}
        stored = [key for key in keys if streams[key] is not None]
        if not stored:
            return {}
        data = [torch.frombuffer(bytearray(streams[key]), dtype=torch.uint8) for key in stored]
        images = decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        return dict(zip(stored, images, strict=True))


def device_tile_reader(slide: Slide, level: int, size: int, device) -> DeviceTileReader | None:
    """A :class:`DeviceTileReader` when ``level`` stores JPEG tiles that ``device`` decodes
    like the CPU does (checked on one tile); None, with the reason logged, otherwise."""
    if slide.jpeg_tile_shape(level) is None:
        logger.info(
            "%s level %d does not store plain JPEG tiles: decoding on the CPU instead.",
            slide.name,
            level,
        )
        return None
    try:
        import torchvision.io  # noqa: F401
    except ImportError:
        logger.warning("decode='device' needs torchvision: decoding on the CPU instead.")
        return None
    reader = DeviceTileReader(slide, level, size, device)
    try:
        agreement = reader.agreement()
    except Exception as exc:  # a decoder that cannot read this file's JPEG flavour
        logger.warning(
            "%s: the %s JPEG decoder cannot read this slide's tiles (%s); decoding on the CPU "
            "instead.",
            slide.name,
            reader.device.type,
            exc,
        )
        return None
    if agreement and agreement["mean"] > _AGREEMENT_MEAN_LEVELS:
        logger.warning(
            "%s: JPEG tiles decoded on %s differ from the CPU's by %.1f levels on average "
            "(max %.0f): decoding on the CPU instead.",
            slide.name,
            reader.device.type,
            agreement["mean"],
            agreement["max"],
        )
        return None
    logger.info(
        "Decoding %s's JPEG tiles on %s (first tile against the CPU: max %.0f, mean %.3f levels).",
        slide.name,
        reader.device,
        agreement.get("max", 0.0),
        agreement.get("mean", 0.0),
    )
    return reader
