"""The guide's API on CheckpointedGraph: manual checkpoints, restore, skip, continue, policies, hooks."""

from __future__ import annotations

import asyncio

import pytest
from spark.graphs import Graph
from spark.nodes import Node

import graphs
from spark_ckpt import CheckpointConfig, checkpoint_now, checkpointed, hookimpl
from spark_ckpt.codec import new_key
from spark_ckpt.errors import RunStopped, SparkCkptError
from spark_ckpt.model import GraphCheckpoint
from spark_ckpt.plugins import get_plugin_manager

SIGNING_KEY = new_key()  # (a constant key such as b"k" * 32 is refused as weak)


@pytest.fixture
def sqlite_config(tmp_path) -> CheckpointConfig:
    return CheckpointConfig(backend="sqlite", path=str(tmp_path / "api.db"))


@pytest.fixture
def plugin():
    """Register a test plugin for one test, always unregister it."""
    registered = []

    def register(obj):
        get_plugin_manager().register(obj)
        registered.append(obj)
        return obj

    yield register
    for obj in registered:
        get_plugin_manager().unregister(obj)


def _fail_at(graph, visit: str, monkeypatch, inputs=None) -> None:
    """Run ``graph`` so that ``visit`` ("node:index") raises RuntimeError, then stop failing."""
    monkeypatch.setenv("SPARK_CKPT_TEST_FAIL", visit)
    with pytest.raises(RuntimeError):
        asyncio.run(graph.run({} if inputs is None else inputs))
    monkeypatch.delenv("SPARK_CKPT_TEST_FAIL")


def test_recover_after_in_process_failure_skips_completed_visits(sqlite_config, monkeypatch) -> None:
    """Same process: a failed run is recovered; visits before the failure are replayed, not re-executed."""
    graph = checkpointed(graphs.chain(5), config=sqlite_config, graph_id="inproc")
    _fail_at(graph, "s3:0", monkeypatch)
    graphs.CALLS.clear()
    result = asyncio.run(graph.recover_and_continue())
    assert graphs.CALLS == ["s3:0", "s4:0"]
    assert graph.last_recovery.replayed == [("s0", 0), ("s1", 0), ("s2", 0)]
    assert result.content == {"step": "s4", "count": 5}
    assert graph.get_state_snapshot()["count"] == 5
    assert graph.backend.executions(graph_id="inproc")[0].status == "completed"


def test_run_and_recovery_write_only_derived_checkpoint_ids(sqlite_config, monkeypatch) -> None:
    """Every record of a failed run and of its recovery (start, boundary, failure, final) carries the
    id derived from (execution, seq), which SQLite finds without a separate id index."""
    from spark_ckpt.backends.sqlite import _CANONICAL
    from spark_ckpt.model import canonical_checkpoint_id

    graph = checkpointed(graphs.chain(4), config=sqlite_config, graph_id="ids")
    _fail_at(graph, "s2:0", monkeypatch)
    asyncio.run(graph.recover_and_continue())
    headers = graph.list_checkpoints()
    assert {h.status for h in headers} >= {"running", "failed", "completed"}
    assert all(h.checkpoint_id == canonical_checkpoint_id(h.execution_id, h.seq) for h in headers)
    conn = graph.backend._conn
    assert conn.execute(f"SELECT count(*) FROM checkpoints WHERE NOT {_CANONICAL}").fetchone()[0] == 0
    assert graph.get_checkpoint(offset=1).checkpoint_id == headers[1].checkpoint_id


def test_failed_checkpoint_records_the_failing_visit(sqlite_config, monkeypatch) -> None:
    """The failure checkpoint names the node, the error and keeps the boundary state."""
    graph = checkpointed(graphs.chain(4), config=sqlite_config, graph_id="failrec")
    _fail_at(graph, "s2:0", monkeypatch)
    last = graph.get_last_checkpoint()
    assert last.status == "failed"
    assert (last.failure.node_key, last.failure.error_type) == ("s2", "RuntimeError")
    assert last.failure.input["content"] == {"step": "s1", "count": 2}
    assert last.graph_state["count"] == 2  # the failing node's own write is not kept
    assert graph.get_current_node() == "s2"


