"""Named executions: ``run(inputs, execution_id=...)``, the refusal rules, recovery by name after a real
SIGKILL, racing starts in real processes, ``list_executions`` and ``spark-ckpt list --executions``, and
what "nothing to recover" says exists.

Memory, file and SQLite always run; PostgreSQL and S3 join when their plugin is installed and a server
is named (``SPARK_CKPT_TEST_PG_DSN`` / ``SPARK_CKPT_TEST_S3_ENDPOINT``, as in ``test_export``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import graphs
from test_export import KINDS, open_store
from test_graph_crash import assert_recovered_like_uninterrupted, read_calls, run_worker

from spark_ckpt import (
    CheckpointConfig, ConfigError, ExecutionExistsError, NothingToRecoverError, RestoreConflictError, checkpointed,
)
from spark_ckpt.executions import list_executions
from spark_ckpt.model import COMPLETED, canonical_checkpoint_id, canonical_key

RACE_WORKER = Path(__file__).with_name("named_run_worker.py")
NAMES = ["order-42", "a-b-c-0-1", "ordre-été-42", "tenant:acme/x".replace("/", "."), "z"]


@pytest.fixture
def store(tmp_path):
    opened = []

    def make(kind: str, name: str = "s"):
        backend = open_store(kind, tmp_path, name)
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        backend.close()


def wrap(graph, backend, graph_id: str = "orders"):
    return checkpointed(graph, config=CheckpointConfig(), backend=backend, graph_id=graph_id)


def failing_run(backend, monkeypatch, name: str, graph_id: str = "orders") -> None:
    """A run named ``name`` that fails in its third node: an unfinished (failed) execution."""
    monkeypatch.setenv("SPARK_CKPT_TEST_FAIL", "s2:0")
    with pytest.raises(RuntimeError, match="injected failure"):
        asyncio.run(wrap(graphs.chain(4), backend, graph_id).run({"n": 1}, execution_id=name))
    monkeypatch.delenv("SPARK_CKPT_TEST_FAIL")


# -- naming ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_a_named_run_is_stored_under_its_name_on_every_backend(store, kind):
    backend = store(kind)
    for name in NAMES:
        graph = wrap(graphs.pipeline(), backend)
        result = asyncio.run(graph.run({"n": 3}, execution_id=name))
        assert result.content == {"report": "published:60"}
        head = backend.execution_head(name)
        assert head is not None and head.status == COMPLETED and head.graph_id == "orders"
        ids = [h.checkpoint_id for h in backend.list(execution_id=name)]
        assert canonical_checkpoint_id(name, 0) in ids
        assert all(canonical_key(i)[0] == name for i in ids)
        # the stored record reads back under its name
        assert backend.get(canonical_checkpoint_id(name, 0)).header.execution_id == name
    listed = [s.execution_id for s in asyncio.run(graph.list_executions())]
    assert sorted(listed) == sorted(NAMES)


@pytest.mark.parametrize("bad, words", [
    ("", "must not be empty"), ("a b", "' '"), ("x/y", "'/'"), ("tab\there", "U+0009"), (42, "must be a string"),
    ("é" * 51, "102 bytes"), ("e\u0301t\u00e9", "normal form C"),
])
def test_a_bad_name_is_a_config_error_before_anything_is_stored(store, bad, words):
    backend = store("sqlite")
    graphs.CALLS.clear()
    with pytest.raises(ConfigError, match=re.escape(words)):
        asyncio.run(wrap(graphs.chain(2), backend).run({"n": 1}, execution_id=bad))
    assert graphs.CALLS == [] and backend.executions() == []


def test_a_name_the_file_store_cannot_hold_is_refused_up_front_and_sqlite_takes_it(store):
    name = "é" * 50  # 100 bytes: allowed, but 300 escaped characters are too long for a file name
    with pytest.raises(ConfigError, match="cannot be stored in file://.*too long"):
        asyncio.run(wrap(graphs.chain(2), store("file")).run({"n": 1}, execution_id=name))
    sqlite = store("sqlite")
    asyncio.run(wrap(graphs.chain(2), sqlite).run({"n": 1}, execution_id=name))
    assert sqlite.execution_head(name).status == COMPLETED


def test_resume_needs_a_name(store):
    with pytest.raises(ConfigError, match="needs the execution_id"):
        asyncio.run(wrap(graphs.chain(2), store("memory")).run({"n": 1}, resume=True))


# -- refusal rules ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["memory", "file", "sqlite"])
def test_a_completed_name_is_refused_and_resume_returns_its_stored_result(store, kind):
    backend = store(kind)
    first = asyncio.run(wrap(graphs.pipeline(), backend).run({"n": 3}, execution_id="order-42"))
    graphs.CALLS.clear()
    graph = wrap(graphs.pipeline(), backend)
    with pytest.raises(ExecutionExistsError, match=r"already completed.*recover_and_continue\(execution_id='order-42'\)"):
        asyncio.run(graph.run({"n": 3}, execution_id="order-42"))
    assert graphs.CALLS == []
    again = asyncio.run(graph.run({"n": 3}, execution_id="order-42", resume=True))
    assert again.content == first.content and graphs.CALLS == []
    assert graph.last_recovery.already_completed
    with pytest.raises(ExecutionExistsError, match="other inputs"):
        asyncio.run(graph.run({"n": 4}, execution_id="order-42", resume=True))
    assert graphs.CALLS == [] and len(backend.executions()) == 1


def test_an_unfinished_name_is_refused_unless_resumed_with_the_same_inputs(store, monkeypatch):
    backend = store("sqlite")
    failing_run(backend, monkeypatch, "order-7")
    graph = wrap(graphs.chain(4), backend)
    with pytest.raises(ExecutionExistsError, match=r"has not finished \(failed\).*recover_and_continue\(execution_id='order-7'\)"):
        asyncio.run(graph.run({"n": 1}, execution_id="order-7"))
    with pytest.raises(ExecutionExistsError, match="other inputs"):
        asyncio.run(graph.run({"n": 2}, execution_id="order-7", resume=True))
    graphs.CALLS.clear()
    result = asyncio.run(graph.run({"n": 1}, execution_id="order-7", resume=True))
    assert result.content == {"step": "s3", "count": 4}
    assert graphs.CALLS == ["s2:0", "s3:0"]  # s0 and s1 were replayed, not run again
    assert backend.execution_head("order-7").status == COMPLETED


def test_a_name_is_unique_across_graph_ids(store):
    backend = store("sqlite")
    asyncio.run(wrap(graphs.chain(2), backend, "billing").run({"n": 1}, execution_id="order-42"))
    with pytest.raises(ExecutionExistsError, match="already used by graph 'billing'.*unique in a store"):
        asyncio.run(wrap(graphs.chain(2), backend, "orders").run({"n": 1}, execution_id="order-42", resume=True))


def test_run_with_recovery_runs_and_continues_a_named_execution(store, monkeypatch):
    backend = store("sqlite")
    failing_run(backend, monkeypatch, "order-9")
    graphs.CALLS.clear()
    graph = wrap(graphs.chain(4), backend)
    result = asyncio.run(graph.run_with_recovery({"n": 1}, execution_id="order-9"))
    assert result.content == {"step": "s3", "count": 4} and graphs.CALLS == ["s2:0", "s3:0"]
    assert [(s.step, s.execution_id) for s in graph.last_recovery.steps] == [("resume", "order-9")]
    fresh = asyncio.run(wrap(graphs.chain(4), backend).run_with_recovery({"n": 1}, execution_id="order-10"))
    assert fresh.content == result.content and backend.execution_head("order-10").status == COMPLETED
    with pytest.raises(ExecutionExistsError):  # never forked into: the stored run had other inputs
        asyncio.run(graph.run_with_recovery({"n": 2}, execution_id="order-9", strategy="progressive"))


def test_a_named_run_after_restoring_another_runs_checkpoint_is_refused(store, monkeypatch):
    backend = store("sqlite")
    failing_run(backend, monkeypatch, "order-1")
    graph = wrap(graphs.chain(4), backend)
    graph.restore_from_checkpoint(backend.execution_head("order-1").checkpoint_id)
    graphs.CALLS.clear()
    with pytest.raises(RestoreConflictError, match="named the run 'order-2'"):
        asyncio.run(graph.run({"n": 1}, execution_id="order-2"))
    assert graphs.CALLS == [] and backend.execution_head("order-2") is None


# -- listing ------------------------------------------------------------------------------------------
def test_list_executions_filters_by_status_newest_first(store, monkeypatch):
    backend = store("sqlite")
    asyncio.run(wrap(graphs.chain(2), backend).run({"n": 1}, execution_id="done-1"))
    failing_run(backend, monkeypatch, "failed-1")
    asyncio.run(wrap(graphs.chain(2), backend, "other").run({"n": 1}, execution_id="elsewhere"))
    graph = wrap(graphs.chain(4), backend)
    every = asyncio.run(graph.list_executions())
    assert [s.execution_id for s in every] == ["failed-1", "done-1"]  # this graph's only, newest first
    assert every[0].status == "failed" and every[0].checkpoints >= 2 and every[0].started_at <= every[0].updated_at
    assert [s.execution_id for s in asyncio.run(graph.list_executions(status="unfinished"))] == ["failed-1"]
    assert [s.execution_id for s in asyncio.run(graph.list_executions(status="completed"))] == ["done-1"]
    assert asyncio.run(graph.list_executions(status="running")) == []
    assert len(asyncio.run(graph.list_executions(limit=1))) == 1
    assert {s.graph_id for s in list_executions(backend)} == {"orders", "other"}
    with pytest.raises(ConfigError, match="unknown execution status 'done'"):
        asyncio.run(graph.list_executions(status="done"))


# -- nothing to recover ---------------------------------------------------------------------------------
def test_nothing_to_recover_names_what_exists(store, monkeypatch):
    backend = store("sqlite")
    failing_run(backend, monkeypatch, "order-42", graph_id="orders")
    mistyped = wrap(graphs.chain(4), backend, "ordres")
    with pytest.raises(NothingToRecoverError) as newest:
        asyncio.run(mistyped.recover_and_continue())
    text = str(newest.value)
    assert "'order-42' (graph 'orders', failed)" in text and "graph ids close to 'ordres': 'orders'" in text
    right = wrap(graphs.chain(4), backend, "orders")
    with pytest.raises(NothingToRecoverError, match="Close execution ids: 'order-42'"):
        asyncio.run(right.recover_and_continue(execution_id="order-24"))
    with pytest.raises(NothingToRecoverError, match="belongs to graph 'orders'.*graph_id='orders'"):
        asyncio.run(mistyped.recover_and_continue(execution_id="order-42"))


# -- real processes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["recover", "run_with_recovery"])
def test_a_named_execution_is_recovered_by_name_after_sigkill(tmp_path, mode):
    store_url = f"sqlite:///{tmp_path}/named.db"
    calls_first, calls_second = tmp_path / "calls-1.txt", tmp_path / "calls-2.txt"
    first = run_worker("run", "pipeline", store_url, calls_first, SPARK_CKPT_TEST_CRASH="transform:2",
                       SPARK_CKPT_TEST_EXECUTION_ID="order-7")
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    graph = checkpointed(graphs.pipeline(), config=CheckpointConfig(backend=store_url), graph_id="pipeline-crash")
    try:
        assert [s.execution_id for s in asyncio.run(graph.list_executions(status="unfinished"))] == ["order-7"]
        with pytest.raises(ExecutionExistsError, match="has not finished"):
            asyncio.run(graph.run({"n": 4}, execution_id="order-7"))
    finally:
        graph.close()
    second = run_worker(mode, "pipeline", store_url, calls_second, SPARK_CKPT_TEST_EXECUTION_ID="order-7")
    assert second.returncode == 0, second.stderr[-3000:]
    out = json.loads(second.stdout.strip().splitlines()[-1])
    out["calls_before"], out["calls_after"] = read_calls(calls_first), read_calls(calls_second)
    assert_recovered_like_uninterrupted(out, "pipeline")
    assert "fetch:0" in out["replayed"] and "fetch:0" not in out["calls_after"]


@pytest.mark.parametrize("scheme, durability, barrier", [
    ("sqlite", "sync", False), ("sqlite", "sync", True), ("sqlite", "async", True), ("file", "sync", True),
])
def test_of_three_processes_starting_one_name_exactly_one_runs_it(tmp_path, scheme, durability, barrier):
    """Without the barrier the losers mostly find the name taken; with it, all three find it free and
    race to store the start record: the store lets one start it, the others are told."""
    store_url = f"sqlite:///{tmp_path}/race.db" if scheme == "sqlite" else f"file://{tmp_path}/race"
    go, calls = tmp_path / "go", tmp_path / "calls.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_CKPT_TEST_")}
    env.update(SPARK_CKPT_TEST_CALLS=str(calls), SPARK_CKPT_TEST_DURABILITY=durability)
    if barrier:
        (tmp_path / "barrier").mkdir()
        env["SPARK_CKPT_TEST_BARRIER"] = f"{tmp_path / 'barrier'}:3"
    workers = [subprocess.Popen([sys.executable, str(RACE_WORKER), store_url, "order-1", str(go)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        go.touch()
        outs = [w.communicate(timeout=120) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    results = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    assert [w.returncode for w in workers] == [0, 0, 0], [e[-2000:] for _, e in outs]
    assert sorted(r["outcome"] for r in results) == ["ExecutionExistsError", "ExecutionExistsError", "ran"], results
    if barrier:
        assert all("started by another worker at the same time" in r["error"] for r in results if "error" in r)
    assert sorted(read_calls(calls)) == ["s0:0", "s1:0", "s2:0", "s3:0"]  # every visit ran once, in one process
    from spark_ckpt import open_backend

    backend = open_backend(store_url)
    try:
        assert backend.execution_head("order-1").status == COMPLETED
        assert [h.execution_id for h in backend.executions()] == ["order-1"]
    finally:
        backend.close()


def test_cli_lists_executions_across_graph_ids_by_status(tmp_path, monkeypatch):
    store_url = f"sqlite:///{tmp_path}/cli.db"
    graph = checkpointed(graphs.chain(4), config=CheckpointConfig(backend=store_url), graph_id="orders")
    other = checkpointed(graphs.chain(2), config=CheckpointConfig(backend=store_url), graph_id="billing")
    try:
        monkeypatch.setenv("SPARK_CKPT_TEST_FAIL", "s2:0")
        with pytest.raises(RuntimeError):
            asyncio.run(graph.run({"n": 1}, execution_id="order-7"))
        monkeypatch.delenv("SPARK_CKPT_TEST_FAIL")
        asyncio.run(other.run({"n": 1}, execution_id="invoice-3"))
    finally:
        graph.close()
        other.close()

    def cli(*args: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_CKPT_")}
        env["SPARK_CKPT_DISABLE_PLUGINS"] = "1"
        return subprocess.run([sys.executable, "-m", "spark_ckpt.cli", "--store", store_url, *args],
                              env=env, capture_output=True, text=True, timeout=60)

    every = cli("list", "--executions", "--json")
    assert every.returncode == 0, every.stderr
    rows = json.loads(every.stdout)
    assert {(r["execution"], r["graph"], r["status"]) for r in rows} == {
        ("order-7", "orders", "failed"), ("invoice-3", "billing", "completed")}
    assert all(r["checkpoints"] >= 1 and r["started_at"] for r in rows)
    unfinished = cli("list", "--status", "unfinished", "--json")
    assert [r["execution"] for r in json.loads(unfinished.stdout)] == ["order-7"]
    table = cli("list", "--executions", "--status", "completed")
    assert table.returncode == 0 and "invoice-3" in table.stdout and "order-7" not in table.stdout
    none = cli("list", "--status", "waiting")
    assert none.returncode == 0 and "no waiting executions" in none.stdout
    bad = cli("list", "--status", "done")
    assert bad.returncode == 2 and "invalid choice: 'done'" in bad.stderr
