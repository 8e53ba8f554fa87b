"""Test helpers: synthetic tiles and the reference CONCH implementation (``conch-fork``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from napari_conch.models.color_toy import ColorToyModel

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# Keys the public CONCH weights do not ship (the caption decoder was removed).
DECODER_PREFIX = "text_decoder."


def random_tiles(rng, n=2, size=448, channels_last=True) -> np.ndarray:
    """uint8 RGB tiles with structure at several scales (not just noise)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    tiles = []
    for _ in range(n):
        base = np.stack(
            [np.sin(2 * np.pi * (f * yy + g * xx)) for f, g in rng.uniform(0.5, 6, size=(3, 2))],
            axis=-1,
        )
        noise = rng.normal(0, 0.25, size=(size, size, 3))
        tiles.append(np.clip((base + noise + 1.2) * 100, 0, 255).astype(np.uint8))
    out = np.stack(tiles)
    return out if channels_last else out.transpose(0, 3, 1, 2).copy()


def reference_config(tiny: bool) -> dict:
    """CoCa keyword arguments: the released CONCH config, or one matching ConchConfig.tiny()."""
    if not tiny:
        import conch.open_clip_custom as occ

        cfg = json.loads(
            (Path(occ.__file__).parent / "model_configs/conch_ViT-B-16.json").read_text()
        )
        cfg.pop("custom_text", None)
        return cfg
    return dict(
        embed_dim=32,
        embed_dim_caption=48,
        vision_cfg=dict(
            width=48,
            layers=2,
            num_heads=3,
            image_size=448,
            patch_size=16,
            attentional_pool_caption=True,
            attentional_pool_contrast=True,
            n_queries_contrast=1,
            n_queries_caption=16,
            output_tokens=True,
        ),
        text_cfg=dict(
            context_length=128,
            vocab_size=32007,
            width=48,
            heads=3,
            layers=2,
            embed_cls=True,
            output_tokens=True,
        ),
        multimodal_cfg=dict(context_length=128, vocab_size=32007, width=48, heads=3, layers=1),
    )


def build_reference(tiny: bool, seed: int = 0, image_size: int | None = None):
    """The reference CoCa with random weights; every tensor (LayerNorms and biases too) is
    perturbed so a mistake in any parameter's use shows up in the outputs."""
    from conch.open_clip_custom.coca_model import CoCa

    cfg = reference_config(tiny)
    if image_size is not None:
        cfg["vision_cfg"]["image_size"] = image_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CoCa(**cfg)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param) * 0.02)
    return model.eval()


def public_state_dict(model) -> dict:
    """The state dict as MahmoodLab publishes it: without the caption decoder."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith(DECODER_PREFIX)}


def reference_pixels(tiles_bhwc: np.ndarray) -> torch.Tensor:
    """What the reference's ToTensor + Normalize make of uint8 tiles that are already sized."""
    x = torch.from_numpy(tiles_bhwc).permute(0, 3, 1, 2).float().div(255)
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def reference_token_ids(texts: list[str]) -> np.ndarray:
    """The reference tokenisation. Its own ``tokenize()`` calls ``batch_encode_plus``, which
    transformers 5 removed, so the tokenizer is called directly with the same arguments."""
    import torch.nn.functional as F
    from conch.open_clip_custom import get_tokenizer

    tok = get_tokenizer()
    enc = tok(
        texts,
        max_length=127,
        add_special_tokens=True,
        return_token_type_ids=False,
        truncation=True,
        padding="max_length",
        return_tensors="pt",
    )
    return F.pad(enc["input_ids"], (0, 1), value=tok.pad_token_id).numpy()


class CountingModel:
    """Wraps a model: counts the tiles it encodes and can slow each call down (to give
    tests time to cancel or kill a run). Everything else is the wrapped model's."""

    def __init__(self, inner, delay: float = 0.0):
        self._inner = inner
        self.delay = delay
        self.calls = 0
        self.tiles = 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def encode_images(self, images):
        import time

        self.calls += 1
        self.tiles += len(images)
        if self.delay:
            time.sleep(self.delay)
        return self._inner.encode_images(images)


# The colour toy shipped with the package: a deterministic numpy model for geometry tests
# (a tile's feature is its mean colour; a prompt naming a synthetic class maps to that class's
# colour), so zero-shot answers are known in advance.
ColourModel = ColorToyModel


# -- tiny PLIP / QuiltNet folders in their native formats -----------------------------------


def make_plip_folder(path, seed: int = 0, safetensors: bool = True):
    """A random tiny CLIP in the transformers format — config.json, weights, tokenizer and
    preprocessor files — laid out like the vinid/plip repository."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from napari_conch.models.plip import bundled_clip_tokenizer

    tokenizer = bundled_clip_tokenizer()
    vocab = tokenizer.get_vocab()
    config = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "vocab_size": len(vocab),
            "max_position_embeddings": 77,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config={
            "hidden_size": 48,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 224,
            "patch_size": 32,
        },
        projection_dim=24,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    model.save_pretrained(path)
    if not safetensors:  # the older pickle layout (transformers 5 always writes safetensors)
        from safetensors.torch import load_file

        weights = Path(path) / "model.safetensors"
        torch.save(load_file(weights), Path(path) / "pytorch_model.bin")
        weights.unlink()
    tokenizer.save_pretrained(path)
    CLIPImageProcessor().save_pretrained(path)
    return path


TINY_OPEN_CLIP = {
    "model_cfg": {
        "embed_dim": 24,
        "vision_cfg": {
            "image_size": 224,
            "layers": 2,
            "width": 64,
            "head_width": 32,
            "patch_size": 32,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 2,
        },
    },
    "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
    },
}


def make_quiltnet_folder(path, seed: int = 0):
    """A random tiny open_clip model as the QuiltNet hub repository holds it:
    open_clip_config.json plus open_clip_pytorch_model.bin."""
    from open_clip.model import CLIP

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = CLIP(**TINY_OPEN_CLIP["model_cfg"]).eval()
    (path / "open_clip_config.json").write_text(json.dumps(TINY_OPEN_CLIP))
    torch.save(model.state_dict(), path / "open_clip_pytorch_model.bin")
    return path
