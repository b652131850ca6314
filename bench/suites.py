"""Suite files: read YAML safely, apply ``--set`` overrides, validate, hash, find the embedded default.

CLI over YAML over schema defaults (lm-eval's ``EvaluatorConfig.from_cli`` order). Nothing here creates
files: ``bench validate`` and the first step of ``bench run`` must leave the workspace untouched.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bench.cache import canonical
from bench.schema import Suite, check_suite, describe_error
from todsynth.errors import ConfigError

BUILTIN_PACKAGE = "bench.suites_builtin"
DEFAULT_SUITE = "smoke"
# Keys that say where results go, not what is computed: left out of the config hash.
UNHASHED_KEYS = frozenset({"workspace", "tracking"})
UNHASHED_RESOURCES = frozenset({"jobs"})  # how many stages run at once: same results, other wall time


class SuiteError(ConfigError):
    """A suite that cannot be used; ``problems`` lists each one with its key path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__(f"{source}: " + "; ".join(self.problems))


def builtin_suite_path(name: str = DEFAULT_SUITE) -> Path:
    """Path of a suite shipped inside the package (``smoke`` is the embedded default)."""
    path = Path(str(resources.files(BUILTIN_PACKAGE).joinpath(f"{name}.yaml")))
    if not path.is_file():
        raise ConfigError(f"no built-in suite {name!r} (looked for {path})")
    return path


def resolve_suite_path(path: str | Path | None) -> Path:
    """The suite file to read: None -> built-in smoke; a missing ``.../smoke.yaml`` -> built-in smoke too."""
    if path is None:
        return builtin_suite_path()
    p = Path(path)
    if not p.exists() and p.name == f"{DEFAULT_SUITE}.yaml":
        return builtin_suite_path()
    if not p.exists():
        raise SuiteError(str(p), ["file not found (give a suite YAML path, e.g. suites/smoke.yaml)"])
    if not p.is_file():
        raise SuiteError(str(p), ["not a file"])
    return p


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse a suite file with ``yaml.safe_load``; any unusable content -> one-line :class:`SuiteError`."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise SuiteError(str(path), ["not a UTF-8 text file (binary?); a suite is a YAML mapping"]) from None
    except OSError as exc:
        raise SuiteError(str(path), [f"cannot read: {exc.strerror}"]) from None
    if "\x00" in text:
        raise SuiteError(str(path), ["contains NUL bytes (binary?); a suite is a YAML mapping"])
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise SuiteError(str(path), ["nested too deeply to read; a suite is a YAML mapping of a few levels"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SuiteError(str(path), [f"YAML syntax error at {where}{what}"]) from None
    if data is None:
        raise SuiteError(str(path), ["empty file; a suite is a YAML mapping with at least `name:`"])
    if not isinstance(data, dict):
        raise SuiteError(str(path), [f"top level is a {type(data).__name__}, not a mapping of suite keys"])
    return data


def parse_set(item: str) -> tuple[list[str | int], Any]:
    """``'sampling.num_inference_steps=8'`` -> (key path, YAML-parsed value); list indices are ints."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise SuiteError("--set", [f"{item!r} is not key.path=value"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    parts: list[str | int] = [int(p) if p.isdigit() else p for p in key.strip().split(".")]
    if any(p == "" for p in parts):
        raise SuiteError("--set", [f"{key!r} has an empty key segment"])
    return parts, value


def apply_overrides(data: dict[str, Any], sets: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """A copy of ``data`` with each ``key.path=value`` applied (creating mappings as needed)."""
    out: dict[str, Any] = json.loads(json.dumps(data, default=str))
    for item in sets:
        parts, value = parse_set(item)
        node: Any = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            where = ".".join(str(p) for p in parts[: i + 1])
            if isinstance(node, list):
                if not isinstance(part, int) or part >= len(node):
                    raise SuiteError("--set", [f"{item!r}: {where} is not an index of a {len(node)}-item list"])
            elif isinstance(node, dict):
                part = str(part)
                if not last and not isinstance(node.get(part), (dict, list)):
                    node[part] = {}
            else:
                raise SuiteError("--set", [f"{item!r}: {where} goes inside a scalar"])
            if last:
                node[part] = value
            else:
                node = node[part]
    return out


def validate_data(data: dict[str, Any], source: str) -> Suite:
    """Mapping -> :class:`Suite`, or :class:`SuiteError` listing every problem with its key path."""
    try:
        suite = Suite.model_validate(data)
    except ValidationError as exc:
        raise SuiteError(source, [describe_error(e) for e in exc.errors()]) from None
    problems = check_suite(suite)
    if problems:
        raise SuiteError(source, problems)
    return suite


def load_suite(
    path: str | Path | None,
    sets: list[str] | tuple[str, ...] = (),
    workspace: str | Path | None = None,
) -> Suite:
    """Read, override (``--set``, then ``--workspace``) and validate a suite; creates nothing."""
    p = resolve_suite_path(path)
    data = apply_overrides(read_yaml(p), sets)
    if workspace is not None:
        data["workspace"] = str(workspace)
    return validate_data(data, str(p))


def resolved_dict(suite: Suite) -> dict[str, Any]:
    """The suite with every default filled in, JSON-safe (paths as strings)."""
    return suite.model_dump(mode="json")


def resolved_yaml(suite: Suite) -> str:
    """The resolved suite as YAML (logged to MLflow; ``yaml.safe_load`` reads it back)."""
    return yaml.safe_dump(resolved_dict(suite), sort_keys=False)


def hashed_dict(suite: Suite) -> dict[str, Any]:
    """The resolved suite minus what says where and how fast it runs (workspace, tracking, resources.jobs)."""
    data = {k: v for k, v in resolved_dict(suite).items() if k not in UNHASHED_KEYS}
    data["resources"] = {k: v for k, v in data["resources"].items() if k not in UNHASHED_RESOURCES}
    return data


def config_hash(suite: Suite) -> str:
    """sha256 of :func:`hashed_dict` and the suite's ``version``, as hex."""
    return suite_digest(hashed_dict(suite), suite)


def suite_digest(data: dict[str, Any], suite: Suite) -> str:
    """sha256 (hex) of ``data`` (:func:`hashed_dict`, or a part of it) with ``suite``'s version.

    The one digest behind :func:`config_hash` and the tune study's fingerprint (``bench.tune.study``).
    """
    payload = canonical({"suite": data, "version": str(suite.version)})
    return hashlib.sha256(payload.encode()).hexdigest()
