"""napari-conch: CONCH zero-shot pathology on whole-slide images, in napari and from Python.

The public names (DESIGN §2) are imported on first use, so ``import napari_conch`` stays
cheap for napari's plugin discovery and for command-line start-up.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING

__version__ = "0.1.0.dev0"

# Library code logs; applications decide where logs go.
logging.getLogger(__name__).addHandler(logging.NullHandler())

_LAZY = {
    "open_slide": "napari_conch.slide",
    "Slide": "napari_conch.slide",
    "tissue_mask": "napari_conch.tissue",
    "TissueMask": "napari_conch.tissue",
    "synthetic_slide": "napari_conch.synthetic",
    "tile_grid": "napari_conch.tiling",
    "TileGrid": "napari_conch.tiling",
    "embed": "napari_conch.engine",
    "CancelToken": "napari_conch.engine",
    "Embeddings": "napari_conch.embeddings",
    "CacheError": "napari_conch.errors",
    "embed_slides": "napari_conch.distributed",
    "PromptSet": "napari_conch.prompts",
    "show": "napari_conch._napari.view",
    "view": "napari_conch._napari.view",
    "zero_shot_segment": "napari_conch.zeroshot",
    "similarity_map": "napari_conch.zeroshot",
    "classify_slide": "napari_conch.zeroshot",
    "retrieve": "napari_conch.zeroshot",
    "SegmentationResult": "napari_conch.zeroshot",
    "SimilarityMap": "napari_conch.zeroshot",
    "SlideCall": "napari_conch.zeroshot",
    "load_model": "napari_conch.models",
    "available_models": "napari_conch.models",
    "ImageTextModel": "napari_conch.models",
    "ConchModel": "napari_conch.models",
    "register_model": "napari_conch.models",
    "NapariConchError": "napari_conch.errors",
    "CheckpointError": "napari_conch.errors",
    "WeightsNotFoundError": "napari_conch.errors",
    "TokenizerNotFoundError": "napari_conch.errors",
    "UnknownModelError": "napari_conch.errors",
    "SlideReadError": "napari_conch.errors",
    "MissingMppError": "napari_conch.errors",
}

__all__ = [  # noqa: RUF022 - public API first, then errors
    "CancelToken",
    "Embeddings",
    "PromptSet",
    "SegmentationResult",
    "SimilarityMap",
    "SlideCall",
    "Slide",
    "TileGrid",
    "TissueMask",
    "embed",
    "embed_slides",
    "classify_slide",
    "open_slide",
    "retrieve",
    "similarity_map",
    "synthetic_slide",
    "tile_grid",
    "show",
    "tissue_mask",
    "view",
    "zero_shot_segment",
    "ConchModel",
    "ImageTextModel",
    "available_models",
    "load_model",
    "register_model",
    "CacheError",
    "CheckpointError",
    "MissingMppError",
    "NapariConchError",
    "SlideReadError",
    "TokenizerNotFoundError",
    "UnknownModelError",
    "WeightsNotFoundError",
    "__version__",
]

if TYPE_CHECKING:  # pragma: no cover
    from ._napari.view import show, view
    from .distributed import embed_slides
    from .embeddings import Embeddings
    from .engine import CancelToken, embed
    from .errors import (
        CacheError,
        CheckpointError,
        MissingMppError,
        NapariConchError,
        SlideReadError,
        TokenizerNotFoundError,
        UnknownModelError,
        WeightsNotFoundError,
    )
    from .models import (
        ConchModel,
        ImageTextModel,
        available_models,
        load_model,
        register_model,
    )
    from .prompts import PromptSet
    from .slide import Slide, open_slide
    from .synthetic import synthetic_slide
    from .tiling import TileGrid, tile_grid
    from .tissue import TissueMask, tissue_mask
    from .zeroshot import (
        SegmentationResult,
        SimilarityMap,
        SlideCall,
        classify_slide,
        retrieve,
        similarity_map,
        zero_shot_segment,
    )


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_conch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
