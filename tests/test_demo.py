"""`spark-ckpt demo` end to end: a real worker process SIGKILLed mid-loop, recovered by another one."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from spark_ckpt.cli import main


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SPARK_CKPT_")}


def test_demo_recovers_without_re_running_completed_visits(tmp_path: Path):
    """The demo passes, and its side files show every visit done before the kill was replayed, not re-run."""
    work = tmp_path / "work"
    proc = subprocess.run(
        [sys.executable, "-m", "spark_ckpt.cli", "demo", "--crash-after", "2", "--work-dir", str(work)],
        cwd=tmp_path, capture_output=True, text=True, env=_clean_env(), timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("PASS")
    assert (tmp_path / "demo-checkpoints.db").exists()  # the embedded SQLite default, in the cwd

    executions = _lines(work / "executions.jsonl")  # every real process() start/end, from both workers
    pid_a, pid_b = list(dict.fromkeys(x["pid"] for x in executions))
    done_a = {(x["node"], x["visit"]) for x in executions if x["pid"] == pid_a and x["phase"] == "end"}
    started_b = {(x["node"], x["visit"]) for x in executions if x["pid"] == pid_b and x["phase"] == "start"}
    # killed inside the 2nd transform pass: fetch and the 1st pass had completed
    assert done_a == {("fetch", 0), ("transform", 0)}
    assert not done_a & started_b, "a visit completed before the kill ran again after recovery"
    assert ("transform", 1) in started_b  # the visit killed mid-way ran again

    replayed_b = {(v["node"], v["visit"]) for v in _lines(work / "visits.jsonl") if v["pid"] == pid_b and v["replayed"]}
    assert replayed_b == done_a
    completions = Counter((x["node"], x["visit"]) for x in executions if x["phase"] == "end")
    assert set(completions.values()) == {1}
    assert completions == Counter((x["node"], x["visit"]) for x in _lines(work / "reference.jsonl") if x["phase"] == "end")

    # the store holds exactly one execution, completed, and every checkpoint verifies
    out = io.StringIO()
    assert main(["--store", "sqlite://" + str(tmp_path / "demo-checkpoints.db"), "list", "--executions", "--json"], out=out) == 0
    assert [e["status"] for e in json.loads(out.getvalue())] == ["completed"]
    assert main(["--store", "sqlite://" + str(tmp_path / "demo-checkpoints.db"), "verify"], out=io.StringIO()) == 0


def test_demo_refuses_a_store_that_dies_with_the_worker(capsys):
    """memory:// cannot survive the SIGKILL, so the demo says so instead of failing obscurely."""
    code = main(["demo", "--store", "memory://"], out=io.StringIO())
    assert code == 2 and "outlives a process" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["0", "9"])
def test_demo_crash_point_must_be_inside_the_loop(bad, capsys):
    if bad == "0":
        with pytest.raises(SystemExit):
            main(["demo", "--crash-after", bad])
        assert "must be > 0" in capsys.readouterr().err
    else:
        assert main(["demo", "--crash-after", bad, "--store", "memory://"], out=io.StringIO()) == 2
        assert "between 1 and 8" in capsys.readouterr().err
