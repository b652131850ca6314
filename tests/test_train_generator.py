"""Generator training: trainable sets, flow-matching pieces, mask conditioning, checkpoints and exact resume."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from todsynth.errors import ConfigError
from todsynth.models.generator import build_generator, load_generator
from todsynth.models.mmdit import is_text_stream
from todsynth.models.presets import resolve_preset
from todsynth.models.vae import save_vae
from todsynth.train import TrainConfig, train_generator
from todsynth.train.flow import flow_matching_loss, noisy_latents, sample_sigmas, train_sigma_table

# With the mask token stream (the paper's MM-DiT; the tiny preset itself runs without it), so its training stays covered.
SMALL = {"transformer": {"num_layers": 2}, "mask_stream": {"tokens": True, "encoding": "grey"}}


class HashPrompts:
    """Stand-in prompt cache: a fixed random (16, 64) embedding and (64,) pooled vector per prompt."""

    def __init__(self) -> None:
        self.calls = 0

    def get(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        e, p = [], []
        for text in prompts:
            g = torch.Generator().manual_seed(int(hashlib.sha256(text.encode()).hexdigest()[:8], 16))
            e.append(torch.randn(16, 64, generator=g))
            p.append(torch.randn(64, generator=g))
        return torch.stack(e), torch.stack(p)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from todsynth.data.procedural import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("scenes"), n_train=8, n_val=4, size=64, seed=0)


@pytest.fixture(scope="module")
def dataset(data_root: Path):  # noqa: ANN201
    from todsynth.data.loveda import LoveDA

    return LoveDA(data_root, "Train")


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny preset's VAE at its seeded init (training it is tested in test_train_vae.py)."""
    gen = build_generator(resolve_preset("tiny", SMALL))
    return save_vae(gen.vae, tmp_path_factory.mktemp("vae") / "vae")


def config(vae_dir: Path, **kw: object) -> TrainConfig:
    base = dict(
        preset="tiny", preset_overrides=SMALL, vae_dir=str(vae_dir), steps=6, batch_size=2, lr=1e-3,
        warmup_steps=1, log_every=2, seed=0,
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "transformer.safetensors"))


# ------------------------------------------------------------------ the training step


class _Velocity(torch.nn.Module):
    """A stand-in velocity model with MaskMMDiT's call signature (1x1 convolutions over latents and mask)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.x = torch.nn.Parameter(torch.randn(4, 4, 1, 1, generator=g))
        self.m = torch.nn.Parameter(torch.randn(4, 4, 1, 1, generator=g))

    def forward(self, x, mask_latents, timestep, embeds, pooled):  # noqa: ANN001, ANN201
        scale = 1 + timestep.view(-1, 1, 1, 1) / 1000 + embeds.mean((1, 2)).view(-1, 1, 1, 1) + pooled.mean(1).view(-1, 1, 1, 1)
        return torch.nn.functional.conv2d(x, self.x) * scale + torch.nn.functional.conv2d(mask_latents, self.m)


def _batch(b: int, seed: int):  # noqa: ANN202
    from todsynth.train import TrainBatch

    g = torch.Generator().manual_seed(seed)
    x0, m, noise = (torch.randn(b, 4, 6, 6, generator=g) for _ in range(3))
    sigma = torch.rand(b, generator=g)
    return TrainBatch(x0, m, torch.randn(b, 5, 8, generator=g), torch.randn(b, 8, generator=g), noise, sigma, sigma * 1000)


def test_train_step_accumulates_micro_batches_like_one_batch() -> None:
    """Two micro-batches of 2 step exactly like one batch of 4 (to rounding), and the step's loss is their mean."""
    from todsynth.train import TrainBatch, train_step
    from todsynth.train.step import batch_loss

    halves = [_batch(2, 1), _batch(2, 2)]
    whole = TrainBatch(*(torch.cat([getattr(h, f) for h in halves]) for f in TrainBatch.__dataclass_fields__
                         if f != "mask_keep"))
    models = [_Velocity(), _Velocity()]
    with torch.no_grad():
        expected = sum(batch_loss(models[0], h).item() for h in halves) / 2
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in models]
    loss = train_step(models[0], halves, opts[0], list(models[0].parameters()), max_grad_norm=100.0)
    train_step(models[1], [whole], opts[1], list(models[1].parameters()), max_grad_norm=100.0)
    assert loss == pytest.approx(expected)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b)
        assert a.grad is None  # zeroed (set to None) after the step
    with pytest.raises(ValueError, match="batches"):
        train_step(models[0], [], opts[0], list(models[0].parameters()))


