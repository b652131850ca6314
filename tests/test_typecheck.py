"""The code type-checks: ``mypy`` on ``todsynth``, ``bench`` and ``cli.py`` (strict; pyproject.toml's ``[tool.mypy]``) reports no errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_is_clean() -> None:
    # Cold (no .mypy_cache) this takes about a minute on 2 shared cores; incremental runs take seconds.
    proc = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"mypy failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
