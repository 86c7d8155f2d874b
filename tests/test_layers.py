"""DESIGN.md's layer table, checked on the source: no layer imports one above it.

An AST walk over every module of the package, imports at module level *and* inside functions
(the lazy ones are where upward imports hide). Layers, bottom to top:

    store  <-  analysis, control  <-  track  <-  integrations, engine  <-  commands  <-  cli

and the dashboard (`tui`) may import store, analysis and control only. A layer may import its
own package and anything below it; deliberate exceptions are listed in ALLOWED with the reason.
The second test plants an upward import in a copy of the package and shows the check fails.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "clipdash"

RANK = {"store": 0, "analysis": 1, "control": 1, "track": 2, "integrations": 3, "engine": 3,
        "commands": 4, "cli": 5, "__main__": 6}
TUI_MAY_IMPORT = {"store", "analysis", "control", "tui"}
# Modules anyone may import: the package root only carries the version and the public names.
NEUTRAL = {"", "__init__"}
# Leaf modules: they import nothing from clipdash, so every layer (the dashboard too) may use them.
LEAVES = {"keymap", "jsonfmt"}
# (importing module, imported layer): why it is allowed.
ALLOWED: dict[tuple[str, str], str] = {
    ("clipdash.commands.watch", "tui"): "the `watch` subcommand starts the dashboard",
    ("clipdash.__init__", "track"): "`clipdash.Tracker` is the package's public API (lazy)",
}


def layer_of(module: str) -> str:
    """`clipdash.engine.loop` -> `engine`; `clipdash.cli` -> `cli`; `clipdash` -> ``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts[-1] = "__init__"
    return ".".join(parts)


def imports(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the tree, at any depth."""
    out = []
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            out.append((node.lineno, base))
            # `from clipdash import engine` imports a layer by attribute.
            if base == "clipdash":
                out += [(node.lineno, f"clipdash.{a.name}") for a in node.names
                        if a.name in RANK or a.name in TUI_MAY_IMPORT]
    return out


def violations(root: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        mine = layer_of(module)
        tree = ast.parse(path.read_text(), str(path))
        for line, target in imports(tree, module):
            if target != "clipdash" and not target.startswith("clipdash."):
                continue
            theirs = layer_of(target)
            if mine in LEAVES:
                found.append(f"{path.relative_to(root.parent)}:{line}: the leaf module {mine} "
                             f"imports {target}")
                continue
            if theirs in NEUTRAL or theirs in LEAVES or theirs == mine or (
                    module, theirs) in ALLOWED:
                continue
            if mine == "tui":
                bad = theirs not in TUI_MAY_IMPORT
            elif theirs == "tui":
                bad = True  # nothing but `watch` (listed) starts the dashboard
            elif mine in NEUTRAL:
                bad = False  # the package root re-exports (lazily); listed above when it does
            else:
                bad = RANK.get(theirs, 99) >= RANK.get(mine, 99) and theirs != mine
            if bad:
                found.append(f"{path.relative_to(root.parent)}:{line}: {mine} imports "
                             f"{target} ({theirs} is not below {mine})")
    return found


def test_no_layer_imports_one_above_it() -> None:
    assert violations() == []


def test_every_layer_is_known() -> None:
    """A new top-level package must be placed in the table, not slip past the check."""
    names = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" or (p / "__init__.py").exists())}
    assert names - set(RANK) - TUI_MAY_IMPORT - NEUTRAL - LEAVES == set()


def test_a_planted_upward_import_is_caught(tmp_path: Path) -> None:
    copy = tmp_path / "clipdash"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert violations(copy) == []
    # Inside a function, as lazy imports are written: the walk must look there too.
    store_module = copy / "store" / "layout.py"
    store_module.write_text(store_module.read_text()
                            + "\n\ndef _sneaky() -> None:\n"
                              "    from clipdash.engine.lifecycle import train  # noqa: F401\n")
    (copy / "engine" / "sweep.py").write_text(
        (copy / "engine" / "sweep.py").read_text() + "\nfrom ..commands import run  # noqa\n")
    (copy / "tui" / "planted.py").write_text("import clipdash.track.tracker\n")
    (copy / "jsonfmt.py").write_text((copy / "jsonfmt.py").read_text()
                                     + "\nfrom clipdash.store import layout  # noqa\n")
    found = violations(copy)
    assert any("store/layout.py" in v and "clipdash.engine.lifecycle" in v for v in found)
    assert any("engine/sweep.py" in v and "clipdash.commands" in v for v in found)
    assert any("tui/planted.py" in v and "clipdash.track" in v for v in found)
    assert any("leaf module jsonfmt imports clipdash.store" in v for v in found)
    assert len(found) == 4