def test_restore_skip_and_continue(sqlite_config, monkeypatch) -> None:
    """The guide's manual recovery: restore, find the failed node, skip it, continue."""
    graph = checkpointed(graphs.chain(4), config=sqlite_config, graph_id="skip")
    monkeypatch.setenv("SPARK_CKPT_TEST_FAIL", "s2:0")
    with pytest.raises(RuntimeError):
        asyncio.run(graph.run({}))
    checkpoint = graph.get_last_checkpoint()
    graph.restore_from_checkpoint(checkpoint.checkpoint_id)
    failed = graph.get_current_node()
    graph.skip_node(failed)
    graphs.CALLS.clear()
    result = asyncio.run(graph.continue_from_checkpoint())  # s2 would fail again: it is skipped
    assert graphs.CALLS == ["s3:0"]
    assert graph.last_recovery.skipped == [("s2", 0)]
    assert result.content == {"step": "s3", "count": 3}


def test_skip_node_with_explicit_output(sqlite_config, monkeypatch) -> None:
    """skip_node(node, output=...) feeds that output to the successors."""
    graph = checkpointed(graphs.chain(3), config=sqlite_config, graph_id="skip-out")
    monkeypatch.setenv("SPARK_CKPT_TEST_FAIL", "s1:0")
    with pytest.raises(RuntimeError):
        asyncio.run(graph.run({}))
    graph.skip_node("s1", output={"step": "manual", "count": 41})
    result = asyncio.run(graph.recover_and_continue())
    assert result.content == {"step": "s2", "count": 2}
    history = graph.get_last_checkpoint().execution_history
    assert [(v.node_key, v.status) for v in history] == [("s0", "completed"), ("s1", "skipped"), ("s2", "completed")]
    assert history[1].output["content"] == {"step": "manual", "count": 41}


def test_continue_from_an_older_checkpoint_forks_a_new_execution(sqlite_config) -> None:
    """Continuing from a checkpoint that is not the newest never rewrites the old execution's history."""
    graph = checkpointed(graphs.chain(4), config=sqlite_config, graph_id="fork")
    asyncio.run(graph.run({}))
    original = graph.list_checkpoints()
    older = graph.get_checkpoint(offset=2)
    graphs.CALLS.clear()
    result = asyncio.run(graph.continue_from_checkpoint(older.checkpoint_id))
    assert result.content == {"step": "s3", "count": 4}  # state restored to the older checkpoint, then s2, s3 ran
    assert graph.last_recovery.execution_id != older.execution_id
    assert graphs.CALLS == [f"s{i}:0" for i in range(len(older.execution_history), 4)]
    after = graph.list_checkpoints(execution_id=older.execution_id)
    assert [h.checkpoint_id for h in after] == [h.checkpoint_id for h in original]


def test_manual_checkpoints_save_and_load(sqlite_config, tmp_path) -> None:
    """create_checkpoint / save_checkpoint / load_from_checkpoint / get_checkpoint(offset=)."""
    graph = checkpointed(graphs.chain(3), config=sqlite_config, graph_id="manual")
    asyncio.run(graph.run({}))
    manual = graph.create_checkpoint()
    assert isinstance(manual, GraphCheckpoint) and manual.graph_state["count"] == 3
    assert graph.get_last_checkpoint().checkpoint_id == manual.checkpoint_id
    assert graph.get_checkpoint(offset=1).status == "completed"
    path = graph.save_checkpoint(tmp_path / "manual.ckpt", manual)
    fresh = checkpointed(graphs.chain(3), config=CheckpointConfig(backend="memory://"), graph_id="manual")
    loaded = fresh.load_from_checkpoint(path)
    assert loaded == manual
    assert fresh.get_state_snapshot() == graph.get_state_snapshot()
    assert fresh._nodes_by_key["s1"].state["visits"] == 1


def test_list_checkpoints_limit_and_order(sqlite_config) -> None:
    graph = checkpointed(graphs.chain(4), config=sqlite_config, graph_id="listing")
    asyncio.run(graph.run({}))
    headers = graph.list_checkpoints(limit=3)
    assert len(headers) == 3
    assert [h.seq for h in headers] == sorted((h.seq for h in headers), reverse=True)
    assert headers[0].status == "completed"
    assert len(graph.list_checkpoints()) == 5  # start + one per superstep (the last is final)


def test_state_snapshot_is_a_deep_copy(sqlite_config) -> None:
    graph = checkpointed(graphs.pipeline(), config=sqlite_config, graph_id="snap")
    asyncio.run(graph.run({"n": 2}))
    snap = graph.get_state_snapshot()
    snap["items"].append("mutated")
    assert "mutated" not in graph.get_state_snapshot()["items"]


