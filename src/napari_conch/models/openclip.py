"""The QuiltNet backend (Ikezogwo et al., NeurIPS 2023): an open_clip ViT-B/32 fine-tuned on
Quilt-1M, openly available as ``wisdomik/QuiltNet-B-32`` on the Hugging Face hub. Any
open_clip checkpoint with a ViT image tower loads the same way.

Pre-projection features are the pooled image-tower output before ``visual.proj`` (768-d for
ViT-B/32); ``project`` applies ``visual.proj``, so ``project(encode_images(x))`` equals
open_clip's ``encode_image(x)``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError, TokenizerNotFoundError
from .base import TorchImageTextModel, build_random, check_geometry, is_random
from .device import autocast, resolve_device, resolve_precision
from .plip import CLIP_MEAN, CLIP_STD
from .weights import (
    FolderLayout,
    WeightsSource,
    check_keys,
    check_shapes,
    find_model_folder,
    read_state_dict,
)

logger = logging.getLogger(__name__)

QUILTNET_REPO = "wisdomik/QuiltNet-B-32"
QUILTNET_ENV = "NAPARI_CONCH_QUILTNET"
QUILTNET_ARCH = "ViT-B-32"
# Quilt-1M images come from educational videos at many magnifications; 224 px at 0.5 µm/px
# (a 112 µm tile, 20×) is the common choice on slides. Overridable with target_mpp=.
QUILTNET_TARGET_MPP = 0.5
CONFIG_NAME = "open_clip_config.json"
QUILTNET_LAYOUT = FolderLayout(
    weights=(
        "open_clip_model.safetensors",
        "open_clip_pytorch_model.bin",
        "model.safetensors",
        "pytorch_model.bin",
    ),
    config=CONFIG_NAME,
    config_required=False,
)


class OpenClipModel(TorchImageTextModel):
    """An open_clip CLIP model behind the napari-conch model protocol. Create it with
    ``load_model("quiltnet", ...)``."""

    cpu_micro_batch = 16  # measured for ViT-B/32: 1.5x single tiles, 5 % more than 8 at a time

    def __init__(self, clip, tokenizer, *, image_mean, image_std, **kwargs):
        visual = clip.visual
        size = visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        # The tower's output before ``proj`` is what we cache; towers without a separate
        # projection (timm towers with a head) are cached after it, with an identity project.
        self._split = _has_separate_projection(visual)
        width = visual.proj.shape[0] if self._split else _output_dim(clip)
        super().__init__(input_size=int(size), embed_dim=int(width), **kwargs)
        self.clip = clip
        self._tokenizer = tokenizer
        self.mean, self.std = tuple(image_mean), tuple(image_std)
        self.context_length = int(getattr(tokenizer, "context_length", 77) or 77)

    @property
    def logit_scale(self) -> float:
        return float(self.clip.logit_scale.detach().float().cpu())

    def _visual(self, pixels: torch.Tensor) -> torch.Tensor:
        visual = self.clip.visual
        if not self._split:
            return visual(pixels)
        pooled, _ = visual._pool(visual.transformer(visual._embeds(pixels)))
        return pooled

    def _projection(self) -> torch.Tensor:
        if self._split:
            return self.clip.visual.proj
        return torch.eye(self.embed_dim, device=self.device)

    def _state_dict(self) -> dict:
        return self.clip.state_dict()

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids (N, context) as open_clip's tokenizer makes them."""
        encode = getattr(self._tokenizer, "encode", None)
        if callable(encode):
            for text in texts:
                try:
                    n = len(encode(text)) + 2  # plus start and end tokens
                except Exception:  # an HF tokenizer wrapper: no length check
                    break
                if n > self.context_length:
                    logger.warning(
                        "Prompt truncated to %d tokens (the model's text limit): %.60r…",
                        self.context_length,
                        text,
                    )
        return self._tokenizer(texts)

    def _encode_text_batch(self, texts: list[str]) -> np.ndarray:
        ids = self.tokenize(texts).to(self.device)
        with torch.inference_mode(), autocast(self.device, self.precision):
            out = self.clip.encode_text(ids, normalize=False)
        return out.float().cpu().numpy()


def _has_separate_projection(visual) -> bool:
    return (
        isinstance(getattr(visual, "proj", None), torch.Tensor)
        and callable(getattr(visual, "_embeds", None))
        and callable(getattr(visual, "_pool", None))
        and getattr(visual, "attn_pool", None) is None
    )


def _output_dim(clip) -> int:
    return int(clip.text_projection.shape[-1]) if hasattr(clip, "text_projection") else 512


