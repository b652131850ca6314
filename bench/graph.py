"""The stage graph of a suite: which stages run, with which resolved spec, depending on what.

``data -> prompts -> autoencoder (scratch only) -> generator -> judge, evaluator -> real_features ->
synthesize[variant,seed] -> evaluate[variant,seed] -> downstream[variant,seed]``; ``report`` is the
engine's final step. A node's ``spec`` is exactly what its cache hash covers; ``runtime`` (device,
launcher) is passed to the stage but not hashed, so a CPU result is reused on a GPU box and vice versa.

With ``dataset.subsets`` the stages that learn from labelled training data exist once per size n:
``autoencoder[n=16]``, ``generator[n=16]``, ``judge[n=16]``, and the variants are ``plain@n16`` etc.
(``synthesize[plain@n16,seed=0]``); their specs carry ``subset: {n, seed, rule}``, so the cache never
shares them across sizes. ``data``, ``prompts``, ``evaluator`` and ``real_features`` stay shared. Without
``subsets`` nothing changes: same keys, same specs, same hashes. The specs are typed (:mod:`bench.specs`).
Shared stages that no variant needs are left out: a suite of baselines and ceilings trains no generator.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bench.cache import canonical
from bench.schema import CRFM, ResolvedVariant, Sampling, Segmenter, Suite, Variant, resolve_variants
from bench.schema.sections import SAVED_GENERATOR_FILES
from bench.specs import (
    ADDED_SAMPLER,
    FREEMASK_REFERENCE,
    AutoencoderSpec,
    CheckpointSpec,
    DataSpec,
    DownstreamSpec,
    EvaluateSpec,
    FeaturesSpec,
    GeneratorStageSpec,
    Launcher,
    MixedDownstreamSpec,
    OracleDownstreamSpec,
    PromptsSpec,
    RerenderDownstreamSpec,
    SegmenterSpec,
    StageSpec,
    Subset,
    SynthesizeSpec,
)
from todsynth.models.presets import resolve_preset

STAGE_ORDER = (
    "data", "prompts", "autoencoder", "generator", "judge", "evaluator", "real_features",
    "synthesize", "evaluate", "downstream",
)
# Stages that would use several GPUs: generator training and sampling via accelerate, MMSeg via torchrun.
ACCELERATE_STAGES = frozenset({"generator", "synthesize"})
TORCHRUN_STAGES = frozenset({"judge", "evaluator", "downstream"})


@dataclass(frozen=True)
class Node:
    """One stage instance: ``key`` is unique in the graph (``synthesize[crfm,seed=0]``)."""

    key: str
    stage: str
    spec: StageSpec
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


def subset_spec(suite: Suite, n: int | None) -> Subset | None:
    """The labelled-subset draw of size n a node trains on (None: the whole split)."""
    if n is None:
        return None
    from todsynth.data.subset import DRAW_RULE

    return Subset(n=n, seed=suite.dataset.subset_seed, rule=DRAW_RULE)


def fid_extractor(suite: Suite) -> Literal["inception", "evaluator"]:
    """``auto`` -> Inception when its weights file exists, else the evaluator's features (not comparable)."""
    if suite.fid.extractor != "auto":
        return suite.fid.extractor
    w = suite.fid.inception_weights
    return "inception" if w is not None and w.is_file() else "evaluator"


def preset_digest(resolved: dict[str, Any]) -> str:
    """sha256 of a resolved generator preset (``resolve_preset``: ``PRESETS[name]`` + the suite's overrides).

    The suite names a preset and leaves its budgets (steps, shift, widths, ...) to it, so the autoencoder and
    generator keys carry this digest: editing a preset re-keys them and everything after them.
    """
    return hashlib.sha256(canonical(resolved).encode()).hexdigest()


RACY_SECONDS = 2.0  # a file modified this recently is always read: its timestamp may not yet show a rewrite
_DIGESTS: dict[tuple[tuple[str, int, int, int, int], ...], str] = {}


