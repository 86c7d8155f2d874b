"""Strict JSON everywhere (clipdash.jsonfmt): inf, -inf and NaN in the record come out as the
strings "inf", "-inf", "nan" in `ls --json`, `export --format jsonl`, `compare --json` and
`suggest --json`, never as the invalid `Infinity`/`NaN`, and never as null (= not recorded)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tui_fixtures import make_run, step_columns

from clipdash import jsonfmt
from clipdash.cli import main


def strict_loads(text: str) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"invalid JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """A run whose last steps hold loss inf, -inf and NaN and a NaN / inf grad norm."""
    writer = make_run(tmp_path / "bad", 10, state="running", total=20)
    cols = step_columns(10, 4)
    cols["loss"] = np.array([1.0, -math.inf, math.nan, math.inf])
    cols["grad_norm_pre"] = np.array([2.0, math.inf, math.nan, math.inf])
    cols["finite"] = np.array([True, False, False, False])
    writer.append_steps(cols)
    writer.set_state("finished")
    writer.close()
    return tmp_path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_ls_json_is_strict_and_agrees_with_the_table(runs: Path, capsys) -> None:
    [row] = strict_loads(run_cli(capsys, "ls", str(runs), "--json"))
    assert (row["loss"], row["grad_norm_pre"]) == ("inf", "inf")
    assert (row["step"], row["steps"], row["total_steps"]) == (13, 14, 20)
    table = run_cli(capsys, "ls", str(runs)).splitlines()[1].split()
    assert table[2] == "14/20"  # STEPS: the JSON's `steps`, of `total_steps`


def test_export_jsonl_tells_inf_nan_and_missing_apart(runs: Path, capsys) -> None:
    out = run_cli(capsys, "export", str(runs / "bad"), "--format", "jsonl")
    rows = [strict_loads(line) for line in out.splitlines()]
    assert [r["step"] for r in rows] == list(range(14))
    assert [r["loss"] for r in rows[10:]] == [1.0, "-inf", "nan", "inf"]
    assert [r["grad_norm_pre"] for r in rows[10:]] == [2.0, "inf", "nan", "inf"]
    assert [r["finite"] for r in rows[10:]] == [True, False, False, False]
    assert {r["max_value"] for r in rows} == {None}  # not recorded in a norm-mode run


def test_compare_and_suggest_json_are_strict(runs: Path, capsys) -> None:
    data = strict_loads(run_cli(capsys, "compare", str(runs / "bad"), "--json"))
    assert data["runs"][0]["train_loss"] == "nan"  # a non-finite loss in the last window
    suggestion = strict_loads(run_cli(capsys, "suggest", str(runs / "bad"), "--json"))
    assert suggestion["n_steps"] == 14 and suggestion["n_finite"] == 11


def test_jsonfmt_round_trip() -> None:
    obj = {"a": [math.inf, -math.inf, 1.5, None], "b": (math.nan,), "c": "text", "d": 3}
    text = jsonfmt.dumps(obj)
    assert strict_loads(text) == {"a": ["inf", "-inf", 1.5, None], "b": ["nan"], "c": "text",
                                  "d": 3}
    back = [jsonfmt.decode_float(v) for v in strict_loads(text)["a"]]
    assert back[:3] == [math.inf, -math.inf, 1.5] and back[3] is None
    assert math.isnan(jsonfmt.decode_float("nan"))
    assert jsonfmt.encode_float(np.float64(-np.inf)) == "-inf"
