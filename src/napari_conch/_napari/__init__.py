"""napari contributions (reader, sample data, widgets). The only place that imports napari."""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger(__name__)


def guard_triton() -> None:
    """Keep triton from loading into a napari process whose OpenGL is already up (Linux).

    timm imports torchvision, which imports torch._dynamo, which imports triton when it is
    installed. Triton carries its own LLVM; Mesa's OpenGL drivers (llvmpipe under Xvfb,
    remote desktops, VMs; radeonsi) load the system's LLVM first, and triton's initialisers
    then crash the whole process (a segmentation fault, no traceback). napari-conch never
    uses triton (it is only for torch.compile on GPUs), so in that situation the import is
    declined. Scripts and ``napari-conch view`` import the model code before napari, so
    triton, if wanted, loads first and works.
    """
    if not sys.platform.startswith("linux") or "triton" in sys.modules:
        return
    if "torch._dynamo" in sys.modules:  # it looked for triton already
        return
    sys.modules["triton"] = None  # makes ``import triton`` fail cleanly → torch: no triton
    logger.info(
        "napari-conch: triton disabled for this napari session (it crashes when loaded after "
        "OpenGL drivers that bundle LLVM; napari-conch does not need it)."
    )
