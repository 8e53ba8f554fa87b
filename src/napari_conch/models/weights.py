"""Finding and reading model checkpoints safely.

Where CONCH weights come from, in order (first hit wins):

1. ``checkpoint=`` given to :func:`~napari_conch.load_model`: a file (``.bin``, ``.pt``,
   ``.pth``, ``.safetensors``), a directory holding one, or ``"hf_hub:<repo id>"``;
2. the ``NAPARI_CONCH_CHECKPOINT`` environment variable (same forms);
3. a copy already in the Hugging Face cache (``MahmoodLab/conch``, downloaded earlier by
   this package, the official ``conch`` package or ``huggingface-cli``);
4. a download from the Hugging Face hub when a token is available (``token=``,
   ``$HF_TOKEN`` or ``huggingface-cli login``); the weights are gated, so request access first.

Pickled checkpoints are read with ``torch.load(weights_only=True)``: a file that needs code
to be executed to unpickle is refused. Tokens are passed straight to ``huggingface_hub`` and
are never logged, stored or put into an error message.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..deprecation import warn_deprecated
from ..errors import CheckpointError, WeightsNotFoundError

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

CHECKPOINT_ENV = "NAPARI_CONCH_CHECKPOINT"
HUB_PREFIX = "hf_hub:"
# Weights files napari-conch reads (the widget's file dialog offers these).
CHECKPOINT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors")
# File names looked for inside a checkpoint directory, best first.
CHECKPOINT_NAMES = ("pytorch_model.bin", "model.safetensors", "open_clip_pytorch_model.bin")


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's weights came from (shown to users; never holds a token)."""

    path: Path | None  # local file, or None for random weights
    origin: str  # "argument", "environment", "hf-cache", "hf-hub", "random"
    repo_id: str | None = None

    @property
    def description(self) -> str:
        """Where the weights are, in words (e.g. "… (Hugging Face cache of MahmoodLab/conch)")."""
        if self.path is None:
            return "random (untrained) weights"
        where = {
            "argument": "given path",
            "environment": f"${CHECKPOINT_ENV}",
            "hf-cache": f"Hugging Face cache of {self.repo_id}",
            "hf-hub": f"downloaded from {self.repo_id}",
        }.get(self.origin, self.origin)
        return f"{self.path} ({where})"

    def describe(self) -> str:
        warn_deprecated("WeightsSource.describe()", "WeightsSource.description")
        return self.description


def find_checkpoint(
    checkpoint: str | os.PathLike | None,
    *,
    repo_id: str,
    filename: str = "pytorch_model.bin",
    token: str | bool | None = None,
    env_var: str = CHECKPOINT_ENV,
    model_name: str = "conch",
    download: bool = True,
) -> WeightsSource:
    """Resolve a checkpoint request to a local file, downloading from the hub only if asked.

    ``download=False`` looks only on this machine (argument, environment, Hugging Face
    cache) and never contacts the hub.

    Raises
    ------
    WeightsNotFoundError
        Nothing was found; the message lists every place searched and how to get the weights.
    """
    if checkpoint is not None:
        return _resolve_spec(str(checkpoint), "argument", filename, token, download=download)
    env_value = os.environ.get(env_var, "").strip()
    if env_value:
        return _resolve_spec(
            env_value, "environment", filename, token, env_var=env_var, download=download
        )
    cached = _from_hf_cache(repo_id, filename)
    if cached is not None:
        logger.info("Using %s weights from the Hugging Face cache: %s", model_name, cached)
        return WeightsSource(cached, "hf-cache", repo_id)
    if download and _have_token(token) and not _hub_offline():
        return _download(repo_id, filename, token)
    raise WeightsNotFoundError(_not_found_message(repo_id, filename, env_var, model_name))


