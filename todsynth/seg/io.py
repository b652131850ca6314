"""Segmentor checkpoints: ours are safetensors + JSON (no pickle).

User MMSeg ``.pth`` files are read with ``torch.load(weights_only=True)`` unless the user explicitly trusts
the file.

Layout of a directory written by :func:`save_segmentor`::

    DIR/model.safetensors   # state_dict tensors
    DIR/segmentor.json      # {"format": 1, "name": ..., "num_classes": ..., "class_names": [...]}
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from todsynth.data.classes import CLASSES
from todsynth.errors import ConfigError, UntrustedCheckpointError, WeightsNotFoundError
from todsynth.files import atomic_write_bytes, read_json, read_safetensors

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "segmentor.json"
FORMAT_VERSION = 1


def save_segmentor(model: nn.Module, name: str, dir: str | Path, num_classes: int,
                   class_names: Sequence[str] | None = None) -> Path:
    """Write ``model``'s state_dict (safetensors) and its build recipe (JSON) into ``dir``; returns ``dir``.

    Each file is written to a temporary name and renamed, so a crash never leaves a half file.
    """
    from safetensors.torch import save as st_save

    from todsynth.seg.models import require_model

    require_model(name)
    names = list(class_names) if class_names is not None else list(CLASSES[:num_classes])
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for num_classes={num_classes}")
    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(out / WEIGHTS_FILE, st_save(state, metadata={"name": name}))
    meta = {"format": FORMAT_VERSION, "name": name, "num_classes": int(num_classes), "class_names": names}
    atomic_write_bytes(out / CONFIG_FILE, json.dumps(meta, indent=1).encode())
    return out


def read_segmentor_meta(dir: str | Path) -> dict[str, Any]:
    """The JSON recipe of a saved segmentor directory.

    Raises:
        WeightsNotFoundError: the directory or one of its two files is missing.
        ConfigError: the JSON is unreadable, lacks ``name``/``num_classes``, or names a model or class count that
            cannot be built (the message names the file).
    """
    from todsynth.seg.models import require_model

    d = Path(dir)
    for f in (d / CONFIG_FILE, d / WEIGHTS_FILE):
        if not f.is_file():
            raise WeightsNotFoundError(
                f"segmentor checkpoint incomplete: {f} not found; train one with "
                f"`todsynth seg train --out {d}` or pass a directory written by save_segmentor"
            )
    meta = read_json(d / CONFIG_FILE)
    if not isinstance(meta, dict) or "name" not in meta or "num_classes" not in meta:
        raise ConfigError(f"{d / CONFIG_FILE} must hold 'name' and 'num_classes'")
    try:
        require_model(meta["name"])
    except ConfigError as exc:
        raise ConfigError(f"{d / CONFIG_FILE}: {exc}") from None
    n = meta["num_classes"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"{d / CONFIG_FILE}: num_classes {n!r} must be an int >= 1")
    return meta


def load_segmentor(dir: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a segmentor saved by :func:`save_segmentor` (eval mode, on ``device``)."""
    from todsynth.seg.models import build_segmentor

    d = Path(dir)
    meta = read_segmentor_meta(d)
    model = build_segmentor(meta["name"], int(meta["num_classes"]))
    state = read_safetensors(d / WEIGHTS_FILE)
    _load_state(model, state, str(d / WEIGHTS_FILE), meta["name"])
    return model.to(device).eval()


def _load_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, name: str) -> None:
    try:
        result = model.load_state_dict(dict(state), strict=False)
    except RuntimeError as exc:  # shape mismatches
        first = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln][:3]
        raise ConfigError(
            f"{source} does not match model {name!r}: {'; '.join(first) or exc}; check --model and the class count"
        ) from exc
    if result.missing_keys or result.unexpected_keys:
        raise ConfigError(
            f"{source} does not match model {name!r}: missing {result.missing_keys[:5]} "
            f"(of {len(result.missing_keys)}), unexpected {result.unexpected_keys[:5]} "
            f"(of {len(result.unexpected_keys)}); check --model and the class count"
        )


def _extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state_dict inside a raw state dict or an mmengine checkpoint (``{'state_dict': ...}``)."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"{path} holds no state_dict of tensors (expected a dict or {{'state_dict': dict}})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _unpickler_reason(exc: pickle.UnpicklingError) -> str:
    """The line of torch's weights-only error that says what stopped it (an unsupported global or opcode)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:  # "WeightsUnpickler error: Unsupported global: GLOBAL m.C was not an allowed global ..."
        if "Unsupported" in ln:
            return ln[ln.index("Unsupported"):].split(". ")[0]
    return lines[0] if lines else type(exc).__name__


def load_user_checkpoint(path: str | Path, name: str, trust: bool = False, num_classes: int | None = None,
                         trust_hint: str = "pass --trust-checkpoint (trust=True)") -> nn.Module:
    """Load a user's MMSeg checkpoint (``.pth``) into model ``name`` (eval mode, CPU).

    The file is read with ``torch.load(weights_only=True)``: plain state dicts and mmengine checkpoints
    whose contents are tensors/containers load without running pickled code. A file that needs full
    unpickling (e.g. mmengine's ``message_hub`` objects) is refused with
    :class:`UntrustedCheckpointError` unless ``trust=True``. Nothing is patched globally.
    ``num_classes`` defaults to the decode head's output width found in the file. ``trust_hint``: how the caller's
    user sets ``trust`` (the CLI's option, a suite's key), named in the refusal.

    Raises:
        WeightsNotFoundError: no such file.
        UntrustedCheckpointError: unpickling needed and ``trust`` is False.
        ConfigError: the file holds no state dict, or it does not fit ``name``.
    """
    from todsynth.seg.models import build_segmentor, require_model

    require_model(name)  # before the file is read: a wrong name is the cheaper mistake to report
    p = Path(path)
    if not p.is_file():
        raise WeightsNotFoundError(f"segmentation checkpoint not found: {p} (pass an MMSeg .pth saved by its training)")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust:
            raise UntrustedCheckpointError(
                f"{p} cannot be read without full unpickling, which can run arbitrary code "
                f"({_unpickler_reason(exc)}); {trust_hint} only if you trust its source"
            ) from exc
        try:
            obj = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as full_exc:  # garbage fails the full unpickler in any way its bytes lead
            raise ConfigError(f"cannot read checkpoint {p}: {type(full_exc).__name__}: {full_exc}") from full_exc
    except Exception as exc:  # not a checkpoint: the unpickler fails in any way its bytes lead
        raise ConfigError(f"cannot read checkpoint {p} (not a PyTorch checkpoint?): {type(exc).__name__}: {exc}") from exc
    state = _extract_state_dict(obj, p)
    if num_classes is None:
        seg_w = state.get("decode_head.conv_seg.weight")
        if seg_w is None:
            raise ConfigError(f"{p} has no decode_head.conv_seg.weight; pass num_classes explicitly")
        num_classes = int(seg_w.shape[0])
    model = build_segmentor(name, num_classes)
    _load_state(model, state, str(p), name)
    return model.eval()
