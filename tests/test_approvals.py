"""Approvals and human input across restarts, in real processes: a run stopped at Spark's approval gate
is stored as ``waiting``; the request is approved or rejected in another process (the CLI, or the Python
API); a third process continues past the gate (or fails at it). A human answer is asked once, however
the process that collected it died."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("approval_worker.py")
GRAPH_ID = "gated-approvals"
#: what every node of the gated pipeline executes in a run that passes the gate
PIPELINE_VISITS = ["fetch:0", "transform:0", "transform:1", "transform:2", "transform:3", "publish:0", "report:0"]


def worker(mode: str, graph: str, store: str, tmp_path: Path, calls: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_CKPT_TEST_")}
    environ.update(SPARK_CKPT_TEST_CALLS=str(tmp_path / calls), SPARK_CKPT_TEST_ASKED=str(tmp_path / "asked.txt"), **env)
    return subprocess.run([sys.executable, str(WORKER), mode, graph, store, GRAPH_ID],
                          env=environ, capture_output=True, text=True, timeout=120)


def output(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cli(store: str, *argv: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_CKPT_TEST_")}
    return subprocess.run([sys.executable, "-m", "spark_ckpt.cli", "--store", store, *argv],
                          env=environ, capture_output=True, text=True, timeout=60)


def calls(tmp_path: Path, *names: str) -> list[str]:
    return [line for name in names if (tmp_path / name).exists() for line in (tmp_path / name).read_text().split()]


def open_graph(store: str):
    sys.path.insert(0, str(Path(__file__).parent))
    import approval_graphs

    from spark_ckpt import CheckpointConfig, checkpointed

    return checkpointed(approval_graphs.build("gated"), config=CheckpointConfig(backend=store), graph_id=GRAPH_ID)


def comparable(out: dict) -> dict:
    """A run's outcome without what differs between any two runs (times, Spark's random graph ids,
    approval ids): the policy timeline as (decision, action, subject, rule), the requests by gate."""
    state = dict(out["state"])
    events = [(e["decision"], e["action"], "graph" if e["action"] == "graph:execute_task" else e["subject"]["identifier"],
               e["rule"]) for e in state.pop("policy_events", [])]
    requests = [(r["action"], r["status"], r["metadata"]["spark_ckpt_gate"]["node_key"],
                 r["metadata"]["spark_ckpt_gate"]["visit_index"]) for r in state.pop("approval_requests", [])]
    return {"result": out["result"], "state": state, "outputs": out["outputs"], "events": events, "requests": requests}


@pytest.fixture(params=["sqlite", "file"])
def store(request, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/ckpt.db" if request.param == "sqlite" else f"file://{tmp_path}/ckpt"


def stop_at_gate(store: str, tmp_path: Path) -> str:
    first = output(worker("run", "gated", store, tmp_path, "calls-1.txt"))
    assert set(first) == {"waiting"}, first
    return first["waiting"]


def head_of(store: str):
    from spark_ckpt.config import open_backend

    backend = open_backend(store)
    try:
        (head,) = backend.executions(graph_id=GRAPH_ID)
        return head, [h.checkpoint_id for h in backend.list(graph_id=GRAPH_ID)]
    finally:
        backend.close()


def whole_head(store: str):
    from spark_ckpt.config import CheckpointConfig, open_backend
    from spark_ckpt.engine.records import RecordReader

    backend = open_backend(store)
    try:
        (head,) = backend.executions(graph_id=GRAPH_ID)
        return RecordReader(backend, CheckpointConfig().make_codec()).whole(head)
    finally:
        backend.close()


# -- the waiting status --------------------------------------------------------------------------------
def test_a_run_stopped_at_a_gate_is_stored_waiting_with_sparks_request(tmp_path: Path, store: str) -> None:
    approval_id = stop_at_gate(store, tmp_path)
    head, _ = head_of(store)
    assert head.status == "waiting" and head.unfinished
    record = whole_head(store)
    (request,) = record.graph_state["approval_requests"]
    from spark.governance.approval import ApprovalRequest

    # the request as Spark stored it (all of ApprovalRequest's fields), with the gate's stable identity
    assert set(request) == set(ApprovalRequest.model_fields)
    assert (request["approval_id"], request["status"], request["action"]) == (approval_id, "pending", "node:execute")
    assert request["metadata"]["spark_ckpt_gate"] == {
        "execution_id": head.execution_id, "action": "node:execute", "node_key": "publish", "visit_index": 0}
    # built on the last boundary: the stopped superstep's evaluations are not kept, publish never ran
    assert [e["subject"]["identifier"] for e in record.graph_state["policy_events"]][-1] == "transform"
    assert "published" not in record.graph_state
    assert calls(tmp_path, "calls-1.txt") == PIPELINE_VISITS[:5]
    # the executions index shows it; retention protects it like any unfinished execution
    listed = cli(store, "list", "--executions", "--json")
    assert json.loads(listed.stdout)[0]["status"] == "waiting"
    from spark_ckpt.config import open_backend
    from spark_ckpt.retention import protected_ids

    backend = open_backend(store)
    try:
        assert protected_ids(backend, GRAPH_ID) == {h.checkpoint_id for h in backend.list(graph_id=GRAPH_ID)}
    finally:
        backend.close()


# -- the gate crossed in another process ---------------------------------------------------------------
@pytest.mark.parametrize("crash_at", [None, "publish:0", "report:0"])
def test_approval_gate_crossed_in_a_second_process(tmp_path: Path, store: str, crash_at: str | None) -> None:
    """Process 1 stops at the gate; the CLI (process 2) approves; process 3 recovers and completes (or is
    killed inside a node past the gate, and process 4 completes): as the run that passed the gate without
    stopping, each visit before the gate executed once, and the request approved once."""
    approval_id = stop_at_gate(store, tmp_path)
    listed = cli(store, "approvals", "list", "--json")
    assert [r["approval_id"] for r in json.loads(listed.stdout)] == [approval_id]
    approved = cli(store, "approvals", "approve", approval_id, "--by", "alice", "--notes", "looks fine")
    assert approved.returncode == 0 and approval_id in approved.stdout, approved.stderr
    assert head_of(store)[0].status == "waiting"  # still waiting: continued by recover_and_continue
    if crash_at is None:
        final = output(worker("recover", "gated", store, tmp_path, "calls-3.txt"))
    else:
        third = worker("recover", "gated", store, tmp_path, "calls-3.txt", SPARK_CKPT_TEST_CRASH=crash_at)
        assert third.returncode == -signal.SIGKILL, third.stderr[-2000:]
        final = output(worker("recover", "gated", store, tmp_path, "calls-4.txt"))
    reference = output(worker("reference", "gated", f"sqlite:///{tmp_path}/reference.db", tmp_path, "calls-ref.txt"))
    bare = output(worker("run", "open", f"sqlite:///{tmp_path}/open.db", tmp_path, "calls-open.txt"))
    assert comparable(final) == comparable(reference)
    assert (final["result"], comparable(final)["state"], final["outputs"]) == (
        bare["result"], bare["state"], bare["outputs"])
    assert comparable(final)["requests"] == [("node:execute", "approved", "publish", 0)]
    # Spark's policy timeline: each evaluation once (replayed ones are not recorded again), the gate's as allowed
    assert comparable(final)["events"] == [("allow", "graph:execute_task", "graph", None)] + [
        ("allow", "node:execute", visit.split(":")[0], "publish-needs-approval" if visit == "publish:0" else None)
        for visit in PIPELINE_VISITS]
    (request,) = final["state"]["approval_requests"]
    assert (request["approval_id"], request["decided_by"], request["notes"]) == (approval_id, "alice", "looks fine")
    # executions per node: every visit before the gate once; past it, once more only for a visit killed inside
    executed = calls(tmp_path, "calls-1.txt", "calls-3.txt", "calls-4.txt")
    assert sorted(executed) == sorted(PIPELINE_VISITS + ([crash_at] if crash_at else []))
    assert calls(tmp_path, "calls-1.txt") == PIPELINE_VISITS[:5]
    assert head_of(store)[0].status == "completed"


def test_rejected_gate_fails_the_execution_with_policy_violation(tmp_path: Path, store: str) -> None:
    approval_id = stop_at_gate(store, tmp_path)
    rejected = cli(store, "approvals", "reject", approval_id, "--by", "bob")
    assert rejected.returncode == 0, rejected.stderr
    third = output(worker("recover", "gated", store, tmp_path, "calls-3.txt"))
    assert third["error"] == "PolicyViolationError"
    assert head_of(store)[0].status == "failed"
    assert calls(tmp_path, "calls-3.txt") == []  # the replay ran nothing live, publish never ran
    (request,) = whole_head(store).graph_state["approval_requests"]
    assert (request["status"], request["decided_by"]) == ("rejected", "bob")


def test_pending_gate_stays_waiting_with_the_same_request(tmp_path: Path, store: str) -> None:
    approval_id = stop_at_gate(store, tmp_path)
    first_head, _ = head_of(store)
    again = output(worker("recover", "gated", store, tmp_path, "calls-2.txt"))
    assert again == {"waiting": approval_id}  # the same request, raised again
    head, _ = head_of(store)
    assert head.status == "waiting" and head.seq > first_head.seq
    assert [r["approval_id"] for r in whole_head(store).graph_state["approval_requests"]] == [approval_id]
    assert calls(tmp_path, "calls-2.txt") == []  # nothing ran live


# -- bad input ---------------------------------------------------------------------------------------
def test_bad_resolutions_are_refused_and_change_nothing(tmp_path: Path) -> None:
    from spark_ckpt.errors import ApprovalError, LeaseError

    store = f"sqlite:///{tmp_path}/ckpt.db"
    approval_id = stop_at_gate(store, tmp_path)
    before = head_of(store)
    # unknown id: CLI one line, exit 2; Python API ApprovalError
    unknown = cli(store, "approvals", "approve", "no-such-id")
    assert unknown.returncode == 2 and "no approval request 'no-such-id'" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1 and "Traceback" not in unknown.stderr
    cg = open_graph(store)
    try:
        with pytest.raises(ApprovalError, match="no approval request"):
            asyncio.run(cg.resolve_approval("no-such-id", approved=True))
        # a live worker owns the execution: LeaseError, nothing written
        lease = cg.backend.acquire_lease(before[0].execution_id, "other-host:1:live", 60)
        with pytest.raises(LeaseError):
            asyncio.run(cg.resolve_approval(approval_id, approved=True))
        cg.backend.release_lease(lease)
        assert head_of(store) == before
        # resolved once through the Python API; a second resolution is refused
        listed = asyncio.run(cg.list_approvals())
        assert [(r["approval_id"], r["status"], r["node"]) for r in listed] == [(approval_id, "pending", "publish")]
        done = asyncio.run(cg.resolve_approval(approval_id, approved=True, reviewer="carol"))
        assert (done["status"], done["decided_by"]) == ("approved", "carol")
        after = head_of(store)
        with pytest.raises(ApprovalError, match="already approved by carol"):
            asyncio.run(cg.resolve_approval(approval_id, approved=False))
        twice = cli(store, "approvals", "reject", approval_id)
        assert twice.returncode == 2 and "already approved" in twice.stderr
        assert head_of(store) == after
        assert asyncio.run(cg.list_approvals(status="pending")) == []
    finally:
        cg.close()
    # the execution completes; approving in a non-waiting execution is refused
    output(worker("recover", "gated", store, tmp_path, "calls-3.txt"))
    done_head = head_of(store)
    late = cli(store, "approvals", "approve", approval_id)
    assert late.returncode == 2 and "which is completed, not waiting" in late.stderr
    assert head_of(store) == done_head


def test_policy_graph_without_graph_state_is_refused_before_anything_is_stored(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    import approval_graphs
    import graphs
    from spark.graphs import Graph

    from spark_ckpt import CheckpointConfig, checkpointed
    from spark_ckpt.errors import UnsupportedFeatureError

    graph = Graph(start=graphs.pipeline().start, policy_rules=[approval_graphs.GATE_RULE], enable_graph_state=False)
    cg = checkpointed(graph, config=CheckpointConfig(backend=f"sqlite:///{tmp_path}/c.db"), graph_id="no-state")
    try:
        with pytest.raises(UnsupportedFeatureError, match="graph state disabled"):
            asyncio.run(cg.run({"n": 4}))
        assert cg.backend.list(graph_id="no-state") == []
    finally:
        cg.close()


# -- human input --------------------------------------------------------------------------------------
@pytest.mark.parametrize("crash_after", ["record", "visit"])
def test_human_input_is_asked_once_across_a_sigkill(tmp_path: Path, store: str, crash_after: str) -> None:
    """Killed after the human answered (right after the in-flight record, or after the visit completed),
    before the superstep's record: the recovering process uses the journaled answer."""
    first = worker("run", "asking", store, tmp_path, "calls-1.txt", SPARK_CKPT_TEST_CRASH_AFTER_ANSWER=crash_after)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert (tmp_path / "asked.txt").read_text().split() == ["ask"]
    final = output(worker("recover", "asking", store, tmp_path, "calls-2.txt"))
    assert (tmp_path / "asked.txt").read_text().split() == ["ask"]  # never asked twice
    (tmp_path / "asked.txt").unlink()
    reference = output(worker("run", "asking", f"sqlite:///{tmp_path}/reference.db", tmp_path, "calls-ref.txt"))
    assert (final["result"], final["state"], final["outputs"]) == (
        reference["result"], reference["state"], reference["outputs"])
    assert final["result"] == {"final": "answer-1"}
    # the asking visit's process() runs again (its superstep had no record); s0 and finish once each
    assert calls(tmp_path, "calls-1.txt", "calls-2.txt") == ["s0:0", "ask:0", "ask:0", "finish:0"]
    assert final["replayed"] == ["s0:0"] and final["live"] == ["ask:0", "finish:0"]