def test_train_step_clips_the_gradient() -> None:
    from todsynth.train import train_step

    model = _Velocity()
    before = [p.detach().clone() for p in model.parameters()]
    train_step(model, [_batch(2, 3)], torch.optim.SGD(model.parameters(), lr=1.0), list(model.parameters()),
               max_grad_norm=1e-3)
    step = torch.cat([(p.detach() - q).flatten() for p, q in zip(model.parameters(), before, strict=True)])
    assert 0 < step.norm() <= 1e-3 * (1 + 1e-4)  # SGD lr 1: the step is the clipped gradient


# ------------------------------------------------------------------ flow matching pieces


def test_sigma_table_matches_sd3_shift() -> None:
    sigmas, timesteps = train_sigma_table(1000, 3.0)
    s = torch.linspace(1.0, 1e-3, 1000)
    torch.testing.assert_close(sigmas, 3.0 * s / (1 + 2.0 * s))
    torch.testing.assert_close(timesteps, sigmas * 1000)


def test_sample_sigmas_schemes() -> None:
    sigmas, timesteps = train_sigma_table(1000, 1.0)
    u_uniform, _ = sample_sigmas("uniform", 4000, sigmas, timesteps, torch.Generator().manual_seed(0))
    u_logit, t = sample_sigmas("logit_normal", 4000, sigmas, timesteps, torch.Generator().manual_seed(0))
    assert set(u_uniform.tolist()) <= set(sigmas.tolist())
    torch.testing.assert_close(t, u_logit * 1000)
    assert abs(u_uniform.mean() - 0.5) < 0.03 and abs(u_logit.mean() - 0.5) < 0.03
    assert u_logit.std() < u_uniform.std() - 0.05  # logit-normal concentrates on the middle
    with pytest.raises(ValueError, match="uniform"):
        sample_sigmas("cosmap", 2, sigmas, timesteps, torch.Generator())  # type: ignore[arg-type]


def test_noising_and_loss() -> None:
    x0, noise = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    sigma = torch.tensor([0.0, 0.5, 1.0])
    xt = noisy_latents(x0, noise, sigma)
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[2], noise[2])
    assert flow_matching_loss(noise - x0, x0, noise) == 0
    assert flow_matching_loss(torch.zeros_like(x0), x0, noise) > 0


# ------------------------------------------------------------------ config validation


@pytest.mark.parametrize(
    ("field", "value"),
    [("steps", 0), ("caption_dropout", 1.5), ("mask_dropout", -0.1), ("mask_dropout", 1.01), ("trainable", "full"), ("timestep_sampling", "cosmap"), ("ema_decay", 1.5)],
)
def test_config_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"TrainConfig.{field}"):
        TrainConfig(**{field: value})  # type: ignore[arg-type]


def test_config_from_preset_uses_budget() -> None:
    from todsynth.models.presets import PRESETS

    cfg = TrainConfig.from_preset("tiny", steps=5)
    assert cfg.steps == 5 and cfg.lr == PRESETS["tiny"]["train"]["lr"]
    with pytest.raises(ConfigError, match="unknown TrainConfig field"):
        TrainConfig.from_preset("tiny", step=5)
    # a preset override of the budget reaches the config (it had been read from the unmerged preset, so
    # generator.overrides: {train: ...} changed the stage's hash and nothing else); explicit fields still win
    cfg = TrainConfig.from_preset("tiny", preset_overrides={"train": {"logit_mean": -0.5, "steps": 7}}, steps=5)
    assert cfg.logit_mean == -0.5 and cfg.steps == 5 and cfg.lr == PRESETS["tiny"]["train"]["lr"]
    with pytest.raises(ConfigError, match="unknown train key"):
        TrainConfig.from_preset("tiny", preset_overrides={"train": {"stepz": 7}})
    # what a run starts from is the caller's to give: in a budget, the caller's value would silently replace it
    with pytest.raises(ConfigError, match=r"train key\(s\) \['init_from'\] name what the run starts from"):
        TrainConfig.from_preset("tiny", preset_overrides={"train": {"init_from": "/x"}}, init_from=None)
    assert TrainConfig.from_preset("tiny", init_from="/x").init_from == "/x"  # given to the run: fine
    with pytest.raises(ConfigError, match="unknown generator preset"):
        TrainConfig.from_preset("huge")


def test_scratch_preset_needs_vae(dataset, tmp_path: Path) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError, match="vae_dir"):
        train_generator(TrainConfig(preset="tiny", steps=1), dataset, HashPrompts(), tmp_path, progress=False)