class Milestones(Node):
    async def process(self, context):
        i = context.inputs.content.get("i", 0) + 1
        if i in (2, 4):
            if i == 2:
                await checkpoint_now()
            else:
                await context.create_checkpoint()  # the guide's spelling
        return {"i": i, "more": i < 5}


def milestone_graph() -> Graph:
    node = Milestones(id="m")
    node.on(more=True) >> node
    return Graph(start=node)


def test_event_strategy_checkpoints_only_when_asked(tmp_path) -> None:
    """strategy="event": checkpoints at checkpoint_now()/context.create_checkpoint() (+ start and final)."""
    graph = checkpointed(milestone_graph(), config=CheckpointConfig(backend="sqlite", path=str(tmp_path / "e.db"),
                                                                    strategy="event"), graph_id="events")
    asyncio.run(graph.run({"i": 0}))
    history_lengths = sorted(len(graph.get_checkpoint(offset=i).execution_history)
                             for i in range(len(graph.list_checkpoints())))
    assert history_lengths == [0, 2, 4, 5]


def test_checkpoint_now_outside_a_run_is_a_clear_error() -> None:
    with pytest.raises(SparkCkptError, match="inside a node"):
        asyncio.run(checkpoint_now())


@pytest.mark.parametrize("strategy,interval,expected", [("iteration", 2, 4), ("iteration", 1, 6), ("time", 3600, 2)])
def test_policies(tmp_path, strategy, interval, expected) -> None:
    """iteration every N supersteps; time every N seconds (checked at boundaries); start+final always."""
    graph = checkpointed(graphs.chain(5), config=CheckpointConfig(backend="sqlite", path=str(tmp_path / "p.db"),
                                                                  strategy=strategy, interval=interval), graph_id="pol")
    asyncio.run(graph.run({}))
    assert len(graph.list_checkpoints()) == expected


@pytest.mark.parametrize("strategy,interval", [("iteration", 1), ("iteration", 3), ("time", 0.5), ("event", 1)])
def test_builtin_policy_due_answers_like_should_checkpoint(strategy, interval) -> None:
    """The adapter asks ``due()`` at a plain superstep boundary when no hook is registered: it must give
    the policy's own ``should_checkpoint`` answer for that boundary."""
    from spark_ckpt.events import CheckpointDecision

    policy = CheckpointConfig(strategy=strategy, interval=interval).make_policy()
    answers = set()
    for since, seconds in [(1, 0.0), (2, 0.1), (3, 0.5), (4, 2.0), (7, 0.49)]:
        decision = CheckpointDecision(graph_id="g", execution_id="e", reason="superstep", superstep=since,
                                      supersteps_since_last=since, seconds_since_last=seconds,
                                      strategy=strategy, interval=interval)
        assert policy.due(since, seconds) is policy.should_checkpoint(decision)
        answers.add(policy.due(since, seconds))
    assert answers == ({False} if strategy == "event" else {True} if (strategy, interval) == ("iteration", 1) else {True, False})


@pytest.mark.parametrize("durability", ["async", "exit"])
def test_durability_modes_store_the_same_final_checkpoint(tmp_path, durability) -> None:
    graph = checkpointed(graphs.pipeline(), config=CheckpointConfig(backend="sqlite", path=str(tmp_path / "d.db"),
                                                                    durability=durability), graph_id="dur")
    result = asyncio.run(graph.run({"n": 3}))
    last = graph.get_last_checkpoint()
    assert last.status == "completed" and last.result["content"] == result.content
    if durability == "exit":
        assert len(graph.list_checkpoints()) == 1  # written once, at the end


def test_retention_count_prunes_finished_runs_only(tmp_path, monkeypatch) -> None:
    """retention_count keeps the newest N, never the checkpoints an unfinished execution needs."""
    config = CheckpointConfig(backend="sqlite", path=str(tmp_path / "r.db"), retention_count=3)
    graph = checkpointed(graphs.chain(3), config=config, graph_id="ret")
    _fail_at(graph, "s1:0", monkeypatch)
    failed_execution = graph.backend.executions(graph_id="ret")[0].execution_id
    for _ in range(3):
        asyncio.run(graph.run({}))
    headers = graph.list_checkpoints()
    kept_of_failed = [h for h in headers if h.execution_id == failed_execution]
    assert len(kept_of_failed) == 3  # start, s0's superstep, failure: recovery still needs them all
    assert len(headers) == 3 + 3
    asyncio.run(graph.recover_and_continue(execution_id=failed_execution))


