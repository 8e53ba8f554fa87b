"""Models: the protocol every backend implements, and :func:`load_model`."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch

from ..errors import UnknownModelError, WeightsNotFoundError
from .conch import ConchModel, build_conch
from .conch_net import ConchConfig
from .protocol import ImageTextModel, check_model

logger = logging.getLogger(__name__)

__all__ = [
    "ConchConfig",
    "ConchModel",
    "ImageTextModel",
    "available_models",
    "check_model",
    "load_model",
]


def _conch(**kwargs) -> ConchModel:
    return build_conch(ConchConfig(), name="conch", **kwargs)


def _conch_tiny(**kwargs) -> ConchModel:
    if kwargs.get("checkpoint") is None:
        raise WeightsNotFoundError(
            "'conch_tiny' is a small test configuration with no published weights; pass "
            "checkpoint='random' or the path of a checkpoint saved from it."
        )
    return build_conch(ConchConfig.tiny(), name="conch_tiny", **kwargs)


# name → factory(checkpoint=, tokenizer=, device=, precision=, **options)
_FACTORIES: dict[str, Callable[..., object]] = {"conch": _conch, "conch_tiny": _conch_tiny}
_ALIASES = {"conch_v1": "conch", "conch-v1": "conch", "conch-tiny": "conch_tiny"}


def available_models() -> list[str]:
    """Names accepted by :func:`load_model`."""
    return sorted(_FACTORIES)


def load_model(
    name: str = "conch",
    checkpoint: str | os.PathLike | None = None,
    tokenizer: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    **options,
):
    """Build a model by name and load its weights.

    Parameters
    ----------
    name : str
        ``"conch"`` (the released CONCH ViT-B/16), or ``"conch_tiny"`` (same code with small
        widths, for tests). See :func:`available_models`.
    checkpoint : str or path, optional
        A weights file (``.bin``/``.pt``/``.pth``/``.safetensors``), a directory holding one,
        ``"hf_hub:<repo id>"``, or ``"random"`` for an untrained model (pipeline checks
        only: it logs a warning and reports ``trained = False``). When omitted:
        ``$NAPARI_CONCH_CHECKPOINT``, then the Hugging Face cache of ``MahmoodLab/conch``,
        then a download from the hub if a token is available (``token=`` or ``$HF_TOKEN``).
    tokenizer : str or path, optional
        The CONCH tokenizer JSON (or its directory). When omitted:
        ``$NAPARI_CONCH_TOKENIZER``, then beside the checkpoint, then the installed ``conch``
        package (``pip install conch-fork``).
    device : str or torch.device
        ``"auto"`` picks CUDA, then Apple MPS, then CPU.
    precision : {"auto", "fp32", "bf16", "fp16"}
        ``"auto"`` is float32 on CPU/MPS (bit-faithful to the reference) and bf16/fp16
        autocast on CUDA.
    **options
        ``token`` (Hugging Face token; never logged or stored), ``input_size`` (e.g. 224:
        the position embedding is resampled as the reference does), ``target_mpp`` (µm/px
        tiles are read at; CONCH default 0.5), ``seed`` (for ``checkpoint="random"``).

    Returns
    -------
    ConchModel
        An object implementing :class:`ImageTextModel`.

    Examples
    --------
    >>> model = load_model("conch", checkpoint="pytorch_model.bin")  # doctest: +SKIP
    >>> feats = model.encode_images(tiles_uint8)  # (B, 512) pre-projection  # doctest: +SKIP
    >>> sims = model.project(feats) @ model.encode_texts(["tumor"]).T  # doctest: +SKIP
    """
    if not isinstance(name, str):
        raise TypeError(f"Model name must be a string; got {type(name).__name__}.")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    factory = _FACTORIES.get(key)
    if factory is None:
        raise UnknownModelError(
            f"Unknown model {name!r}. Available: {', '.join(available_models())}."
        )
    return factory(
        checkpoint=checkpoint, tokenizer=tokenizer, device=device, precision=precision, **options
    )
