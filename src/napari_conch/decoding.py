"""How an embedding run decodes its tiles: in full and resized (the reference), JPEG tiles
at reduced size in the DCT domain, or a batch's JPEG tiles on the model's device.

The modes give slightly different pixels, so stores and results record which was used
(:func:`decode_label`) and the cache keeps them apart; docs/embedding.md reports the
differences.
"""

from __future__ import annotations

from dataclasses import dataclass

DECODE_MODES = ("fast", "exact", "device")


def decode_label(reduce: int) -> str:
    """How tiles were decoded on the CPU, as stores and results record it."""
    return "full, then resized" if reduce == 1 else f"JPEG at 1/{reduce} size (DCT domain)"


@dataclass(frozen=True)
class DecodePlan:
    """How a run decodes its tiles: ``reduce`` times smaller on the CPU, or in full on the
    model's device (``device_reader``)."""

    reduce: int = 1
    device_reader: object = None  # a device_decode.DeviceTileReader

    @property
    def label(self) -> str:
        """As stores and results record it."""
        if self.device_reader is not None:
            return self.device_reader.label
        return decode_label(self.reduce)

    @property
    def is_reference(self) -> bool:
        """Decoded in full and resized, as the reference preprocessing does."""
        return self.label == decode_label(1)


def decode_plan(slide, grid, model, decode: str = "fast") -> DecodePlan:
    """The :class:`DecodePlan` of ``decode`` for this slide, grid and model (an unknown
    mode is refused by :func:`decode_reduction`)."""
    if decode == "device":
        from .device_decode import device_tile_reader

        device = getattr(model, "device", None) or "cpu"
        reader = device_tile_reader(slide, grid.level, grid.read_px, device)
        if reader is not None:
            return DecodePlan(1, reader)
    return DecodePlan(decode_reduction(slide, grid, model, decode))


def decode_reduction(slide, grid, model, decode: str = "fast") -> int:
    """How many times smaller tiles are decoded on the CPU: the largest factor the level
    offers that keeps them at least the model's input size (1: decode in full, then resize)."""
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}; got {decode!r}.")
    if decode == "exact":
        return 1
    size = int(model.input_size)
    fitting = [f for f in slide.reduced_factors(grid.level) if grid.read_px >= f * size]
    return max(fitting, default=1)
