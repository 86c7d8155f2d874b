"""DESIGN.md's layer rules: what each layer may import, checked in a fresh interpreter.

`import torch` alone takes over a second, so the store, the control API, the CLI's light
commands and the dashboard must never pull it in; the training side must never pull in textual.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_after(module: str) -> set[str]:
    """Top-level packages in sys.modules after `import module` in a new interpreter."""
    code = (f"import sys, json, {module}\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("module", ["clipdash", "clipdash.store", "clipdash.control",
                                    "clipdash.cli", "clipdash.commands.ls"])
def test_light_modules_import_neither_torch_nor_textual(module: str) -> None:
    loaded = imported_after(module)
    assert "torch" not in loaded, f"{module} imports torch"
    assert "textual" not in loaded, f"{module} imports textual"


def test_track_does_not_import_textual() -> None:
    loaded = imported_after("clipdash.track.tracker")
    assert "torch" in loaded  # the import really happened
    assert "textual" not in loaded


def test_tui_app_does_not_import_torch() -> None:
    if not (ROOT / "clipdash" / "tui" / "app.py").exists():
        pytest.skip("clipdash/tui/app.py does not exist yet")
    loaded = imported_after("clipdash.tui.app")
    assert "textual" in loaded
    assert "torch" not in loaded, "the dashboard imports torch"


def test_checker_sees_a_heavy_import() -> None:
    """The check itself works: a module that imports torch is caught."""
    assert "torch" in imported_after("clipdash.track.norms")
