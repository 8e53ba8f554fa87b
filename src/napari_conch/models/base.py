"""What every built-in backend shares: image batching, projection, a text cache, hashing.

A backend subclasses :class:`TorchImageTextModel` and supplies three small pieces — the
image tower up to the pre-projection features (``_visual``), the projection matrix
(``_projection``) and the text tower on a list of prompts (``_encode_text_batch``) — so
preprocessing, micro-batching, caching and the protocol members behave the same for CONCH,
PLIP and QuiltNet.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from .device import autocast
from .preprocess import OPENAI_MEAN, OPENAI_STD, as_image_batch, prepare_batch
from .weights import WeightsSource

logger = logging.getLogger(__name__)

_TEXT_BATCH = 64
_TEXT_CACHE_SIZE = 20_000
# On CPU in float32, tiles go through the network in pieces of a fixed size, padded to that
# size at the end of a batch: a tile's features then come out of the same matrix shapes
# whatever batch it arrives in (BLAS results depend on the number of rows), so they are
# bit-identical for any batch size or order, and cached results never depend on either.
# CONCH uses pieces of one tile: its largest activation (the MLP hidden layer, ~10 MB) then
# stays below glibc's mmap threshold and is reused from the heap instead of being mapped
# and page-faulted in afresh on every call (about 3 GB of faults per 8 tiles, a tenth of
# the CPU time). Smaller ViT-B/32 models at 224 px gain from pieces of several tiles.
CPU_MICRO_BATCH = 1


class TorchImageTextModel:
    """Base of the built-in backends; implements :class:`~napari_conch.models.ImageTextModel`.

    Attributes
    ----------
    name : str
        Registered model name.
    input_size : int
        Side of the square model input in pixels.
    target_mpp : float
        Default µm per pixel tiles are read at.
    embed_dim : int
        Width of the pre-projection features ``encode_images`` returns.
    trained : bool
        False for random weights; everything made with such a model is marked so.
    device, precision, weights
        Where it runs, in which precision, and where its weights came from.
    """

    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    cpu_micro_batch: int = CPU_MICRO_BATCH  # tiles per forward pass on CPU in float32

    def __init__(
        self,
        *,
        name: str,
        device: torch.device,
        precision: str,
        weights: WeightsSource,
        trained: bool,
        input_size: int,
        embed_dim: int,
        target_mpp: float,
    ):
        self.name = name
        self.device = device
        self.precision = precision
        self.weights = weights
        self.trained = trained
        self.input_size = int(input_size)
        self.embed_dim = int(embed_dim)
        self.target_mpp = float(target_mpp)
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # the text cache and lazy members are shared by threads
        self._weights_hash: str | None = None

    # -- what a backend provides ------------------------------------------------------------

    def _visual(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels (B, 3, S, S) → pre-projection features (B, embed_dim)."""
        raise NotImplementedError

    def _projection(self) -> torch.Tensor:
        """The (embed_dim, joint_dim) matrix from features to the joint space."""
        raise NotImplementedError

    def _encode_text_batch(self, texts: list[str]) -> np.ndarray:
        """Prompts → un-normalised joint-space embeddings, float32 (N, joint_dim)."""
        raise NotImplementedError

    def _state_dict(self) -> dict:
        """Every tensor that defines the model (hashed for the cache signature)."""
        raise NotImplementedError

    @property
    def logit_scale(self) -> float:
        raise NotImplementedError

    # -- protocol ------------------------------------------------------------------------

    @property
    def weights_hash(self) -> str:
        """A digest of every parameter (name, shape, dtype, bytes); computed once, on demand."""
        if self._weights_hash is None:
            self._weights_hash = state_dict_digest(self._state_dict(), prefix=self.name)
        return self._weights_hash

    def encode_images(self, images) -> np.ndarray:
        """Embed a batch of RGB tiles → pre-projection features, float32 (B, embed_dim).

        ``images`` is uint8 (0–255) or float (0–1) RGB, (B, 3, H, W) or (B, H, W, 3), as a
        numpy array or torch tensor (pinned CPU tensors copy to CUDA asynchronously). Tiles
        are resized on the device to ``input_size`` (bicubic, antialiased; shortest edge then
        centre crop) and normalised with the mean and std the model was trained with.
        """
        batch = as_image_batch(images)
        # (bf16 on CPU wants large matrices for its AMX/AVX-512 kernels more than it suffers
        # from page faults, so only float32 is split.)
        split = self.device.type == "cpu" and self.precision == "fp32"
        step = max(1, int(self.cpu_micro_batch)) if split else batch.shape[0]
        parts = []
        with torch.inference_mode():
            for i in range(0, len(batch), step):
                piece = batch[i : i + step]
                real = len(piece)
                if real < step:  # pad with copies of the last tile: always `step` rows
                    piece = torch.cat([piece, piece[-1:].expand(step - real, *piece.shape[1:])])
                # Preprocess per piece: only the tiles in flight exist as float32.
                pixels = prepare_batch(piece, self.input_size, self.device, self.mean, self.std)
                with autocast(self.device, self.precision):
                    parts.append(self._visual(pixels)[:real])
            features = parts[0] if len(parts) == 1 else torch.cat(parts)
            return features.float().cpu().numpy()

    @property
    def supports_token_embeddings(self) -> bool:
        """Whether :meth:`encode_image_tokens` works for this model (dense maps)."""
        return type(self)._visual_with_tokens is not TorchImageTextModel._visual_with_tokens

    def _visual_with_tokens(self, pixels: torch.Tensor):
        """(pre-projection features, joint-space token embeddings (B, h, w, D)) from one
        pass; models that cannot give token embeddings leave this unimplemented."""
        raise NotImplementedError

    def encode_images_with_tokens(self, images) -> tuple[np.ndarray, np.ndarray]:
        """**Experimental.** One pass → (pre-projection features (B, embed_dim), token
        embeddings (B, h, w, embed_dim) in the joint space, L2-normalised).

        Raises NotImplementedError naming the model when it has no token embeddings.
        """
        batch = as_image_batch(images)
        features, tokens = [], []
        with torch.inference_mode():
            # one tile at a time on the CPU in float32, as encode_images (bit-stable)
            split = self.device.type == "cpu" and self.precision == "fp32"
            step = 1 if split else batch.shape[0]
            for i in range(0, len(batch), step):
                pixels = prepare_batch(
                    batch[i : i + step], self.input_size, self.device, self.mean, self.std
                )
                try:
                    with autocast(self.device, self.precision):
                        f, t = self._visual_with_tokens(pixels)
                except NotImplementedError:
                    raise NotImplementedError(
                        f"{self.name} gives no token embeddings: dense (sub-tile) maps are "
                        "supported by conch only (experimental)."
                    ) from None
                features.append(f.float().cpu())
                tokens.append(t.float().cpu())
        return torch.cat(features).numpy(), torch.cat(tokens).numpy()

    def encode_image_tokens(self, images) -> np.ndarray:
        """**Experimental.** Token embeddings (B, h, w, embed_dim) in the joint space,
        L2-normalised: a text embedding's dot product with them is a sub-tile map."""
        return self.encode_images_with_tokens(images)[1]

    def project(self, features, normalize: bool = True) -> np.ndarray:
        """Pre-projection features (N, embed_dim) → joint-space embeddings, L2-normalised."""
        feats = torch.as_tensor(np.asarray(features, dtype=np.float32))
        if feats.ndim != 2 or feats.shape[1] != self.embed_dim:
            raise ValueError(
                f"Expected features of shape (N, {self.embed_dim}); got {tuple(feats.shape)}."
            )
        proj = self._projection().detach()
        with torch.inference_mode():
            out = feats.to(proj.device) @ proj.float()
            if normalize:
                out = torch.nn.functional.normalize(out, dim=-1)
            return out.cpu().numpy()

    def encode_texts(self, texts: Sequence[str], normalize: bool = True) -> np.ndarray:
        """Embed prompts in the joint space → float32 (N, joint_dim).

        Embeddings are cached per exact prompt string, so re-running an analysis with an
        edited prompt list only encodes the new prompts.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise ValueError("encode_texts needs at least one prompt.")
        bad = [t for t in texts if not isinstance(t, str)]
        if bad:
            raise TypeError(f"Prompts must be strings; got {type(bad[0]).__name__}: {bad[0]!r}.")
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._text_cache))
        for start in range(0, len(missing), _TEXT_BATCH):
            chunk = missing[start : start + _TEXT_BATCH]
            embedded = self._encode_text_batch(chunk)
            with self._lock:
                for text, row in zip(chunk, embedded, strict=True):
                    self._text_cache[text] = row
                while len(self._text_cache) > _TEXT_CACHE_SIZE:
                    self._text_cache.popitem(last=False)
        with self._lock:
            out = np.stack([self._text_cache[t] for t in texts])
            for t in texts:
                self._text_cache.move_to_end(t)
        if normalize:
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out.astype(np.float32, copy=False)

    # -- extras ----------------------------------------------------------------------------

    def info(self) -> dict:
        """A summary for logs, the GUI status line and result metadata (no secrets)."""
        return {
            "model": self.name,
            "trained": self.trained,
            "weights": self.weights.description,
            "device": str(self.device),
            "precision": self.precision,
            "input_size": self.input_size,
            "target_mpp": self.target_mpp,
            "embed_dim": self.embed_dim,
        }

    def __repr__(self) -> str:
        state = "trained" if self.trained else "UNTRAINED"
        return (
            f"{type(self).__name__}(name={self.name!r}, {state}, device={self.device}, "
            f"precision={self.precision}, input_size={self.input_size}, "
            f"target_mpp={self.target_mpp})"
        )


def state_dict_digest(state_dict, prefix: str = "") -> str:
    """Digest of a state dict's names, shapes, dtypes and bytes (stable across runs).

    Each tensor is hashed with SHA-256 (hardware-accelerated on most CPUs) in a thread pool
    (hashlib releases the GIL), then the per-tensor digests are combined: about 0.5 s for
    CONCH's 800 MB on two cores.
    """
    from concurrent.futures import ThreadPoolExecutor

    def digest(key):
        tensor = state_dict[key].detach()
        flat = tensor.to("cpu").contiguous().reshape(-1)
        tensor_hash = hashlib.sha256(flat.view(torch.uint8).numpy().data).hexdigest()
        return f"{key}|{tuple(tensor.shape)}|{tensor.dtype}|{tensor_hash}"

    keys = sorted(state_dict)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        parts = list(pool.map(digest, keys))
    h = hashlib.sha256(prefix.encode())
    for part in parts:
        h.update(part.encode())
    return h.hexdigest()[:32]


def is_random(checkpoint) -> bool:
    """``checkpoint="random"``: an untrained model, for pipeline checks."""
    return isinstance(checkpoint, str) and checkpoint.strip().lower() == "random"


def build_random(name: str, seed: int, build):
    """Call ``build()`` under a fixed torch seed (the global RNG is left as it was), after
    warning that the weights are random."""
    logger.warning(
        "Building %s with RANDOM weights (seed %d): outputs are meaningless and every "
        "result made with this model is marked untrained. Use it only to check a pipeline.",
        name,
        seed,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def check_geometry(input_size, target_mpp, patch_size: int) -> tuple[int | None, float | None]:
    """Validate the user's ``input_size`` / ``target_mpp`` overrides (None = model default)."""
    if input_size is not None:
        input_size = int(input_size)
        if input_size <= 0 or input_size % patch_size:
            raise ValueError(
                f"input_size must be a positive multiple of the patch size {patch_size}; "
                f"got {input_size}."
            )
    if target_mpp is not None and not (0 < float(target_mpp) < 1000):
        raise ValueError(f"target_mpp must be a positive µm/px value; got {target_mpp!r}.")
    return input_size, None if target_mpp is None else float(target_mpp)