def files_digest(files: list[Path]) -> str | None:
    """sha256 of the files' bytes, read in order (None while one is missing): what a key carries for user weights.

    Kept in-process under each file's (path, device, inode, size, mtime), so ``bench tune``, which builds the graph
    for every trial, reads multi-GB weights once. A file modified in the last ``RACY_SECONDS`` is read every time, as
    git does for its racy index entries: a rewrite within the filesystem's timestamp granularity leaves the mtime.
    """
    if not all(f.is_file() for f in files):
        return None
    stats = [f.stat() for f in files]
    key = tuple((str(f.resolve()), s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns) for f, s in zip(files, stats, strict=True))
    if key in _DIGESTS:
        return _DIGESTS[key]
    h = hashlib.sha256()
    for f in files:
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    digest = h.hexdigest()
    if time.time() - max(s.st_mtime for s in stats) > RACY_SECONDS:
        _DIGESTS[key] = digest
    return digest


def saved_weights_digest(gen_dir: Path) -> str | None:
    """:func:`files_digest` of a saved generator's ``config.json`` and ``transformer.safetensors``.

    What the generator key carries for ``generator.init_from``: retraining the weights at the same path re-keys the
    stage. A missing dir is ``check_runnable``'s to report, so ``bench validate`` still lists the graph.
    """
    return files_digest([gen_dir / name for name in SAVED_GENERATOR_FILES])


def _segmenter_spec(seg: Segmenter, sub: Subset | None = None) -> SegmenterSpec | CheckpointSpec:
    if seg.checkpoint is not None:
        return CheckpointSpec(model=seg.model, checkpoint=str(seg.checkpoint), trust_checkpoint=seg.trust_checkpoint,
                              digest=files_digest([seg.checkpoint]))
    return SegmenterSpec(model=seg.model, iters=seg.iters, batch_size=seg.batch_size, lr=seg.lr,
                         optimizer=seg.optimizer, seed=seg.seed, crop_size=seg.crop_size, subset=sub)


def n_synthetic(ratio: float, n_masks: int) -> int:
    """Synthetic images for ``n_masks`` masks at ``ratio`` synthetic per real (at least one)."""
    return max(1, round(ratio * n_masks))


def copy_chunks(masks: list[Any], ratio: float) -> list[list[Any]]:
    """The masks of each copy: ``n_synthetic(ratio, len(masks))`` images in all.

    Every mask once per full copy, the last copy the first masks: how synthesis, and the rerender ceiling in its
    place, fill their copies.
    """
    total = n_synthetic(ratio, len(masks))
    return [masks[: min(len(masks), total - r * len(masks))] for r in range(math.ceil(total / len(masks)))]


def rerender_first_draw(seed: int, copies: int) -> int:
    """The rerender ceiling's first appearance draw at suite ``seed`` with ``copies`` painted copies per seed.

    Seed 0 starts at draw 1; the seeds interleave as 0, -1, 1, -2, 2, ... so no two seeds share a draw (draw 0 is
    the scene itself).
    """
    rank = 2 * seed if seed >= 0 else -2 * seed - 1
    return 1 + rank * copies


def synthesis_spec(suite: Suite, v: ResolvedVariant, seed: int) -> SynthesizeSpec:
    """The spec of ``synthesize[v,seed]``; CRFM settings drop out when ``rectified_step == 0``."""
    return SynthesizeSpec(
        sampling=v.sampling, crfm=v.crfm if v.crfm.enabled else None, seed=seed, limit=suite.dataset.limit,
        ratio=suite.downstream.ratio, copies=math.ceil(suite.downstream.ratio), subset=subset_spec(suite, v.subset))


