"""The CONCH backend: builds the network, loads weights and implements the model protocol."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError, TokenizerNotFoundError
from .conch_net import ConchConfig, ConchNetwork
from .device import autocast, resolve_device, resolve_precision
from .preprocess import OPENAI_MEAN, OPENAI_STD, as_image_batch, prepare_batch
from .tokenizer import ConchTokenizer, find_tokenizer
from .weights import (
    WeightsSource,
    find_checkpoint,
    format_key_problem,
    read_state_dict,
    split_keys,
)

logger = logging.getLogger(__name__)

CONCH_REPO = "MahmoodLab/conch"
CONCH_TARGET_MPP = 0.5  # µm/px the model's tiles are read at by default (about 20×)
# Keys of the original CoCa model that zero-shot work never uses. The public weights keep
# the caption pooler and drop the caption decoder; either may be present.
IGNORED_PREFIXES = ("text_decoder.", "visual.attn_pool_caption.", "visual.ln_caption.")
_TEXT_BATCH = 64
_TEXT_CACHE_SIZE = 20_000
# On CPU, float32 tiles go through the network one at a time. A tile's largest activation
# (the MLP hidden layer, ~10 MB for CONCH) then stays below glibc's mmap threshold, so it is
# reused from the heap instead of being mapped and page-faulted in afresh on every call
# (about 3 GB of faults per 8 CONCH tiles, a tenth of the CPU time); and a tile's features
# are bit-identical whatever batch it arrives in, so cached results never depend on
# batch size or order.
_CPU_MICRO_BATCH = 1


class ConchModel:
    """CONCH behind the napari-conch model protocol (DESIGN §2).

    Create it with :func:`napari_conch.load_model`. ``encode_images`` returns the 512-d
    pre-projection features (the ones to cache, and MI-Zero's input); ``project`` maps them
    into the joint image–text space; ``encode_texts`` embeds prompts in that space.

    Attributes
    ----------
    name : str
        Registered model name (``"conch"``).
    input_size : int
        Side of the square model input in pixels (448 for CONCH).
    target_mpp : float
        Default µm per pixel tiles are read at.
    embed_dim : int
        Width of the features and of the joint space (512).
    logit_scale : float
        The learned log temperature; class probabilities are
        ``softmax(exp(logit_scale) * cosine similarities)``.
    trained : bool
        False for ``checkpoint="random"``; everything made with such a model is marked so.
    network : ConchNetwork
        The torch module, with the reference implementation's parameter names.
    """

    def __init__(
        self,
        network: ConchNetwork,
        *,
        name: str,
        device: torch.device,
        precision: str,
        weights: WeightsSource,
        trained: bool,
        tokenizer_path: Path | None,
        tokenizer_error: Exception | None = None,
        target_mpp: float = CONCH_TARGET_MPP,
    ):
        self.network = network
        self.name = name
        self.device = device
        self.precision = precision
        self.weights = weights
        self.trained = trained
        self.target_mpp = float(target_mpp)
        self.input_size = network.config.image_size
        self.embed_dim = network.config.embed_dim
        self.mean, self.std = OPENAI_MEAN, OPENAI_STD
        self.tokenizer_path = tokenizer_path
        self._tokenizer_error = tokenizer_error
        self._tokenizer: ConchTokenizer | None = None
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # the text cache and lazy members are shared by threads
        self._weights_hash: str | None = None

    # -- protocol ------------------------------------------------------------------------

    @property
    def logit_scale(self) -> float:
        return float(self.network.logit_scale.detach().float().cpu())

    @property
    def weights_hash(self) -> str:
        """A digest of every parameter (name, shape, dtype, bytes); computed once, on demand."""
        if self._weights_hash is None:
            self._weights_hash = state_dict_digest(self.network.state_dict(), prefix=self.name)
        return self._weights_hash

    def encode_images(self, images) -> np.ndarray:
        """Embed a batch of RGB tiles → pre-projection features, float32 (B, embed_dim).

        ``images`` is uint8 (0–255) or float (0–1) RGB, (B, 3, H, W) or (B, H, W, 3), as a
        numpy array or torch tensor (pinned CPU tensors copy to CUDA asynchronously). Tiles
        are resized on the device to ``input_size`` (bicubic, antialiased; shortest edge then
        centre crop) and normalised with the OpenAI mean and std the model was trained with.
        """
        batch = as_image_batch(images)
        # (bf16 on CPU wants large matrices for its AMX/AVX-512 kernels more than it suffers
        # from page faults, so only float32 is split.)
        split = self.device.type == "cpu" and self.precision == "fp32"
        step = self._micro_batch if split else batch.shape[0]
        parts = []
        with torch.inference_mode():
            for i in range(0, len(batch), step):
                # Preprocess per piece: only the tiles in flight exist as float32.
                pixels = prepare_batch(
                    batch[i : i + step], self.input_size, self.device, self.mean, self.std
                )
                with autocast(self.device, self.precision):
                    parts.append(self.network.visual(pixels))
            features = parts[0] if len(parts) == 1 else torch.cat(parts)
            return features.float().cpu().numpy()

    @property
    def _micro_batch(self) -> int:
        return _CPU_MICRO_BATCH

    def project(self, features, normalize: bool = True) -> np.ndarray:
        """Pre-projection features (N, embed_dim) → joint-space embeddings, L2-normalised."""
        feats = torch.as_tensor(np.asarray(features, dtype=np.float32))
        if feats.ndim != 2 or feats.shape[1] != self.embed_dim:
            raise ValueError(
                f"Expected features of shape (N, {self.embed_dim}); got {tuple(feats.shape)}."
            )
        proj = self.network.visual.proj_contrast.detach()
        with torch.inference_mode():
            out = feats.to(proj.device) @ proj.float()
            if normalize:
                out = torch.nn.functional.normalize(out, dim=-1)
            return out.cpu().numpy()

    def encode_texts(self, texts: Sequence[str], normalize: bool = True) -> np.ndarray:
        """Embed prompts in the joint space → float32 (N, embed_dim).

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

    @property
    def tokenizer(self) -> ConchTokenizer:
        with self._lock:
            if self._tokenizer is None:
                if self.tokenizer_path is None:
                    raise TokenizerNotFoundError(
                        str(self._tokenizer_error)
                    ) from self._tokenizer_error
                self._tokenizer = ConchTokenizer(
                    self.tokenizer_path,
                    context_length=self.network.config.context_length,
                    pad_id=self.network.config.pad_id,
                )
            return self._tokenizer

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """Token ids (N, 128) exactly as the reference model tokenises ``texts``."""
        return self.tokenizer(list(texts))

    def _encode_text_batch(self, texts: list[str]) -> np.ndarray:
        ids = torch.from_numpy(self.tokenize(texts)).to(self.device)
        with torch.inference_mode(), autocast(self.device, self.precision):
            out = self.network.text(ids)
        return out.float().cpu().numpy()

    def info(self) -> dict:
        """A summary for logs, the GUI status line and result metadata (no secrets)."""
        return {
            "model": self.name,
            "trained": self.trained,
            "weights": self.weights.describe(),
            "device": str(self.device),
            "precision": self.precision,
            "input_size": self.input_size,
            "target_mpp": self.target_mpp,
            "embed_dim": self.embed_dim,
            "tokenizer": str(self.tokenizer_path) if self.tokenizer_path else None,
        }

    def __repr__(self) -> str:
        state = "trained" if self.trained else "UNTRAINED"
        return (
            f"ConchModel(name={self.name!r}, {state}, device={self.device}, "
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


def build_conch(
    config: ConchConfig,
    *,
    name: str,
    checkpoint: str | os.PathLike | None,
    tokenizer: str | os.PathLike | None,
    device: str | torch.device | None,
    precision: str | None,
    token: str | bool | None = None,
    input_size: int | None = None,
    target_mpp: float | None = None,
    seed: int = 0,
    repo_id: str = CONCH_REPO,
) -> ConchModel:
    """Build a CONCH-architecture model and load its weights (see ``load_model``)."""
    if input_size is not None:
        input_size = int(input_size)
        if input_size <= 0 or input_size % config.patch_size:
            raise ValueError(
                f"input_size must be a positive multiple of the patch size {config.patch_size}; "
                f"got {input_size}."
            )
        config = config.replace(image_size=input_size)
    if target_mpp is not None and not (0 < float(target_mpp) < 1000):
        raise ValueError(f"target_mpp must be a positive µm/px value; got {target_mpp!r}.")
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)

    if isinstance(checkpoint, str) and checkpoint.strip().lower() == "random":
        logger.warning(
            "Building %s with RANDOM weights (seed %d): outputs are meaningless and every "
            "result made with this model is marked untrained. Use it only to check a pipeline.",
            name,
            seed,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = ConchNetwork(config)
        network = network.to(dev)
        source, trained = WeightsSource(None, "random"), False
    else:
        source = find_checkpoint(checkpoint, repo_id=repo_id, token=token, model_name=name)
        logger.info("Loading %s weights from %s", name, source.describe())
        network = load_network(config, source.path, dev, model_name=name)
        trained = True
    network.eval().requires_grad_(False)

    tok_path, tok_error = None, None
    try:
        tok_path = find_tokenizer(tokenizer, source.path)
    except TokenizerNotFoundError as exc:
        if tokenizer is not None:
            raise  # the user named a file that is not there: say so now
        tok_error = exc
        logger.warning("%s Image embedding works; text prompts will fail until it is found.", exc)

    return ConchModel(
        network,
        name=name,
        device=dev,
        precision=prec,
        weights=source,
        trained=trained,
        tokenizer_path=tok_path,
        tokenizer_error=tok_error,
        target_mpp=CONCH_TARGET_MPP if target_mpp is None else target_mpp,
    )


def load_network(
    config: ConchConfig, path: Path, device: torch.device, model_name: str = "conch"
) -> ConchNetwork:
    """Read ``path`` and load it into a new network on ``device`` (strict, with clear errors)."""
    state_dict = read_state_dict(path)
    # Built on the meta device, so no time goes into random initialisation that the
    # checkpoint then overwrites; parameters are allocated once, on the target device.
    with torch.device("meta"):
        network = ConchNetwork(config)
    expected = network.state_dict()
    missing, unexpected, ignored = split_keys(state_dict, expected, IGNORED_PREFIXES)
    if ignored:
        logger.debug(
            "Ignoring %d checkpoint tensors not used for zero-shot work (caption pooler / "
            "decoder): %s",
            len(ignored),
            ", ".join(sorted({".".join(k.split(".")[:2]) for k in ignored})),
        )
    if missing or unexpected:
        raise CheckpointError(format_key_problem(path, missing, unexpected, model_name))
    state_dict = {k: v for k, v in state_dict.items() if k in expected}
    _resize_pos_embed(state_dict, expected["visual.trunk.pos_embed"].shape, config)
    wrong = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if tuple(v.shape) != tuple(expected[k].shape)
    ]
    if wrong:
        raise CheckpointError(
            f"{path} has the right parameter names but other sizes, so it belongs to a "
            f"different configuration than {model_name}:\n  "
            + "\n  ".join(wrong[:8])
            + (f"\n  … ({len(wrong) - 8} more)" if len(wrong) > 8 else "")
        )
    network = network.to_empty(device=device)
    network.load_state_dict(state_dict, strict=True)
    return network


def _resize_pos_embed(state_dict: dict, target_shape, config: ConchConfig) -> None:
    """Resample the trunk's position embedding when the checkpoint's grid differs."""
    key = "visual.trunk.pos_embed"
    pos = state_dict.get(key)
    if pos is None or tuple(pos.shape) == tuple(target_shape) or pos.ndim != 3:
        return
    if pos.shape[-1] != target_shape[-1]:
        return  # a width mismatch is reported by the shape check
    from timm.layers import resample_abs_pos_embed

    grid = config.image_size // config.patch_size
    old = round((pos.shape[1] - 1) ** 0.5)
    if old * old + 1 != pos.shape[1]:
        raise CheckpointError(
            f"The checkpoint's position embedding has {pos.shape[1]} entries, which is not a "
            "square grid plus a class token; it does not belong to this model."
        )
    logger.info(
        "Resampling the position embedding from a %d×%d to a %d×%d patch grid (input %d px).",
        old,
        old,
        grid,
        grid,
        config.image_size,
    )
    # Bilinear without antialiasing, as the reference does when it changes image size.
    state_dict[key] = resample_abs_pos_embed(
        pos.float(),
        new_size=[grid, grid],
        num_prefix_tokens=1,
        interpolation="bilinear",
        antialias=False,
    ).to(pos.dtype)
