"""State history and time travel: whole states per checkpoint (newest first, made whole lazily),
update_state forks continued like any fork (also after a SIGKILL), and the CLI's show --whole / diff."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import history_graphs as hg
from spark_ckpt import (
    CheckpointConfig, CheckpointNotFoundError, ConfigError, EncodeError, UnsafeToRetryError, checkpointed,
)
from spark_ckpt.codec.values import identical
from spark_ckpt.engine.record_builder import FULL_HISTORY_EVERY

WORKER = Path(__file__).with_name("history_worker.py")
LONG = FULL_HISTORY_EVERY * 2 + 20  # supersteps: records holding only changes, and several whole ones


def wrapped(store: str, **config) -> object:
    # (retention keeps every record: the long runs have more than its default count)
    return checkpointed(hg.looping(), config=CheckpointConfig(backend=store, retention_count=None, **config),
                        graph_id="loop")


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'history.db'}"


def run(graph, n: int):
    hg.SEEN.clear()
    result = asyncio.run(graph.run({"n": n}))
    return result, list(hg.SEEN)


def expected_at(snapshot, seen: list) -> dict:
    """The graph state the run had at ``snapshot``'s boundary: its initial state before any visit,
    else the state the node of that superstep left (one visit per superstep)."""
    if snapshot.seq == 0:
        return hg.INITIAL
    return seen[snapshot.superstep][1]


def decoded(graph, checkpoint_id: str):
    return graph._decode(graph.backend.get(checkpoint_id).blob)


def at_count(graph, count: int):
    """The newest snapshot of the graph's newest execution right after the tick that set ``count``."""
    return next(s for s in graph.get_state_history() if s.values["count"] == count and s.next == ("tick",))


def bare_run(initial_state: dict, n: int):
    """The graph run unwrapped from ``initial_state``."""
    graph = hg.looping(initial_state)
    result = asyncio.run(graph.run({"n": n}))
    return result.content, graph.state.get_snapshot()


# -- history ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [3, LONG])
def test_history_holds_the_whole_state_at_every_checkpoint_newest_first(store: str, n: int) -> None:
    graph = wrapped(store)
    _, seen = run(graph, n)
    headers = graph.list_checkpoints()
    history = list(graph.get_state_history())
    assert [s.checkpoint_id for s in history] == [h.checkpoint_id for h in headers]  # newest first, all of them
    assert [s.seq for s in history] == sorted((s.seq for s in history), reverse=True)
    if n == LONG:  # the run stored records holding only changes, and whole ones among them
        kinds = [decoded(graph, h.checkpoint_id).partial_state for h in headers]
        assert sum(kinds) > FULL_HISTORY_EVERY and kinds.count(False) >= 4
    for snapshot in history:
        assert identical(snapshot.values, expected_at(snapshot, seen)), snapshot.seq
        assert snapshot.execution_id == headers[0].execution_id
    newest, oldest = history[0], history[-1]
    assert newest.status == "completed" and newest.next == () and newest.values["done"] is True
    assert "scratch" not in newest.values  # removed by the last visit
    assert history[1].next == ("finish",) and history[2].next == ("tick",)
    assert oldest.parent_id is None and all(a.parent_id == b.checkpoint_id for a, b in zip(history, history[1:]))
    # the visits each checkpoint added, oldest first, are the execution's whole journal
    visits = [(v.node_key, v.index) for s in reversed(history) for v in s.visits]
    assert visits == [(v.node_key, v.index) for v in newest.checkpoint().execution_history]
    assert visits == [("tick", i) for i in range(n)] + [("finish", 0)]
    # every snapshot's journal up to it, read when asked
    assert [v.index for v in history[3].checkpoint().execution_history] == list(range(history[3].superstep + 1))
    # the node states are whole too
    assert history[2].node_states["tick"].process_count == n - 1
    assert history[0].node_states["finish"].process_count == 1


