"""PromptCache: one safetensors file per (encoder, prompt), misses encoded once in one batch, loud on corruption."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from typer.testing import CliRunner

import cli
from todsynth.errors import DataValidationError
from todsynth.text import PromptCache, TinyPromptEncoder


class CountingEncoder(TinyPromptEncoder):
    """Tiny encoder that records each batch it is asked to encode."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.batches: list[list[str]] = []

    def encode(self, prompts):
        self.batches.append(list(prompts))
        return super().encode(prompts)


def test_misses_encoded_once_in_one_batch(tmp_path):
    enc = CountingEncoder()
    cache = PromptCache(tmp_path, enc)
    embeds, pooled = cache.get(["a", "b", "a"])
    assert enc.batches == [["a", "b"]] and cache.encoded == 1
    assert embeds.shape == (3, 16, 64) and pooled.shape == (3, 64)
    torch.testing.assert_close(embeds[0], embeds[2])
    direct = TinyPromptEncoder().encode(["a", "b"])
    torch.testing.assert_close(embeds[:2], direct[0])
    torch.testing.assert_close(pooled[:2], direct[1])
    cache.get(["b", "c", "a"])
    assert enc.batches == [["a", "b"], ["c"]] and cache.encoded == 2
    cache.get(["c", "a"])
    assert cache.encoded == 2 and cache.prompts_encoded == 3 and cache.prompts_cached == 4


def test_file_per_prompt_named_by_sha256(tmp_path):
    enc = TinyPromptEncoder()
    PromptCache(tmp_path, enc).get(["a satellite image of road"])
    expected = hashlib.sha256((enc.name + "\0" + "a satellite image of road").encode()).hexdigest()
    assert [p.name for p in tmp_path.iterdir()] == [f"{expected}.safetensors"]


def test_encoders_do_not_share_entries(tmp_path):
    a = PromptCache(tmp_path, TinyPromptEncoder(seed=0))
    b = PromptCache(tmp_path, TinyPromptEncoder(seed=1))
    ea = a.get(["x"])[0]
    eb = b.get(["x"])[0]
    assert b.encoded == 1 and not torch.allclose(ea, eb)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


def test_corrupt_file_is_an_error(tmp_path):
    cache = PromptCache(tmp_path, TinyPromptEncoder())
    cache.get(["x"])
    cache.path("x").write_bytes(b"garbage")
    with pytest.raises(DataValidationError, match="corrupt prompt cache file .*delete it"):
        cache.get(["x"])


def test_bad_calls(tmp_path):
    cache = PromptCache(tmp_path, TinyPromptEncoder())
    with pytest.raises(TypeError):
        cache.get("x")
    with pytest.raises(ValueError):
        cache.get([])


def test_cli_vectorize_counts(procedural_root, tmp_path):
    from todsynth.data.index import write_index

    index = write_index(procedural_root, "Train", tmp_path / "index.jsonl")
    prompts = {json.loads(x)["prompt"] for x in index.read_text().splitlines()}
    args = ["prompts", "vectorize", str(index), "--encoder", "tiny", "--cache", str(tmp_path / "c"), "--batch-size", "3"]
    first = CliRunner().invoke(cli.app, args)
    assert first.exit_code == 0, first.output
    assert f"{len(prompts)} encoded, 0 cached" in first.output
    assert len(list((tmp_path / "c").glob("*.safetensors"))) == len(prompts)
    second = CliRunner().invoke(cli.app, args)
    assert f"0 encoded, {len(prompts)} cached" in second.output
    bad = CliRunner().invoke(cli.app, ["prompts", "vectorize", str(index), "--encoder", "clip"])
    assert bad.exit_code == 2 and "clip" in bad.output
    nodir = CliRunner(env={"TODSYNTH_SD3_DIR": ""}).invoke(cli.app, ["prompts", "vectorize", str(index), "--encoder", "sd3"])
    assert nodir.exit_code == 2 and "--sd3-dir" in nodir.output
    for option, value in (("--seq-len", "1"), ("--batch-size", "0"), ("--pooled-dim", "0")):  # usage errors, no crash
        res = CliRunner().invoke(cli.app, [*args[:-2], option, value], env={"COLUMNS": "200"})
        assert res.exit_code == 2 and f"Invalid value for '{option}'" in res.output, res.output
        assert res.exception is None or isinstance(res.exception, SystemExit)


def test_lazy_encoder_builds_on_first_use_only(tmp_path):
    from bench.stages.common import LazyEncoder

    real = TinyPromptEncoder(joint_dim=32, pooled_dim=24)
    built: list[int] = []

    def build():
        built.append(1)
        return real

    lazy = LazyEncoder(real.name, build)
    cache = PromptCache(tmp_path, TinyPromptEncoder(joint_dim=32, pooled_dim=24))
    cache.get(["a field"])  # written by an eager encoder of the same name
    embeds, _ = PromptCache(tmp_path, lazy).get(["a field"])  # a hit: nothing built
    assert built == [] and embeds.shape[-1] == 32
    assert (lazy.joint_dim, lazy.pooled_dim) == (32, 24) and built == [1]
    PromptCache(tmp_path, lazy).get(["a road"])  # a miss: the built encoder encodes it, not built again
    assert built == [1]


def test_lazy_encoder_refuses_another_encoder(tmp_path):
    from bench.stages.common import LazyEncoder

    lazy = LazyEncoder("tiny-v1-seed9-len16-j64-p64", lambda: TinyPromptEncoder(seed=0))
    with pytest.raises(ValueError, match="cache was written by"):
        _ = lazy.joint_dim
