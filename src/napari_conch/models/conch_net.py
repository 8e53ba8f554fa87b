"""The CONCH network: the contrastive parts of the CoCa ViT-B/16 used by the CONCH model.

Only what zero-shot work needs is built: the image trunk, the contrastive attentional pooler
and projection, and the text tower. Parameter names equal the reference implementation's,
so the released ``pytorch_model.bin`` loads key for key, and a state dict saved from this
network loads back into the reference. The caption pooler and the caption decoder of the
original CoCa model are not built (the public weights lack the decoder; see
``weights.IGNORED_PREFIXES``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn


@dataclass(frozen=True)
class ConchConfig:
    """Architecture hyper-parameters of a CONCH-style network.

    The defaults are the released CONCH ViT-B/16 (DESIGN §3). ``tiny()`` gives the same code
    paths with small widths, for fast tests.
    """

    embed_dim: int = 512  # width of the pooler, the pre-projection feature and the joint space
    image_size: int = 448
    patch_size: int = 16
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    mlp_ratio: float = 4.0
    pooler_heads: int = 8
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12
    vocab_size: int = 32007
    context_length: int = 128  # 127 tokens + the learned CLS appended at the end
    pad_id: int = 0

    @classmethod
    def tiny(cls, **overrides) -> ConchConfig:
        """A few-layer, narrow configuration that runs the same code in milliseconds."""
        values = dict(
            embed_dim=32,
            vision_width=48,
            vision_layers=2,
            vision_heads=3,
            text_width=48,
            text_layers=2,
            text_heads=3,
        )
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes) -> ConchConfig:
        return ConchConfig(**{**asdict(self), **changes})


class AttentionalPooler(nn.Module):
    """Learned queries attending over the trunk's tokens (keys = values = normalised tokens)."""

    def __init__(self, d_model: int, context_dim: int, n_head: int, n_queries: int = 1):
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        # nn.MultiheadAttention keeps the state-dict layout of the released weights
        # (separate q/k/v projection matrices because kdim != d_model).
        self.attn = nn.MultiheadAttention(
            d_model, n_head, kdim=context_dim, vdim=context_dim, batch_first=True
        )
        self.ln_q = nn.LayerNorm(d_model)
        self.ln_k = nn.LayerNorm(context_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        context = self.ln_k(tokens)
        queries = self.ln_q(self.query).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return self.attn(queries, context, context, need_weights=False)[0]

    def token_values(self, tokens: torch.Tensor) -> torch.Tensor:
        """Each token's value carried through the output projection, (B, N, d_model).

        The pooled output is the output bias plus, per head, the attention-weighted sum of
        these values' head slices (before the bias): a token's value is what the pooler
        would output if every head attended to that token alone (MaskCLIP's dense map).
        """
        attn = self.attn
        width = attn.embed_dim
        bias = None if attn.in_proj_bias is None else attn.in_proj_bias[2 * width :]
        values = nn.functional.linear(self.ln_k(tokens), attn.v_proj_weight, bias)
        return attn.out_proj(values)


class ConchVision(nn.Module):
    """ViT-B/16 trunk → attentional pooler → LayerNorm (pre-projection) → projection."""

    def __init__(self, cfg: ConchConfig):
        super().__init__()
        # A fixed input size: a wrong-sized batch must fail, never be silently resampled
        # (the model wrapper resizes inputs to ``image_size`` before they get here).
        self.trunk = VisionTransformer(
            img_size=cfg.image_size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.vision_width,
            depth=cfg.vision_layers,
            num_heads=cfg.vision_heads,
            mlp_ratio=cfg.mlp_ratio,
            num_classes=0,
        )
        self.attn_pool_contrast = AttentionalPooler(
            cfg.embed_dim, cfg.vision_width, cfg.pooler_heads, n_queries=1
        )
        self.ln_contrast = nn.LayerNorm(cfg.embed_dim)
        self.proj_contrast = nn.Parameter(
            torch.randn(cfg.embed_dim, cfg.embed_dim) * cfg.vision_width**-0.5
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels (B, 3, S, S) → pre-projection features (B, embed_dim)."""
        tokens = self.trunk.forward_features(pixels)  # includes the final norm
        pooled = self.attn_pool_contrast(tokens)[:, 0]
        return self.ln_contrast(pooled)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.proj_contrast

    def forward_with_tokens(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One trunk pass → (pre-projection features (B, D), joint-space token embeddings
        (B, h, w, D), L2-normalised): each patch token's pooler value through
        ``ln_contrast`` and ``proj_contrast``, as the pooled feature goes."""
        tokens = self.trunk.forward_features(pixels)
        features = self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])
        patches = tokens[:, self.trunk.num_prefix_tokens :]
        dense = self.ln_contrast(self.attn_pool_contrast.token_values(patches))
        dense = nn.functional.normalize(dense @ self.proj_contrast, dim=-1)
        h, w = self.trunk.patch_embed.grid_size
        return features, dense.reshape(dense.shape[0], h, w, dense.shape[-1])


