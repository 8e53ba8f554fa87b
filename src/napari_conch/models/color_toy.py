"""The colour toy: a demonstration model that knows colours, not pathology.

It implements the model protocol with numpy alone (no weights, no download, no torch), so
the whole pipeline — tiling, embedding, segmentation, similarity, exports, napari — can be
tried on any machine and checked against a known answer. A tile's feature is how its mean
colour departs from the glass, in coordinates where each class of the synthetic slide
(:mod:`napari_conch.synthetic`) departs along its own axis, plus a small "glass" component
for its share of unstained pixels; a prompt that names a class embeds as that class's axis,
and "background" as the glass component. Mixing is linear: a tile that is partly tissue
points at its tissue's class (the glass only shortens the vector), a tile of two classes
points between them, and the background wins only where tissue is scarce. On the synthetic
slide every planted region therefore wins its own class, and a segmentation can be scored
against the truth. On real tissue its answers mean nothing: it is a toy, and says so in every
result's metadata (``model.name == "colour-toy"``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from ..deprecation import renamed_attribute
from ..synthetic import BACKGROUND_COLOR, CLASS_COLORS

logger = logging.getLogger(__name__)

COLOR_TOY = "colour-toy"

# Words a prompt may use for each class (lower case; a prompt matches a class when it
# contains one of them).
_WORDS = {
    "tumor": ("tumor", "tumour", "carcinoma", "cancer"),
    "stroma": ("stroma", "connective"),
    "necrosis": ("necrosis", "necrotic"),
    "background": ("background", "white", "glass", "empty"),
}


_GLASS = np.asarray(BACKGROUND_COLOR, np.float32)
_TISSUE = ("tumor", "stroma", "necrosis")
# Colour departures from the glass → class axes: each class's departure maps to a unit vector
# of its own, orthogonal to the others.
_AXES = np.linalg.inv(
    np.stack([np.asarray(CLASS_COLORS[n], np.float64) - _GLASS for n in _TISSUE], axis=1)
).astype(np.float32)


class ColorToyModel:
    """Mean colour as the image feature; class names as colours on the text side.

    Attributes follow the model protocol (:class:`~napari_conch.models.ImageTextModel`):
    tiles of 64 µm read at 1 µm/px, 4-d features, a temperature of 100.
    """

    name = COLOR_TOY
    input_size = 64
    target_mpp = 1.0
    embed_dim = 4
    logit_scale = float(np.log(100.0))
    trained = True  # it does exactly what it was built for; it is no pathology model
    weights_hash = f"{COLOR_TOY}-2"
    description = "colour toy for the synthetic slide (not a pathology model)"
    COLORS: dict[str, tuple[int, int, int]] = {  # noqa: RUF012 - read-only class table
        "background": BACKGROUND_COLOR,
        **CLASS_COLORS,
    }
    COLOURS = renamed_attribute("COLORS")
    GLASS = _GLASS
    TISSUE = _TISSUE
    AXES = _AXES
    # Length of the glass component of an all-glass tile (a whole class is 1): the background
    # wins only tiles with under 20 % tissue.
    GLASS_WEIGHT = 0.25
    # A pixel this unsaturated is unstained glass (the synthetic glass is below 0.07; its
    # palest tissue, necrosis, is at 0.17).
    GLASS_SATURATION = 0.1

    def encode_images(self, images) -> np.ndarray:
        """uint8 (0–255) or float (0–1) RGB tiles, (B, H, W, 3) or (B, 3, H, W) → (B, 3)."""
        x = np.asarray(images)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or 3 not in (x.shape[1], x.shape[-1]):
            raise ValueError(
                f"Expected RGB tiles (B, H, W, 3) or (B, 3, H, W); got shape {x.shape}."
            )
        scale = 255.0 if np.issubdtype(x.dtype, np.floating) else 1.0
        x = x.astype(np.float32) * np.float32(scale)
        if x.shape[-1] != 3:
            # one canonical layout: numpy's sums run in another order over a permuted view,
            # and features must not depend on how the tiles arrived
            x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
        brightest = x.max(axis=-1)
        saturation = (brightest - x.min(axis=-1)) / np.maximum(brightest, 1e-6)
        glass = (saturation < self.GLASS_SATURATION).mean(axis=(1, 2)) * self.GLASS_WEIGHT
        departure = (x.mean(axis=(1, 2)) - self.GLASS) @ self.AXES.T
        return np.concatenate([departure, glass[:, None]], axis=1).astype(np.float32)

    # Tokens of the dense (sub-tile) maps: the tile cut into 8 × 8 patches (8 µm each).
    TOKEN_GRID = (8, 8)

    def encode_image_tokens(self, images) -> np.ndarray:
        """Each of the tile's 8 × 8 patches as a tile of its own: (B, 8, 8, 4), unit length —
        token embeddings whose answers are known (each patch's colour)."""
        x = np.asarray(images)
        if x.ndim == 3:
            x = x[None]
        if x.shape[-1] != 3:
            x = np.moveaxis(x, 1, -1)
        gh, gw = self.TOKEN_GRID
        b, h, w = x.shape[:3]
        if h % gh or w % gw:
            raise ValueError(f"colour-toy tokens need tiles divisible by {gh} px; got {h}×{w}.")
        patches = x.reshape(b, gh, h // gh, gw, w // gw, 3).transpose(0, 1, 3, 2, 4, 5)
        features = self.encode_images(patches.reshape(b * gh * gw, h // gh, w // gw, 3))
        return _unit(features).reshape(b, gh, gw, self.embed_dim)

    def encode_images_with_tokens(self, images) -> tuple[np.ndarray, np.ndarray]:
        return self.encode_images(images), self.encode_image_tokens(images)

    def project(self, features, normalize: bool = True) -> np.ndarray:
        f = np.asarray(features, np.float32)
        return _unit(f) if normalize else f

    def encode_texts(self, texts: Sequence[str], normalize: bool = True) -> np.ndarray:
        rows = []
        for text in texts:
            row = np.zeros(4, np.float32)
            name = self.class_of(text)
            row[3 if name == "background" else self.TISSUE.index(name)] = 1.0
            rows.append(row)
        out = np.stack(rows).astype(np.float32) if rows else np.zeros((0, 4), np.float32)
        return _unit(out) if normalize else out

    @staticmethod
    def class_of(text: str) -> str:
        """The synthetic class a prompt names; a clear error for anything else."""
        lowered = str(text).lower()
        for name, words in _WORDS.items():
            if any(word in lowered for word in words):
                return name
        raise ValueError(
            f"The colour toy only knows the synthetic slide's colours ({', '.join(_WORDS)}); "
            f"{text!r} names none of them. It is a demonstration model, not a pathology "
            "model: load CONCH, PLIP or QuiltNet for real prompts."
        )

    def __repr__(self) -> str:
        return "ColorToyModel(colour toy for the synthetic slide — not a pathology model)"


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm == 0, 1, norm)


def build_color_toy(checkpoint=None, **_ignored) -> ColorToyModel:
    """Factory for :func:`~napari_conch.load_model`: the toy has no weights, and runs on the
    CPU whatever device or precision is asked for."""
    if checkpoint not in (None, ""):
        from ..errors import CheckpointError

        raise CheckpointError(f"The colour toy has no weights (got {checkpoint!r}): «!checkpoint».")
    return ColorToyModel()
