"""Recovery after real process death: a worker SIGKILLs itself, a brand-new process recovers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import graphs

WORKER = Path(__file__).with_name("crash_worker.py")
INPUT = {"n": 4}


def run_worker(mode: str, graph: str, store: str, calls: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_CKPT_TEST_")}
    environ.update(SPARK_CKPT_TEST_CALLS=str(calls), **env)
    return subprocess.run(
        [sys.executable, str(WORKER), mode, graph, store, f"{graph}-crash", json.dumps(INPUT)],
        env=environ, capture_output=True, text=True, timeout=120,
    )


def uninterrupted(graph: str) -> tuple[dict, dict, list[str]]:
    graphs.CALLS.clear()
    g = graphs.build(graph)
    result = asyncio.run(g.run(INPUT))
    return result.content, g.state.get_snapshot(), list(graphs.CALLS)


def read_calls(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def crash_and_recover(tmp_path: Path, graph: str, store: str, **crash_env: str) -> dict:
    calls_first, calls_second = tmp_path / "calls-1.txt", tmp_path / "calls-2.txt"
    first = run_worker("run", graph, store, calls_first, **crash_env)
    assert first.returncode == -signal.SIGKILL, f"worker was meant to die by SIGKILL: {first.stderr[-2000:]}"
    second = run_worker("recover", graph, store, calls_second)
    assert second.returncode == 0, second.stderr[-3000:]
    out = json.loads(second.stdout.strip().splitlines()[-1])
    out["calls_before"] = read_calls(calls_first)
    out["calls_after"] = read_calls(calls_second)
    return out


def assert_recovered_like_uninterrupted(out: dict, graph: str, *, ordered: bool = True) -> None:
    result, state, visits = uninterrupted(graph)
    assert out["result"] == result
    assert out["state"] == state
    # nothing that was replayed from the journal ran again in the recovering process
    assert set(out["calls_after"]).isdisjoint(out["replayed"])
    # the recovering process executed exactly the visits the report calls live (in Spark's order,
    # when the visits of a superstep complete in the order they start)
    if ordered:
        assert out["calls_after"] == out["live"]
    else:
        assert sorted(out["calls_after"]) == sorted(out["live"])
    # together, replayed and live visits are exactly the uninterrupted run's visits
    assert sorted(out["replayed"] + out["live"]) == sorted(visits)
    # every replayed visit really had been executed by the process that died
    assert set(out["replayed"]) <= set(out["calls_before"])


@pytest.fixture(params=["sqlite", "file"])
def store(request, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/ckpt.db" if request.param == "sqlite" else f"file://{tmp_path}/ckpt"


@pytest.mark.parametrize("crash_at", ["transform:2", "publish:0", "report:0"])
def test_sigkill_inside_a_node(tmp_path: Path, store: str, crash_at: str) -> None:
    """Killed inside a node (mid-loop, in a branch, in the last node): completed visits are not re-run."""
    out = crash_and_recover(tmp_path, "pipeline", store, SPARK_CKPT_TEST_CRASH=crash_at)
    assert_recovered_like_uninterrupted(out, "pipeline")
    assert out["replayed"], "a mid-run crash must leave journaled visits to replay"
    assert out["calls_after"][0] == crash_at  # only the visit in flight at the crash runs again first


def test_sigkill_in_the_first_node_recovers_from_the_start_record(tmp_path: Path, store: str) -> None:
    """Killed before any superstep completed: recovery starts from the durable start record."""
    out = crash_and_recover(tmp_path, "pipeline", store, SPARK_CKPT_TEST_CRASH="fetch:0")
    assert_recovered_like_uninterrupted(out, "pipeline")
    assert out["replayed"] == []


def test_sigkill_between_nodes(tmp_path: Path, store: str) -> None:
    """Killed right after a checkpoint commit, between supersteps: nothing is re-executed at all."""
    out = crash_and_recover(tmp_path, "pipeline", store, SPARK_CKPT_TEST_CRASH_AFTER_CKPT="3")
    assert_recovered_like_uninterrupted(out, "pipeline")
    assert set(out["calls_before"]).isdisjoint(out["calls_after"])


def test_sigkill_during_a_checkpoint_write(tmp_path: Path, store: str) -> None:
    """Killed while checkpoint 3 was being written: it never becomes visible, recovery uses checkpoint 2."""
    out = crash_and_recover(tmp_path, "pipeline", store, SPARK_CKPT_TEST_CRASH_IN_WRITE="3")
    assert_recovered_like_uninterrupted(out, "pipeline")
    # the superstep whose checkpoint was torn runs again; nothing before it does
    assert len(set(out["calls_before"]) & set(out["calls_after"])) == 1


def test_sigkill_in_a_fan_out_superstep(tmp_path: Path, store: str) -> None:
    """Killed in one branch of a fan-out: the parallel superstep is re-run as a unit."""
    out = crash_and_recover(tmp_path, "fan_out", store, SPARK_CKPT_TEST_CRASH="right:0")
    assert_recovered_like_uninterrupted(out, "fan_out")
    assert "split:0" in out["replayed"]


@pytest.mark.parametrize("crash_at", ["mutate:2", "mutate:4"])
def test_sigkill_recovers_state_stored_as_changes(tmp_path: Path, store: str, crash_at: str) -> None:
    """Checkpoints store only the state that changed: recovery after SIGKILL rebuilds the whole state
    from the chain, with in-place changes, deleted keys and type changes (1 vs True) all kept."""
    out = crash_and_recover(tmp_path, "mutating", store, SPARK_CKPT_TEST_CRASH=crash_at)
    assert_recovered_like_uninterrupted(out, "mutating")
    _, state, _ = uninterrupted("mutating")
    assert json.dumps(out["state"], sort_keys=True) == json.dumps(state, sort_keys=True)  # types too


def test_crash_twice_then_recover(tmp_path: Path) -> None:
    """A recovering process that is itself killed can be recovered again, without re-running anything twice."""
    store = f"sqlite:///{tmp_path}/ckpt.db"
    calls = [tmp_path / f"calls-{i}.txt" for i in range(3)]
    assert run_worker("run", "pipeline", store, calls[0], SPARK_CKPT_TEST_CRASH="transform:1").returncode == -9
    assert run_worker("recover", "pipeline", store, calls[1], SPARK_CKPT_TEST_CRASH="transform:3").returncode == -9
    last = run_worker("recover", "pipeline", store, calls[2])
    assert last.returncode == 0, last.stderr[-3000:]
    out = json.loads(last.stdout.strip().splitlines()[-1])
    result, state, visits = uninterrupted("pipeline")
    assert (out["result"], out["state"]) == (result, state)
    executed = [read_calls(c) for c in calls]
    # each visit ran in at most one process, except the one in flight at each crash
    repeats = [v for v in visits if sum(v in e for e in executed) > 1]
    assert repeats == ["transform:1", "transform:3"]


def test_async_durability_recovers_from_a_committed_checkpoint(tmp_path: Path) -> None:
    """durability="async": a crash may lose the checkpoint in flight, never correctness."""
    store = f"sqlite:///{tmp_path}/ckpt.db"
    out = crash_and_recover(tmp_path, "pipeline", store, SPARK_CKPT_TEST_CRASH="transform:3",
                            SPARK_CKPT_TEST_DURABILITY="async")
    assert_recovered_like_uninterrupted(out, "pipeline")


@pytest.mark.parametrize("crash_at", ["work1:0", "ship:2", "work2:0"])
def test_sigkill_after_a_publisher_ran_redelivers_its_events(tmp_path: Path, store: str, crash_at: str) -> None:
    """A node published events on the graph's event bus, then the process was killed: the replayed
    publisher publishes its journaled events again, so every subscriber visit happens exactly once across
    both processes (none lost, none twice) and the run ends as the uninterrupted one."""
    out = crash_and_recover(tmp_path, "events", store, SPARK_CKPT_TEST_CRASH=crash_at)
    # subscriber visits share supersteps with slower ones: they complete in another order than they start
    assert_recovered_like_uninterrupted(out, "events", ordered=False)
    assert "announce:0" in out["replayed"]
    ships = [c for c in out["calls_before"] + out["calls_after"] if c.startswith("ship:")]
    assert sorted(set(ships)) == [f"ship:{i}" for i in range(INPUT["n"])]
    # a subscriber visit ran twice only if its superstep had not completed at the kill (the unit of
    # durability): then it is live in the recovery, never one the journal replayed
    repeated = {c for c in ships if ships.count(c) > 1}
    assert repeated <= set(out["live"]) and len(ships) == INPUT["n"] + len(repeated)
