"""todsynth.files: atomic writes (no half file under the final name), PNG bytes, output-folder checks."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from todsynth.errors import ConfigError
from todsynth.files import atomic_write_bytes, folder_problem, png_bytes, read_json, read_safetensors


def test_atomic_write_replaces_whole_and_leaves_nothing_beside(tmp_path):
    path = tmp_path / "sub" / "a.json"
    atomic_write_bytes(path, b"one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two" and [p.name for p in path.parent.iterdir()] == ["a.json"]


def test_atomic_write_that_fails_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    atomic_write_bytes(path, b"old")

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", broken)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]  # temp file removed


@pytest.mark.parametrize(("shape", "mode"), [((5, 7), "L"), ((5, 7, 3), "RGB")])
def test_png_bytes_round_trip(shape, mode):
    array = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    image = Image.open(io.BytesIO(png_bytes(array)))
    assert image.mode == mode and np.array_equal(np.asarray(image), array)


def test_folder_problem(tmp_path, monkeypatch):
    assert folder_problem(tmp_path) is None and folder_problem(tmp_path / "new" / "deeper") is None
    (tmp_path / "f").write_text("x")
    assert folder_problem(tmp_path / "f") == folder_problem(tmp_path / "f" / "x") == f"{tmp_path / 'f'} is a file, not a folder"
    monkeypatch.setattr("os.access", lambda path, mode: False)
    assert folder_problem(tmp_path / "new") == f"{tmp_path} is not writable by this user"
    assert not (tmp_path / "new").exists()


def test_read_json_and_safetensors_name_the_file_they_cannot_read(tmp_path):
    import torch
    from safetensors.torch import save

    (tmp_path / "ok.json").write_text('{"a": 1}')
    assert read_json(tmp_path / "ok.json") == {"a": 1}
    (tmp_path / "ok.safetensors").write_bytes(save({"w": torch.ones(2)}))
    assert torch.equal(read_safetensors(tmp_path / "ok.safetensors")["w"], torch.ones(2))
    for name, content in (("cut.json", b'{"a": '), ("latin.json", b"\xff\xfe"), ("junk.safetensors", b"junk")):
        (tmp_path / name).write_bytes(content)
    for name in ("cut.json", "latin.json", "missing.json"):
        with pytest.raises(ConfigError, match=rf"cannot read .*{name}"):
            read_json(tmp_path / name)
    for name in ("junk.safetensors", "missing.safetensors"):
        with pytest.raises(ConfigError, match=rf"cannot read weights .*{name}"):
            read_safetensors(tmp_path / name)


def test_read_log_lines_skips_a_line_cut_by_a_kill(tmp_path) -> None:
    from todsynth.files import read_log_lines

    log = tmp_path / "log.jsonl"
    log.write_bytes(b'{"step": 1}\n\n[1, 2]\n{"step": 2}\n{"step": 3, "lo')
    assert read_log_lines(log) == [{"step": 1}, {"step": 2}]