def downstream_spec(suite: Suite, v: ResolvedVariant, seed: int) -> DownstreamSpec:
    """The spec of ``downstream[v,seed]``: real only, real + synthetic (FreeMask), or real + a ceiling's images.

    The ceilings (``oracle``: held-out real scenes; ``rerender``: the training masks painted anew) add as many
    images as a synthetic variant of the same subset generates.
    """
    d, freemask = suite.downstream, suite.downstream.freemask
    common: dict[str, Any] = {
        "model": d.model, "iters": d.iters, "batch_size": d.batch_size, "lr": d.lr, "optimizer": d.optimizer,
        "crop_size": d.crop_size, "seed": d.seed + seed, "val_limit": suite.dataset.val_limit,
        "subset": subset_spec(suite, v.subset)}
    if v.kind == "baseline":
        return DownstreamSpec(**common)
    common.update(ratio=d.ratio, sampler=ADDED_SAMPLER)
    if v.kind == "oracle":
        if v.subset is None:
            raise ValueError(f"{v.origin}: an oracle variant needs dataset.subsets")
        limit = suite.dataset.limit
        masks = v.subset if limit is None else min(limit, v.subset)
        return OracleDownstreamSpec(**common, held_out=n_synthetic(d.ratio, masks))
    if v.kind == "rerender":
        return RerenderDownstreamSpec(**common, limit=suite.dataset.limit,
                                      first_draw=rerender_first_draw(seed, math.ceil(d.ratio)))
    if not freemask.enabled:
        return MixedDownstreamSpec(**common, freemask=None)
    return MixedDownstreamSpec(**common, freemask=freemask, freemask_reference=FREEMASK_REFERENCE)


def data_spec(suite: Suite) -> DataSpec:
    """The spec of ``data``: procedural scenes, or a LoveDA root."""
    ds = suite.dataset
    if ds.kind == "procedural":
        return DataSpec(kind=ds.kind, domains=list(ds.domains), procedural=ds.procedural)
    return DataSpec(kind=ds.kind, domains=list(ds.domains), root=str(ds.root), on_bad_sample=ds.on_bad_sample)