def test_decorator_on_a_factory(tmp_path) -> None:
    @checkpointed(config=CheckpointConfig(backend="sqlite", path=str(tmp_path / "f.db")), graph_id="factory")
    def make():
        return graphs.chain(2)

    graph = make()
    assert type(graph).__name__ == "CheckpointedGraph" and graph.graph_id == "factory"
    assert asyncio.run(graph.run({})).content["count"] == 2


def test_hooks_see_every_visit_live_and_replayed(sqlite_config, plugin, monkeypatch) -> None:
    """pre/post node hooks (sync and async implementations) see live and replayed visits; on_failure fires."""
    seen = []

    class Observer:
        @hookimpl
        def spark_ckpt_pre_node(self, event):
            seen.append(("pre", event.node_key, event.visit_index, event.replayed))

        @hookimpl
        async def spark_ckpt_post_node(self, event):
            await asyncio.sleep(0)
            seen.append(("post", event.node_key, event.visit_index, event.replayed, event.output.content["count"]))

        @hookimpl
        def spark_ckpt_on_failure(self, event):
            seen.append(("failure", event.node_key, event.error_type))

    plugin(Observer())
    graph = checkpointed(graphs.chain(3), config=sqlite_config, graph_id="hooks")
    _fail_at(graph, "s1:0", monkeypatch)
    asyncio.run(graph.recover_and_continue())
    assert seen == [
        ("pre", "s0", 0, False), ("post", "s0", 0, False, 1),
        ("pre", "s1", 0, False), ("failure", "s1", "RuntimeError"),
        ("pre", "s0", 0, True), ("post", "s0", 0, True, 1),
        ("pre", "s1", 0, False), ("post", "s1", 0, False, 2),
        ("pre", "s2", 0, False), ("post", "s2", 0, False, 3),
    ]


def test_failing_plugin_never_masks_the_users_exception(sqlite_config, plugin, monkeypatch) -> None:
    class Broken:
        @hookimpl
        def spark_ckpt_on_failure(self, event):
            raise ValueError("plugin bug")

        @hookimpl
        def spark_ckpt_post_node(self, event):
            raise KeyError("another plugin bug")

    plugin(Broken())
    graph = checkpointed(graphs.chain(3), config=sqlite_config, graph_id="broken-plugin")
    assert asyncio.run(graph.run({})).content["count"] == 3  # post_node errors are contained
    monkeypatch.setenv("SPARK_CKPT_TEST_FAIL", "s1:1")  # s1's second visit (this node's visit count carries over)
    with pytest.raises(RuntimeError, match="injected failure in s1"):
        asyncio.run(graph.run({}))
    assert graph.get_last_checkpoint().status == "failed"


def test_should_checkpoint_plugin_and_run_stopped(sqlite_config, plugin) -> None:
    """A firstresult should_checkpoint plugin overrides the policy; RunStopped from a hook stops the run."""

    class NeverExceptFinal:
        @hookimpl
        def spark_ckpt_should_checkpoint(self, decision):
            return decision.reason == "final"

    class StopAtS2:
        @hookimpl
        def spark_ckpt_pre_node(self, event):
            if event.node_key == "s2":
                raise RunStopped("budget exhausted at s2")

    plugin(NeverExceptFinal())
    graph = checkpointed(graphs.chain(3), config=sqlite_config, graph_id="decide")
    asyncio.run(graph.run({}))
    assert len(graph.list_checkpoints()) == 2  # start + final
    plugin(StopAtS2())
    with pytest.raises(RunStopped, match="budget"):
        asyncio.run(graph.run({}))


class Counter(Node):
    async def process(self, context):
        i = context.inputs.content.get("i", 0) + 1
        await context.graph_state.set("i", i)
        return {"i": i, "more": i < 150}


