"""Training checkpoints as safetensors + JSON (no pickle): weights, optimizer, LR schedule, RNG, step.

Layout of ``<out_dir>/checkpoint-<step>/``: ``model.safetensors`` (trained parameters by name),
``ema.safetensors`` (optional), ``optimizer.safetensors`` (per-parameter state tensors),
``rng.safetensors`` (the training ``torch.Generator`` state and the epoch permutation) and
``state.json`` (step, config, optimizer param groups and scalars, LR-scheduler and grad-scaler state).
Each checkpoint is written to a temp dir and renamed, so a killed run never leaves half of one.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from todsynth.errors import ConfigError
from todsynth.files import read_json, read_safetensors
from todsynth.models.io import atomic_dir, save_tensors

_CKPT = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainingState:
    """What a checkpoint restores besides module and optimizer state."""

    step: int
    rng_state: Tensor
    perm: Tensor
    pos: int
    config: dict[str, Any]
    extra: dict[str, Any]


def _optimizer_to_files(opt_state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (safetensors) and JSON scalars/param groups."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in opt_state["state"].items():
        for key, value in st.items():
            if isinstance(value, Tensor):
                tensors[f"{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in opt_state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, _, name = key.partition(".")
        state.setdefault(int(idx), {})[name] = value
    for idx, st in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(st)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    params: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    rng: torch.Generator,
    perm: Tensor,
    pos: int,
    config: dict[str, Any],
    ema: dict[str, Tensor] | None = None,
    scaler: Any = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``out_dir/checkpoint-<step>`` atomically; returns its path."""
    path = Path(out_dir) / f"checkpoint-{step}"
    opt_tensors, opt_meta = _optimizer_to_files(optimizer.state_dict())
    state = {
        "step": step,
        "pos": pos,
        "config": config,
        "optimizer": opt_meta,
        "lr_scheduler": lr_scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "extra": extra or {},
    }
    with atomic_dir(path) as tmp:
        save_tensors(dict(params), tmp / "model.safetensors")
        if ema is not None:
            save_tensors(ema, tmp / "ema.safetensors")
        save_tensors(opt_tensors, tmp / "optimizer.safetensors")
        save_tensors({"rng_state": rng.get_state(), "perm": perm}, tmp / "rng.safetensors")
        (tmp / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
    return path


STATE_KEYS = ("step", "pos", "config", "optimizer", "lr_scheduler")


def read_state(path: str | Path) -> dict[str, Any]:
    """A checkpoint's ``state.json``.

    Raises:
        ConfigError: unreadable, or without the keys :func:`save_checkpoint` writes (the message says to delete it).
    """
    state = read_json(Path(path) / "state.json")
    lacking = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if lacking or not isinstance(state, dict):
        raise ConfigError(f"{Path(path) / 'state.json'} lacks {lacking}: a damaged checkpoint; delete {path} to resume "
                          "from the one before it (or start over)")
    return state


def load_checkpoint(
    path: str | Path,
    params: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    ema: dict[str, Tensor] | None = None,
    scaler: Any = None,
) -> TrainingState:
    """Restore a checkpoint in place (parameters, optimizer, LR schedule, EMA, scaler); returns the rest."""
    path = Path(path)
    state = read_state(path)
    weights = read_safetensors(path / "model.safetensors")
    if set(weights) != set(params):
        missing, extra = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
        raise ConfigError(
            f"{path}: trained parameters differ from this run's (missing {missing[:3]}, unexpected {extra[:3]}); "
            "was it written with another preset or trainable mode?"
        )
    try:
        return _restore(path, state, weights, params, optimizer, lr_scheduler, ema, scaler)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:  # contents that do not fit
        raise ConfigError(f"{path}: a damaged checkpoint ({type(exc).__name__}: {exc}); delete {path} to resume from "
                          "the one before it (or start over)") from exc


def _restore(path: Path, state: dict[str, Any], weights: dict[str, Tensor], params: dict[str, torch.nn.Parameter],
             optimizer: torch.optim.Optimizer, lr_scheduler: Any, ema: dict[str, Tensor] | None,
             scaler: Any) -> TrainingState:
    """:func:`load_checkpoint`'s restoring, once the files are read and the parameter names match."""
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name])
    if ema is not None:
        saved = read_safetensors(path / "ema.safetensors")
        for name, t in ema.items():
            t.copy_(saved[name])
    opt_tensors = read_safetensors(path / "optimizer.safetensors")
    optimizer.load_state_dict(_optimizer_from_files(opt_tensors, state["optimizer"]))
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    rng = read_safetensors(path / "rng.safetensors")
    return TrainingState(
        step=int(state["step"]),
        rng_state=rng["rng_state"],
        perm=rng["perm"],
        pos=int(state["pos"]),
        config=state["config"],
        extra=state.get("extra", {}),
    )


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints under ``out_dir``, oldest step first."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in out_dir.iterdir()
        if (m := _CKPT.match(p.name)) and (p / "state.json").is_file()
    ]
    return [p for _, p in sorted(found)]


def prune_checkpoints(out_dir: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints (keep=0 keeps none)."""
    ckpts = list_checkpoints(out_dir)
    for p in ckpts[: max(len(ckpts) - keep, 0)]:
        shutil.rmtree(p, ignore_errors=True)
