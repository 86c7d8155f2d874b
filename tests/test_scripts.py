"""scripts/test.sh and demo.sh set up .venv only when it is missing or stale (the stamp of
pyproject.toml + setup.sh), so a second `bash scripts/test.sh` does not re-run pip."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FAKE_SETUP = """#!/usr/bin/env bash
set -euo pipefail
cd "$(dirname "$0")/.."
echo run >> setup-count
[ -f setup-fails ] && exit 1
mkdir -p .venv/bin
printf '#!/bin/sh\nexec {python} "$@"\n' > .venv/bin/python
chmod +x .venv/bin/python
"""


def repo(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "ensure_venv.sh", tmp_path / "scripts")
    (tmp_path / "scripts" / "setup.sh").write_text(FAKE_SETUP.format(python=sys.executable))
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    return tmp_path


def ensure(root: Path, **env: str) -> int:
    import os

    proc = subprocess.run(["bash", "scripts/ensure_venv.sh"], cwd=root, timeout=60,
                          env={**os.environ, **env}, capture_output=True, text=True)
    return proc.returncode


def setups(root: Path) -> int:
    path = root / "setup-count"
    return len(path.read_text().split()) if path.exists() else 0


def test_setup_runs_only_when_needed(tmp_path: Path) -> None:
    root = repo(tmp_path)
    assert (ensure(root), setups(root)) == (0, 1)  # a clean clone: full set-up
    assert (ensure(root), setups(root)) == (0, 1)  # current: skipped
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\nversion = '2'\n")
    assert (ensure(root), setups(root)) == (0, 2)  # a dependency changed
    assert (ensure(root, CLIPDASH_SETUP="1"), setups(root)) == (0, 3)
    shutil.rmtree(root / ".venv")
    assert (ensure(root), setups(root)) == (0, 4)  # the venv is gone


def test_a_failed_setup_is_retried(tmp_path: Path) -> None:
    root = repo(tmp_path)
    (root / "setup-fails").write_text("")
    assert ensure(root) != 0 and not (root / ".venv" / ".stamp").exists()
    (root / "setup-fails").unlink()
    assert (ensure(root), setups(root)) == (0, 2)
    assert (ensure(root), setups(root)) == (0, 2)


def test_test_and_demo_scripts_use_it() -> None:
    for name in ("test.sh", "demo.sh"):
        lines = (ROOT / "scripts" / name).read_text().splitlines()
        assert any(ln.startswith("bash scripts/ensure_venv.sh") for ln in lines)
        assert "bash scripts/setup.sh" not in lines
