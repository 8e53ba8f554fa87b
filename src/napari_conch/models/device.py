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
    if device.type == "cpu" and p in ("fp16", "bf16"):
        native = cpu_bf16()
        if p == "fp16":
            better = f"'bf16' (this CPU has {native})" if native else "'fp32'"
            logger.warning("fp16 on a CPU is slow and less accurate; consider %s.", better)
        elif not native:
            logger.warning(
                "This CPU has no bfloat16 instructions (AMX or AVX-512-BF16): bf16 autocast is "
                "emulated there and measured about 6x slower than fp32 (CONCH: 0.10 against "
                "0.69 tiles/s on an AMD EPYC without them). Use precision='fp32'."
            )
    return p


def cpu_bf16() -> str | None:
    """The CPU's native bfloat16 instructions ("AMX", "AVX-512-BF16") or None.

    Read from /proc/cpuinfo (Linux); elsewhere unknown, so None: bf16 autocast on a CPU
    without them is emulated and much slower than float32.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            flags = next(
                (line.split(":", 1)[1].split() for line in info if line.startswith("flags")), []
            )
    except OSError:
        return None
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX-512-BF16"
    return None


def cpu_name() -> str:
    """The CPU's model name (for benchmark records), or the platform's word for it."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """An autocast context for ``precision`` on ``device`` (a no-op for float32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