def test_long_runs_store_each_visit_once(tmp_path, monkeypatch) -> None:
    """Checkpoints hold only the visits since the previous one: storage grows linearly with the run,
    and any checkpoint still reads back with its whole history (also after a crash-free recovery)."""
    from spark_ckpt.engine import record_builder

    monkeypatch.setattr(record_builder, "FULL_HISTORY_EVERY", 40)
    node = Counter(id="counter")
    node.on(more=True) >> node
    graph = checkpointed(Graph(start=node), config=CheckpointConfig(
        backend="sqlite", path=str(tmp_path / "l.db"), retention_count=None), graph_id="long")
    asyncio.run(graph.run({"i": 0}))
    headers = graph.list_checkpoints()
    stored = [graph._decode(graph.backend.get(h.checkpoint_id).blob, h) for h in headers]
    visits_stored = sum(len(r.execution_history) for r in stored)
    # each visit once in the deltas, plus the periodic records (every 40) and the final one, which
    # hold the visits since the whole record before the last one: linear in the run length (storing
    # the whole history every time would be 150*151/2 = 11325)
    periodic = [r for r in stored if "history_from" in r.extras]
    final = max(stored, key=lambda r: r.seq)
    assert len(periodic) == 4 and all(len(r.execution_history) <= 2 * 40 + 2 for r in periodic)
    assert final in periodic and final.history_start > 0
    assert [v.index for v in graph.get_checkpoint().execution_history] == list(range(150))
    changes_only = [r for r in stored if r not in periodic]
    assert sum(len(r.execution_history) for r in changes_only) == 150 - 1 - 3  # (final, periodic: own visit)
    assert visits_stored < 4 * 150
    middle = graph.get_checkpoint(offset=70)
    assert [v.index for v in middle.execution_history] == list(range(len(middle.execution_history)))
    assert middle.graph_state["i"] == len(middle.execution_history)


def test_recovery_refuses_a_live_owner_or_waits_for_it(sqlite_config, monkeypatch) -> None:
    """Another live worker holds the execution: LeaseError at once, or wait=True waits for its lease."""
    from spark_ckpt.backends.leases import worker_identity
    from spark_ckpt.errors import LeaseError

    graph = checkpointed(graphs.chain(3), config=sqlite_config, graph_id="owned")
    _fail_at(graph, "s1:0", monkeypatch)
    execution_id = graph.backend.executions(graph_id="owned")[0].execution_id
    other = worker_identity()  # this very process, so it counts as alive
    graph.backend.acquire_lease(execution_id, other, 0.4)
    with pytest.raises(LeaseError, match="owned by worker"):
        asyncio.run(graph.recover_and_continue())
    graphs.CALLS.clear()
    assert asyncio.run(graph.recover_and_continue(wait=True)).content["count"] == 3
    assert graphs.CALLS == ["s1:0", "s2:0"]


class FlushingStep(Node):
    """Flushes from inside the run, then records how many checkpoints the store holds."""

    owner = None

    async def process(self, context):
        if self.id == "s2":
            await FlushingStep.owner.flush()
            FlushingStep.stored = len(FlushingStep.owner.list_checkpoints())
        return {"step": self.id}


@pytest.mark.parametrize("durability", ["exit", "async"])
def test_flush_makes_pending_checkpoints_durable(tmp_path, durability) -> None:
    """durability "exit" keeps checkpoints in memory and "async" writes behind: flush() stores them now."""
    nodes = [FlushingStep(id=f"s{i}") for i in range(4)]
    for a, b in zip(nodes, nodes[1:]):
        a >> b
    graph = checkpointed(Graph(start=nodes[0]), config=CheckpointConfig(
        backend="sqlite", path=str(tmp_path / "f.db"), durability=durability), graph_id="flush")
    FlushingStep.owner = graph
    asyncio.run(graph.run({}))
    # at s2 (superstep 2): the start record and the checkpoints of supersteps 0 and 1 were taken
    if durability == "exit":
        assert FlushingStep.stored == 1  # the newest one (each holds everything), written by flush()
    else:
        assert FlushingStep.stored == 3
    assert graph.get_last_checkpoint().status == "completed"


