"""A model a user writes themselves: a plain Python class with the protocol's members, not
registered, not made by load_model (numpy only, so worker processes import it quickly)."""

from __future__ import annotations

import hashlib

import numpy as np


class HomemadeModel:
    """Features from each tile's colour statistics through a fixed random matrix; text from
    a digest of the prompt. Deterministic, picklable, and nothing like CONCH."""

    name = "homemade"
    input_size = 32
    target_mpp = 2.0
    embed_dim = 24
    logit_scale = float(np.log(50.0))

    def __init__(self, seed: int = 7):
        rng = np.random.default_rng(seed)
        self.lift = rng.normal(size=(6, self.embed_dim)).astype(np.float32)
        self.joint = rng.normal(size=(self.embed_dim, 16)).astype(np.float32)

    def encode_images(self, images) -> np.ndarray:
        pixels = np.asarray(images, np.float32)
        if pixels.shape[-1] == 3:  # (B, H, W, 3) → (B, 3, H, W)
            pixels = pixels.transpose(0, 3, 1, 2)
        pixels = pixels / (255.0 if pixels.max() > 1.5 else 1.0)
        stats = np.concatenate([pixels.mean(axis=(2, 3)), pixels.std(axis=(2, 3))], axis=1)
        return np.tanh(stats @ self.lift).astype(np.float32)

    def project(self, features, normalize: bool = True) -> np.ndarray:
        out = np.asarray(features, np.float32) @ self.joint
        if normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def encode_texts(self, texts, normalize: bool = True) -> np.ndarray:
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big")
            rows.append(np.random.default_rng(seed).normal(size=16))
        out = np.asarray(rows, np.float32)
        if normalize:
            out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out