def test_task_gate_waits_on_the_start_record_and_passes_once_approved(tmp_path: Path) -> None:
    """A rule on the task itself (``graph:execute_task``) stops the run before any node: waiting on the
    start record; approved, a fresh graph object (as a new process builds it) runs every node once."""
    sys.path.insert(0, str(Path(__file__).parent))
    import graphs
    from spark.governance.approval import ApprovalPendingError
    from spark.governance.policy import PolicyEffect, PolicyRule
    from spark.graphs import Graph

    from spark_ckpt import CheckpointConfig, checkpointed

    rule = PolicyRule(name="task-needs-approval", effect=PolicyEffect.REQUIRE_APPROVAL, actions=["graph:execute_task"])
    store = f"sqlite:///{tmp_path}/task.db"

    def build():
        return checkpointed(Graph(start=graphs.chain(3).start, policy_rules=[rule]),
                            config=CheckpointConfig(backend=store), graph_id="task-gate")

    async def scenario():
        first = build()
        with pytest.raises(ApprovalPendingError) as stopped:
            await first.run({"x": 1})
        approval_id = stopped.value.approval.approval_id
        assert first.backend.executions(graph_id="task-gate")[0].status == "waiting"
        graphs.CALLS.clear()
        assert [r["action"] for r in await build().list_approvals()] == ["graph:execute_task"]
        await build().resolve_approval(approval_id, approved=True, reviewer="dana")
        last = build()
        result = await last.recover_and_continue()
        events = [(e["decision"], e["action"]) for e in last.get_state_snapshot()["policy_events"]]
        return result.content, list(graphs.CALLS), events

    result, executed, events = asyncio.run(scenario())
    assert result == {"step": "s2", "count": 3}
    assert executed == ["s0:0", "s1:0", "s2:0"]
    assert events == [("allow", "graph:execute_task")] + [("allow", "node:execute")] * 3


def test_a_gate_resolved_through_sparks_own_approval_manager_is_honoured(tmp_path: Path) -> None:
    """Spark's way: restore the waiting checkpoint, resolve the request with the graph's approval manager,
    then recover_and_continue(): the resolution is stored first, so the run passes the gate."""
    import asyncio

    from spark.governance.approval import ApprovalStatus

    store = f"sqlite:///{tmp_path}/ckpt.db"
    approval_id = stop_at_gate(store, tmp_path)
    graph = open_graph(store)
    graph.restore_from_checkpoint(graph.get_last_checkpoint())
    asyncio.run(graph.graph._approval_manager.resolve_request(approval_id, status=ApprovalStatus.APPROVED,
                                                              reviewer="carol"))
    result = asyncio.run(graph.recover_and_continue())
    assert result is not None and head_of(store)[0].status == "completed"
    assert ("publish", 0) in graph.last_recovery.live
    (request,) = whole_head(store).graph_state["approval_requests"]
    assert (request["status"], request["decided_by"]) == ("approved", "carol")