@pytest.mark.parametrize("serializer", ["json", "pickle"])
def test_checkpoints_store_only_the_state_that_changed(tmp_path, serializer) -> None:
    """A superstep's checkpoint holds the graph state keys and nodes that changed, not the whole state:
    a large value no visit touches, like the run's large input, is written by the whole records
    only (the start record, the one after it, the final one). Read back (or saved to a file), every checkpoint has the whole state as the run had
    it and the run's input; one whose chain lost a link is refused. (With JSON, changed values go in
    already encoded; other serializers get the values.)"""
    import json

    from spark.graphs.hooks import GraphLifecycleEvent

    from spark_ckpt.adapters.graph import _load_run_input
    from spark_ckpt.errors import CorruptCheckpointError

    config = CheckpointConfig(backend="sqlite", path=str(tmp_path / "changes.db"), serializer=serializer,
                              pickle_signing_key=SIGNING_KEY if serializer == "pickle" else None)
    graph = checkpointed(graphs.mutating(), config=config, graph_id="changes")
    seen: dict[int, str] = {}  # superstep -> the whole state after it, as the run had it
    graph.graph.register_hook(GraphLifecycleEvent.AFTER_ITERATION, lambda ctx: seen.setdefault(
        ctx.iteration_index, json.dumps(ctx.graph.state.get_snapshot(), sort_keys=True)))
    run_input = {"doc": "d" * 60_000}
    asyncio.run(graph.run(run_input))

    headers = sorted(graph.list_checkpoints(), key=lambda h: h.seq)
    start, after_start, *middle, final = headers
    assert start.size > 110_000 and after_start.size > 110_000 and final.size > 110_000
    assert middle and all(h.size < 5_000 for h in middle)
    for offset, header in enumerate(reversed(headers[1:])):
        record = graph.get_checkpoint(offset=offset)
        assert record.seq == header.seq and not record.partial_state
        assert json.dumps(record.graph_state, sort_keys=True) == seen[record.superstep]
        assert set(record.node_states) == {"mutate"}
        assert _load_run_input(record.run_input) == run_input
    assert "scratch" not in graph.get_checkpoint(offset=1).graph_state  # deleted, not resurrected by older records
    saved = graph.load_from_checkpoint(graph.save_checkpoint(tmp_path / "middle.ckpt", middle[-1].checkpoint_id),
                                       restore=False)
    assert _load_run_input(saved.run_input) == run_input and not saved.appended_state

    graph.backend.delete([middle[0].checkpoint_id])
    with pytest.raises(CorruptCheckpointError, match="incomplete without earlier checkpoints"):
        graph.get_checkpoint(offset=1)
    assert graph.get_checkpoint(offset=0).status == "completed"  # the final record stands alone


def test_spark_bookkeeping_keys_stay_out_of_checkpoints(sqlite_config) -> None:
    """Spark's own graph state keys (schema version, mailboxes) are not stored, as ``get_snapshot``
    leaves them out; a user key that merely starts with "__" is stored like any other."""

    class Post(Node):
        async def process(self, context):
            context.graph_state.get_raw()["__mailbox__:inbox"] = [context.inputs.content]
            await context.graph_state.set("__private", (await context.graph_state.get("__private", 0)) + 1)
            return {}

    first, second = Post(id="first"), Post(id="second")
    first >> second
    graph = checkpointed(Graph(start=first), config=sqlite_config, graph_id="bookkeeping")
    asyncio.run(graph.run({"hello": 1}))
    records = [graph.get_checkpoint(offset=i) for i in range(len(graph.list_checkpoints()))]
    assert [r.graph_state for r in records] == [{"__private": 2}, {"__private": 1}, {}]  # newest first
    assert "__mailbox__:inbox" in graph.graph.state.get_raw()  # it was there, and left out


@pytest.mark.parametrize("fail_at", ["mutate:1", "mutate:3"])
def test_recovery_from_a_failure_record_keeps_changed_state_exact(sqlite_config, monkeypatch, fail_at) -> None:
    """A failure record stands on the last boundary checkpoint, which may hold only changes (items
    appended to a list among them): recovering from it gives the uninterrupted run's state exactly,
    each appended item once."""
    import json

    uninterrupted = graphs.mutating()
    expected = asyncio.run(uninterrupted.run({}))
    graph = checkpointed(graphs.mutating(), config=sqlite_config, graph_id="failure-on-changes")
    _fail_at(graph, fail_at, monkeypatch)
    assert graph.get_last_checkpoint().status == "failed"
    result = asyncio.run(graph.recover_and_continue())
    assert result.content == expected.content
    state = graph.get_state_snapshot()
    assert json.dumps(state, sort_keys=True) == json.dumps(uninterrupted.state.get_snapshot(), sort_keys=True)
    assert state["log"] == [0, 1, 2, 3, 4]


