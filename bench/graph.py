"""The stage graph of a suite: which stages run, with which resolved spec, depending on what.

``data -> prompts -> autoencoder (scratch only) -> generator -> judge, evaluator -> real_features ->
synthesize[variant,seed] -> evaluate[variant,seed] -> downstream[variant,seed]``; ``report`` is the
engine's final step. A node's ``spec`` is exactly what its cache hash covers; ``runtime`` (device,
launcher) is passed to the stage but not hashed, so a CPU result is reused on a GPU box and vice versa.

With ``dataset.subsets`` the stages that learn from labelled training data exist once per size n:
``autoencoder[n=16]``, ``generator[n=16]``, ``judge[n=16]``, and the variants are ``plain@n16`` etc.
(``synthesize[plain@n16,seed=0]``); their specs carry ``subset: {n, seed, rule}``, so the cache never
shares them across sizes. ``data``, ``prompts``, ``evaluator`` and ``real_features`` stay shared. Without
``subsets`` nothing changes: same keys, same specs, same hashes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from bench.schema import CRFM, ResolvedVariant, Sampling, Segmenter, Suite, resolve_variants

STAGE_ORDER = (
    "data", "prompts", "autoencoder", "generator", "judge", "evaluator", "real_features",
    "synthesize", "evaluate", "downstream",
)
# Stages that would use several GPUs: generator training and sampling via accelerate, MMSeg via torchrun.
ACCELERATE_STAGES = frozenset({"generator", "synthesize"})
TORCHRUN_STAGES = frozenset({"judge", "evaluator", "downstream"})
Launcher = Literal["inprocess", "accelerate", "torchrun"]


@dataclass(frozen=True)
class Node:
    """One stage instance: ``key`` is unique in the graph (``synthesize[crfm,seed=0]``)."""

    key: str
    stage: str
    spec: dict[str, Any]
    deps: dict[str, str] = field(default_factory=dict)  # role -> node key
    variant: str | None = None
    seed: int | None = None
    launcher: Launcher = "inprocess"
    subset: int | None = None  # labelled-subset size n (dataset.subsets)


def node_key(stage: str, variant: str | None = None, seed: int | None = None) -> str:
    """``stage`` or ``stage[variant,seed=N]``."""
    return stage if variant is None else f"{stage}[{variant},seed={seed}]"


def subset_key(stage: str, n: int | None) -> str:
    """A shared stage's key at labelled-subset size n: ``generator[n=16]``; ``stage`` itself when n is None."""
    return stage if n is None else f"{stage}[n={n}]"


def subset_spec(suite: Suite, n: int | None) -> dict[str, Any] | None:
    """What a node trained on the labelled subset of size n adds to its spec (None: the whole split)."""
    if n is None:
        return None
    from todsynth.data.subset import DRAW_RULE

    return {"n": n, "seed": suite.dataset.subset_seed, "rule": DRAW_RULE}


def _with_subset(spec: dict[str, Any], sub: dict[str, Any] | None) -> dict[str, Any]:
    """``spec`` plus ``subset`` when drawn (absent otherwise, so suites without subsets keep their hashes)."""
    return spec if sub is None else {**spec, "subset": sub}


def fid_extractor(suite: Suite) -> Literal["inception", "evaluator"]:
    """``auto`` -> Inception when its weights file exists, else the evaluator's features (not comparable)."""
    if suite.fid.extractor != "auto":
        return suite.fid.extractor
    w = suite.fid.inception_weights
    return "inception" if w is not None and w.is_file() else "evaluator"


def preset_text(suite: Suite) -> dict[str, Any]:
    """The preset's prompt-encoder config (``kind`` + widths): the prompts must match the transformer."""
    from todsynth.models.presets import resolve_preset

    return dict(resolve_preset(suite.generator.preset, suite.generator.overrides).get("text") or {})


def _segmenter_spec(seg: Segmenter) -> dict[str, Any]:
    if seg.checkpoint is not None:
        return {"model": seg.model, "checkpoint": str(seg.checkpoint), "trust_checkpoint": seg.trust_checkpoint}
    return seg.model_dump(mode="json", exclude={"checkpoint", "trust_checkpoint"})


def n_synthetic(ratio: float, n_masks: int) -> int:
    """Synthetic images for ``n_masks`` masks at ``ratio`` synthetic per real (at least one)."""
    return max(1, round(ratio * n_masks))


def synthesis_spec(suite: Suite, v: ResolvedVariant, seed: int) -> dict[str, Any]:
    """The hashed spec of ``synthesize[v,seed]``; CRFM settings drop out when ``rectified_step == 0``."""
    crfm = CRFM.values_of(v.crfm) if v.crfm.enabled else None
    return _with_subset({
        "sampling": Sampling.values_of(v.sampling),
        "crfm": crfm,
        "seed": seed,
        "limit": suite.dataset.limit,
        "ratio": suite.downstream.ratio,
        "copies": math.ceil(suite.downstream.ratio),
    }, subset_spec(suite, v.subset))


