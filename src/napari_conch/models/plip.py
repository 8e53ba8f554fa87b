"""The PLIP backend (Huang et al., Nature Medicine 2023): a CLIP ViT-B/32 in the
transformers format, openly available as ``vinid/plip`` on the Hugging Face hub.

Pre-projection features are the vision tower's pooled output (the class token after the
final layer norm, 768-d); ``project`` applies the visual projection into the 512-d joint
space, exactly as ``CLIPModel.get_image_features`` does in one go.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError, TokenizerNotFoundError
from .base import TorchImageTextModel, build_random, check_geometry, is_random
from .device import autocast, resolve_device, resolve_precision
from .weights import (
    FolderLayout,
    WeightsSource,
    check_keys,
    check_shapes,
    find_model_folder,
    read_state_dict,
)

logger = logging.getLogger(__name__)

PLIP_REPO = "vinid/plip"
PLIP_URL = f"https://huggingface.co/{PLIP_REPO}"
PLIP_ENV = "NAPARI_CONCH_PLIP"
# PLIP's training images are mostly 20× fields (Twitter, PathLAION): 224 px at 0.5 µm/px,
# a 112 µm tile, is the usual way to run it on slides. Overridable with target_mpp=.
PLIP_TARGET_MPP = 0.5
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
)
PLIP_LAYOUT = FolderLayout(
    weights=("model.safetensors", "pytorch_model.bin"),
    config="config.json",
    extra=(*TOKENIZER_FILES, "preprocessor_config.json"),
)
# Buffers older transformers versions saved and newer ones recompute.
_IGNORED_SUFFIXES = ("position_ids",)


class ClipModel(TorchImageTextModel):
    """A transformers ``CLIPModel`` (PLIP or any CLIP checkpoint in that format) behind the
    napari-conch model protocol. Create it with ``load_model("plip", ...)``."""

    cpu_micro_batch = 16  # measured for ViT-B/32: 1.5x single tiles, 5 % more than 8 at a time

    def __init__(self, clip, *, tokenizer_dir: Path | None, image_mean, image_std, **kwargs):
        vision = clip.config.vision_config
        super().__init__(input_size=vision.image_size, embed_dim=vision.hidden_size, **kwargs)
        self.clip = clip
        self.mean, self.std = tuple(image_mean), tuple(image_std)
        self.context_length = int(clip.config.text_config.max_position_embeddings)
        self.tokenizer_dir = tokenizer_dir
        self._tokenizer = None

    @property
    def logit_scale(self) -> float:
        return float(self.clip.logit_scale.detach().float().cpu())

    def _visual(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.clip.vision_model(pixel_values=pixels).pooler_output

    def _projection(self) -> torch.Tensor:
        return self.clip.visual_projection.weight.T

    def _state_dict(self) -> dict:
        return self.clip.state_dict()

    @property
    def tokenizer(self):
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = _load_tokenizer(self.tokenizer_dir, self.name)
            return self._tokenizer

    def tokenize(self, texts: list[str]) -> dict:
        """input_ids and attention_mask (N, context) as CLIPProcessor makes them."""
        tok = self.tokenizer
        for text in texts:
            if len(tok(text)["input_ids"]) > self.context_length:
                logger.warning(
                    "Prompt truncated to %d tokens (the model's text limit): %.60r…",
                    self.context_length,
                    text,
                )
        return tok(
            texts,
            padding="max_length",
            max_length=self.context_length,
            truncation=True,
            return_tensors="pt",
        )

    def _encode_text_batch(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenize(texts)
        ids = enc["input_ids"].to(self.device)
        mask = enc["attention_mask"].to(self.device)
        with torch.inference_mode(), autocast(self.device, self.precision):
            pooled = self.clip.text_model(input_ids=ids, attention_mask=mask).pooler_output
            out = self.clip.text_projection(pooled)
        return out.float().cpu().numpy()

    def info(self) -> dict:
        where = str(self.tokenizer_dir) if self.tokenizer_dir else "bundled CLIP vocabulary"
        return {**super().info(), "tokenizer": where}


def _load_tokenizer(folder: Path | None, model_name: str):
    from transformers import AutoTokenizer

    if folder is None or not any((folder / name).is_file() for name in TOKENIZER_FILES):
        logger.warning(
            "No tokenizer files for %s%s; using the standard CLIP vocabulary that ships with "
            "open_clip (the one PLIP was trained with).",
            model_name,
            f" in {folder}" if folder is not None else "",
        )
        return bundled_clip_tokenizer()
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise TokenizerNotFoundError(f"The tokenizer in {folder} cannot be read ({exc}).") from exc


def bundled_clip_tokenizer():
    """A transformers CLIPTokenizer built from the CLIP BPE file open_clip installs (the
    vocabulary of OpenAI CLIP, PLIP and QuiltNet), for folders without tokenizer files."""
    import gzip

    import open_clip
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(bpe) as fh:
        lines = fh.read().decode("utf-8").split("\n")
    # The vocabulary has 49408 entries: 256 byte symbols, the same with an end-of-word
    # marker, 48894 merges and the two special tokens.
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges)]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={token: i for i, token in enumerate(vocab)}, merges=merges)


def build_plip(
    *,
    name: str = "plip",
    checkpoint: str | os.PathLike | None = None,
    tokenizer: str | os.PathLike | None = None,
    device: str | torch.device | None = "auto",
    precision: str | None = "auto",
    token: str | bool | None = None,
    target_mpp: float | None = None,
    seed: int = 0,
    config=None,
    repo_id: str = PLIP_REPO,
) -> ClipModel:
    """Load PLIP (or any transformers CLIP folder) behind the model protocol.

    ``checkpoint`` is a folder holding ``config.json``, ``model.safetensors`` or
    ``pytorch_model.bin`` and the tokenizer files; a weights file inside such a folder;
    ``"hf_hub:<repo>"``; or ``"random"`` (untrained — pipeline checks only; the architecture
    from ``config=``, a ``CLIPConfig`` or its folder, default CLIP ViT-B/32 like PLIP).
    When omitted: ``$NAPARI_CONCH_PLIP``, the Hugging Face cache of ``vinid/plip``, then a
    download (the weights are open).
    """
    from transformers import CLIPConfig, CLIPModel

    _, target_mpp = check_geometry(None, target_mpp, 1)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    if is_random(checkpoint):
        # Without config= the architecture is CLIP ViT-B/32, which is PLIP's.
        if config is None:
            cfg = CLIPConfig()
        elif isinstance(config, CLIPConfig):
            cfg = config
        else:
            cfg = CLIPConfig.from_pretrained(str(config))
        clip = build_random(name, seed, lambda: CLIPModel(cfg))
        source, trained = WeightsSource(None, "random"), False
        folder = Path(config) if isinstance(config, (str, os.PathLike)) else None
    else:
        source = find_model_folder(
            checkpoint,
            repo_id=repo_id,
            layout=PLIP_LAYOUT,
            env_var=PLIP_ENV,
            model_name=name,
            token=token,
        )
        logger.info("Loading %s weights from %s", name, source.description)
        folder = source.path.parent
        try:
            cfg = CLIPConfig.from_pretrained(str(folder))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"{folder / 'config.json'} is not a CLIP configuration ({exc})."
            ) from exc
        clip = _load_clip(CLIPModel, cfg, source.path, name)
        trained = True
    clip = clip.to(dev).eval().requires_grad_(False)
    tokenizer_dir = Path(tokenizer).expanduser() if tokenizer is not None else folder
    if tokenizer is not None and not tokenizer_dir.exists():
        raise TokenizerNotFoundError(f"The tokenizer folder {tokenizer_dir} does not exist.")
    image_mean, image_std = _image_stats(folder)
    return ClipModel(
        clip,
        tokenizer_dir=tokenizer_dir,
        image_mean=image_mean,
        image_std=image_std,
        name=name,
        device=dev,
        precision=prec,
        weights=source,
        trained=trained,
        target_mpp=PLIP_TARGET_MPP if target_mpp is None else target_mpp,
    )


def _load_clip(model_class, cfg, path: Path, name: str):
    state_dict = read_state_dict(path)
    with torch.device("meta"):
        clip = model_class(cfg)
    expected = clip.state_dict()
    state_dict = {
        k: v for k, v in state_dict.items() if k in expected or not k.endswith(_IGNORED_SUFFIXES)
    }
    check_keys(state_dict, expected, path, name, f"for PLIP: the files of {PLIP_URL}")
    check_shapes(state_dict, expected, f"{path} does not match the config.json beside it")
    clip = clip.to_empty(device="cpu")
    clip.load_state_dict(state_dict, strict=True, assign=True)
    # Non-persistent buffers (position ids) are not in the checkpoint: rebuild them.
    for module in clip.modules():
        ids = getattr(module, "position_ids", None)
        if isinstance(ids, torch.Tensor):
            module.position_ids = torch.arange(ids.shape[-1]).expand(ids.shape)
    return clip


def _image_stats(folder: Path | None) -> tuple[tuple, tuple]:
    """Mean/std from ``preprocessor_config.json`` when present, else CLIP's."""
    import json

    path = folder / "preprocessor_config.json" if folder is not None else None
    if path is not None and path.is_file():
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
            mean, std = cfg.get("image_mean", CLIP_MEAN), cfg.get("image_std", CLIP_STD)
            if len(mean) == 3 and len(std) == 3:
                return tuple(map(float, mean)), tuple(map(float, std))
        except (ValueError, TypeError, OSError):
            logger.warning("Ignoring unreadable %s; using CLIP's mean and std.", path)
    return CLIP_MEAN, CLIP_STD
