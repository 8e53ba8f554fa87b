"""The CONCH backend: builds the network, loads weights and implements the model protocol."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError, TokenizerNotFoundError, WeightsNotFoundError
from .base import TorchImageTextModel, build_random, check_geometry, is_random
from .conch_net import ConchConfig, ConchNetwork
from .device import autocast, resolve_device, resolve_precision
from .tokenizer import ConchTokenizer, find_tokenizer
from .weights import (
    WeightsSource,
    check_shapes,
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


class ConchModel(TorchImageTextModel):
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
        super().__init__(
            name=name,
            device=device,
            precision=precision,
            weights=weights,
            trained=trained,
            input_size=network.config.image_size,
            embed_dim=network.config.embed_dim,
            target_mpp=target_mpp,
        )
        self.network = network
        self.tokenizer_path = tokenizer_path
        self._tokenizer_error = tokenizer_error
        self._tokenizer: ConchTokenizer | None = None

    # -- backend pieces ----------------------------------------------------------------------

    @property
    def logit_scale(self) -> float:
        return float(self.network.logit_scale.detach().float().cpu())

    def _visual(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.network.visual(pixels)

    def _visual_with_tokens(self, pixels: torch.Tensor):
        return self.network.visual.forward_with_tokens(pixels)

    def _projection(self) -> torch.Tensor:
        return self.network.visual.proj_contrast

    def _state_dict(self) -> dict:
        return self.network.state_dict()

    def _encode_text_batch(self, texts: list[str]) -> np.ndarray:
        ids = torch.from_numpy(self.tokenize(texts)).to(self.device)
        with torch.inference_mode(), autocast(self.device, self.precision):
            out = self.network.text(ids)
        return out.float().cpu().numpy()

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

    def info(self) -> dict:
        return {
            **super().info(),
            "tokenizer": str(self.tokenizer_path) if self.tokenizer_path else None,
        }


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
    input_size, target_mpp = check_geometry(input_size, target_mpp, config.patch_size)
    if input_size is not None:
        config = config.replace(image_size=input_size)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)

    if is_random(checkpoint):
        network = build_random(name, seed, lambda: ConchNetwork(config)).to(dev)
        source, trained = WeightsSource(None, "random"), False
    else:
        source = find_checkpoint(checkpoint, repo_id=repo_id, token=token, model_name=name)
        logger.info("Loading %s weights from %s", name, source.description)
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


def check_conch_text(
    checkpoint: str | os.PathLike | None = None,
    tokenizer: str | os.PathLike | None = None,
    repo_id: str = CONCH_REPO,
) -> Path:
    """The tokenizer file :func:`build_conch` would use, found without building anything or
    contacting the hub; raises :class:`TokenizerNotFoundError` with the fix otherwise."""
    weights_path = None
    # Missing weights are reported when the model is built; here only the tokenizer counts.
    if not is_random(checkpoint):
        with contextlib.suppress(WeightsNotFoundError, ValueError):
            weights_path = find_checkpoint(checkpoint, repo_id=repo_id, download=False).path
    return find_tokenizer(tokenizer, weights_path)


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
    check_shapes(
        state_dict,
        expected,
        f"{path} has the right parameter names but other sizes, so it belongs to a "
        f"different configuration than {model_name}",
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