# ------------------------------------------------------------------ training behaviour


def test_branches_training_freezes_text_and_trains_the_rest(dataset, vae_dir: Path, tmp_path: Path) -> None:  # noqa: ANN001
    init = build_generator(resolve_preset("tiny", {**SMALL, "vae_path": str(vae_dir)})).transformer.state_dict()
    out = train_generator(config(vae_dir, steps=3), dataset, HashPrompts(), tmp_path, progress=False)
    trained = tensors(out)
    changed = {k for k in trained if not torch.equal(trained[k], init[k])}
    assert changed and not any(is_text_stream(k) for k in changed)
    assert "transformer.transformer_blocks.0.attn.to_q.weight" in changed
    assert "mask_blocks.0.norm1.linear.weight" in changed  # AdaLN-Zero of the mask stream leaves zero
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["completed"] and summary["steps"] == 3 and summary["samples_per_s"] > 0
    assert summary["mask_stream_params"] > 0 and summary["peak_rss_mb"] > 0
    # a damaged summary of that finished run is named on the next call, never a JSON traceback
    (tmp_path / "train_summary.json").write_text("{not json")
    with pytest.raises(ConfigError, match="train_summary.json"):
        train_generator(config(vae_dir, steps=3), dataset, HashPrompts(), tmp_path, progress=False)


def test_lora_training_saves_merged_weights(dataset, vae_dir: Path, tmp_path: Path) -> None:  # noqa: ANN001
    init = build_generator(resolve_preset("tiny", {**SMALL, "vae_path": str(vae_dir)})).transformer.state_dict()
    cfg = config(vae_dir, steps=3, trainable="lora", lora_rank=2)
    out = train_generator(cfg, dataset, HashPrompts(), tmp_path, progress=False)
    trained = tensors(out)
    assert set(trained) == set(init)  # merged: no adapter tensors left
    changed = {k for k in trained if not torch.equal(trained[k], init[k])}
    image_attn = "transformer.transformer_blocks.0.attn.to_q.weight"
    assert image_attn in changed and "mask_blocks.0.to_k.weight" in changed
    assert not any(is_text_stream(k) for k in changed)
    assert "transformer.transformer_blocks.0.ff.net.0.proj.weight" not in changed  # FFN is not adapted
    assert load_generator(out).transformer(
        torch.zeros(1, 48, 16, 16), torch.zeros(1, 48, 16, 16), torch.tensor([500.0]),
        torch.zeros(1, 16, 64), torch.zeros(1, 64),
    ).isfinite().all()


def test_mask_conditions_output_after_training(dataset, vae_dir: Path, tmp_path: Path) -> None:  # noqa: ANN001
    out = train_generator(config(vae_dir, steps=8, lr=3e-3, batch_size=4), dataset, HashPrompts(), tmp_path, progress=False)
    gen = load_generator(out)
    # mask-stream gates are no longer zero, so mask tokens now also evolve through the blocks
    assert gen.transformer.mask_blocks[0].norm1.linear.weight.abs().sum() > 0
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, *gen.latent_shape, generator=g)
    masks = torch.stack([torch.zeros(64, 64, dtype=torch.long), torch.full((64, 64), 3)])
    e, p = HashPrompts().get(["a satellite image of water"] * 2)
    with torch.no_grad():
        m = gen.encode_mask(masks)
        v_a = gen.transformer(x, m, torch.tensor([800.0, 800.0]), e, p)
        v_b = gen.transformer(x, m.flip(0), torch.tensor([800.0, 800.0]), e, p)
    assert (v_a - v_b).abs().mean() > 1e-3 * v_a.abs().mean()