def _resolve_spec(
    spec: str,
    origin: str,
    filename: str,
    token,
    env_var: str = CHECKPOINT_ENV,
    download: bool = True,
) -> WeightsSource:
    if spec.startswith(HUB_PREFIX):
        repo_id = spec[len(HUB_PREFIX) :].strip("/")
        if not repo_id:
            raise ValueError(f"{spec!r} names no repository; use e.g. 'hf_hub:MahmoodLab/conch'.")
        cached = _from_hf_cache(repo_id, filename)
        if cached is not None:
            return WeightsSource(cached, "hf-cache", repo_id)
        if not download:
            raise WeightsNotFoundError(f"{filename} of {repo_id} is not in the Hugging Face cache.")
        return _download(repo_id, filename, token)
    path = Path(spec).expanduser()
    label = f"${env_var}" if origin == "environment" else "checkpoint"
    if path.is_dir():
        for name in (filename, *CHECKPOINT_NAMES):
            if (path / name).is_file():
                return WeightsSource(path / name, origin)
        raise WeightsNotFoundError(
            f"The {label} directory {path} holds no weights file "
            f"(looked for {', '.join(dict.fromkeys((filename, *CHECKPOINT_NAMES)))})."
        )
    if not path.exists():
        raise WeightsNotFoundError(
            f"The {label} file {path} does not exist. Give the path of the downloaded "
            f"'{filename}', a directory containing it, or 'hf_hub:<repo id>'."
        )
    return WeightsSource(path, origin)


