"""Recovery must be exact: after a crash, a stall, a failed write or damaged/deleted records, the run
finishes with an uninterrupted run's result and state, and no completed visit runs twice.

Every checkpointed run happens in a real child process (tests/exactness_worker.py) that SIGKILLs
itself on cue, or is SIGSTOPped/SIGCONTed by the test; stores are real SQLite files under tmp_path.
Nodes (tests/exactness_graphs.py) append each real execution to a CALLS file, so the test counts
what ran in which process. Only the bare reference runs happen in this process (they import Spark,
never spark_ckpt); children run with cwd=tmp_path, so ``PYTHONPATH`` alone decides which spark_ckpt
they import.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import exactness_graphs

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("exactness_worker.py")
TIMEOUT = 120


# -- helpers -------------------------------------------------------------------------------------------
def child_env(tmp_path: Path, calls: Path | None = None, **cues: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_CKPT_")}
    env["SPARK_CKPT_DISABLE_PLUGINS"] = "1"
    if calls is not None:
        env["SPARK_CKPT_TEST_CALLS"] = str(calls)
    env.update({f"SPARK_CKPT_TEST_{k.upper()}": str(v) for k, v in cues.items()})
    return env


def read_lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def parse(stdout: str) -> dict[str, Any] | None:
    lines = stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else None


class Store:
    """One SQLite checkpoint file and the helpers to drive workers against it."""

    def __init__(self, tmp_path: Path, graph: str, graph_id: str | None = None, db: Path | None = None,
                 **config: Any) -> None:
        self.tmp = tmp_path
        self.db = db or tmp_path / "ckpt.db"
        self.url = f"sqlite:///{self.db}"
        self.graph = graph
        self.graph_id = graph_id or graph
        self.config = config
        self.counter = 0

    def spec(self, mode: str, **extra: Any) -> dict[str, Any]:
        return {"mode": mode, "store": self.url, "graph": self.graph, "graph_id": self.graph_id,
                "config": self.config, **extra}

    def calls_file(self) -> Path:
        self.counter += 1
        return self.tmp / f"calls-{self.counter}.txt"

    def start(self, mode: str, *, spec: dict | None = None, **cues: str) -> tuple[subprocess.Popen, Path]:
        calls = self.calls_file()
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps(spec or self.spec(mode))], env=child_env(self.tmp, calls, **cues),
            cwd=self.tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        return proc, calls

    def work(self, mode: str, *, spec: dict | None = None, **cues: str) -> tuple[int, dict | None, list[str]]:
        """Run a worker to its end: (exit code, its JSON line, the visits it really executed)."""
        proc, calls = self.start(mode, spec=spec, **cues)
        out, err = finish(proc)
        if proc.returncode not in (0, 3, -signal.SIGKILL):
            raise AssertionError(f"worker {mode} crashed ({proc.returncode}): {err[-3000:]}")
        return proc.returncode, parse(out), read_lines(calls)

    def rows(self) -> list[tuple[str, int, str, float]]:
        """(execution_id, seq, status, created_at) of every stored checkpoint, by execution and seq."""
        with contextlib.closing(sqlite3.connect(self.db)) as conn:
            return conn.execute(
                "SELECT execution_id, seq, status, created_at FROM checkpoints ORDER BY execution_id, seq"
            ).fetchall()

    def execute(self, sql: str, params: tuple = ()) -> None:
        with contextlib.closing(sqlite3.connect(self.db)) as conn:
            conn.execute(sql, params)
            conn.commit()

    def delete_newest(self, n: int) -> list[int]:
        (execution_id,) = {row[0] for row in self.rows()}
        seqs = sorted(row[1] for row in self.rows())[-n:]
        for seq in seqs:
            self.execute("DELETE FROM checkpoints WHERE execution_id = ? AND seq = ?", (execution_id, seq))
        return seqs

    def flip_byte(self, seq: int) -> None:
        with contextlib.closing(sqlite3.connect(self.db)) as conn:
            rowid, blob = conn.execute("SELECT rowid, blob FROM checkpoints WHERE seq = ?", (seq,)).fetchone()
            damaged = bytearray(blob)
            damaged[len(damaged) // 2] ^= 0xFF
            conn.execute("UPDATE checkpoints SET blob = ? WHERE rowid = ?", (bytes(damaged), rowid))
            conn.commit()

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "spark_ckpt.cli", "--store", self.url, *args], env=child_env(self.tmp),
            cwd=self.tmp, capture_output=True, text=True, timeout=TIMEOUT,
        )


def finish(proc: subprocess.Popen, timeout: float = TIMEOUT) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"worker did not finish in {timeout}s: {err[-3000:]}") from None


def reference(graph: str, inputs: Any = None, **cues: str) -> tuple[Any, dict, list[str]]:
    """An uninterrupted, bare (not checkpointed) run in this process: result, state, visits."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("SPARK_CKPT_TEST_")}
    os.environ.update({f"SPARK_CKPT_TEST_{k.upper()}": v for k, v in cues.items()})
    try:
        exactness_graphs.CALLS.clear()
        g = exactness_graphs.build(graph)
        result = asyncio.run(g.run({} if inputs is None else inputs))
        return result.content, g.state.get_snapshot(), list(exactness_graphs.CALLS)
    finally:
        for k in [k for k in os.environ if k.startswith("SPARK_CKPT_TEST_")]:
            del os.environ[k]
        os.environ.update(saved)


