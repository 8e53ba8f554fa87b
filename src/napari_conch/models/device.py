"""Device and numeric-precision choices shared by every model backend."""

from __future__ import annotations

import contextlib
import logging

import torch

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"`` (CUDA, then Apple MPS, then CPU) or an explicit name into a device.

    An explicit device that is not available raises a ``ValueError`` naming what is.
    """
    if device is None or (isinstance(device, str) and device.lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"Unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'."
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"Device {device!r} was requested but CUDA is not available here "
            f"(available: {', '.join(available_devices())}). Use device='auto' or 'cpu'."
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(
            f"Device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) found."
        )
    if dev.type == "mps" and not _mps_available():
        raise ValueError(
            f"Device {device!r} was requested but Apple MPS is not available here "
            f"(available: {', '.join(available_devices())})."
        )
    return dev


def available_devices() -> list[str]:
    """Names of the devices this machine can run models on, best first."""
    names = (
        [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    if _mps_available():
        names.append("mps")
    names.append("cpu")
    return names


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """Choose the compute precision.

    ``"auto"`` keeps float32 on CPU and MPS, so results match the reference model to the
    last decimal; on CUDA it uses bfloat16 autocast where the GPU supports it, else float16,
    which is how CONCH's authors suggest running it fast.
    """
    p = "auto" if precision is None else str(precision).lower()
    aliases = {
        "float32": "fp32",
        "32": "fp32",
        "bfloat16": "bf16",
        "float16": "fp16",
        "half": "fp16",
    }
    p = aliases.get(p, p)
    if p not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
    if p == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if p == "fp16" and device.type == "cpu":
        logger.warning("fp16 on CPU is slow and less accurate than bf16 or fp32; consider 'bf16'.")
    return p


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """An autocast context for ``precision`` on ``device`` (a no-op for float32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
