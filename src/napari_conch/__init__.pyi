# The public API of napari_conch, listed once: this stub tells type checkers and
# editors what the package exports, and napari_conch/__init__.py reads it (lazy_loader) to
# import each name on first use. Add a public name here and nowhere else.

from ._napari.view import show as show
from ._napari.view import view as view
from .agreement import agreement as agreement
from .agreement import compare_zero_and_few_shot as compare_zero_and_few_shot
from .agreement import cross_validate as cross_validate
from .annotations import Annotations as Annotations
from .annotations import read_annotations as read_annotations
from .classifier import TileClassifier as TileClassifier
from .classifier import fit_classifier as fit_classifier
from .classifier import load_classifier as load_classifier
from .dense import DenseTokens as DenseTokens
from .dense import dense_segment as dense_segment
from .dense import dense_similarity as dense_similarity
from .dense import dense_tokens as dense_tokens
from .distributed import embed_slides as embed_slides
from .embeddings import Embeddings as Embeddings
from .engine import embed as embed
from .errors import CacheError as CacheError
from .errors import CheckpointError as CheckpointError
from .errors import MissingMppError as MissingMppError
from .errors import NapariConchError as NapariConchError
from .errors import OutputError as OutputError
from .errors import ResultReadError as ResultReadError
from .errors import SlideReadError as SlideReadError
from .errors import TokenizerNotFoundError as TokenizerNotFoundError
from .errors import UnknownModelError as UnknownModelError
from .errors import WeightsNotFoundError as WeightsNotFoundError
from .fewshot import few_shot_segment as few_shot_segment
from .lesson import Lesson as Lesson
from .lesson import teach as teach
from .models import ConchModel as ConchModel
from .models import available_models as available_models
from .models import load_model as load_model
from .models import register_model as register_model
from .progress import CancelToken as CancelToken
from .prompts import PromptSet as PromptSet
from .protocol import ImageTextModel as ImageTextModel
from .provenance import Provenance as Provenance
from .results import Hit as Hit
from .results import Retrieval as Retrieval
from .results import SegmentationResult as SegmentationResult
from .results import SimilarityMap as SimilarityMap
from .results import SlideCall as SlideCall
from .slide import Slide as Slide
from .slide import open_slide as open_slide
from .synthetic import synthetic_slide as synthetic_slide
from .tiling import TileGrid as TileGrid
from .tiling import tile_grid as tile_grid
from .tissue import TissueMask as TissueMask
from .tissue import tissue_mask as tissue_mask
from .zeroshot import classify_slide as classify_slide
from .zeroshot import retrieve as retrieve
from .zeroshot import similarity_map as similarity_map
from .zeroshot import zero_shot_segment as zero_shot_segment

__version__: str
