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
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import SlideReadError
from .readers.base import BACKGROUND, segment_pieces
from .slide import Slide

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

# The first tile decoded both ways may differ by the decoders' rounding (nvJPEG against
# libjpeg-turbo: a few levels); a wrong colour transform differs by tens of levels.
_AGREEMENT_MEAN_LEVELS = 2.0
# Compared: the tiles with the most JPEG data (tissue, not glass) among a spread of the level's.
_AGREEMENT_SAMPLES = 3
_AGREEMENT_SPREAD = 5  # per axis
# Devices a batch of JPEG tiles is decoded on: CUDA (nvJPEG) and the CPU (libjpeg-turbo, one
# thread: for checks — decode="fast" is quicker there). torchvision decodes on the CPU for
# any other device, which would mislabel the run.
_DEVICE_TYPES = ("cuda", "cpu")


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
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            # pinned now: reader threads would otherwise each take their own current device
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self._streams = threading.local()  # one CUDA side stream per reader thread
        self.tile_shape = shape
        self.level_shape = tuple(slide.levels[level].shape[:2])
        self.downsample = slide.downsamples_yx[level]

    @property
    def label(self) -> str:
        """How tiles were decoded, as stores and results record it."""
        return f"JPEG in full on {self.device.type} (torchvision), then resized"

    def read(self, coords) -> torch.Tensor:
        """Model tiles at level-0 corners ``coords`` (N, 2) as (N, 3, size, size) uint8.

        On CUDA the work runs on this thread's own stream and is finished when this returns:
        the decoder's buffers are then free to reuse, and the caller may use the tiles on any
        stream (it must ``record_stream`` them there before letting them go, as the engine
        does, so their memory is not reused while its work is queued).
        """
        return self._finished_on_device(self._read, coords)

    def _finished_on_device(self, work, *args):
        """``work(*args)`` on this thread's CUDA stream of the device, finished on return
        (elsewhere: just called)."""
        if self.device.type != "cuda":
            return work(*args)
        import torch

        stream = getattr(self._streams, "stream", None)
        if stream is None:
            stream = self._streams.stream = torch.cuda.Stream(device=self.device)
        with torch.cuda.device(self.device), torch.cuda.stream(stream):
            out = work(*args)
        stream.synchronize()
        return out

    def _read(self, coords):
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

    def agreement(self, samples: int = _AGREEMENT_SAMPLES) -> dict[str, float]:
        """Max and mean difference (levels) between this decoder and the CPU's exact path,
        over the ``samples`` stored tiles with the most JPEG data among a spread of the
        level's tiles — tissue rather than blank glass, where a wrong colour transform
        shows (``{}`` when the level stores none)."""
        th, tw = self.tile_shape
        rows = math.ceil(self.level_shape[0] / th)
        cols = math.ceil(self.level_shape[1] / tw)
        spread = {
            (int(r), int(c))
            for r in np.linspace(0, rows - 1, min(rows, _AGREEMENT_SPREAD)).round()
            for c in np.linspace(0, cols - 1, min(cols, _AGREEMENT_SPREAD)).round()
        }
        streams = {key: self.slide.jpeg_tile(self.level, *key) for key in spread}
        keys = sorted((k for k in spread if streams[k]), key=lambda k: -len(streams[k]))
        keys = keys[:samples]
        if not keys:
            return {}
        decoded = self._finished_on_device(self._decode, keys, streams)
        worst, total, count = 0.0, 0.0, 0
        fy, fx = self.downsample
        for row, col in keys:
            y, x = row * th, col * tw
            h, w = min(th, self.level_shape[0] - y), min(tw, self.level_shape[1] - x)
            ours = decoded[(row, col)][:, :h, :w].permute(1, 2, 0).cpu().numpy().astype(np.int16)
            corner = (math.ceil(y * fy), math.ceil(x * fx))  # level-0 corner of the tile
            exact = self.slide.read_region(*corner, h, w, level=self.level)
            diff = np.abs(ours - exact.astype(np.int16))
            worst, total, count = (
                max(worst, float(diff.max())),
                total + diff.sum(),
                count + diff.size,
            )
        return {"max": worst, "mean": float(total / count), "tiles": len(keys)}

    def _plan(self, y, x) -> list[_Piece]:
        fy, fx = self.downsample
        ly, lx = math.floor(y / fy), math.floor(x / fx)  # as Slide.read_region
        H, W = self.level_shape
        cy0, cy1 = max(ly, 0), min(ly + self.size, H)
        cx0, cx1 = max(lx, 0), min(lx + self.size, W)
        if cy1 <= cy0 or cx1 <= cx0:  # wholly outside: white
            return []
        return [
            _Piece(key, inside, (dy + cy0 - ly, dx + cx0 - lx))
            for key, inside, (dy, dx) in segment_pieces(cy0, cy1, cx0, cx1, self.tile_shape)
        ]

    def _decode(self, keys, streams: dict | None = None) -> dict:
        """{key: (3, h, w) uint8 on the device} for the stored JPEG tiles among ``keys``
        (``streams``: their bytes when already read)."""
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        if streams is None:
            streams = {key: self.slide.jpeg_tile(self.level, *key) for key in keys}
        stored = [key for key in keys if streams[key] is not None]
        if not stored:
            return {}
        data = [torch.frombuffer(bytearray(streams[key]), dtype=torch.uint8) for key in stored]
        try:
            images = decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError as exc:
            raise SlideReadError(
                f"Cannot decode JPEG tiles {_keys(stored)} of {self.slide.name} level "
                f"{self.level} on {self.device}: {exc}. decode='fast' decodes them on the CPU."
            ) from exc
        expected = (3, *self.tile_shape)
        for key, image in zip(stored, images, strict=True):
            if tuple(image.shape) != expected:
                raise SlideReadError(
                    f"JPEG tile {key} of {self.slide.name} level {self.level} decoded to "
                    f"{tuple(image.shape)}, not the {expected} its TIFF tile size says."
                )
        return dict(zip(stored, images, strict=True))


def device_tile_reader(slide: Slide, level: int, size: int, device) -> DeviceTileReader | None:
    """A :class:`DeviceTileReader` when ``level`` stores JPEG tiles that ``device`` decodes
    like the CPU does (checked on a few tissue tiles); None, with the reason logged,
    otherwise."""
    kind = getattr(device, "type", str(device).split(":")[0])
    if kind not in _DEVICE_TYPES:
        logger.info(
            "decode='device' decodes on CUDA (or the CPU), not on %s: decoding on the CPU as "
            "decode='fast' does instead.",
            kind,
        )
        return None
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
        "Decoding %s's JPEG tiles on %s (%d tissue tiles against the CPU: max %.0f, mean %.3f "
        "levels)%s.",
        slide.name,
        reader.device,
        agreement.get("tiles", 0),
        agreement.get("max", 0.0),
        agreement.get("mean", 0.0),
        "; on the CPU, decode='fast' is quicker" if reader.device.type == "cpu" else "",
    )
    return reader


def _keys(keys) -> str:
    shown = ", ".join(str(k) for k in keys[:4])
    return shown + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