class TextAttention(nn.Module):
    """Multi-head self-attention with a packed q/k/v projection (released weights' layout)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, w))


class TextBlock(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = TextAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, hidden)),
                    ("gelu", nn.GELU()),
                    ("c_proj", nn.Linear(hidden, width)),
                ]
            )
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class _Blocks(nn.Module):
    """Holds the blocks so parameter names read ``transformer.resblocks.N``."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.resblocks = nn.ModuleList(TextBlock(width, heads, mlp_ratio) for _ in range(layers))


class ConchText(nn.Module):
    """Causal text transformer with a learned CLS token appended after the 127 text tokens."""

    def __init__(self, cfg: ConchConfig):
        super().__init__()
        self.pad_id = cfg.pad_id
        self.context_length = cfg.context_length
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.text_width))
        self.cls_emb = nn.Parameter(torch.empty(cfg.text_width))
        self.transformer = _Blocks(cfg.text_width, cfg.text_layers, cfg.text_heads, cfg.mlp_ratio)
        self.ln_final = nn.LayerNorm(cfg.text_width)
        self.text_projection = nn.Parameter(torch.empty(cfg.text_width, cfg.embed_dim))
        self._init_random(cfg)

    @torch.no_grad()
    def _init_random(self, cfg: ConchConfig) -> None:
        # CLIP-style scales; only used by untrained (``checkpoint="random"``) models, and free
        # when the network is built on the meta device before loading real weights.
        width, depth_scale = cfg.text_width, (2 * cfg.text_layers) ** -0.5
        self.token_embedding.weight.normal_(0, 0.02)
        self.positional_embedding.normal_(0, 0.01)
        self.cls_emb.normal_(0, 0.01)
        for block in self.transformer.resblocks:
            block.attn.in_proj_weight.normal_(0, width**-0.5)
            block.attn.out_proj.weight.normal_(0, width**-0.5 * depth_scale)
            block.mlp.c_fc.weight.normal_(0, (2 * width) ** -0.5)
            block.mlp.c_proj.weight.normal_(0, width**-0.5 * depth_scale)
        self.text_projection.normal_(0, width**-0.5)

    def attention_mask(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask (B, 1, L+1, L+1): causal for every row, plus pad-hiding for the CLS row.

        The CLS row reproduces the released model exactly, including its one-position shift:
        key 0 is always visible and key j (j ≥ 1) is visible when token j-1 is not padding.
        That is the mask the weights were trained with, so it is kept as is.
        """
        b, n = ids.shape
        size = n + 1
        device = ids.device
        blocked = torch.ones(size, size, dtype=torch.bool, device=device).triu(1)
        blocked = blocked.expand(b, size, size).clone()
        cls_visible = torch.ones(b, size, dtype=torch.bool, device=device)
        cls_visible[:, 1:] = ids != self.pad_id
        blocked[:, -1, :] |= ~cls_visible
        mask = torch.zeros(b, 1, size, size, dtype=dtype, device=device)
        return mask.masked_fill_(blocked.unsqueeze(1), float("-inf"))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (B, context_length), last column a placeholder → pooled text (B, embed_dim)."""
        ids = tokens[:, : self.context_length - 1]
        x = self.token_embedding(ids)
        x = torch.cat([x, self.cls_emb.to(x.dtype).expand(x.shape[0], 1, -1)], dim=1)
        x = x + self.positional_embedding[: x.shape[1]].to(x.dtype)
        mask = self.attention_mask(ids, x.dtype)
        for block in self.transformer.resblocks:
            x = block(x, mask)
        return self.ln_final(x[:, -1]) @ self.text_projection


class ConchNetwork(nn.Module):
    """Vision tower, text tower and the learned temperature, named as in the released weights."""

    def __init__(self, cfg: ConchConfig):
        super().__init__()
        self.config = cfg
        self.visual = ConchVision(cfg)
        self.text = ConchText(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
