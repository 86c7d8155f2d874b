"""Shell completion, `clipdash help CMD`, and the examples / keys / settable keys in --help."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from tui_fixtures import make_run

from clipdash.cli import SUBCOMMANDS, build_parser, main
from clipdash.track.options import ALL_SETTABLE

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
    assert names == list(ALL_SETTABLE)
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


def _script(tmp_path: Path, capsys: pytest.CaptureFixture[str], shell: str) -> Path:
    for name in ("live1", "live2"):
        make_run(tmp_path / "runs" / name, 2).close()
    make_run(tmp_path / "other" / "zz-run", 2).close()
    assert main(["completion", shell]) == 0
    path = tmp_path / f"clipdash.{shell}"
    path.write_text(capsys.readouterr().out)
    return path


def _shell(tmp_path: Path, *argv: str) -> list[str]:
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(list(argv), cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return [line.split("\t")[0] for line in out.splitlines()]


# zsh's own compadd filters by what was typed; this stand-in prints every candidate offered.
ZSH_HARNESS = """compdef() { : }
compadd() { [[ $1 == -- ]] && shift; print -l -- "$@" }
_files() { print "FILES $*" }
_describe() { print -l -- "${(@P)2}" }
source ./clipdash.zsh
words=("$@"); CURRENT=$#words
_clipdash
"""


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_offers_commands_options_and_run_names(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    _script(tmp_path, capsys, "zsh")
    (tmp_path / "harness.zsh").write_text(ZSH_HARNESS)

    def offered(*words: str) -> list[str]:
        return _shell(tmp_path, "zsh", "harness.zsh", *words)

    assert "ctl:pause, resume, stop a run, or set max_norm / lr / max_value" in offered(
        "clipdash", "c")
    assert offered("clipdash", "export", "li") == ["live1", "live2", "@latest"]
    assert offered("clipdash", "export", "--runs-dir", "other", "z") == ["zz-run", "@latest"]
    assert "--percentile" in offered("clipdash", "suggest", "--p")
    assert offered("clipdash", "run", "ex") == ["FILES "]


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_completes_commands_options_and_run_names(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    script = _script(tmp_path, capsys, "fish")

    def complete(line: str) -> list[str]:
        return _shell(tmp_path, "fish", "-c", f"source {script}; complete -C '{line}'")

    assert complete("clipdash exp") == ["export"]
    assert complete("clipdash export li") == ["live1", "live2"]
    assert complete("clipdash export --runs-dir other z") == ["zz-run"]
    assert complete("clipdash suggest --per") == ["--percentile"]
    assert complete("clipdash ctl live1 pa") == ["pause"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completes_commands_options_and_run_names(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    script = _script(tmp_path, capsys, "bash")
    make_run(tmp_path / "runs" / "other", 2).close()

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        out = _shell(tmp_path, "bash", "-c", (
            f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
            "_clipdash; printf '%s\\n' \"${COMPREPLY[@]}\""))
        return sorted(w for w in out if w)  # printf prints one empty line for no candidates

    assert complete("clipdash", "ct") == ["ctl"]
    assert complete("clipdash", "export", "li") == ["live1", "live2"]
    assert complete("clipdash", "ctl", "live1", "p") == ["pause", "percentile="]
    assert complete("clipdash", "ctl", "live1", "set", "z_") == ["z_threshold="]
    assert complete("clipdash", "suggest", "--p") == ["--percentile"]
    assert complete("clipdash", "rm", "--runs-dir", "runs", "o") == ["other"]
    assert complete("clipdash", "export", "--runs-dir", "other", "z") == ["zz-run"]
    assert complete("clipdash", "export", "--runs-dir", "nowhere", "l") == []