def _from_hf_cache(repo_id: str, filename: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return None
    hit = try_to_load_from_cache(repo_id, filename)
    return Path(hit) if isinstance(hit, str) and Path(hit).is_file() else None


def _have_token(token) -> bool:
    if token is False:
        return False
    if token:
        return True
    try:
        from huggingface_hub import get_token

        return bool(get_token())
    except ImportError:  # pragma: no cover
        return bool(os.environ.get("HF_TOKEN"))


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _download(repo_id: str, filename: str, token) -> WeightsSource:
    _refuse_offline(repo_id, f"'{filename}'")
    from huggingface_hub import hf_hub_download

    logger.info("Downloading %s from the Hugging Face hub repository %s ...", filename, repo_id)
    with _hub_errors(repo_id, filename):
        # ``token=None`` lets huggingface_hub use $HF_TOKEN or the stored login itself.
        path = hf_hub_download(repo_id, filename, token=token if token else None)
    return WeightsSource(Path(path), "hf-hub", repo_id)


def _refuse_offline(repo_id: str, what: str) -> None:
    if _hub_offline():
        raise WeightsNotFoundError(
            f"{what} of {repo_id} is not in the Hugging Face cache and downloads are "
            "disabled (HF_HUB_OFFLINE is set). Unset HF_HUB_OFFLINE on a machine with "
            "internet access, or «checkpoint=<path to the downloaded file>»."
        )


@contextlib.contextmanager
def _hub_errors(repo_id: str, what: str):
    """Turn huggingface_hub failures into WeightsNotFoundError saying what to do."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        yield
    except GatedRepoError as exc:
        raise WeightsNotFoundError(
            f"{repo_id} is gated and this Hugging Face account has no access yet. Request "
            f"access at https://huggingface.co/{repo_id}, wait for approval, then retry."
        ) from exc
    except RepositoryNotFoundError as exc:
        raise WeightsNotFoundError(
            f"The Hugging Face repository {repo_id} was not found, or the token cannot see it. "
            "Check the name and that your token is valid (huggingface-cli whoami)."
        ) from exc
    except LocalEntryNotFoundError as exc:
        raise WeightsNotFoundError(
            f"Could not download {what} from {repo_id}: the hub is unreachable and the "
            "files are not cached. Connect to the internet, or «checkpoint=<local path>»."
        ) from exc
    except HfHubHTTPError as exc:
        raise WeightsNotFoundError(
            f"Downloading {what} from {repo_id} failed (HTTP "
            f"{getattr(getattr(exc, 'response', None), 'status_code', '?')}). "
            "Check your token and network, or «checkpoint=<local path>»."
        ) from exc


# -- model folders (PLIP, QuiltNet, ...) ---------------------------------------------------


@dataclass(frozen=True)
class FolderLayout:
    """The files a model folder holds (a Hugging Face repository snapshot, or a copy of one).

    ``config`` must sit beside the weights when ``config_required``; ``weights`` are tried
    in order; ``extra`` (tokenizer files, ...) are downloaded with them when present.
    """

    weights: tuple[str, ...]
    config: str | None = None
    config_required: bool = True
    extra: tuple[str, ...] = ()


def find_model_folder(
    checkpoint: str | os.PathLike | None,
    *,
    repo_id: str,
    layout: FolderLayout,
    env_var: str,
    model_name: str,
    token: str | bool | None = None,
) -> WeightsSource:
    """Resolve weights kept as a folder: ``checkpoint=`` (a folder, a weights file, or
    ``hf_hub:<repo>``), then ``$env_var``, then the Hugging Face cache of ``repo_id``, then a
    download of the needed files (these repositories are open: no token is needed).

    Returns a :class:`WeightsSource` whose ``path`` is the weights file; its folder holds
    the config and tokenizer files when there are any.
    """
    spec, origin = None, "argument"
    if checkpoint is not None:
        spec = str(checkpoint)
    elif os.environ.get(env_var, "").strip():
        spec, origin = os.environ[env_var].strip(), "environment"
    if spec is not None and not spec.startswith(HUB_PREFIX):
        return _local_folder(Path(spec).expanduser(), origin, layout, env_var, model_name)
    if spec is not None:
        repo_id = spec[len(HUB_PREFIX) :].strip("/")
        if not repo_id:
            raise ValueError(f"{spec!r} names no repository; use e.g. 'hf_hub:vinid/plip'.")
    cached = _cached_folder(repo_id, layout)
    if cached is not None:
        logger.info("Using %s weights from the Hugging Face cache: %s", model_name, cached)
        return WeightsSource(cached, "hf-cache", repo_id)
    if _hub_offline() and spec is None:
        raise WeightsNotFoundError(
            f"No {model_name} weights found: nothing in ${env_var}, and {repo_id} is not in "
            "the Hugging Face cache while downloads are disabled (HF_HUB_OFFLINE is set). "
            "Unset HF_HUB_OFFLINE to download it once (it is openly available), or "
            f"«checkpoint=<folder with the files of https://huggingface.co/{repo_id}>»."
        )
    _refuse_offline(repo_id, f"The {model_name} weights")
    from huggingface_hub import snapshot_download

    patterns = [*layout.weights, *([layout.config] if layout.config else []), *layout.extra]
    logger.info("Downloading %s from the Hugging Face hub repository %s ...", model_name, repo_id)
    with _hub_errors(repo_id, f"the {model_name} files"):
        folder = Path(
            snapshot_download(repo_id, allow_patterns=patterns, token=token if token else None)
        )
    found = _weights_in(folder, layout)
    if found is None:
        raise WeightsNotFoundError(
            f"{repo_id} holds none of {', '.join(layout.weights)}; it is not a "
            f"{model_name} repository."
        )
    return WeightsSource(found, "hf-hub", repo_id)


def _weights_in(folder: Path, layout: FolderLayout) -> Path | None:
    if layout.config and layout.config_required and not (folder / layout.config).is_file():
        return None
    return next((folder / n for n in layout.weights if (folder / n).is_file()), None)


def _local_folder(path: Path, origin, layout: FolderLayout, env_var, model_name) -> WeightsSource:
    label = f"${env_var}" if origin == "environment" else "checkpoint"
    if path.is_file():
        config = path.parent / layout.config if layout.config else None
        if layout.config_required and config is not None and not config.is_file():
            raise WeightsNotFoundError(
                f"{model_name} needs '{layout.config}' beside the weights file {path}; give "
                "the whole model folder (as downloaded from the Hugging Face hub) instead."
            )
        return WeightsSource(path, origin)
    if not path.exists():
        raise WeightsNotFoundError(
            f"The {label} {path} does not exist. Give a {model_name} folder (the files of "
            "its Hugging Face repository), a weights file, or 'hf_hub:<repo id>'."
        )
    found = _weights_in(path, layout)
    if found is None:
        wanted = ", ".join(layout.weights)
        if layout.config and layout.config_required:
            wanted = f"'{layout.config}' and one of {wanted}"
        raise WeightsNotFoundError(
            f"The {label} folder {path} is not a {model_name} folder: it lacks {wanted}."
        )
    return WeightsSource(found, origin)


def _cached_folder(repo_id: str, layout: FolderLayout) -> Path | None:
    if layout.config:
        config = _from_hf_cache(repo_id, layout.config)
        if config is None and layout.config_required:
            return None
    for name in layout.weights:
        hit = _from_hf_cache(repo_id, name)
        if hit is not None:
            return hit
    return None


def _not_found_message(repo_id: str, filename: str, env_var: str, model_name: str) -> str:
    return (
        f"No {model_name} weights found. The weights are gated: request access at "
        f"https://huggingface.co/{repo_id}, then either\n"
        f"  - download '{filename}' and «checkpoint='/path/to/{filename}'» "
        f"(or set ${env_var}), or\n"
        "  - «token=…» so napari-conch can download it once into the Hugging Face cache.\n"
        "To check the pipeline without weights, «checkpoint='random'» (results are "
        "meaningless and marked untrained)."
    )


# -- reading -------------------------------------------------------------------------------


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat ``{name: tensor}`` dict, safely.

    Accepts safetensors files and PyTorch pickles (zip or legacy format) holding a state dict,
    possibly nested under ``"state_dict"`` / ``"model"`` and possibly with a ``module.``
    prefix (from ``DataParallel``).

    Raises
    ------
    CheckpointError
        The file is empty, truncated, not a checkpoint, or would need code execution to load.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CheckpointError(f"Cannot read checkpoint {path}: {exc.strerror or exc}.") from exc
    if size == 0:
        raise CheckpointError(f"Checkpoint {path} is empty (0 bytes); download it again.")
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        obj = _read_safetensors(path)
    else:
        obj = _read_pickle(path)
    return normalize_state_dict(obj, path)


def _looks_like_safetensors(path: Path) -> bool:
    # safetensors: 8-byte little-endian header length, then a JSON header starting with '{'.
    with open(path, "rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{" and not zipfile.is_zipfile(path)


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"Checkpoint {path} is not a readable safetensors file ({exc}); it may be "
            "truncated or corrupt. Download it again."
        ) from exc


def _read_pickle(path: Path) -> object:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=_can_mmap(path))
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "weights_only" in text or "Unsupported global" in text or "GLOBAL" in text:
            raise CheckpointError(
                f"Refusing to load {path}: it contains pickled Python objects that would run "
                "code when loaded, which a weights file never needs. Use the official "
                "weights file or convert yours to safetensors."
            ) from exc
        raise CheckpointError(
            f"Checkpoint {path} is not a valid PyTorch file ({text.splitlines()[0]}); it may be "
            "truncated or corrupt. Download it again."
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"Checkpoint {path} cannot be read ({first}); it is probably truncated or corrupt. "
            "Download it again."
        ) from exc


def _can_mmap(path: Path) -> bool:
    # Memory-mapping avoids a second in-RAM copy of a large checkpoint; only the zip format can.
    return zipfile.is_zipfile(path)


def normalize_state_dict(obj: object, path: Path | str = "checkpoint") -> dict[str, torch.Tensor]:
    """Unwrap ``{"state_dict": ...}`` / ``{"model": ...}`` and strip a ``module.`` prefix."""
    import torch

    for _ in range(3):  # a few levels of nesting at most
        if isinstance(obj, Mapping) and not _is_tensor_dict(obj):
            inner = next((obj[k] for k in ("state_dict", "model", "module") if k in obj), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"{path} does not contain a model state dict (found {type(obj).__name__})."
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path} contains no tensors; it is not a model checkpoint.")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def _is_tensor_dict(obj: Mapping) -> bool:
    import torch

    values = list(obj.values())[:8]
    return bool(values) and all(isinstance(v, torch.Tensor) for v in values)


def split_keys(
    state_dict: Mapping[str, torch.Tensor],
    expected: Iterable[str],
    ignored_prefixes: tuple[str, ...] = (),
) -> tuple[list[str], list[str], list[str]]:
    """Compare checkpoint keys with a model's: (missing, unexpected, ignored)."""
    expected = set(expected)
    present = set(state_dict)
    ignored = sorted(k for k in present - expected if k.startswith(ignored_prefixes))
    unexpected = sorted(present - expected - set(ignored))
    missing = sorted(expected - present)
    return missing, unexpected, ignored


def format_key_problem(
    path, missing: list[str], unexpected: list[str], model_name: str, hint: str | None = None
) -> str:
    """An error message listing mismatched keys (shortened when there are many)."""

    def listing(keys: list[str]) -> str:
        if len(keys) <= 6:
            return ", ".join(keys)
        # Many keys: group them (by module, with layer numbers as ranges) to say what is off.
        groups: dict[str, list[int]] = {}
        counts: dict[str, int] = {}
        for key in keys:
            parts = key.split(".")
            index = next((i for i, p in enumerate(parts) if p.isdigit()), None)
            if index is None:
                group, layer = ".".join(parts[:2]), None
            else:
                group, layer = ".".join(parts[:index]), int(parts[index])
            groups.setdefault(group, [])
            if layer is not None and layer not in groups[group]:
                groups[group].append(layer)
            counts[group] = counts.get(group, 0) + 1
        shown = []
        for group, layers in groups.items():
            if layers:
                lo, hi = min(layers), max(layers)
                span = f"{lo}" if lo == hi else f"{lo}-{hi}"
                shown.append(f"{group}.[{span}].* ({counts[group]})")
            else:
                shown.append(f"{group}.* ({counts[group]})" if counts[group] > 1 else group)
        more = f", … ({len(shown) - 15} more groups)" if len(shown) > 15 else ""
        return ", ".join(shown[:15]) + more

    parts = [f"{path} is not a {model_name} checkpoint:"]
    if missing:
        parts.append(f"  {len(missing)} missing key(s): {listing(missing)}")
    if unexpected:
        parts.append(f"  {len(unexpected)} unexpected key(s): {listing(unexpected)}")
    hint = hint or "for CONCH: the 'pytorch_model.bin' of MahmoodLab/conch"
    parts.append(f"Check that the file holds the weights of this model ({hint}).")
    return "\n".join(parts)


def check_shapes(state_dict: Mapping, expected: Mapping, problem: str) -> None:
    """Raise :class:`CheckpointError` (``problem`` + the first differing shapes) when a
    checkpoint's tensors have other sizes than the model's."""
    wrong = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if wrong:
        more = f"\n  … ({len(wrong) - 8} more)" if len(wrong) > 8 else ""
        raise CheckpointError(f"{problem}:\n  " + "\n  ".join(wrong[:8]) + more)


def check_keys(state_dict: Mapping, expected: Mapping, path, model_name: str, hint: str) -> None:
    """Raise :class:`CheckpointError` listing missing and unexpected keys, if there are any."""
    missing, unexpected, _ = split_keys(state_dict, expected)
    if missing or unexpected:
        raise CheckpointError(format_key_problem(path, missing, unexpected, model_name, hint))