def assert_exact(out: dict, calls_before: list[str], calls_after: list[str], graph: str, inputs: Any = None,
                 **cues: str) -> None:
    """The recovered run equals an uninterrupted one, and no journaled visit ran again."""
    result, state, visits = reference(graph, inputs, **cues)
    assert out is not None and "error" not in out, out
    assert out["result"] == result
    assert out["state"] == state
    assert calls_after == out["live"], "the recovering process ran exactly the visits its report calls live"
    assert set(calls_after).isdisjoint(out["replayed"])
    assert sorted(out["replayed"] + out["live"]) == sorted(visits)
    assert set(out["replayed"]) <= set(calls_before), "only visits that really ran were replayed"


def assert_error(out: dict | None, name: str) -> None:
    assert out is not None and "error" in out, f"expected {name}, got {out}"
    assert name in out["mro"], f"expected {name}, got {out['error']}: {out['message']}"


def wait_until(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# -- 1. fan-in replay ------------------------------------------------------------------------------------
CRASH_HASHES, RECOVER_HASHES = "left=1,right=2", "left=2,right=1"


@pytest.mark.parametrize("crash", [{"crash": "join:1"}, {"crash_after_ckpt": "3"}],
                         ids=["inside-join-visit-1", "after-join-visit-0-checkpoint"])
def test_fan_in_replay_gives_each_branch_output_to_the_join_once(tmp_path: Path, crash: dict) -> None:
    """A join fed by two branches in the other order after recovery still processes each branch once."""
    store = Store(tmp_path, "fan_in")
    inputs_first, inputs_second = tmp_path / "inputs-1.txt", tmp_path / "inputs-2.txt"
    spec = store.spec("run", input={"value": 1})
    code, _, calls_before = store.work("run", spec=spec, hashes=CRASH_HASHES, inputs=str(inputs_first), **crash)
    assert code == -signal.SIGKILL
    # the join's first visit completed (and was checkpointed) in the process that died
    first = read_lines(inputs_first)
    assert first[0].startswith("join:0:")
    got_first = first[0].split(":")[2]
    assert "join:0" in calls_before
    if "crash_after_ckpt" in crash:  # killed between join#0 (checkpointed) and join#1
        assert calls_before[-1] == "join:0", calls_before

    code, out, calls_after = store.work("recover", hashes=RECOVER_HASHES, inputs=str(inputs_second))
    assert code == 0, out
    # the recovering process really meets the branches in the other order (the premise of this test)
    rerun = read_lines(inputs_second)
    assert [line.split(":")[1] for line in rerun] == ["1"], rerun
    other = {"left": "right", "right": "left"}[got_first]
    assert rerun == [f"join:1:{other}"], "join#1 must take the branch output join#0 did not take"
    assert_exact(out, calls_before, calls_after, "fan_in", {"value": 1}, hashes=CRASH_HASHES)
    assert out["state"]["joined"] == ["left", "right"] and out["state"]["total"] == 5


# -- 2. racing waiters -------------------------------------------------------------------------------------
RACES = {
    # a chain killed inside s2: s2 (in flight) and everything after it must run once in all
    "chain": dict(graph="chain6", cues={"crash": "s2:0", "sleep": "0.15"}, before=["s0:0", "s1:0", "s2:0"],
                  first_paid=[], rest=["s2:0", "s3:0", "s4:0", "s5:0"], rest_paid=[]),
    # an agent node killed inside its 2nd tool call: that call and the rest are paid once in all
    "agent": dict(graph="agent_chain", cues={"kill": "tool:2:{tmp}/killed"}, before=["prepare:0"],
                  first_paid=["llm", "tool:step", "llm"], rest=["after:0"],
                  rest_paid=["tool:step", "llm", "tool:step", "llm"]),
}


@pytest.mark.parametrize("race", list(RACES))
def test_three_waiting_recoverers_run_the_rest_once(tmp_path: Path, race: str) -> None:
    """Three recover_and_continue(wait=True) racers: one finishes the run, the others return its result."""
    case = RACES[race]
    store = Store(tmp_path, case["graph"], lease_ttl_s=5)
    cues = {k: v.format(tmp=tmp_path) for k, v in case["cues"].items()}
    first_counter = tmp_path / "paid-first.txt"
    code, _, calls_before = store.work("run", counter=str(first_counter), **cues)
    assert code == -signal.SIGKILL and calls_before == case["before"]
    assert read_lines(first_counter) == case["first_paid"]
    (execution_id,) = {row[0] for row in store.rows()}

    go = tmp_path / "go"
    racers, counters = [], [tmp_path / f"paid-{i}.txt" for i in range(3)]
    for i in range(3):
        spec = store.spec("recover", wait=True, execution_id=execution_id, ready=str(tmp_path / f"ready-{i}"),
                          barrier=str(go))
        racers.append(store.start("recover", spec=spec, sleep="0.15", counter=str(counters[i])))
    try:
        wait_until(lambda: all((tmp_path / f"ready-{i}").exists() for i in range(3)), 60, "racers to start")
        go.touch()
        outputs = [finish(proc) for proc, _ in racers]
    finally:
        for proc, _ in racers:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    codes = [proc.returncode for proc, _ in racers]
    outs = [parse(o) for o, _ in outputs]
    per_racer = [read_lines(calls) for _, calls in racers]
    paid = [read_lines(counter) for counter in counters]

    # each visit (and LLM/tool call) after the crash ran exactly once across the three racers
    assert Counter(c for calls in paid for c in calls) == Counter(case["rest_paid"]), paid
    assert Counter(c for calls in per_racer for c in calls) == Counter(case["rest"]), per_racer
    assert codes == [0, 0, 0], [err[-2000:] for _, err in outputs]
    result, state, _ = reference(case["graph"])
    assert all(o["result"] == result for o in outs), outs
    assert [row[2] for row in store.rows()].count("completed") == 1, store.rows()
    (runner,) = [o for o, calls in zip(outs, per_racer) if calls]
    assert runner["state"] == state
    # the racers that found the run finished ran nothing, returned the stored result and say so
    idle = [o for o, calls in zip(outs, per_racer) if not calls]
    assert len(idle) == 2
    assert all(o["already_completed"] is True for o in idle), idle


# -- 3. stalled worker ---------------------------------------------------------------------------------------
def test_stalled_worker_cannot_write_after_takeover(tmp_path: Path) -> None:
    """A SIGSTOPped worker whose lease was taken over stops with LeaseError after SIGCONT, writing nothing."""
    store = Store(tmp_path, "chain", lease_ttl_s=1.5, retention_count=2)
    a, calls_a = store.start("run", sleep="0.4")
    try:
        wait_until(lambda: "s2:0" in read_lines(calls_a), 60, "worker A to reach s2")
        os.kill(a.pid, signal.SIGSTOP)
        at_stop = read_lines(calls_a)
        assert len(store.rows()) >= 3, "A had written some checkpoints before the stall"

        # B (same host, A alive) must wait for A's lease to expire, then finishes the run
        code, out_b, calls_b = store.work("recover", spec=store.spec("recover", wait=True), sleep="0.4")
        assert code == 0, out_b
        result, state, _ = reference("chain")
        assert out_b["result"] == result and out_b["state"] == state
        assert calls_b[0] == at_stop[-1], "B re-ran the visit A was stalled in, then the rest"
        completed = [row for row in store.rows() if row[2] == "completed"]
        assert len(completed) == 1

        os.kill(a.pid, signal.SIGCONT)
        out_a, err_a = finish(a, 60)
    finally:
        if a.poll() is None:
            os.kill(a.pid, signal.SIGCONT)
            a.kill()
            a.communicate()
    after_cont = read_lines(calls_a)[len(at_stop):]
    assert len(after_cont) <= 1 and set(after_cont) <= {at_stop[-1]}, (
        f"A went on running visits after it lost its lease: {after_cont}")
    assert a.returncode != 0, "A must not finish the run B already finished"
    assert_error(parse(out_a), "LeaseError")

    rows = store.rows()
    newest = max(rows, key=lambda row: row[1])
    assert newest == completed[0], f"A wrote after B's completed checkpoint: {rows}"
    assert not [row for row in rows if row[3] > completed[0][3]]
    code, out, calls = store.work("recover")
    assert calls == []
    assert_error(out, "NothingToRecoverError")


# -- 4. failed checkpoint write --------------------------------------------------------------------------------
@pytest.fixture
def small_tmpfs(tmp_path: Path):
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up (needs root / CAP_SYS_ADMIN): {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_failed_checkpoint_write_does_not_poison_the_next_record(tmp_path: Path, small_tmpfs: Path) -> None:
    """A checkpoint put that fails (disk full) leaves a store whose failure record reads and recovers."""
    filler = small_tmpfs / "filler"
    stat = os.statvfs(small_tmpfs)
    free = stat.f_bavail * stat.f_frsize
    with open(filler, "wb") as fh:  # leave ~3 MiB: the small records fit, the 6 MiB value does not
        fh.write(b"\0" * (free - 3 * 1024 * 1024))
    store = Store(tmp_path, "bigchain", db=small_tmpfs / "ckpt.db")

    code, out, calls_before = store.work("run")
    assert code == 3
    assert_error(out, "BackendError")
    assert calls_before == ["s0:0", "s1:0", "big:0"]

    code, out, _ = store.work("inspect")
    assert code == 0, out
    assert "error" not in (out["last"] or {}), f"get_last_checkpoint() failed: {out['last']}"
    assert out["last"] is not None
    assert not isinstance(out["current_node"], dict), f"get_current_node() failed: {out['current_node']}"

    filler.unlink()
    code, out, calls_after = store.work("recover")
    assert code == 0, out
    result, state, _ = reference("bigchain")
    assert out["result"] == result
    assert out["state"] == state
    assert set(calls_after) & set(calls_before) == {"big:0"}, "only the superstep whose write failed runs again"


# -- 5. SQLite lock loss ------------------------------------------------------------------------------------
def test_two_backends_on_one_file_keep_their_commits_across_another_process(tmp_path: Path) -> None:
    """Two wrappers on one SQLite file in one process, another process's `spark-ckpt list`, then kill -9:
    every checkpoint the worker committed is still there, and the run recovers exactly."""
    store = Store(tmp_path, "chain")
    paused, go, committed = tmp_path / "paused", tmp_path / "go", tmp_path / "committed"
    worker, calls_file = store.start(
        "two_wrappers", pause="s2:0", paused=str(paused), go=str(go), committed=str(committed),
        crash_after_ckpt="6",
    )
    try:
        wait_until(paused.exists, 60, "the worker to pause in s2")
        listing = store.cli("list")
        assert listing.returncode == 0, listing.stderr
        go.touch()
        _, err = finish(worker)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == -signal.SIGKILL, err[-3000:]
    calls_before = read_lines(calls_file)
    reported = sorted(int(seq) for seq in read_lines(committed))
    assert reported == list(range(7))

    code, out, calls_after = store.work("recover", spec=store.spec("recover", list_first=True))
    assert code == 0, out
    assert out["seqs_before"] == reported, "checkpoints committed before the kill were lost"
    assert_exact(out, calls_before, calls_after, "chain")
    assert calls_after == ["s6:0", "s7:0"]


# -- 6. retention -----------------------------------------------------------------------------------------
def test_retained_checkpoints_all_read_back(tmp_path: Path) -> None:
    """With retention on, every checkpoint still listed reads back, before and after `spark-ckpt prune`."""
    store = Store(tmp_path, "chain10", retention_count=5)
    code, out, _ = store.work("runs_then_offsets", spec=store.spec("runs_then_offsets", runs=4))
    assert code == 0, out
    assert out["count"] >= 1
    broken = {k: v for k, v in out["offsets"].items() if "error" in v}
    assert not broken, f"listed checkpoints that cannot be read: {broken}"
    assert out["default_retention_count"] is not None, "the default retention must be bounded"

    verify = store.cli("verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    prune = store.cli("prune", "--keep", "2", "--yes")
    assert prune.returncode == 0, prune.stderr
    code, out, _ = store.work("offsets")
    assert code == 0, out
    assert out["count"] >= 1
    broken = {k: v for k, v in out["offsets"].items() if "error" in v}
    assert not broken, f"kept checkpoints that cannot be read after prune: {broken}"
    verify = store.cli("verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


# -- 7. deleted checkpoints -------------------------------------------------------------------------------
def test_recovery_refuses_an_execution_whose_newest_checkpoints_were_deleted(tmp_path: Path) -> None:
    """Deleting a crashed run's newest checkpoints makes recovery raise MissingCheckpointError, running nothing."""
    store = Store(tmp_path, "chain")
    code, _, _ = store.work("run", crash="s5:0")
    assert code == -signal.SIGKILL
    assert store.delete_newest(2) == [4, 5]
    code, out, calls = store.work("recover")
    assert calls == [], "recovery re-ran visits whose checkpoints are gone"
    assert_error(out, "MissingCheckpointError")
    assert "UnrecoverableExecutionError" in out["mro"] and "SparkCkptError" in out["mro"]


def test_completed_run_whose_final_checkpoint_was_deleted_is_not_rerun(tmp_path: Path) -> None:
    """A finished run missing its final checkpoint is neither recovered by default nor by its id."""
    store = Store(tmp_path, "chain6")
    code, _, calls = store.work("run")
    assert code == 0 and len(calls) == 6
    (execution_id,) = {row[0] for row in store.rows()}
    assert store.delete_newest(1) == [6]
    attempts = [{}, {"execution_id": execution_id}]
    code, out, calls = store.work("recover_attempts", spec=store.spec("recover_attempts", attempts=attempts))
    assert calls == [], "a finished run was run again"
    by_default, by_id = out["attempts"]
    assert_error(by_default, "NothingToRecoverError")
    assert_error(by_id, "MissingCheckpointError")
    assert "UnrecoverableExecutionError" in by_id["mro"]


# -- 8. damaged records ---------------------------------------------------------------------------------
def test_damaged_start_record_does_not_stop_recovery(tmp_path: Path) -> None:
    """With the start record damaged, a run killed after a few supersteps still recovers exactly; so
    does one whose seq 3 (of ~10) is damaged, by falling back past it."""
    store = Store(tmp_path / "start", "chain")
    store.tmp.mkdir()
    code, _, calls_before = store.work("run", crash="s4:0")
    assert code == -signal.SIGKILL
    store.flip_byte(0)
    code, out, calls_after = store.work("recover")
    assert code == 0, out
    assert_exact(out, calls_before, calls_after, "chain")
    assert calls_after[0] == "s4:0"

    store = Store(tmp_path / "middle", "chain10")
    store.tmp.mkdir()
    code, _, calls_before = store.work("run", crash="s9:0")
    assert code == -signal.SIGKILL
    assert len(store.rows()) == 10
    store.flip_byte(3)
    code, out, calls_after = store.work("recover")
    assert code == 0, out
    assert_exact(out, calls_before, calls_after, "chain10")
    assert out["fell_back"], "recovery must report the checkpoints it passed over"


def test_damaged_only_start_record_is_unrecoverable_not_nothing_to_recover(tmp_path: Path) -> None:
    """A run killed in its first node whose start record is damaged raises UnrecoverableExecutionError."""
    store = Store(tmp_path, "chain")
    code, _, calls_before = store.work("run", crash="s0:0")
    assert code == -signal.SIGKILL and calls_before == ["s0:0"]
    assert [row[1] for row in store.rows()] == [0]
    store.flip_byte(0)
    code, out, calls = store.work("recover")
    assert calls == []
    assert out is not None and "error" in out, out
    assert out["error"] != "NothingToRecoverError", "an execution that exists is not 'nothing to recover'"
    assert_error(out, "UnrecoverableExecutionError")


# -- 9. skip_node + continue_from_checkpoint ----------------------------------------------------------------
def test_skip_node_applies_to_continue_from_checkpoint(tmp_path: Path) -> None:
    """skip_node(failed node, output=X) then continue_from_checkpoint(ck): the node does not run, its successor gets X."""
    store = Store(tmp_path, "chain6")
    code, out, calls_before = store.work("run", fail="s2:0")
    assert code == 3 and out["error"] == "RuntimeError"
    assert calls_before == ["s0:0", "s1:0", "s2:0"]
    given = {"step": "manual", "count": 42}
    code, out, calls_after = store.work("skip_continue", spec=store.spec("skip_continue", output=given))
    assert code == 0, out
    assert out["skipped_node"] == "s2"
    assert not [c for c in calls_after if c.startswith("s2:")], f"the skipped node ran: {calls_after}"
    assert calls_after == ["s3:0", "s4:0", "s5:0"]
    assert out["state"]["got_s3"] == given, "the successor must receive the output given to skip_node"