def test_resume_gives_identical_weights(dataset, vae_dir: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    import todsynth.train.generator as generator_module

    cfg = config(vae_dir, steps=6, checkpoint_every=2, keep_checkpoints=1, ema_decay=0.5, caption_dropout=0.5)
    full = train_generator(cfg, dataset, HashPrompts(), tmp_path / "full", progress=False)

    run = tmp_path / "killed"
    step, calls = generator_module.train_step, []

    class Killed(BaseException):  # like a signal: no ``except Exception`` on the way stops it
        pass

    def dies_in_step_4(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        if len(calls) == 4:
            raise Killed("in step 4")
        return step(*args, **kwargs)

    monkeypatch.setattr(generator_module, "train_step", dies_in_step_4)
    with pytest.raises(Killed):
        train_generator(cfg, dataset, HashPrompts(), run, progress=False)
    monkeypatch.undo()
    assert not (run / "generator").exists()  # step 3 was done but lost with the kill: no checkpoint after step 2
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2"]
    with (run / "log.jsonl").open("a") as fh:  # a line cut by the kill (before, the resume failed on it for good)
        fh.write('{"step": 4, "lo')
    resumed = train_generator(cfg, dataset, HashPrompts(), run, progress=False)
    assert json.loads((run / "train_summary.json").read_text())["resumed_from"] == 2

    a, b = tensors(full), tensors(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [json.loads(ln)["step"] for ln in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]

    # a finished run is not retrained; a changed config refuses to resume from its checkpoints
    prompts = HashPrompts()
    assert train_generator(cfg, dataset, prompts, run, progress=False) == resumed and prompts.calls == 0
    with pytest.raises(ConfigError, match="lr"):
        train_generator(config(vae_dir, steps=6, lr=5e-4, checkpoint_every=2), dataset, HashPrompts(), run, progress=False)


def test_orientations_are_the_eight_symmetries_of_a_square() -> None:
    from todsynth.train.data import orient, orientations

    assert orientations(True, False) == (0, 1) and orientations(False, True) == (0, 2, 4, 6)
    codes = torch.tensor(orientations(True, True))
    x = torch.arange(16.0).view(1, 1, 4, 4).expand(8, 3, 4, 4)
    y = orient(x, codes)
    assert len({tuple(v[0].flatten().tolist()) for v in y}) == 8
    assert torch.equal(y[1], x[1].flip(-1)) and torch.equal(y[2], torch.rot90(x[2], 1, (-2, -1)))
    assert any(torch.equal(v, x[0].flip(-2)) for v in y)  # a vertical flip is among them
    masks = orient(x[:, 0].long(), codes)  # a mask turns with its image
    assert torch.equal(masks, y[:, 0].long())


def test_rot90_draws_every_orientation(dataset, vae_dir: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    import todsynth.train.generator as generator_module

    seen: list[int] = []
    batch_tensors = generator_module._batch_tensors

    def recording(gen, data, ds, prompts, idx, code):  # noqa: ANN001, ANN202
        seen.extend(code.tolist())
        assert data is not None and data.latents.shape[0] == 8
        return batch_tensors(gen, data, ds, prompts, idx, code)

    monkeypatch.setattr(generator_module, "_batch_tensors", recording)
    train_generator(config(vae_dir, steps=12, batch_size=4, rot90=True), dataset, HashPrompts(), tmp_path / "r",
                    progress=False)
    assert set(seen) == set(range(8))


@pytest.mark.parametrize("rot90", [False, True])
def test_uncached_latents_match_cached(dataset, vae_dir: Path, tmp_path: Path, rot90: bool) -> None:  # noqa: ANN001
    cached = train_generator(config(vae_dir, steps=2, rot90=rot90), dataset, HashPrompts(), tmp_path / "a",
                             progress=False)
    direct = train_generator(config(vae_dir, steps=2, cache_latents=False, rot90=rot90), dataset, HashPrompts(),
                             tmp_path / "b", progress=False)
    a, b = tensors(cached), tensors(direct)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_mask_dropout_drops_masks_with_the_prompts(dataset, vae_dir: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """One uniform draw per sample decides both dropouts: at equal rates a sample loses mask and prompt together; at
    1.0 every sample loses both."""
    import todsynth.train.generator as generator_module

    with pytest.raises(ConfigError, match="mask token stream"):
        train_generator(config(vae_dir, mask_dropout=0.2), dataset, HashPrompts(), tmp_path / "tokens", progress=False)
    seen: list = []
    step = generator_module.train_step

    def recording(model, batches, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen.extend(batches)
        return step(model, batches, *args, **kwargs)

    monkeypatch.setattr(generator_module, "train_step", recording)
    no_tokens = {"transformer": {"num_layers": 2}, "mask_stream": {"tokens": False}}
    cfg = config(vae_dir, preset_overrides=no_tokens, steps=6, batch_size=4, caption_dropout=0.5, mask_dropout=0.5)
    train_generator(cfg, dataset, HashPrompts(), tmp_path / "drop", progress=False)
    uncond = HashPrompts().get([""])[1][0]
    keep = torch.cat([b.mask_keep for b in seen])
    dropped_prompt = torch.stack([(p == uncond).all() for b in seen for p in b.pooled])
    assert torch.equal(keep == 0, dropped_prompt) and 0 < int((keep == 0).sum()) < len(keep)
    seen.clear()
    train_generator(config(vae_dir, preset_overrides=no_tokens, steps=2), dataset, HashPrompts(), tmp_path / "keep",
                    progress=False)
    assert seen and all(b.mask_keep is None for b in seen)
    seen.clear()  # both at 1.0: no sample sees its mask or its prompt (unconditional pretraining on unlabelled images)
    cfg = config(vae_dir, preset_overrides=no_tokens, steps=3, batch_size=4, caption_dropout=1.0, mask_dropout=1.0)
    train_generator(cfg, dataset, HashPrompts(), tmp_path / "uncond", progress=False)
    assert len(seen) == 3 and all(torch.equal(b.mask_keep, torch.zeros(4)) for b in seen)
    assert all((p == uncond).all() for b in seen for p in b.pooled)


def test_init_from_starts_training_from_saved_weights(dataset, vae_dir: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """init_from loads a saved generator's transformer before the first step; another architecture is named."""
    import todsynth.train.generator as generator_module
    from todsynth.errors import WeightsNotFoundError

    first = train_generator(config(vae_dir, steps=2), dataset, HashPrompts(), tmp_path / "first", progress=False)
    saved = tensors(first)
    fresh = build_generator(resolve_preset("tiny", SMALL)).transformer.state_dict()
    name = next(k for k in saved if not torch.equal(saved[k], fresh[k]))  # a weight the 2 steps changed
    at_start: dict[str, torch.Tensor] = {}
    step = generator_module.train_step

    def recording(model, batches, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if not at_start:
            at_start.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return step(model, batches, *args, **kwargs)

    monkeypatch.setattr(generator_module, "train_step", recording)
    cfg = config(vae_dir, steps=1, init_from=str(first))
    train_generator(cfg, dataset, HashPrompts(), tmp_path / "second", progress=False)
    torch.testing.assert_close(at_start[name], saved[name])
    summary = json.loads((tmp_path / "second" / "train_summary.json").read_text())
    assert summary["config"]["init_from"] == str(first)
    # a run resumes only with the weights it started from
    assert cfg.resume_mismatch({**cfg.to_dict(), "init_from": str(tmp_path / "other")}) == ["init_from"]
    other = {"transformer": {"num_layers": 1}, "mask_stream": {"tokens": True, "encoding": "grey"}}
    with pytest.raises(ConfigError, match=r"transformer\.safetensors does not match the preset's model"):
        train_generator(config(vae_dir, preset_overrides=other, steps=1, init_from=str(first)), dataset,
                        HashPrompts(), tmp_path / "third", progress=False)
    with pytest.raises(WeightsNotFoundError, match="no saved generator"):
        train_generator(config(vae_dir, steps=1, init_from=str(tmp_path / "none")), dataset, HashPrompts(),
                        tmp_path / "fourth", progress=False)


def test_a_damaged_checkpoint_is_named_with_its_mend(tmp_path: Path) -> None:
    from todsynth.train.checkpoint import load_checkpoint, read_state

    ckpt = tmp_path / "checkpoint-2"
    ckpt.mkdir()
    (ckpt / "state.json").write_text('{"step": 2')  # cut short
    with pytest.raises(ConfigError, match=r"cannot read .*checkpoint-2/state\.json"):
        read_state(ckpt)
    (ckpt / "state.json").write_text('{"step": 2, "pos": 0}')
    with pytest.raises(ConfigError, match=r"lacks \['config', 'optimizer', 'lr_scheduler'\]: a damaged checkpoint; delete"):
        read_state(ckpt)
    (ckpt / "state.json").write_text(json.dumps({"step": 2, "pos": 0, "config": {}, "optimizer": {}, "lr_scheduler": {}}))
    (ckpt / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(ConfigError, match=r"cannot read weights .*checkpoint-2/model\.safetensors"):
        load_checkpoint(ckpt, {}, None, None)  # type: ignore[arg-type]
    # the keys are there but their contents do not fit (before: a bare KeyError 'scalars' on every resume)
    from safetensors.torch import save_file

    w = torch.nn.Parameter(torch.zeros(2))
    save_file({"w": torch.zeros(2)}, ckpt / "model.safetensors")
    save_file({}, ckpt / "optimizer.safetensors")
    with pytest.raises(ConfigError, match=r"checkpoint-2: a damaged checkpoint \(KeyError: 'scalars'\); delete"):
        load_checkpoint(ckpt, {"w": w}, torch.optim.AdamW([w]), None)  # type: ignore[arg-type]
