"""Retention rules and prune(): what they delete, and what they must never delete."""

from __future__ import annotations

import time

import pytest

from spark_ckpt.backends.memory import MemoryBackend
from spark_ckpt.backends.sqlite import SqliteBackend
from spark_ckpt.config import CheckpointConfig
from spark_ckpt.model import COMPLETED, FAILED
from spark_ckpt.retention import (
    AgeRetention,
    CountRetention,
    plan_prune,
    protected_ids,
    prune,
)
from spark_ckpt.testing.conformance import make_header


@pytest.fixture(params=["memory", "sqlite"])
def backend(request, tmp_path):
    store = MemoryBackend() if request.param == "memory" else SqliteBackend(tmp_path / "ckpt.db")
    yield store
    store.close()


def store(backend, *headers):
    for header in headers:
        backend.put(header, header.checkpoint_id.encode())


def remaining(backend, **filters) -> set[str]:
    return {h.checkpoint_id for h in backend.list(**filters)}


def test_count_keeps_newest_and_protects_unfinished(backend):
    """keep=1 deletes all but the graph's newest, except any checkpoint of an unfinished execution."""
    store(
        backend,
        *(make_header(seq, execution_id="crashed", created_at=100.0 + seq) for seq in range(5)),
        *(make_header(seq, execution_id="done", created_at=200.0 + seq) for seq in range(2)),
        make_header(2, execution_id="done", created_at=202.0, status=COMPLETED),
    )
    deleted = prune(backend, CheckpointConfig(retention_count=1).make_retention_rules())
    assert {h.checkpoint_id for h in deleted} == {"done-0", "done-1"}
    assert remaining(backend) == {"done-2"} | {f"crashed-{seq}" for seq in range(5)}


def test_count_per_graph(backend):
    """The count applies per graph; one graph's checkpoints never crowd out another's."""
    store(
        backend,
        *(make_header(seq, graph_id="g1", execution_id="a", status=COMPLETED) for seq in range(3)),
        *(make_header(seq, graph_id="g2", execution_id="b", status=COMPLETED) for seq in range(3)),
    )
    prune(backend, [CountRetention(CheckpointConfig(retention_count=2))])
    assert remaining(backend) == {"a-2", "a-1", "b-2", "b-1"}


def test_age_deletes_old_but_protects_unfinished(backend):
    """Checkpoints older than the limit go, except those of an unfinished (failed) execution."""
    now = time.time()
    old = now - 3600
    store(
        backend,
        *(make_header(seq, execution_id="failed", created_at=old + seq, status=FAILED) for seq in range(4)),
        *(make_header(seq, execution_id="finished", created_at=old + seq) for seq in range(2)),
        make_header(2, execution_id="finished", created_at=old + 2, status=COMPLETED),
        make_header(0, execution_id="recent", created_at=now, status=COMPLETED),
    )
    deleted = prune(backend, CheckpointConfig(retention_max_age_s=60).make_retention_rules())
    assert {h.checkpoint_id for h in deleted} == {"finished-0", "finished-1", "finished-2"}
    assert remaining(backend) == {f"failed-{seq}" for seq in range(4)} | {"recent-0"}


def test_age_rule_with_explicit_now():
    """AgeRetention compares created_at with the given now; protected ids are skipped."""
    headers = [make_header(seq, created_at=float(seq)) for seq in range(5)]
    rule = AgeRetention(CheckpointConfig(retention_max_age_s=2))
    doomed = rule.select_for_deletion(headers, protected={"exec-1-0"}, now=4.5)
    assert [h.checkpoint_id for h in doomed] == ["exec-1-1", "exec-1-2"]


def test_dry_run_deletes_nothing(backend):
    """dry_run reports exactly what a real run deletes, and deletes nothing."""
    store(backend, *(make_header(seq, status=COMPLETED) for seq in range(5)))
    rules = CheckpointConfig(retention_count=2).make_retention_rules()
    before = backend.list()
    planned = prune(backend, rules, dry_run=True)
    assert [h.checkpoint_id for h in planned] == ["exec-1-2", "exec-1-1", "exec-1-0"]
    assert backend.list() == before
    assert prune(backend, rules) == planned
    assert remaining(backend) == {"exec-1-4", "exec-1-3"}


def test_prune_scoped_to_one_graph(backend):
    """prune(graph_id=...) leaves other graphs alone."""
    store(
        backend,
        *(make_header(seq, graph_id="g1", execution_id="a", status=COMPLETED) for seq in range(3)),
        *(make_header(seq, graph_id="g2", execution_id="b", status=COMPLETED) for seq in range(3)),
    )
    prune(backend, CheckpointConfig(retention_count=1).make_retention_rules(), graph_id="g1")
    assert remaining(backend, graph_id="g1") == {"a-2"}
    assert remaining(backend, graph_id="g2") == {"b-0", "b-1", "b-2"}


def test_highest_seq_protected_even_if_clock_went_back(backend):
    """The checkpoint recovery resumes from (highest seq) is protected even when its timestamp is older."""
    store(
        backend,
        make_header(0, created_at=100.0),
        make_header(1, created_at=300.0),
        make_header(2, created_at=290.0),
        make_header(3, created_at=200.0),  # clock stepped back: newest by seq, not by time
    )
    assert protected_ids(backend, None) >= {"exec-1-3"}
    prune(backend, CheckpointConfig(retention_count=1).make_retention_rules())
    assert "exec-1-3" in remaining(backend)
    assert backend.executions()[0].checkpoint_id == "exec-1-3"


def test_no_rules_plan_nothing(backend):
    """Without rules nothing is planned; a count of None selects nothing."""
    store(backend, *(make_header(seq, status=COMPLETED) for seq in range(3)))
    assert plan_prune(backend, []) == []
    assert CountRetention(CheckpointConfig()).select_for_deletion(backend.list(), set()) == []


def test_graph_pruning_leaves_agent_records_alone(backend):
    """Agent records form delta chains only the agent adapter understands: generic pruning skips them."""
    import attrs

    store(
        backend,
        *(attrs.evolve(make_header(seq, graph_id="bot", execution_id=f"a{seq}", status=COMPLETED), kind="agent")
          for seq in range(4)),
        *(make_header(seq, graph_id="bot", execution_id="g", status=COMPLETED) for seq in range(4)),
    )
    doomed = prune(backend, CheckpointConfig(retention_count=1).make_retention_rules(), graph_id="bot")
    assert doomed and all(h.kind == "graph" for h in doomed)
    assert {h.execution_id for h in backend.list(graph_id="bot") if h.kind == "agent"} == {"a0", "a1", "a2", "a3"}
