"""Security: no unsafe deserialisation, safetensors for what we write, loopback servers, no network at run time.

Static part: an AST scan of the package (todsynth/, bench/, cli.py). Dynamic part: an untrusted pickle is
refused without running its payload, and a suite runs with outbound networking blocked by a socket guard.
"""

from __future__ import annotations

import ast
import inspect
import ipaddress
import json
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCES = sorted([*REPO.glob("todsynth/**/*.py"), *REPO.glob("bench/**/*.py"), REPO / "cli.py"])


def _calls(attr: str, owner: str | None = None):
    """(file, enclosing function node, call node) for every ``owner.attr(...)`` call in the package."""
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for fn in [tree, *[n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]]:
            for node in ast.walk(fn):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr
                        and (owner is None or (isinstance(node.func.value, ast.Name) and node.func.value.id == owner))):
                    yield path, fn, node


def test_torch_load_is_weights_only_unless_trusted():
    found = 0
    for path, fn, call in _calls("load", "torch"):
        if fn.__class__ is ast.Module:
            continue  # the same call is seen again with its enclosing function
        found += 1
        kw = {k.arg: k.value for k in call.keywords}
        assert "weights_only" in kw, f"{path}:{call.lineno}: torch.load without weights_only"
        value = kw["weights_only"]
        if isinstance(value, ast.Constant) and value.value is True:
            continue
        args = {a.arg for a in fn.args.args + fn.args.kwonlyargs}
        assert "trust" in args, f"{path}:{call.lineno}: torch.load(weights_only=...) outside a trust-flagged function"
    assert found >= 1  # the scan sees the user-checkpoint reader


def test_no_unsafe_deserialisers():
    assert not list(_calls("load", "yaml")) and not list(_calls("unsafe_load", "yaml")) and not list(_calls("full_load", "yaml"))
    assert not list(_calls("load", "pickle")) and not list(_calls("loads", "pickle"))
    assert not list(_calls("load", "marshal")) and not list(_calls("load", "dill"))
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in {"eval", "exec"}, f"{path}:{node.lineno}: {node.func.id}()"
    assert len(list(_calls("safe_load", "yaml"))) >= 1


def test_mmseg_python_configs_only_from_the_installed_package():
    """``Config.fromfile`` (which executes Python) is only called on MMSeg's own shipped configs."""
    sites = [(p, fn.name) for p, fn, _ in _calls("fromfile", "Config") if not isinstance(fn, ast.Module)]
    assert sites == [(REPO / "todsynth" / "seg" / "models.py", "_shipped")], sites
    import mmseg

    from todsynth.seg.models import SHIPPED_CONFIGS, shipped_config_path

    pkg = Path(mmseg.__file__).parent.resolve()
    for name in SHIPPED_CONFIGS:
        p = shipped_config_path(name)
        assert p is None or p.resolve().is_relative_to(pkg), p
    from bench.schema import Segmenter

    assert not {"config", "config_file", "mmseg_config"} & set(Segmenter.model_fields)  # suites cannot name one


def test_untrusted_pickle_is_refused_and_not_executed(tmp_path):
    import torch

    from todsynth.errors import UntrustedCheckpointError
    from todsynth.seg.io import load_user_checkpoint

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    ckpt = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Payload()}, ckpt)
    marker.unlink(missing_ok=True)  # (torch.save does not call __reduce__'s callable, but be sure)
    with pytest.raises(UntrustedCheckpointError, match="trust"):
        load_user_checkpoint(ckpt, "fcn-tiny")
    assert not marker.exists()


def test_checkpoints_we_write_are_safetensors(tmp_path):
    from todsynth.seg.io import save_segmentor
    from todsynth.seg.models import build_segmentor

    model = build_segmentor("fcn-tiny", num_classes=7)
    save_segmentor(model, "fcn-tiny", tmp_path / "seg", num_classes=7)
    _assert_no_pickles(tmp_path / "seg")
    assert any(p.suffix == ".safetensors" for p in (tmp_path / "seg").rglob("*"))


def _assert_no_pickles(root: Path) -> int:
    """Every file under ``root`` is neither a pickle nor a torch.save zip; returns the number checked."""
    n = 0
    for p in root.rglob("*"):
        if not p.is_file():
            continue
        n += 1
        head = p.read_bytes()[:4]
        assert p.suffix not in {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt"}, p
        assert not head.startswith(b"\x80"), f"{p}: pickle"
        assert not (head.startswith(b"PK") and p.suffix not in {".zip", ".xlsx"}), f"{p}: torch.save zip"
    return n


def test_servers_bind_loopback_by_default():
    import cli
    from bench.tracking import server_command

    host_default = inspect.signature(cli.ui).parameters["host"].default
    assert host_default == "127.0.0.1"
    assert inspect.signature(server_command).parameters["host"].default == "127.0.0.1"
    cmd = server_command(Path("/tmp/ws"))
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"


class NetworkBlocked(OSError):
    """Raised by the socket guard for a non-loopback address."""


@pytest.fixture
def no_network(monkeypatch):
    """Block every non-loopback connection/lookup in this process; returns the list of attempts."""
    attempts: list[str] = []

    def _loopback(host) -> bool:
        if host in (None, "localhost", ""):
            return True
        try:
            return ipaddress.ip_address(str(host).strip("[]")).is_loopback
        except ValueError:
            return False

    real_connect, real_gai = socket.socket.connect, socket.getaddrinfo

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            attempts.append(f"connect {address}")
            raise NetworkBlocked(f"network blocked in tests: connect to {address}")
        return real_connect(self, address)

    def getaddrinfo(host, *a, **k):
        if not _loopback(host):
            attempts.append(f"getaddrinfo {host}")
            raise NetworkBlocked(f"network blocked in tests: lookup of {host}")
        return real_gai(host, *a, **k)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(NetworkBlocked):  # the guard itself works
        socket.create_connection(("192.0.2.1", 80), timeout=1)
    attempts.clear()
    return attempts


def test_suite_runs_with_network_blocked(no_network, tiny_suite_data, bench_workspace, fake_stages):
    """Data stage, MLflow tracking (sqlite) and results with outbound networking blocked (fake model stages)."""
    from bench.engine import run_suite
    from bench.stages import stage_data
    from bench.suites import validate_data

    fns, _ = fake_stages
    suite = validate_data({**tiny_suite_data, "workspace": str(bench_workspace)}, "test")
    out = run_suite(suite, stage_fns={**fns, "data": stage_data}, stage_versions={}, progress=False)
    assert out.parent_run_id and out.results["variants"]
    assert no_network == []


@pytest.mark.slow
def test_tests_suite_runs_offline_and_writes_no_pickles(no_network, bench_workspace):
    """The real tests suite end to end with networking blocked; every cached file is pickle-free."""
    from bench.engine import run_suite
    from bench.suites import load_suite

    suite = load_suite(REPO / "suites" / "tests.yaml", workspace=bench_workspace)
    out = run_suite(suite, progress=False)
    assert json.loads(out.results_file.read_text())["variants"]
    assert no_network == []
    assert _assert_no_pickles(bench_workspace / "cache") > 10


def test_the_cli_tells_the_hugging_face_libraries_it_is_offline(monkeypatch):
    """README: nothing is downloaded at run time; the entry point sets the offline switches unless the user did."""
    import os
    import sys

    from cli import main

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")  # the user's own choice is kept
    monkeypatch.setattr(sys, "argv", ["todsynth", "--help"])
    with pytest.raises(SystemExit):
        main()
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "0"
