"""The lint rules of pyproject.toml ([tool.ruff.lint]) hold in every file, so CI catches an unused import or
an unsorted import block as it catches a failing test."""

import subprocess
import sys
from pathlib import Path

from tests.helpers import require

ROOT = Path(__file__).resolve().parents[1]
require("ruff")


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