def build_graph(suite: Suite) -> list[Node]:
    """All nodes of the suite, in an order where every dependency comes first."""
    gpus = suite.resources.gpus

    def launcher(stage: str) -> Launcher:
        if gpus > 1 and stage in ACCELERATE_STAGES:
            return "accelerate"
        if gpus > 1 and stage in TORCHRUN_STAGES:
            return "torchrun"
        return "inprocess"

    ds = suite.dataset
    data_spec: dict[str, Any] = {"kind": ds.kind, "domains": list(ds.domains)}
    if ds.kind == "procedural":
        data_spec["procedural"] = ds.procedural.model_dump(mode="json")
    else:
        data_spec["root"] = str(ds.root)
        data_spec["on_bad_sample"] = ds.on_bad_sample
    gen = suite.generator
    nodes = [
        Node("data", "data", data_spec),
        Node("prompts", "prompts", {"text": preset_text(suite), "sd3_dir": _opt(gen.sd3_dir) if gen.text_encoder == "sd3" else None},
             {"data": "data"}),
    ]
    for n in ds.subsets or [None]:  # the stages that learn from labelled training data: once per subset size
        sub = subset_spec(suite, n)
        gen_deps = {"data": "data", "prompts": "prompts"}
        if gen.scratch:
            ae = subset_key("autoencoder", n)
            nodes.append(Node(ae, "autoencoder", _with_subset(
                {"preset": gen.preset, "overrides": gen.overrides, "train": gen.vae_train.model_dump(mode="json")}, sub),
                {"data": "data"}, subset=n))
            gen_deps["autoencoder"] = ae
        nodes.append(Node(subset_key("generator", n), "generator", _with_subset({
            "preset": gen.preset,
            "sd3_dir": _opt(gen.sd3_dir) if not gen.scratch else None,
            "overrides": gen.overrides,
            "train": gen.train.model_dump(mode="json"),
        }, sub), gen_deps, launcher=launcher("generator"), subset=n))
        nodes.append(Node(subset_key("judge", n), "judge", _with_subset(_segmenter_spec(suite.judge), sub),
                          {"data": "data"}, launcher=launcher("judge"), subset=n))
    nodes.append(Node("evaluator", "evaluator", _segmenter_spec(suite.evaluator), {"data": "data"},
                      launcher=launcher("evaluator")))
    extractor = fid_extractor(suite)
    feat_deps = {"data": "data"}
    if extractor == "evaluator":
        feat_deps["evaluator"] = "evaluator"
    nodes.append(Node("real_features", "real_features", {
        "extractor": extractor,
        "weights": _opt(suite.fid.inception_weights) if extractor == "inception" else None,
    }, feat_deps))

    freemask = suite.downstream.freemask
    down_base = suite.downstream.model_dump(mode="json", exclude={"ratio", "freemask", "seed"})
    for v in resolve_variants(suite):
        judge, generator = subset_key("judge", v.subset), subset_key("generator", v.subset)
        for seed in suite.seeds:
            down_spec = {**down_base, "seed": suite.downstream.seed + seed, "val_limit": ds.val_limit}
            down_deps = {"data": "data"}
            if v.kind == "synthetic":
                syn = node_key("synthesize", v.name, seed)
                syn_deps = {"data": "data", "prompts": "prompts", "generator": generator}
                if v.crfm.enabled:
                    syn_deps["judge"] = judge
                nodes.append(Node(syn, "synthesize", synthesis_spec(suite, v, seed), syn_deps, v.name, seed,
                                  launcher("synthesize"), v.subset))
                # data: the evaluator also scores the real images of the synthesized masks (its ceiling)
                eval_deps = {"synthesize": syn, "evaluator": "evaluator", "real_features": "real_features",
                             "data": "data"}
                nodes.append(Node(node_key("evaluate", v.name, seed), "evaluate",
                                  {"extractor": extractor}, eval_deps, v.name, seed, subset=v.subset))
                down_deps["synthesize"] = syn
                down_spec["ratio"] = suite.downstream.ratio
                down_spec["freemask"] = freemask.model_dump(mode="json") if freemask.enabled else None
                if freemask.enabled:
                    down_deps["judge"] = judge
            nodes.append(Node(node_key("downstream", v.name, seed), "downstream",
                              _with_subset(down_spec, subset_spec(suite, v.subset)), down_deps, v.name, seed,
                              launcher("downstream"), v.subset))
    return _dedupe(nodes)


def _opt(p: Any) -> str | None:
    return None if p is None else str(p)


def _dedupe(nodes: list[Node]) -> list[Node]:
    """Nodes keyed uniquely (raises on a clash, like HELM's registry)."""
    seen: dict[str, Node] = {}
    for n in nodes:
        if n.key in seen:
            raise ValueError(f"duplicate stage key {n.key!r}")
        seen[n.key] = n
    return nodes


def dependents(nodes: list[Node], roots: set[str]) -> set[str]:
    """``roots`` plus every node that (transitively) depends on one of them."""
    out = set(roots)
    for n in nodes:  # topological order: one pass suffices
        if any(d in out for d in n.deps.values()):
            out.add(n.key)
    return out


def select_forced(nodes: list[Node], force: list[str] | tuple[str, ...]) -> set[str]:
    """Keys to recompute for ``--force NAME`` (a stage name like ``generator`` or a full node key), with dependents.

    Unknown names raise :class:`ValueError` listing the valid ones.
    """
    roots: set[str] = set()
    for name in force:
        hit = {n.key for n in nodes if n.stage == name or n.key == name}
        if not hit:
            stages = sorted({n.stage for n in nodes}, key=STAGE_ORDER.index)
            raise ValueError(f"--force {name}: no such stage in this suite (stages: {', '.join(stages)}; or a key like {nodes[-1].key})")
        roots |= hit
    return dependents(nodes, roots)