def test_appended_json_recognises_only_items_added_at_the_end() -> None:
    from spark_ckpt.adapters.graph import _appended_json

    assert _appended_json(b"[]", b"[1]") == b"[1]"
    assert _appended_json(b"[1,2]", b"[1,2,3,4]") == b"[3,4]"
    assert _appended_json(b"[[1]]", b"[[1],[2]]") == b"[[2]]"
    assert _appended_json(b'["a"]', b'["a","b"]') == b'["b"]'
    for old, new in [(b"[1,2]", b"[1,23]"), (b"[[1]]", b"[[1,2]]"), (b"[1,2]", b"[2,1,3]"), (b"[1,2]", b"[1]"),
                     (b"[1]", b"[1]"), (b'{"a":1}', b'{"a":1,"b":2}'), (b"[1]", object()), (3, b"[3,4]")]:
        assert _appended_json(old, new) is None, (old, new)


def test_with_a_serializer_other_than_json_a_type_only_change_is_kept(tmp_path) -> None:
    """Changed state is found through JSON only when records are JSON: the pickle serializer keeps a
    tuple apart from a list, so a value that turns from one into the other is stored again."""

    class Put(Node):
        def __init__(self, value, **kwargs):
            super().__init__(**kwargs)
            self.value = value

        async def process(self, context):
            if self.value is not None:
                await context.graph_state.set("pair", self.value)
            return {}

    first, second, third = Put((1, 2), id="first"), Put([1, 2], id="second"), Put(None, id="third")
    first >> second >> third
    config = CheckpointConfig(backend="sqlite", path=str(tmp_path / "p.db"), serializer="pickle",
                              pickle_signing_key=SIGNING_KEY)
    graph = checkpointed(Graph(start=first), config=config, graph_id="types")
    asyncio.run(graph.run({}))
    after_first, after_second = graph.get_checkpoint(offset=2), graph.get_checkpoint(offset=1)
    assert type(after_first.graph_state["pair"]) is tuple
    assert type(after_second.graph_state["pair"]) is list


class _Pass(Node):
    async def process(self, context):
        return {"from": self.id}


def test_current_node_names_every_node_with_input_waiting_in_graph_order(sqlite_config) -> None:
    """``current_node`` of each checkpoint: the nodes whose input is waiting, by the graph's node order
    (here not alphabetical), or None; each record read back says the same as its node states."""
    start, zeta, alpha = _Pass(id="start"), _Pass(id="zeta"), _Pass(id="alpha")
    start >> zeta
    start >> alpha
    graph = checkpointed(Graph(start=start), config=sqlite_config, graph_id="waiting")
    assert graph.node_keys == ["start", "zeta", "alpha"]
    asyncio.run(graph.run({}))
    seen = []
    for offset in range(len(graph.list_checkpoints())):
        record = graph.get_checkpoint(offset=offset)
        waiting = [key for key in graph.node_keys if record.node_states[key].pending_inputs]
        assert record.current_node == (",".join(waiting) or None)
        seen.append(record.current_node)
    assert seen == [None, "zeta,alpha", None]  # final, after the start node, start record


def test_a_long_visit_keeps_the_lease(tmp_path) -> None:
    """The lease is renewed while a visit runs longer than its lifetime: another worker cannot take
    the execution over meanwhile, and the run's later checkpoints are still accepted."""
    from spark_ckpt.errors import LeaseError

    attempts: list[str] = []

    class Slow(Node):
        async def process(self, context):
            execution_id = graph.backend.executions(graph_id="slow", unfinished_only=True)[0].execution_id
            for _ in range(3):  # each try comes after the lease's lifetime (0.3 s) has run out once more
                await asyncio.sleep(0.35)
                try:
                    graph.backend.acquire_lease(execution_id, "another-worker", 0.3)
                    attempts.append("taken over")
                except LeaseError:
                    attempts.append("refused")
            return {"slept": True}

    first, slow, last = _Pass(id="first"), Slow(id="slow"), _Pass(id="last")
    first >> slow >> last
    config = CheckpointConfig(backend="sqlite", path=str(tmp_path / "lease.db"), lease_ttl_s=0.3)
    graph = checkpointed(Graph(start=first), config=config, graph_id="slow")
    assert asyncio.run(graph.run({})).content == {"from": "last"}
    assert attempts == ["refused"] * 3
    assert graph.get_last_checkpoint().status == "completed"