def build_openclip(
    *,
    name: str = "quiltnet",
    checkpoint: str | os.PathLike | None = None,
    tokenizer: str | os.PathLike | None = None,
    device: str | torch.device | None = "auto",
    precision: str | None = "auto",
    token: str | bool | None = None,
    target_mpp: float | None = None,
    seed: int = 0,
    arch: str | None = None,
    config: dict | str | os.PathLike | None = None,
    repo_id: str = QUILTNET_REPO,
) -> OpenClipModel:
    """Load QuiltNet (or any open_clip checkpoint) behind the model protocol.

    ``checkpoint`` is a folder with ``open_clip_config.json`` and the weights (the hub
    layout); a weights file (architecture from an ``open_clip_config.json`` beside it, else
    ``arch=``, default ViT-B-32); ``"hf_hub:<repo>"``; or ``"random"`` (untrained; the
    architecture from ``config=`` or ``arch=``). When omitted: ``$NAPARI_CONCH_QUILTNET``,
    the Hugging Face cache of ``wisdomik/QuiltNet-B-32``, then a download (open weights).
    """
    _, target_mpp = check_geometry(None, target_mpp, 1)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    random = is_random(checkpoint)
    if random:
        source, trained = WeightsSource(None, "random"), False
        cfg = _read_config(config) if config is not None else {}
    else:
        source = find_model_folder(
            checkpoint,
            repo_id=repo_id,
            layout=QUILTNET_LAYOUT,
            env_var=QUILTNET_ENV,
            model_name=name,
            token=token,
        )
        logger.info("Loading %s weights from %s", name, source.description)
        beside = source.path.parent / CONFIG_NAME
        cfg = (
            _read_config(config if config is not None else beside)
            if (config is not None or beside.is_file())
            else {}
        )
    model_cfg = cfg.get("model_cfg")
    arch = arch or QUILTNET_ARCH
    if random:
        clip = build_random(name, seed, lambda: _create(model_cfg, arch))
    else:
        clip = _create(model_cfg, arch)
        _load_weights(clip, source.path, name, repo_id)
        trained = True
    clip = clip.to(dev).eval().requires_grad_(False)
    tok = _tokenizer(tokenizer, cfg)
    pre = cfg.get("preprocess_cfg", {})
    return OpenClipModel(
        clip,
        tok,
        image_mean=pre.get("mean", CLIP_MEAN),
        image_std=pre.get("std", CLIP_STD),
        name=name,
        device=dev,
        precision=prec,
        weights=source,
        trained=trained,
        target_mpp=QUILTNET_TARGET_MPP if target_mpp is None else target_mpp,
    )


def _read_config(config) -> dict:
    if isinstance(config, dict):
        return config if "model_cfg" in config else {"model_cfg": config}
    path = Path(config)
    path = path / CONFIG_NAME if path.is_dir() else path
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"Cannot read the open_clip config {path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("model_cfg"), dict):
        raise CheckpointError(f"{path} has no 'model_cfg'; it is not an open_clip config.")
    return data


def _create(model_cfg: dict | None, arch: str):
    """An open_clip model from a config dict, or from the named architecture's config."""
    import open_clip
    from open_clip.model import CLIP, CustomTextCLIP

    if model_cfg is None:
        model_cfg = open_clip.get_model_config(arch)
        if model_cfg is None:
            raise ValueError(
                f"Unknown open_clip architecture {arch!r}; e.g. ViT-B-32, ViT-B-32-quickgelu, "
                "ViT-B-16, ViT-L-14."
            )
    cfg = dict(model_cfg)
    custom = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
    cfg.pop("multimodal_cfg", None)
    try:
        return (CustomTextCLIP if custom else CLIP)(**cfg)
    except TypeError as exc:
        raise CheckpointError(f"The open_clip model config is not usable: {exc}") from exc


def _load_weights(clip, path: Path, name: str, repo_id: str) -> None:
    state_dict = read_state_dict(path)
    expected = clip.state_dict()
    if "logit_scale" in state_dict and state_dict["logit_scale"].ndim != clip.logit_scale.ndim:
        state_dict["logit_scale"] = state_dict["logit_scale"].reshape(clip.logit_scale.shape)
    hint = (
        f"for QuiltNet: the files of https://huggingface.co/{repo_id}; for another "
        "open_clip model keep its open_clip_config.json beside the weights or pass arch="
    )
    check_keys(state_dict, expected, path, name, hint)
    check_shapes(
        state_dict,
        expected,
        f"{path} has other sizes than the {name} architecture (a different open_clip "
        "model? pass arch= or keep its open_clip_config.json beside it)",
    )
    clip.load_state_dict(state_dict, strict=True)


def _tokenizer(tokenizer, cfg: dict):
    import open_clip

    text_cfg = (cfg.get("model_cfg") or {}).get("text_cfg", {})
    if text_cfg.get("hf_tokenizer_name"):
        try:
            return open_clip.tokenizer.HFTokenizer(
                text_cfg["hf_tokenizer_name"],
                context_length=text_cfg.get("context_length", 77),
                **text_cfg.get("tokenizer_kwargs", {}),
            )
        except (OSError, ValueError) as exc:
            raise TokenizerNotFoundError(
                f"The tokenizer {text_cfg['hf_tokenizer_name']!r} is not available ({exc})."
            ) from exc
    if tokenizer is not None:
        raise TokenizerNotFoundError(
            "open_clip models with the standard CLIP vocabulary use the tokenizer that ships "
            "with open_clip; tokenizer= is only for models whose config names another one."
        )
    context = int(text_cfg.get("context_length", 77))
    return open_clip.tokenizer.SimpleTokenizer(context_length=context)
