"""How much work an embedding run does at once: tiles per model call and reader threads,
from where the model runs (torch is imported only for a model on a GPU)."""

from __future__ import annotations

import os

CPU_BATCH = 8
MAX_GPU_BATCH = 256
MAX_GPU_READERS = 32


def on_cuda(model) -> bool:
    """Whether ``model`` runs on a CUDA device (its ``device`` attribute says so)."""
    return getattr(getattr(model, "device", None), "type", "cpu") == "cuda"


def auto_batch_size(model) -> int:
    """Tiles per model call: on the CPU a multiple of the pieces the model computes at
    once; on a GPU as many as three quarters of its free memory hold."""
    if not on_cuda(model):
        # a multiple of the pieces the model computes at once on the CPU (PLIP: 16): a
        # smaller batch would be padded up to a whole piece, computing tiles for nothing
        piece = max(1, int(getattr(model, "cpu_micro_batch", 1) or 1))
        return piece * -(-CPU_BATCH // piece)
    import torch

    free, _ = torch.cuda.mem_get_info(model.device)
    size = int(getattr(model, "input_size", 224))
    reduced = getattr(model, "precision", "fp32") in ("bf16", "fp16")
    # About 60 float32 input-sized planes of activations per tile at the peak of a ViT-B
    # forward pass; half with autocast. Keep a quarter of the free memory in reserve.
    per_tile = size * size * 3 * 4 * (30 if reduced else 60)
    return int(max(1, min(MAX_GPU_BATCH, 0.75 * free // per_tile)))


def default_readers(model) -> int:
    """Reader threads. On the CPU, decoding competes with the model for the same cores
    (measured on 2 cores: one reader is 15 % faster than two for a ViT-B/32 and the same for
    CONCH), so half of them. On a GPU, which needs the CPU only to feed it, one more than the
    cores: a reader's Python share then overlaps the others' decoding, which runs without
    the GIL (measured on 2 cores: 3 readers 5 % faster than 2)."""
    cpus = os.cpu_count() or 1
    if on_cuda(model):
        return min(cpus + 1, MAX_GPU_READERS)
    return max(1, min(4, cpus // 2))
