"""The model protocol: what napari-conch asks of any image–text model (DESIGN §2).

Any object with these members works with every analysis, the engine and the widget —
CONCH, PLIP, QuiltNet or your own. Nothing else may be required of a model object.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

REQUIRED_ATTRIBUTES = ("name", "input_size", "target_mpp", "embed_dim", "logit_scale")
REQUIRED_METHODS = ("encode_images", "project", "encode_texts")


@runtime_checkable
class ImageTextModel(Protocol):
    """An image–text model usable by napari-conch.

    Attributes
    ----------
    name : str
        Identifier shown to users and stored with results.
    input_size : int
        Square input side in pixels that tiles are resized to.
    target_mpp : float
        µm per pixel tiles are read at by default.
    embed_dim : int
        Width of the pre-projection features returned by ``encode_images``.
    logit_scale : float
        Log temperature: probabilities are ``softmax(exp(logit_scale) * cosine)``.
    trained : bool, optional
        False for untrained weights (default True when absent).
    weights_hash : str, optional
        Identifies the weights in cache signatures (default: ``name``).
    """

    name: str
    input_size: int
    target_mpp: float
    embed_dim: int
    logit_scale: float

    def encode_images(self, images: Any) -> Any:
        """uint8 (0–255) or float (0–1) RGB batch (B, 3, H, W) → features (B, embed_dim)."""

    def project(self, features: Any, normalize: bool = True) -> Any:
        """Features (N, embed_dim) → joint-space embeddings (N, D)."""

    def encode_texts(self, texts: Sequence[str], normalize: bool = True) -> Any:
        """Prompts → joint-space embeddings (N, D)."""


def check_model(model: object) -> None:
    """Raise ``TypeError`` naming every protocol member ``model`` lacks."""
    missing = [a for a in REQUIRED_ATTRIBUTES if not hasattr(model, a)]
    missing += [m for m in REQUIRED_METHODS if not callable(getattr(model, m, None))]
    if missing:
        raise TypeError(
            f"{type(model).__name__} is not a usable model: it lacks {', '.join(missing)}. "
            "See napari_conch.models.ImageTextModel for what a model must provide."
        )


def gives_token_embeddings(model: object) -> bool:
    """Whether ``model`` implements the optional ``encode_image_tokens`` (dense maps)."""
    if not callable(getattr(model, "encode_image_tokens", None)):
        return False
    return bool(getattr(model, "supports_token_embeddings", True))


def is_trained(model: object) -> bool:
    """``model.trained`` when present, else True (the protocol's default)."""
    return bool(getattr(model, "trained", True))


def weights_hash(model: object) -> str:
    """``model.weights_hash`` when present, else ``model.name`` (the protocol's default)."""
    value = getattr(model, "weights_hash", None)
    return str(value) if value else str(model.name)
