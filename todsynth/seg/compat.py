"""Make MMSegmentation importable on mmcv-lite (no compiled ``mmcv._ext``).

mmseg 1.2.2 imports ``mmcv.ops`` eagerly (``mmseg.utils``, ``mmseg.models``), and mmcv-lite's
``mmcv.ops`` fails at import because its compiled extension is missing. Before mmseg is imported,
:func:`ensure_mmseg` registers a stand-in ``mmcv.ops`` module holding a pure-torch
:func:`point_sample` and placeholders for every compiled op; a placeholder raises
:class:`MmcvOpUnavailableError` naming the op, the models that use it and the fix. With full mmcv
nothing is patched. Only this module touches ``sys.modules``; nothing else is patched globally.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import logging
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from todsynth.errors import TodsynthError

Flavour = Literal["mmcv-lite", "mmcv-full"]

STUB_MARKER = "__todsynth_stub__"

# Compiled ops mmseg can reach, and the models that reach them (for the error message).
OP_USERS: dict[str, str] = {
    "CrissCrossAttention": "CCNet (CCHead)",
    "PSAMask": "PSANet (PSAHead)",
    "DeformConv2d": "DCN backbones (dcn=...), ForceDefaultOptimWrapperConstructor",
    "ModulatedDeformConv2d": "DCNv2 backbones (dcn=...), ForceDefaultOptimWrapperConstructor",
    "sigmoid_focal_loss": "any model with FocalLoss",
    "MultiScaleDeformableAttention": "Mask2Former (pixel decoder)",
}
# Names the stand-in module always offers, even if mmcv's own list cannot be read.
_KNOWN_OPS: tuple[str, ...] = (
    "CrissCrossAttention",
    "PSAMask",
    "DeformConv2d",
    "DeformConv2dPack",
    "ModulatedDeformConv2d",
    "ModulatedDeformConv2dPack",
    "MultiScaleDeformableAttention",
    "SyncBatchNorm",
    "sigmoid_focal_loss",
    "softmax_focal_loss",
    "SigmoidFocalLoss",
    "SoftmaxFocalLoss",
    "nms",
    "batched_nms",
    "roi_align",
    "RoIAlign",
)

_state: dict[str, Flavour] = {}


class MmcvOpUnavailableError(TodsynthError):
    """A model needs a compiled mmcv op that mmcv-lite does not ship."""


def point_sample(input: torch.Tensor, points: torch.Tensor, align_corners: bool = False, **kwargs: Any) -> torch.Tensor:
    """Sample ``input`` (N,C,H,W) at ``points`` in [0,1]^2, (N,P,2) -> (N,C,P) or (N,Hg,Wg,2) -> (N,C,Hg,Wg).

    Pure-torch equivalent of ``mmcv.ops.point_sample`` (a ``grid_sample`` wrapper, differentiable).
    """
    add_dim = points.dim() == 3
    if add_dim:
        points = points.unsqueeze(2)
    output = F.grid_sample(input, 2.0 * points - 1.0, align_corners=align_corners, **kwargs)
    if add_dim:
        output = output.squeeze(3)
    return output


def _unavailable_message(op: str) -> str:
    users = OP_USERS.get(op, "models built on this mmcv op")
    return (
        f"{op} needs full mmcv (pip install 'todsynth[mmcv-full]', ~1 h compile on 2 cores); "
        f"models using it: {users}. mmcv-lite is installed, so choose another model (e.g. fcn-r18, deeplabv3plus-r18)."
    )


def _placeholder(op: str) -> Any:
    """A class (for CamelCase names) or function that raises MmcvOpUnavailableError when used."""
    message = _unavailable_message(op)
    if op[:1].isupper():

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            raise MmcvOpUnavailableError(message)

        return type(op, (torch.nn.Module,), {"__init__": __init__, "__doc__": message, STUB_MARKER: True})

    def _fn(*args: Any, **kwargs: Any) -> Any:
        raise MmcvOpUnavailableError(message)

    _fn.__name__ = op
    _fn.__doc__ = message
    setattr(_fn, STUB_MARKER, True)
    return _fn


def _mmcv_op_names() -> list[str]:
    """The names in mmcv.ops.__all__, read from its source without importing it."""
    spec = importlib.util.find_spec("mmcv")
    if spec is None or not spec.submodule_search_locations:
        return list(_KNOWN_OPS)
    init = Path(next(iter(spec.submodule_search_locations))) / "ops" / "__init__.py"
    names = set(_KNOWN_OPS)
    try:
        tree = ast.parse(init.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return sorted(names)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            if isinstance(node.value, ast.List):
                names.update(e.value for e in node.value.elts if isinstance(e, ast.Constant) and isinstance(e.value, str))
    return sorted(names)


def build_ops_stub() -> types.ModuleType:
    """A stand-in ``mmcv.ops`` module: pure-torch point_sample, raising placeholders for compiled ops."""
    module = types.ModuleType("mmcv.ops", "todsynth stand-in for mmcv.ops on mmcv-lite (no compiled ops).")
    for name in _mmcv_op_names():
        setattr(module, name, _placeholder(name))
    module.point_sample = point_sample  # type: ignore[attr-defined]
    setattr(module, STUB_MARKER, True)
    return module


def _has_compiled_ops() -> bool:
    try:
        return importlib.util.find_spec("mmcv._ext") is not None
    except (ImportError, ValueError):
        return False


def ensure_mmseg() -> Flavour:
    """Prepare mmcv for mmseg and return its flavour; call before any mmseg import. Idempotent.

    Raises:
        TodsynthError: mmcv is not installed at all.
    """
    if "flavour" in _state:
        return _state["flavour"]
    if importlib.util.find_spec("mmcv") is None:
        raise TodsynthError("mmcv is not installed: pip install mmcv-lite==2.1.0 (or 'todsynth[mmcv-full]').")
    import mmcv

    flavour: Flavour
    if _has_compiled_ops():
        flavour = "mmcv-full"
    else:
        flavour = "mmcv-lite"
        existing = sys.modules.get("mmcv.ops")
        if existing is None or not getattr(existing, STUB_MARKER, False):
            # A failed earlier import may have left half-imported mmcv.ops.* submodules behind.
            for key in [k for k in sys.modules if k.startswith("mmcv.ops.")]:
                del sys.modules[key]
            stub = build_ops_stub()
            sys.modules["mmcv.ops"] = stub
            mmcv.ops = stub
    _state["flavour"] = flavour
    return flavour


def register_mmseg() -> Flavour:
    """ensure_mmseg(), mmseg's registries, and 'mmseg' as mmengine's default scope (idempotent)."""
    flavour = ensure_mmseg()
    if "registered" not in _state:
        with warnings.catch_warnings():
            # mmcv-lite's transformer bricks warn that MultiScaleDeformableAttention is missing;
            # the stand-in op raises a clear error if a model ever needs it.
            warnings.filterwarnings("ignore", message=".*MultiScaleDeformableAttention.*")
            from mmseg.utils import register_all_modules

            register_all_modules(init_default_scope=False)
        from todsynth.seg.backbones import register_backbones

        register_backbones()
        _state["registered"] = flavour
    from mmengine.registry import init_default_scope

    init_default_scope("mmseg")
    return flavour


@contextlib.contextmanager
def quiet_mmengine(level: int = logging.WARNING) -> Iterator[None]:
    """Raise the console level of mmengine's current logger (file handlers keep logging)."""
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    handlers = [h for h in logger.handlers if type(h) is logging.StreamHandler]
    saved = [h.level for h in handlers]
    for h in handlers:
        h.setLevel(max(level, h.level))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*build_loss.*")
            warnings.filterwarnings("ignore", message=".*avg_non_ignore.*")
            yield
    finally:
        for h, lvl in zip(handlers, saved, strict=True):
            h.setLevel(lvl)
