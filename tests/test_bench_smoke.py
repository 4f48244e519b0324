"""``bench/run.py --smoke``: the benchmark's one command runs end to end and prints its table.

No figure is judged here (no timing assertions): only that the command starts the bare app
and authdb on SQLite, loads them with wrk, answers every request with 200, prints the rows
and the target line, and writes the same figures as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def row(lines: list[str], label: str) -> list[str]:
    """The cells after ``label`` in the table line that starts with it."""
    line = next(line for line in lines if line.startswith(f"{label}  "))
    return line[len(label) :].split()


def test_smoke_run_prints_the_table(tmp_path: Path) -> None:
    figures = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--json", str(figures)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("GET /users/me, idle, 32 connections") for line in lines)
    for label in ("bare app (JWT decode only)", "authdb, SQLite"):
        cells = row(lines, label)
        # req/s, µs CPU/req, vs bare: numbers, since every request was answered
        assert float(cells[0]) > 0 and float(cells[1]) > 0, cells
        assert cells[2].endswith("%"), cells
    assert row(lines, "bare app (JWT decode only)")[2] == "100%"
    target = row(lines, "1 /users/me CPU/req vs bare, SQLite")
    assert target[-1] in {"PASS", "MISS"}, target

    data = json.loads(figures.read_text())
    series = {(s["row"], s["metric"]): s["rounds"] for s in data["series"]}
    for system in ("bare", "authdb-sqlite"):
        assert series[system, "me_failed"] == {"1": 0}
        assert series[system, "me_cpu_us"]["1"] > 0


def test_bad_arguments_are_one_line_errors() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--only", "nonsense"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "unknown part(s) or database(s): nonsense" in result.stderr
    assert "Traceback" not in result.stderr