def test_snapshot_values_are_its_own(store: str) -> None:
    graph = wrapped(store)
    run(graph, 4)
    first = list(graph.get_state_history())
    first[1].values["log"].append("changed")
    first[2].values["last"]["count"] = -1
    again = list(graph.get_state_history())
    assert again[1].values["log"] == [1, 2, 3, 4] and again[2].values["last"]["count"] == 3
    assert again[2].values["log"] == [1, 2, 3]


def test_history_is_lazy_and_reads_each_checkpoint_once(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    graph = wrapped(store)
    run(graph, LONG)
    reads: list[str] = []
    real_get = graph.backend.get
    monkeypatch.setattr(graph.backend, "get", lambda checkpoint_id: reads.append(checkpoint_id) or real_get(checkpoint_id))
    total = len(graph.list_checkpoints())

    history = graph.get_state_history()
    assert reads == []  # nothing read before a snapshot is asked for
    newest = next(history)
    assert len(reads) == 2  # the final record holds the whole state (and the one before ends its visits)
    second = next(history)  # holds only changes: read back to the record holding the whole state
    assert 2 < len(reads) <= FULL_HISTORY_EVERY + 3
    rest = list(history)
    assert len(rest) == total - 2
    assert sorted(reads) == sorted(h.checkpoint_id for h in graph.list_checkpoints())  # each exactly once
    newest.checkpoint(), second.checkpoint(), rest[-1].checkpoint()  # the whole journals: from what was read
    assert len(reads) == total

    reads.clear()
    assert [s.seq for s in graph.get_state_history(limit=2)] == [newest.seq, second.seq]
    assert len(reads) <= FULL_HISTORY_EVERY + 3


def test_history_of_a_named_execution_and_state_at_a_checkpoint(store: str) -> None:
    graph = wrapped(store)
    run(graph, 3)
    first = graph.list_checkpoints()[0].execution_id
    graph = wrapped(store)  # (a Spark graph keeps its state from one run to the next: a fresh one)
    _, seen = run(graph, 5)
    assert len(list(graph.get_state_history(first))) == 5  # start, 3 ticks, the final record
    assert all(s.execution_id == first for s in graph.get_state_history(first))
    middle = list(graph.get_state_history())[3]
    at = graph.get_state(middle.checkpoint_id)
    assert at == middle and identical(at.values, expected_at(at, seen))
    assert graph.get_state().checkpoint_id == graph.list_checkpoints()[0].checkpoint_id
    with pytest.raises(CheckpointNotFoundError, match="no execution 'ex-nope'"):
        graph.get_state_history("ex-nope")
    with pytest.raises(ConfigError, match="limit"):
        graph.get_state_history(limit=-1)


# -- update_state ----------------------------------------------------------------------------------------
def source_records(graph, execution_id: str) -> dict[str, bytes]:
    return {h.checkpoint_id: graph.backend.get(h.checkpoint_id).blob
            for h in graph.backend.list(execution_id=execution_id)}


def test_update_state_fork_continues_like_a_run_from_the_edited_state(store: str) -> None:
    graph = wrapped(store)
    run(graph, 6)
    source_execution = graph.list_checkpoints()[0].execution_id
    before = source_records(graph, source_execution)
    head_before = graph.backend.execution_head(source_execution)
    at = at_count(graph, 3)
    assert at.values["count"] == 3 and at.next == ("tick",)

    fork = graph.update_state(at.checkpoint_id, {"step": 100, "last": ("edited", 3)}, as_node="tick", remove=["scratch"])
    assert fork.execution_id != source_execution and fork.seq == 0 and fork.status == "running"
    assert fork.graph_state["step"] == 100 and fork.graph_state["last"] == ("edited", 3)
    assert "scratch" not in fork.graph_state and fork.graph_state["log"] == [1, 2, 3]
    update = fork.extras["state_update"]
    assert update["from"] == at.checkpoint_id and update["as_node"] == "tick" and update["removed"] == ["scratch"]
    assert fork.extras["forked_from"] == at.checkpoint_id
    snapshot = graph.get_state(fork.checkpoint_id)
    assert snapshot.parent_id == at.checkpoint_id and snapshot.next == ("tick",)

    hg.SEEN.clear()
    result = asyncio.run(graph.continue_from_checkpoint(fork.checkpoint_id))
    ran = [(node, state["count"]) for node, state in hg.SEEN]
    edited = {**{k: v for k, v in at.values.items() if k != "scratch"}, "step": 100, "last": ("edited", 3)}
    bare_result, bare_state = bare_run(edited, 6)
    assert result.content == bare_result == {"total": 303, "count": 6}
    assert identical(graph.get_state_snapshot(), bare_state)
    # the journal up to the checkpoint was replayed; only what came after it ran, on the edited state
    assert ran == [("tick", 4), ("tick", 5), ("tick", 6), ("finish", 6)]
    assert graph.last_recovery.replayed == [("tick", 0), ("tick", 1), ("tick", 2)]
    assert graph.last_recovery.execution_id == fork.execution_id
    assert graph.backend.execution_head(fork.execution_id).status == "completed"
    # the source execution is exactly as it was
    assert source_records(graph, source_execution) == before
    assert graph.backend.execution_head(source_execution) == head_before
    # the fork's history goes back through the update to its source
    fork_history = list(graph.get_state_history(fork.execution_id))
    assert fork_history[-1].checkpoint_id == fork.checkpoint_id and fork_history[0].values["total"] == 303


def test_update_state_refuses_what_it_cannot_store_faithfully_and_writes_nothing(store: str) -> None:
    graph = wrapped(store)
    run(graph, 3)
    at = graph.list_checkpoints()[2].checkpoint_id
    executions = len(graph.backend.executions(graph_id="loop"))
    with pytest.raises(EncodeError, match="'bad'"):
        graph.update_state(at, {"bad": object()})
    with pytest.raises(ConfigError, match="unknown node 'nope'"):
        graph.update_state(at, {"step": 2}, as_node="nope")
    with pytest.raises(ConfigError, match="cannot remove 'missing'"):
        graph.update_state(at, {}, remove=["missing"])
    with pytest.raises(ConfigError, match="dict"):
        graph.update_state(at, [("step", 2)])
    with pytest.raises(CheckpointNotFoundError):
        graph.update_state("ck-nope-1", {"step": 2})
    graph.create_checkpoint()
    with pytest.raises(ConfigError, match="restore point"):
        graph.update_state(graph.list_checkpoints()[0].checkpoint_id, {"step": 2})
    assert len(graph.backend.executions(graph_id="loop")) == executions + 1  # only the restore point


def test_update_state_refuses_to_rerun_a_node_not_safe_to_rerun(store: str) -> None:
    graph = wrapped(store, unsafe_nodes={"finish"})
    run(graph, 3)
    at = at_count(graph, 2)  # before finish ran
    with pytest.raises(UnsafeToRetryError, match="'finish'"):
        graph.update_state(at, {"step": 5})
    fork = graph.update_state(at, {"step": 5}, allow_unsafe_rerun=True)
    assert fork.extras["state_update"]["allow_unsafe_rerun"] is True
    hg.SEEN.clear()
    result = asyncio.run(graph.continue_from_checkpoint(fork.checkpoint_id))
    assert result.content == {"total": 2 + 5, "count": 3}
    assert [node for node, _ in hg.SEEN] == ["tick", "finish"]


def test_run_with_recovery_does_not_resume_an_update_fork(store: str) -> None:
    graph = wrapped(store)
    run(graph, 3)
    graph.update_state(at_count(graph, 2), {"step": 50})
    result = asyncio.run(wrapped(store).run_with_recovery({"n": 3}))
    assert result.content == {"total": 3, "count": 3}  # a run of its own, not the edited fork


def test_a_sigkill_while_continuing_an_update_fork_is_recovered(store: str, tmp_path: Path) -> None:
    graph = wrapped(store)
    run(graph, 6)
    at = at_count(graph, 2)
    fork = graph.update_state(at, {"step": 10})
    calls = tmp_path / "calls.txt"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_CKPT_TEST_")}
    environ.update(SPARK_CKPT_TEST_CALLS=str(calls), SPARK_CKPT_TEST_CRASH="tick:4")
    first = subprocess.run([sys.executable, str(WORKER), "continue", store, "loop", fork.checkpoint_id],
                           env=environ, capture_output=True, text=True, timeout=120)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert calls.read_text().split() == ["tick:3", "tick:4"]
    environ.pop("SPARK_CKPT_TEST_CRASH")
    second = subprocess.run([sys.executable, str(WORKER), "recover", store, "loop", fork.execution_id],
                            env=environ, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr[-3000:]
    out = json.loads(second.stdout.strip().splitlines()[-1])
    bare_result, bare_state = bare_run({**at.values, "step": 10}, 6)
    assert out["result"] == bare_result == {"total": 2 + 4 * 10, "count": 6}
    assert out["state"] == json.loads(json.dumps(bare_state)) and out["execution"] == fork.execution_id
    # tick 3 completed before the kill and was replayed; the killed visit ran again
    assert calls.read_text().split() == ["tick:3", "tick:4", "tick:4", "tick:5", "tick:6", "finish:end"]
    assert graph.backend.execution_head(fork.execution_id).status == "completed"


# -- the command line -----------------------------------------------------------------------------------
def cli(store: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spark_ckpt.cli", "--store", store, *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_show_whole_and_diff(store: str) -> None:
    graph = wrapped(store)
    _, seen = run(graph, LONG)
    history = list(graph.get_state_history())
    partial = next(s for s in history if decoded(graph, s.checkpoint_id).partial_state)
    shown = cli(store, "show", partial.checkpoint_id, "--whole", "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["whole"] is True and data["checkpoint"]["partial_state"] is False
    assert data["checkpoint"]["graph_state"] == expected_at(partial, seen)
    assert len(data["checkpoint"]["execution_history"]) == partial.superstep + 1
    text = cli(store, "show", partial.checkpoint_id, "--whole")
    assert text.returncode == 0 and "graph state (5 keys)" in text.stdout and "changed since" not in text.stdout
    plain = cli(store, "show", partial.checkpoint_id)  # without --whole: what the record stores
    assert "changed since the previous checkpoint" in plain.stdout

    a, b = at_count(graph, 2), history[0]
    diffed = cli(store, "diff", a.checkpoint_id, b.checkpoint_id, "--json")
    assert diffed.returncode == 0, diffed.stderr
    d = json.loads(diffed.stdout)
    assert d["relation"] == "same execution"
    assert d["graph_state"]["added"] == {"done": True} and d["graph_state"]["removed"] == {"scratch": "x"}
    assert d["graph_state"]["changed"]["count"] == {"from": 2, "to": LONG}
    assert d["nodes"]["tick"]["process_count"] == {"from": 2, "to": LONG}
    assert [(v["node"], v["visit"]) for v in d["visits"]] == [("tick", i) for i in range(2, LONG)] + [("finish", 0)]

    fork = graph.update_state(a.checkpoint_id, {"step": 7})
    d = json.loads(cli(store, "diff", a.checkpoint_id, fork.checkpoint_id, "--json").stdout)
    assert d["relation"] == "B forked from A by update_state()"
    assert d["graph_state"] == {"added": {"step": 7}, "removed": {}, "changed": {}} and d["visits"] == []
    text = cli(store, "diff", a.checkpoint_id, b.checkpoint_id)
    assert text.returncode == 0 and "+ done: true" in text.stdout and '- scratch: "x"' in text.stdout

    missing = cli(store, "diff", a.checkpoint_id, "ck-nope-3")
    assert missing.returncode == 2 and "ck-nope-3" in missing.stderr and "Traceback" not in missing.stderr