def build_graph(suite: Suite) -> list[Node]:
    """All nodes of the suite, in an order where every dependency comes first."""
    gpus = suite.resources.gpus

    def launcher(stage: str) -> Launcher:
        if gpus > 1 and stage in ACCELERATE_STAGES:
            return "accelerate"
        if gpus > 1 and stage in TORCHRUN_STAGES:
            return "torchrun"
        return "inprocess"

    ds, gen = suite.dataset, suite.generator
    preset = resolve_preset(gen.preset, gen.overrides)
    digest = preset_digest(preset)
    nodes = [
        Node("data", "data", data_spec(suite)),
        # the preset's prompt-encoder config (kind + widths): the prompts must match the transformer
        Node("prompts", "prompts", PromptsSpec(text=dict(preset.get("text") or {}),
                                               sd3_dir=_opt(gen.sd3_dir) if gen.text_encoder == "sd3" else None),
             {"data": "data"}),
    ]
    sizes: list[int | None] = [*ds.subsets] if ds.subsets else [None]
    for n in sizes:  # the stages that learn from labelled training data: once per subset size
        sub = subset_spec(suite, n)
        gen_deps = {"data": "data", "prompts": "prompts"}
        if gen.scratch:
            ae = subset_key("autoencoder", n)
            nodes.append(Node(ae, "autoencoder", AutoencoderSpec(
                preset=gen.preset, overrides=gen.overrides, preset_digest=digest, train=gen.vae_train, subset=sub), {"data": "data"}, subset=n))
            gen_deps["autoencoder"] = ae
        nodes.append(Node(subset_key("generator", n), "generator", GeneratorStageSpec(
            preset=gen.preset, sd3_dir=_opt(gen.sd3_dir) if not gen.scratch else None, overrides=gen.overrides,
            preset_digest=digest, train=gen.train, subset=sub, init_from=_opt(gen.init_from),
            init_digest=saved_weights_digest(gen.init_from) if gen.init_from else None,
            processes=gpus if launcher("generator") == "accelerate" else None),
            gen_deps, launcher=launcher("generator"), subset=n))
        nodes.append(Node(subset_key("judge", n), "judge", _segmenter_spec(suite.judge, sub),
                          {"data": "data"}, launcher=launcher("judge"), subset=n))
    nodes.append(Node("evaluator", "evaluator", _segmenter_spec(suite.evaluator), {"data": "data"},
                      launcher=launcher("evaluator")))
    extractor = fid_extractor(suite)
    feat_deps = {"data": "data"}
    if extractor == "evaluator":
        feat_deps["evaluator"] = "evaluator"
    weights = suite.fid.inception_weights if extractor == "inception" else None
    nodes.append(Node("real_features", "real_features", FeaturesSpec(
        extractor=extractor, weights=_opt(weights), weights_digest=files_digest([weights]) if weights else None),
        feat_deps))

    for v in resolve_variants(suite):
        judge, generator = subset_key("judge", v.subset), subset_key("generator", v.subset)
        for seed in suite.seeds:
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
                                  EvaluateSpec(extractor=extractor), eval_deps, v.name, seed, subset=v.subset))
                down_deps["synthesize"] = syn
                if suite.downstream.freemask.enabled:
                    down_deps["judge"] = judge
            nodes.append(Node(node_key("downstream", v.name, seed), "downstream", downstream_spec(suite, v, seed),
                              down_deps, v.name, seed, launcher("downstream"), v.subset))
            if v.kind == "rerender":  # the image metrics' ceiling: the same evaluation of the images it painted
                eval_deps = {"downstream": node_key("downstream", v.name, seed), "evaluator": "evaluator",
                             "real_features": "real_features", "data": "data"}
                nodes.append(Node(node_key("evaluate", v.name, seed), "evaluate",
                                  EvaluateSpec(extractor=extractor), eval_deps, v.name, seed, subset=v.subset))
    return _needed(_dedupe(nodes))


def _needed(nodes: list[Node]) -> list[Node]:
    """The variants' nodes and what they depend on, in the same order (a shared stage nothing reads is dropped)."""
    keep = {n.key for n in nodes if n.variant is not None}
    for n in reversed(nodes):  # topological order: reversed, one pass collects every dependency
        if n.key in keep:
            keep.update(n.deps.values())
    return [n for n in nodes if n.key in keep]


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


def variant_graph(suite: Suite, variant: ResolvedVariant, stages: tuple[str, ...] = ("synthesize", "evaluate")) -> list[Node]:
    """Nodes computing ``stages`` of one variant (declared or not) for every seed, dependencies first.

    ``bench tune`` builds a variant from a trial's parameters and runs these nodes: they hash exactly like a
    declared variant with the same settings (the name is not hashed), so a repeated setting reuses the cache.
    A baseline or oracle variant only has ``downstream``; a rerender ceiling also ``evaluate`` (of what it paints).
    """
    if variant.kind != "synthetic":
        declared = Variant(name=variant.name, kind=variant.kind)
    else:
        declared = Variant(name=variant.name, kind="synthetic", sampling=Sampling.values_of(variant.sampling),
                           crfm=CRFM.values_of(variant.crfm))
    nodes = build_graph(suite.model_copy(update={"variants": [declared], "matrix": None}))
    wanted = {node_key(stage, variant.name, seed) for stage in stages for seed in suite.seeds}
    by_key = {n.key: n for n in nodes}
    unknown = wanted - set(by_key)
    if unknown:
        raise ValueError(f"no such stage for variant {variant.name!r}: {', '.join(sorted(unknown))}")
    keep: set[str] = set()
    todo = list(wanted)
    while todo:  # ancestors of the wanted nodes
        key = todo.pop()
        if key not in keep:
            keep.add(key)
            todo.extend(by_key[key].deps.values())
    return [n for n in nodes if n.key in keep]
