"""Models: :func:`load_model`, the registry, and the backends — each imported (with torch)
only when a model of its kind is first built, so the registry, the CLI's checks and the
analyses stay light."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from typing import TYPE_CHECKING

from ..deprecation import forward_names
from ..errors import WeightsNotFoundError
from ..protocol import ImageTextModel, check_model
from .color_toy import COLOR_TOY, ColorToyModel, build_color_toy
from .registry import (
    ENTRY_POINT_GROUP,
    available_models,
    call_factory,
    check_text_side,
    model_entry,
    register_model,
    unregister_model,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .conch import ConchModel
    from .conch_net import ConchConfig
    from .openclip import OpenClipModel
    from .plip import ClipModel

logger = logging.getLogger(__name__)

__all__ = [
    "ENTRY_POINT_GROUP",
    "ClipModel",
    "ColorToyModel",
    "ConchConfig",
    "ConchModel",
    "ImageTextModel",
    "OpenClipModel",
    "available_models",
    "check_model",
    "check_text_side",
    "default_model",
    "load_model",
    "register_model",
    "unregister_model",
]

# Backend classes, imported on first access (``napari_conch.models.ConchModel``).
_BACKENDS = {
    "ConchModel": ".conch",
    "ConchConfig": ".conch_net",
    "ClipModel": ".plip",
    "OpenClipModel": ".openclip",
}


# Renamed to the API's one spelling of colour ("color"); the model's name stays "colour-toy".
_RENAMED = forward_names(
    __name__, {"ColourToyModel": "napari_conch.models.color_toy:ColorToyModel"}
)


def __getattr__(name: str):
    module = _BACKENDS.get(name)
    if module is None:
        return _RENAMED(name)
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def default_model() -> str:
    """The model to offer first: CONCH when its weights are on this machine (argument-free
    discovery: environment, Hugging Face cache; nothing downloaded), else the colour toy,
    which runs anywhere — never an untrained CONCH by default."""
    from .weights import find_checkpoint

    try:
        find_checkpoint(None, repo_id="MahmoodLab/conch", download=False)
    except (WeightsNotFoundError, ValueError):
        return COLOR_TOY
    return "conch"


def _conch(**kwargs) -> ConchModel:
    from .conch import build_conch
    from .conch_net import ConchConfig

    return build_conch(ConchConfig(), name="conch", **kwargs)


def _conch_tiny(**kwargs) -> ConchModel:
    if kwargs.get("checkpoint") is None:
        raise WeightsNotFoundError(
            "'conch_tiny' is a small test configuration with no published weights: "
            "«checkpoint='random'», or give the path of a checkpoint saved from it."
        )
    from .conch import build_conch
    from .conch_net import ConchConfig

    return build_conch(ConchConfig.tiny(), name="conch_tiny", **kwargs)


def _conch_text(**kwargs):
    from .conch import check_conch_text

    return check_conch_text(**kwargs)


def _plip(**kwargs) -> ClipModel:
    from .plip import build_plip

    return build_plip(name="plip", **kwargs)


def _quiltnet(**kwargs) -> OpenClipModel:
    from .openclip import build_openclip

    return build_openclip(name="quiltnet", **kwargs)


register_model(
    "conch",
    _conch,
    description="CONCH ViT-B/16, 448 px at 0.5 µm/px (gated: MahmoodLab/conch)",
    aliases=("conch_v1", "conch-v1"),
    check_text=_conch_text,
)
register_model(
    "conch_tiny",
    _conch_tiny,
    description="CONCH code with small widths, for tests (random weights)",
    aliases=("conch-tiny",),
    check_text=_conch_text,
)
register_model(
    COLOR_TOY,
    build_color_toy,
    description="colour toy for demos on the synthetic slide: no weights, not a pathology model",
    aliases=("colour_toy", "color-toy", "color_toy"),
)
register_model(
    "plip",
    _plip,
    description="PLIP CLIP ViT-B/32, 224 px at 0.5 µm/px (open: vinid/plip)",
)
register_model(
    "quiltnet",
    _quiltnet,
    description="QuiltNet open_clip ViT-B/32, 224 px at 0.5 µm/px (open: wisdomik/QuiltNet-B-32)",
    aliases=("quiltnet-b-32", "quilt"),
)


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
        ``"conch"`` (the released CONCH ViT-B/16), ``"plip"`` (PLIP, transformers CLIP
        ViT-B/32), ``"quiltnet"`` (QuiltNet, open_clip ViT-B/32), ``"conch_tiny"`` (CONCH
        code with small widths, for tests), ``"colour-toy"`` (a numpy demonstration model
        that tells the synthetic slide's colours apart; no weights), or any name given to
        :func:`register_model` (also through the ``napari_conch.models`` entry-point group).
        See :func:`available_models`.
    checkpoint : str or path, optional
        CONCH: a weights file (``.bin``/``.pt``/``.pth``/``.safetensors``) or a directory
        holding one; PLIP and QuiltNet: the model folder as on the Hugging Face hub (or a
        weights file inside it); any model: ``"hf_hub:<repo id>"``, or ``"random"`` for an
        untrained model (pipeline checks only: it logs a warning and reports
        ``trained = False``). When omitted: ``$NAPARI_CONCH_CHECKPOINT`` (CONCH),
        ``$NAPARI_CONCH_PLIP`` or ``$NAPARI_CONCH_QUILTNET``, then the Hugging Face cache of
        ``MahmoodLab/conch`` / ``vinid/plip`` / ``wisdomik/QuiltNet-B-32``, then a download
        (CONCH is gated and needs a token, ``token=`` or ``$HF_TOKEN``; the others are open).
    tokenizer : str or path, optional
        CONCH: the tokenizer JSON (or its directory); when omitted
        ``$NAPARI_CONCH_TOKENIZER``, then beside the checkpoint, then the installed ``conch``
        package (``pip install conch-fork``). PLIP: a folder with tokenizer files (default:
        the model folder). QuiltNet uses open_clip's bundled tokenizer.
    device : str or torch.device
        ``"auto"`` picks CUDA, then Apple MPS, then CPU.
    precision : {"auto", "fp32", "bf16", "fp16"}
        ``"auto"`` is float32 on CPU/MPS (bit-faithful to the reference) and bf16/fp16
        autocast on CUDA.
    **options
        ``token`` (Hugging Face token; never logged or stored), ``input_size`` (e.g. 224:
        the position embedding is resampled as the reference does), ``target_mpp`` (µm/px
        tiles are read at; default 0.5 for every built-in model), ``seed`` (for
        ``checkpoint="random"``); PLIP and QuiltNet also take ``config=`` (the architecture
        for random weights) and QuiltNet ``arch=`` (an open_clip model name, default
        ViT-B-32, when no ``open_clip_config.json`` sits beside the weights).

    Returns
    -------
    ConchModel, ClipModel, OpenClipModel or your own model
        An object implementing :class:`ImageTextModel`.

    Examples
    --------
    >>> model = load_model("conch", checkpoint="pytorch_model.bin")  # doctest: +SKIP
    >>> feats = model.encode_images(tiles_uint8)  # (B, 512) pre-projection  # doctest: +SKIP
    >>> sims = model.project(feats) @ model.encode_texts(["tumor"]).T  # doctest: +SKIP
    """
    if not isinstance(name, str):
        raise TypeError(f"Model name must be a string; got {type(name).__name__}.")
    entry = model_entry(name)
    model = call_factory(
        entry,
        checkpoint=checkpoint,
        tokenizer=tokenizer,
        device=device,
        precision=precision,
        **options,
    )
    try:
        check_model(model)
    except TypeError as exc:
        raise TypeError(f"The factory of model {entry.name!r} ({entry.source}): {exc}") from exc
    with contextlib.suppress(AttributeError, TypeError):  # objects that take no attributes
        model.load_spec = load_spec(
            name, checkpoint=checkpoint, tokenizer=tokenizer, device=device, **options
        ) | {"precision": precision}
    return model


def load_spec(name: str, *, checkpoint=None, tokenizer=None, device="auto", **options) -> dict:
    """How another process loads the same model: :func:`load_model` keywords, the token left
    out (never sent or stored) and a specific GPU made "auto" (each worker has its own)."""
    spec = {"name": name, **{k: v for k, v in options.items() if k != "token"}}
    if checkpoint is not None:
        spec["checkpoint"] = str(checkpoint)
    if tokenizer is not None:
        spec["tokenizer"] = str(tokenizer)
    device = str(device)
    spec["device"] = "auto" if device.startswith("cuda") else device
    return spec
