"""Orphan recovery (``spark_ckpt.recover_orphans``, ``spark-ckpt worker``): workers SIGKILLed or stopped,
other worker processes finishing their executions, each exactly once.

PostgreSQL joins when ``spark_ckpt_postgres`` is installed and ``SPARK_CKPT_TEST_PG_DSN`` names a server.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import graphs
import orphan_factories
from server_availability import postgres_unavailable

from spark_ckpt import CheckpointConfig, open_backend, recover_orphans
from spark_ckpt.errors import ConfigError
from spark_ckpt.model import COMPLETED, FAILED, RUNNING

TESTS = Path(__file__).parent
WORKER = TESTS / "orphan_worker.py"
ROOT = TESTS.parent


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.skipif(
    postgres_unavailable() is not None, reason=str(postgres_unavailable())))])
def store(request, tmp_path: Path, monkeypatch) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/ckpt.db"
    else:
        url = f"{os.environ['SPARK_CKPT_TEST_PG_DSN']}?schema=orph_{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("SPARK_CKPT_STORE", url)
    for name in [k for k in os.environ if k.startswith("SPARK_CKPT_TEST_") and k != "SPARK_CKPT_TEST_PG_DSN"]:
        monkeypatch.delenv(name)
    return url


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def crash(graph_id: str, at: str, calls: Path) -> None:
    """Run ``graph_id`` in a worker process that SIGKILLs itself inside visit ``at``."""
    done = subprocess.run([sys.executable, str(WORKER), graph_id], env=_env(
        SPARK_CKPT_TEST_CRASH=at, SPARK_CKPT_TEST_CALLS=str(calls)), capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]


def start_cli_worker(store: str, calls: Path, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "spark_ckpt.cli", "--store", store, "worker", "orphan_factories:build", *args],
        cwd=TESTS, env=_env(SPARK_CKPT_TEST_CALLS=str(calls), **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )


def read_calls(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def statuses(store: str) -> dict[str, str]:
    backend = open_backend(store)
    try:
        return {h.graph_id: h.status for h in backend.executions()}
    finally:
        backend.close()


def stored_result(store: str, graph_id: str) -> dict:
    backend = open_backend(store)
    try:
        (head,) = backend.executions(graph_id=graph_id)
        graph = orphan_factories.build(graph_id)
        try:
            return asyncio.run(graph.recover_and_continue(execution_id=head.execution_id)).content
        finally:
            graph.close()
    finally:
        backend.close()


def wait_for(condition, what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


# Four executions killed at different points; visits from the crashed one on must run once more.
CRASHES = {"orphan-a": "a0:0", "orphan-b": "b1:0", "orphan-c": "c2:0", "orphan-d": "d3:0"}


def test_three_workers_started_at_once_recover_each_orphan_exactly_once(store: str, tmp_path: Path) -> None:
    for graph_id, at in CRASHES.items():
        crash(graph_id, at, tmp_path / "calls-crashed.txt")
    assert set(statuses(store).values()) == {RUNNING}
    calls = [tmp_path / f"calls-worker-{i}.txt" for i in range(3)]
    workers = [start_cli_worker(store, path, "--once", "--concurrency", "2") for path in calls]
    outputs = [w.communicate(timeout=300) for w in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
    lines = [line for out, _ in outputs for line in out.splitlines()]
    recovered = sorted(line.split("'")[1] for line in lines if line.startswith("recovered:"))
    assert recovered == sorted(CRASHES), lines  # one worker recovered each, none twice
    # every visit from the crashed one on ran exactly once across the three workers; none before it
    expected = sorted(f"{at[0]}{i}:0" for at in CRASHES.values() for i in range(int(at[1]), 4))
    assert sorted(c for path in calls for c in read_calls(path)) == expected
    assert set(statuses(store).values()) == {COMPLETED}
    for graph_id in CRASHES:
        assert stored_result(store, graph_id) == {"step": f"{graph_id[-1]}3", "count": 4}


def test_a_stopped_owner_is_left_alone_until_its_lease_expires_then_fenced(
        store: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SPARK_CKPT_TEST_LEASE_TTL", "2")
    gate, first_calls = tmp_path / "gate", tmp_path / "calls-owner.txt"
    owner = subprocess.Popen([sys.executable, str(WORKER), "orphan-h"], env=_env(
        SPARK_CKPT_TEST_HOLD="h1", SPARK_CKPT_TEST_GATE=str(gate), SPARK_CKPT_TEST_CALLS=str(first_calls)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: "h1:0" in read_calls(first_calls), "the owner to reach h1")
        config = CheckpointConfig(backend=store, lease_ttl_s=2)
        # alive and renewing: not an orphan
        (outcome,) = asyncio.run(recover_orphans(orphan_factories.build, config))
        assert (outcome.outcome, outcome.reason) == ("skipped", "owned")
        owner.send_signal(signal.SIGSTOP)  # alive but stalled: its lease stops being renewed
        gate.touch()
        monkeypatch.setenv("SPARK_CKPT_TEST_HOLD", "h1")
        monkeypatch.setenv("SPARK_CKPT_TEST_GATE", str(gate))
        graphs.CALLS.clear()
        (outcome,) = asyncio.run(recover_orphans(orphan_factories.build, config, wait=True))
        assert outcome.outcome == "recovered", outcome.line()
        assert graphs.CALLS == ["h1:0", "h2:0", "h3:0"]  # h0 replayed; the stalled visit ran again
        backend = open_backend(store)
        try:
            head = backend.execution_head(outcome.execution_id)
            stored = backend.list(execution_id=outcome.execution_id)
        finally:
            backend.close()
        assert head.status == COMPLETED
        owner.send_signal(signal.SIGCONT)  # it wakes up, finishes h1, and must not write
        out, err = owner.communicate(timeout=120)
    finally:
        if owner.poll() is None:
            owner.send_signal(signal.SIGCONT)
            owner.kill()
            owner.wait()
    assert owner.returncode != 0 and "LeaseError" in err, err[-2000:]
    assert read_calls(first_calls) == ["h0:0", "h1:0"]  # nothing after the takeover ran in the old owner
    backend = open_backend(store)
    try:
        assert backend.execution_head(outcome.execution_id) == head
        assert backend.list(execution_id=outcome.execution_id) == stored
    finally:
        backend.close()
    assert stored_result(store, "orphan-h") == {"step": "h3", "count": 4}


async def _interrupted(graph_id: str, gate: Path) -> None:
    """Run ``graph_id`` in this process and cancel it while node ``<letter>1`` holds."""
    graph = orphan_factories.build(graph_id) or orphan_factories.checkpointed(
        orphan_factories.chain("x"), config=orphan_factories.config(), graph_id=graph_id)
    task = asyncio.create_task(graph.run(orphan_factories.INPUT))
    while not any(c.endswith("1:0") for c in graphs.CALLS):
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    graph.close()


def test_what_a_worker_leaves_alone_and_what_it_recovers(tmp_path: Path, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path}/ckpt.db"
    monkeypatch.setenv("SPARK_CKPT_STORE", url)
    config = CheckpointConfig(backend=url)
    gate = tmp_path / "gate"
    # a waiting execution (an approval gate)
    import approval_graphs
    from spark_ckpt import checkpointed

    gated = checkpointed(approval_graphs.gated(), config=config, graph_id="orphan-gated")
    with pytest.raises(Exception, match="(?i)approval"):
        asyncio.run(gated.run({"n": 4}))
    gated.close()
    # a run that failed (its caller got the error)
    monkeypatch.setenv("SPARK_CKPT_TEST_FAIL", "f1:0")
    failing = orphan_factories.build("orphan-f")
    with pytest.raises(RuntimeError):
        asyncio.run(failing.run(orphan_factories.INPUT))
    failing.close()
    monkeypatch.delenv("SPARK_CKPT_TEST_FAIL")
    # runs interrupted (cancelled) inside a node: one of a graph the factory serves, one it does not
    monkeypatch.setenv("SPARK_CKPT_TEST_HOLD", "i1")
    monkeypatch.setenv("SPARK_CKPT_TEST_GATE", str(gate))
    graphs.CALLS.clear()
    asyncio.run(_interrupted("orphan-i", gate))
    monkeypatch.setenv("SPARK_CKPT_TEST_HOLD", "x1")
    graphs.CALLS.clear()
    asyncio.run(_interrupted("stranger", gate))
    assert statuses(url) == {"orphan-gated": "waiting", "orphan-f": FAILED, "orphan-i": FAILED, "stranger": FAILED}

    gate.touch()
    graphs.CALLS.clear()
    seen = []
    outcomes = asyncio.run(recover_orphans(orphan_factories.build, config, concurrency=3, on_outcome=seen.append))
    by_graph = {o.graph_id: (o.outcome, o.reason) for o in outcomes}
    assert by_graph == {"orphan-gated": ("skipped", "waiting"), "orphan-f": ("skipped", "failed"),
                        "orphan-i": ("recovered", ""), "stranger": ("skipped", "unknown-graph")}
    assert seen == outcomes
    assert sorted(graphs.CALLS) == ["i1:0", "i2:0", "i3:0"]
    assert statuses(url)["orphan-i"] == COMPLETED

    # asked to, it recovers the failed run too (from its last boundary: f0 is not run again)
    graphs.CALLS.clear()
    outcomes = asyncio.run(recover_orphans(orphan_factories.build, config, graph_ids=["orphan-f"],
                                           include_failed=True))
    assert [(o.graph_id, o.outcome) for o in outcomes] == [("orphan-f", "recovered")]
    assert graphs.CALLS == ["f1:0", "f2:0", "f3:0"]
    assert statuses(url) == {"orphan-gated": "waiting", "orphan-f": COMPLETED, "orphan-i": COMPLETED,
                             "stranger": FAILED}


def test_bad_arguments_are_config_errors(tmp_path: Path) -> None:
    config = CheckpointConfig(backend=f"sqlite:///{tmp_path}/ckpt.db")
    for kwargs in ({"concurrency": 0}, {"poll_s": -1}, {"graph_ids": [3]}):
        with pytest.raises(ConfigError):
            asyncio.run(recover_orphans(orphan_factories.build, config, **kwargs))
    with pytest.raises(ConfigError, match="config"):
        asyncio.run(recover_orphans(orphan_factories.build))
    with pytest.raises(ConfigError, match="module:function"):
        asyncio.run(recover_orphans("no_colon_here", config))
    with pytest.raises(ConfigError, match="no module"):
        asyncio.run(recover_orphans("surely_not_a_module_x:build", config))


def test_cli_worker_stops_cleanly_on_sigterm_and_reports_failures(tmp_path: Path, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path}/ckpt.db"
    monkeypatch.setenv("SPARK_CKPT_STORE", url)
    gate, calls = tmp_path / "gate", tmp_path / "calls.txt"
    crash("orphan-s", "s1:0", tmp_path / "calls-crashed.txt")
    crash("orphan-z", "z0:0", tmp_path / "calls-crashed.txt")
    # a polling worker that holds orphan-s's recovery in s2 until stopped; the factory fails for orphan-z
    worker = start_cli_worker(url, calls, "--poll", "0.2", "--concurrency", "2", SPARK_CKPT_TEST_HOLD="s2",
                              SPARK_CKPT_TEST_GATE=str(gate), SPARK_CKPT_TEST_BROKEN="orphan-z")
    try:
        wait_for(lambda: "s2:0" in read_calls(calls), "the worker to reach s2")
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 1, err[-2000:]  # orphan-z was refused (its factory failed)
    assert "refused: graph 'orphan-z'" in out and "RuntimeError: cannot build orphan-z" in out
    assert out.splitlines()[-1] == "stopped" and "Traceback" not in err
    assert statuses(url)["orphan-s"] == FAILED  # interrupted, lease released: the next worker continues it
    gate.touch()
    again = start_cli_worker(url, tmp_path / "calls-2.txt", "--once", "--json")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-2000:]
    rows = {row["graph_id"]: row for row in map(json.loads, out.splitlines())}
    assert rows["orphan-s"]["outcome"] == "recovered" and rows["orphan-z"]["outcome"] == "recovered"
    assert sorted(read_calls(tmp_path / "calls-2.txt")) == ["s2:0", "s3:0", "z0:0", "z1:0", "z2:0", "z3:0"]
    assert stored_result(url, "orphan-s") == {"step": "s3", "count": 4}


@pytest.mark.parametrize("form", ["zero-argument", "mapping"])
def test_a_factory_for_one_graph_serves_its_graph_and_names_the_store(tmp_path: Path, monkeypatch, form: str) -> None:
    url = f"sqlite:///{tmp_path}/ckpt.db"
    monkeypatch.setenv("SPARK_CKPT_STORE", url)
    monkeypatch.setenv("SPARK_CKPT_TEST_HOLD", "m1")
    monkeypatch.setenv("SPARK_CKPT_TEST_GATE", str(tmp_path / "gate"))
    graphs.CALLS.clear()
    asyncio.run(_interrupted("orphan-m", tmp_path / "gate"))
    (tmp_path / "gate").touch()

    def build_m():
        return orphan_factories.build("orphan-m")

    factory = build_m if form == "zero-argument" else {"orphan-m": build_m}
    graphs.CALLS.clear()
    outcomes = asyncio.run(recover_orphans(factory))  # no config: the factory's wrappers name the store
    assert [(o.graph_id, o.outcome) for o in outcomes] == [("orphan-m", "recovered")]
    assert graphs.CALLS == ["m1:0", "m2:0", "m3:0"]


def test_a_factory_on_another_store_is_refused_before_anything_runs(tmp_path: Path, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path}/ckpt.db"
    monkeypatch.setenv("SPARK_CKPT_STORE", url)
    crash("orphan-w", "w1:0", tmp_path / "calls-crashed.txt")
    monkeypatch.setenv("SPARK_CKPT_STORE", f"sqlite:///{tmp_path}/other.db")  # the factory's wrappers: elsewhere
    graphs.CALLS.clear()
    (outcome,) = asyncio.run(recover_orphans(orphan_factories.build, CheckpointConfig(backend=url)))
    assert (outcome.outcome, outcome.reason) == ("refused", "ConfigError") and "same store" in outcome.detail
    assert graphs.CALLS == [] and statuses(url) == {"orphan-w": RUNNING}


def test_an_update_state_fork_waits_for_a_person_not_for_a_worker(tmp_path: Path, monkeypatch) -> None:
    """A state edit (update_state) is an unfinished execution nobody runs yet; its creator is gone, yet a
    worker leaves it to continue_from_checkpoint()."""
    url = f"sqlite:///{tmp_path}/ckpt.db"
    monkeypatch.setenv("SPARK_CKPT_STORE", url)
    graph = orphan_factories.build("orphan-e")
    asyncio.run(graph.run({"n": 1}))
    at = next(iter(graph.get_state_history()))
    fork = graph.update_state(at.checkpoint_id, {"edited": True})
    graph.backend.release_lease(graph.backend.acquire_lease(fork.execution_id, "someone-else", 60))
    graphs.CALLS.clear()
    outcomes = asyncio.run(recover_orphans({"orphan-e": lambda: orphan_factories.build("orphan-e")}))
    assert [(o.execution_id, o.outcome, o.reason) for o in outcomes] == [(fork.execution_id, "skipped", "not-started")]
    assert graphs.CALLS == []
