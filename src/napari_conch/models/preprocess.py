"""Image batches → normalised model input, on the model's device.

Tiles travel as uint8 (four times less data than float32), are copied to the device, and are
resized and normalised there. Resizing follows the reference preprocessing: bicubic with
antialiasing, shortest edge to the model size, then a centre crop (a no-op for square tiles).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# A little slack for float batches that went through a resize of their own.
_FLOAT_RANGE_SLACK = 1e-3


def as_image_batch(images) -> torch.Tensor:
    """Coerce ``images`` to a (B, 3, H, W) uint8 or float tensor without copying when possible.

    Accepts a torch tensor, a numpy (or numpy-convertible, e.g. dask) array, or a sequence of
    equally sized images; channels-first (B, 3, H, W) or channels-last (B, H, W, 3); a single
    image (3, H, W) or (H, W, 3) becomes a batch of one. uint8 is taken as 0–255, floats as
    0–1 RGB (not yet normalised).
    """
    if isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
        if len(images) == 0:
            raise ValueError("Got an empty list of images; pass at least one image.")
        images = [_as_tensor(im) for im in images]
        shapes = {tuple(im.shape) for im in images}
        if len(shapes) > 1:
            raise ValueError(f"Images in a batch must share one shape; got {sorted(shapes)}.")
        batch = torch.stack(images)
    else:
        batch = _as_tensor(images)
    if batch.ndim == 3:
        batch = batch.unsqueeze(0)
    if batch.ndim != 4:
        raise ValueError(
            f"Expected an image batch (B, 3, H, W) or (B, H, W, 3); got shape {tuple(batch.shape)}."
        )
    if batch.shape[1] != 3 and batch.shape[-1] == 3:
        batch = batch.permute(0, 3, 1, 2)
    if batch.shape[1] != 3:
        raise ValueError(
            f"Expected 3 colour channels (RGB); got shape {tuple(batch.shape)}. Convert RGBA or "
            "grayscale tiles to RGB first."
        )
    if batch.shape[0] == 0:
        raise ValueError("Got an empty batch (0 images).")
    if batch.dtype != torch.uint8 and not batch.dtype.is_floating_point:
        raise TypeError(
            f"Images must be uint8 (0–255) or float (0–1); got {batch.dtype}. Scale other "
            "integer types to uint8 first."
        )
    return batch


def _as_tensor(image) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        return image.detach()
    array = np.asarray(image)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(array))


def prepare_batch(
    batch: torch.Tensor,
    size: int,
    device: torch.device,
    mean: Sequence[float] = OPENAI_MEAN,
    std: Sequence[float] = OPENAI_STD,
) -> torch.Tensor:
    """(B, 3, H, W) uint8/float → float32 (B, 3, size, size), resized + normalised on ``device``."""
    non_blocking = device.type == "cuda" and batch.device.type == "cpu" and batch.is_pinned()
    x = batch.to(device, non_blocking=non_blocking)
    # One canonical layout whatever the input's strides (channels-last numpy tiles arrive as a
    # permuted view): a channels-last tensor would take other convolution kernels, whose
    # results differ in the last bits on some CPUs.
    x = x.to(torch.float32, memory_format=torch.contiguous_format)
    if x.data_ptr() == batch.data_ptr():  # already float32 there: keep the caller's data intact
        x = x.clone()
    if batch.dtype == torch.uint8:
        x = x.div_(255.0)
    else:
        lo, hi = torch.aminmax(x)
        if lo.item() < -_FLOAT_RANGE_SLACK or hi.item() > 1 + _FLOAT_RANGE_SLACK:
            raise ValueError(
                f"Float images must hold RGB values in [0, 1] (got {lo.item():.3g} … "
                f"{hi.item():.3g}). Pass uint8 tiles, or floats before normalisation: the "
                "model normalises them itself."
            )
    x = resize_shortest_and_crop(x, size)
    mean_t = torch.tensor(mean, dtype=x.dtype, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=device).view(1, 3, 1, 1)
    # in place (the same arithmetic as (x - mean) / std, bit for bit): no two more
    # batch-sized tensors to allocate and fault in for every batch
    return x.sub_(mean_t).div_(std_t)


def resize_shortest_and_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic, antialiased resize of the shortest edge to ``size`` plus a centre crop."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    if (new_h, new_w) != (h, w):
        x = F.interpolate(
            x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False
        )
        # Bicubic overshoots; an 8-bit image pipeline would clip, so do the same.
        x = x.clamp_(0.0, 1.0)
    # Same offsets as torchvision's CenterCrop.
    top, left = round((new_h - size) / 2.0), round((new_w - size) / 2.0)
    return x[..., top : top + size, left : left + size]
