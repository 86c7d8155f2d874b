"""Shell completion, `clipdash help CMD`, and the examples / keys / settable keys in --help."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from tui_fixtures import make_run

from clipdash.cli import SUBCOMMANDS, build_parser, main
from clipdash.control import SETTABLE

VENV_BIN = Path(__file__).resolve().parent.parent / ".venv" / "bin"


def help_text(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", list(SUBCOMMANDS))
def test_every_command_has_an_example_and_help_cmd_says_the_same(
        command: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(capsys, command)
    examples = text.split("examples:\n", 1)[1]
    assert f"  clipdash {command}" in examples
    assert main(["help", command]) == 0
    assert capsys.readouterr().out == text


def test_help_of_an_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["help", "cttl"]) == 2
    assert "no command 'cttl' (did you mean ctl?)" in capsys.readouterr().err


def test_watch_help_lists_the_dashboard_keys(capsys: pytest.CaptureFixture[str]) -> None:
    keys = help_text(capsys, "watch").split("keys:\n", 1)[1].split("examples:")[0]
    first = {line.split("  ")[1].strip() for line in keys.splitlines() if line.strip()}
    for key in ("↑ ↓, mouse", "Enter", "p", "m", "l", "s", "/", "?", "q"):  # DESIGN.md's keys
        assert key in first


def test_ctl_help_lists_every_settable_key(capsys: pytest.CaptureFixture[str]) -> None:
    listed = help_text(capsys, "ctl").split("settable keys", 1)[1].split("examples:")[0]
    names = [line.split()[0] for line in listed.splitlines()[1:] if line.strip()]
    assert names == list(SETTABLE)
    assert {"percentile", "z_threshold", "clipping"} <= set(names)


def test_scripts_name_every_command_and_option(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    for shell in ("bash", "zsh", "fish"):
        assert main(["completion", shell]) == 0
        script = capsys.readouterr().out
        for command in SUBCOMMANDS:
            assert command in script
        dash = "-l " if shell == "fish" else "--"
        assert f"{dash}percentile" in script and f"{dash}nproc-per-node" in script
        assert "clipdash ls --names" in script
    assert parser.parse_args(["ls", "--names"]).names


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completes_commands_options_and_run_names(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("live1", "live2", "other"):
        make_run(tmp_path / "runs" / name, 2).close()
    assert main(["completion", "bash"]) == 0
    (tmp_path / "clipdash.bash").write_text(capsys.readouterr().out)

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        script = (f"source clipdash.bash; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
                  "_clipdash; printf '%s\\n' \"${COMPREPLY[@]}\"")
        env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
        out = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=60, check=True).stdout
        return sorted(out.split())

    assert complete("clipdash", "ct") == ["ctl"]
    assert complete("clipdash", "export", "li") == ["live1", "live2"]
    assert complete("clipdash", "ctl", "live1", "p") == ["pause", "percentile="]
    assert complete("clipdash", "ctl", "live1", "set", "z_") == ["z_threshold="]
    assert complete("clipdash", "suggest", "--p") == ["--percentile"]
    assert complete("clipdash", "rm", "--runs-dir", "runs", "o") == ["other"]
    assert complete("clipdash", "export", "--runs-dir", "nowhere", "l") == []


def test_building_every_help_and_completion_stays_light() -> None:
    """Completion calls `clipdash ls --names` on every Tab: no torch, no textual."""
    import sys

    code = ("import sys; from clipdash.cli import build_parser, main; build_parser(); "
            "main(['ls', '--names', 'nowhere']); "
            "print(sorted({'torch', 'textual', 'numpy'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "[]"


def test_jsonfmt_and_keymap_are_leaves() -> None:
    import ast

    root = Path(__file__).resolve().parent.parent / "clipdash"
    for name in ("jsonfmt.py", "keymap.py"):
        tree = ast.parse((root / name).read_text())
        imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import)
                     for a in n.names}
        assert not {m for m in imported if m.startswith("clipdash")}, name
