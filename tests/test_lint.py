"""``ruff check .`` passes with the configuration in pyproject.toml (ruff comes with the ``test`` extra; the same
check runs as a pre-commit hook, .pre-commit-config.yaml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_check_passes():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "No module named ruff" not in proc.stderr, 'ruff is missing: pip install -e ".[test]"'
    assert proc.returncode == 0, f"ruff check . found:\n{proc.stdout[-6000:]}{proc.stderr[-2000:]}"
