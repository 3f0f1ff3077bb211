"""Values come back exactly as they were stored, or are refused when stored: never changed.

Round trips of every supported type through the codec, property tests (hypothesis) through the codec
and through a real SIGKILL and recovery in child processes, refusals that name the key path, and
hostile tagged values that must neither import nor build anything.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import os
import pickle
import subprocess
import sys
import threading
import uuid
from typing import Any
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import value_types
from value_types import ALLOWED, Box, Color, Level, Note, Pair, Point, Unlisted, same

from spark_ckpt import CheckpointConfig, checkpointed
from spark_ckpt.codec.convert import dumps_data, loads_data
from spark_ckpt.codec.values import MAX_DEPTH, TAG, allow_types
from spark_ckpt.errors import CorruptCheckpointError, EncodeError, SparkCkptError, UntrustedTypeError

HERE = Path(__file__).parent
allow_types(*ALLOWED)

IST = dt.timezone(dt.timedelta(hours=5, minutes=30), "IST")
PARIS = ZoneInfo("Europe/Paris")

SUPPORTED = {
    "nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "-0.0": -0.0,
    "naive datetime": dt.datetime(2026, 3, 29, 1, 30, 15, 123456),
    "utc datetime": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    "named offset": dt.datetime(2026, 1, 1, 9, tzinfo=IST),
    "zoneinfo with fold": dt.datetime(2026, 10, 25, 2, 30, tzinfo=PARIS, fold=1),
    "date": dt.date(1999, 12, 31), "time": dt.time(23, 59, 1, 5, tzinfo=dt.timezone.utc),
    "timedelta": dt.timedelta(days=-3, seconds=7, microseconds=9),
    "decimal": decimal.Decimal("1.10"), "decimal nan": decimal.Decimal("-sNaN"),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "enum": Color.RED, "int enum": Level.HIGH,
    "tuple": (1, (2, 3), [4]), "empty tuple": (), "set": {1, 2, 3}, "frozenset": frozenset({"a", (1, 2)}),
    "bytes": b"\x00\xffbin", "bytearray": bytearray(b"ab"),
    "int keys": {1: "a", (2, 3): "b", None: "c"}, "tag key": {TAG: "tuple", "v": [1]},
    "lone surrogate": "a\ud800b", "big int": 2**100, "negative big int": -(2**64),
    "dataclass": Point(x=(1, 2), y=Color.GREEN), "attrs slots": Box(content={1, 2}),
    "attrs frozen": Pair(left=dt.date(2020, 1, 1), right=None),
    "pydantic": Note(text="hi", tags=("a", "b"), extra_field=decimal.Decimal("2")),
    "pydantic fields set": Note.model_construct(text="x"),
}


@pytest.mark.parametrize("name", list(SUPPORTED))
def test_each_supported_type_comes_back_exactly(name: str) -> None:
    value = {"nested": [SUPPORTED[name]], "top": SUPPORTED[name]}
    back = loads_data(dumps_data(value))
    assert same(back, value), (back, value)


def test_plain_json_is_written_as_plain_json() -> None:
    data = {"a": [1, 2.5, "x", None, True], "b": {"c": "d"}}
    assert dumps_data(data) == orjson.dumps(data)


@pytest.mark.parametrize("value, where, what", [
    ({"a": [Unlisted()]}, "a[0]", "not on the allowed types"),
    ({"lock": object()}, "lock", "cannot be stored faithfully"),
    ({"when": dt.datetime(2026, 1, 1, tzinfo=dt.tzinfo())}, "when", "tzinfo"),
])
def test_what_cannot_be_stored_faithfully_is_refused_naming_its_path(value, where, what) -> None:
    with pytest.raises(EncodeError, match=what) as exc:
        dumps_data(value)
    assert repr(where) in str(exc.value)


def test_a_dataclass_with_attributes_beyond_its_fields_is_refused() -> None:
    point = Point(1, 2)
    object.__setattr__(point, "extra", 3)
    with pytest.raises(EncodeError, match="not fields"):
        dumps_data(point)


def test_deep_nesting_is_refused_cleanly_not_with_recursion_error() -> None:
    value: list = []
    for _ in range(2000):
        value = [value]
    with pytest.raises(EncodeError, match="nested more than"):
        dumps_data({"deep": value})
    shallow: list = []
    for _ in range(MAX_DEPTH - 5):
        shallow = [shallow]
    assert loads_data(dumps_data(shallow)) == shallow


def test_hostile_tags_are_refused_as_corrupt_and_import_nothing() -> None:
    module = "antigravity"  # importing it would open a web browser
    assert module not in sys.modules
    hostile = [
        {TAG: "dataclass", "type": f"{module}:geohash", "v": {}},
        {TAG: "enum", "type": "subprocess:Popen", "v": "ls"},
        {TAG: "nope", "v": 1}, {TAG: "tuple", "v": 5}, {TAG: "float", "v": "1e999x"},
        {TAG: "datetime", "v": 12}, {TAG: "int", "v": "g1"}, {TAG: "int", "v": "9" * 300000}, {TAG: "dict", "v": [[1]]},
        {TAG: "bytes", "v": "***"}, {TAG: "dataclass", "type": "value_types:Point", "v": {"x": 1, "zz": 2}},
        {TAG: "enum", "type": "value_types:Color", "v": "purple"},
    ]
    for tree in hostile:
        with pytest.raises(SparkCkptError) as exc:
            loads_data(orjson.dumps({"x": tree}))
        assert isinstance(exc.value, (CorruptCheckpointError, UntrustedTypeError)), exc.value
    assert module not in sys.modules
    deep = b'{"x":' + b"[" * 1000 + b"]" * 1000 + b',"$sc":1}'
    with pytest.raises(CorruptCheckpointError):
        loads_data(deep)


def test_allowed_types_config_and_plugin_hook(tmp_path) -> None:
    from spark_ckpt import hookimpl
    from spark_ckpt.codec.values import allowed_types
    from spark_ckpt.errors import ConfigError
    from spark_ckpt.plugins import register, unregister

    assert "value_types:Point" in allowed_types
    assert "pkg.mod:Thing" not in allowed_types
    CheckpointConfig(backend="memory", allowed_types=["pkg.mod.Thing"]).make_codec()
    assert "pkg.mod:Thing" in allowed_types

    class Plugin:
        @hookimpl
        def spark_ckpt_register_types(self, register):
            register("other.models.*")

    plugin = Plugin()
    register(plugin)
    try:
        CheckpointConfig(backend="memory").make_codec()
        assert "other.models.deep:Model" in allowed_types
    finally:
        unregister(plugin)
    with pytest.raises(ConfigError, match="import path"):
        CheckpointConfig(allowed_types=["NoModule"])


# -- property tests ---------------------------------------------------------------------------------
TIMEZONES = st.sampled_from([None, dt.timezone.utc, IST, PARIS, dt.timezone(dt.timedelta(hours=-3))])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
    st.sampled_from(["\ud800", "x\udfff", "$sc", TAG]), st.binary(max_size=8),
    st.datetimes(timezones=TIMEZONES, allow_imaginary=False), st.dates(), st.times(timezones=TIMEZONES),
    st.timedeltas(), st.decimals(allow_nan=True), st.uuids(), st.sampled_from([*Color, *Level]),
)
HASHABLE = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5), st.uuids(), st.dates())


def _containers(children):
    return st.one_of(
        st.lists(children, max_size=4), st.tuples(children, children),
        st.dictionaries(st.text(max_size=5), children, max_size=4),
        st.dictionaries(HASHABLE, children, max_size=3),
        st.frozensets(HASHABLE, max_size=3), st.sets(HASHABLE, max_size=3),
        st.builds(Point, children, children), st.builds(Box, children), st.builds(Pair, children, children),
        st.builds(Note, text=st.text(max_size=5), tags=children),
    )


VALUES = st.recursive(SCALARS, _containers, max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(VALUES)
def test_any_value_round_trips_exactly_through_the_codec(value) -> None:
    assert same(loads_data(dumps_data({"v": value}))["v"], value)


def test_values_come_back_exactly_after_restore_in_process(tmp_path) -> None:
    import graphs

    values = dict(SUPPORTED)
    graph = checkpointed(graphs.chain(2), config=CheckpointConfig(backend="sqlite", path=str(tmp_path / "v.db")),
                         graph_id="restore-values")
    graph.state.get_raw().update({"values": values})
    asyncio.run(graph.run({"n": 1}))
    graph.state.get_raw().clear()
    graph.restore_from_checkpoint(graph.get_last_checkpoint().checkpoint_id)
    assert same(graph.state.get_raw()["values"], values)


def test_a_nodes_own_state_comes_back_exactly_from_every_record(tmp_path) -> None:
    """A node's own keys (``context.state``) holding values that need tags: each record holds them
    exactly, the changes-only ones and the whole ones that carry the node's entry as it was read."""
    from spark.graphs import Graph
    from spark.nodes import Node

    from spark_ckpt.model import GraphCheckpoint

    class Keep(Node):
        async def process(self, context):
            context.state["values"] = dict(SUPPORTED)
            context.state["visits"] = context.state.get("visits", 0) + 1
            return {"ok": True}

    class Pass(Node):
        async def process(self, context):
            return {"ok": True}

    nodes = [Pass(id="pass0"), Pass(id="pass1"), Keep(id="keep"), Pass(id="pass2"), Pass(id="pass3")]
    for a, b in zip(nodes, nodes[1:]):
        a >> b
    config = CheckpointConfig(backend="sqlite", path=str(tmp_path / "n.db"), strategy="iteration", interval=1)
    graph = checkpointed(Graph(start=nodes[0]), config=config, graph_id="node-values")
    asyncio.run(graph.run({}))
    asyncio.run(graph.run({}))  # a second execution: its start record reads every node again
    try:
        records = [graph.codec.decode(graph.backend.get(h.checkpoint_id).blob, GraphCheckpoint)
                   for h in graph.backend.list(graph_id="node-values")]
        holding = [r for r in records if "values" in getattr(r.node_states.get("keep"), "custom", {})]
        # run 1: the record after its visit (changes only) and the final one (whole); run 2: its start
        # record and the one after it (whole, the entry as the previous run left it), the one after
        # its parent's visit (changes only: fed) and the same two as run 1
        assert sorted((r.partial_state, r.node_states["keep"].custom["visits"]) for r in holding) == [
            (False, 1), (False, 1), (False, 1), (False, 2), (True, 1), (True, 1), (True, 2)]
        for record in holding:
            assert same(record.node_states["keep"].custom["values"], SUPPORTED), record.checkpoint_id
        keep = nodes[2]
        keep._state.pop("values")
        graph.restore_from_checkpoint(graph.get_last_checkpoint().checkpoint_id)
        assert same(keep._state["values"], SUPPORTED)
    finally:
        graph.close()


def test_rekey_re_encrypts_values_without_rebuilding_or_comparing_them(tmp_path) -> None:
    """NaN never equals itself, and the rekeying process need not allow the stored types: rekey works on
    the serialized bytes, and the values still come back exactly afterwards."""
    import graphs

    from spark_ckpt.codec import new_key
    from spark_ckpt.codec.rekey import rekey_backend

    path = str(tmp_path / "r.db")
    values = {"nan": float("nan"), "point": Point(1, (2, 3)), "when": dt.datetime(2026, 1, 1, tzinfo=PARIS)}
    graph = checkpointed(graphs.chain(2), config=CheckpointConfig(backend="sqlite", path=path), graph_id="rekey")
    graph.state.get_raw().update({"values": values})
    asyncio.run(graph.run({"n": 1}))
    last = graph.get_last_checkpoint().checkpoint_id
    keys = {"k1": new_key()}
    codec = CheckpointConfig(encryption_keys=keys, allow_plaintext=True).make_codec()
    backend = CheckpointConfig(backend="sqlite", path=path).open_backend()
    try:
        assert rekey_backend(backend, codec) >= 3
    finally:
        backend.close()
    encrypted = checkpointed(graphs.chain(2), config=CheckpointConfig(backend="sqlite", path=path, encryption_keys=keys),
                             graph_id="rekey")
    encrypted.restore_from_checkpoint(last)
    assert same(encrypted.state.get_raw()["values"], values)


def test_the_cli_shows_values_of_types_it_does_not_allow_without_importing_them(tmp_path) -> None:
    """``spark-ckpt show`` in a process that allows none of the user's types describes them (type path
    and fields) instead of failing; it never imports their module."""
    import graphs

    path = tmp_path / "cli.db"
    graph = checkpointed(graphs.chain(2), config=CheckpointConfig(backend="sqlite", path=str(path)), graph_id="cli")
    graph.state.get_raw().update({"point": Point(x=(1, 2), y=Color.RED), "when": dt.date(2026, 2, 3)})
    asyncio.run(graph.run({"n": 1}))
    last = graph.get_last_checkpoint().checkpoint_id
    probe = "import sys, runpy; sys.argv = ['spark-ckpt', *sys.argv[1:]]; " \
            "runpy.run_module('spark_ckpt.cli', run_name='__main__'); "
    shown = subprocess.run(
        [sys.executable, "-c", probe + "assert 'value_types' not in sys.modules",
         "--store", f"sqlite:///{path}", "show", last, "--json"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "SPARK_CKPT_DISABLE_PLUGINS": "1", "PYTHONPATH": str(HERE.parent)},
    )
    assert shown.returncode == 0, shown.stderr
    data = orjson.loads(shown.stdout)
    state = data["checkpoint"]["graph_state"]
    assert state["point"]["$type"] == "value_types.Point"
    assert state["point"]["y"] == {"$type": "value_types.Color", "value": "red"}
    assert "Traceback" not in shown.stderr


def test_agent_state_comes_back_exactly_after_restore_latest(tmp_path) -> None:
    """The user's own agent state keys are kept exactly, not turned into
    JSON look-alikes (a tuple into a list, an Enum into its value, an object into its repr)."""
    from agent_workers.scripted import ScriptedModel
    from spark.agents import Agent, AgentConfig

    custom = {"seen": {"a", "b"}, "deadline": dt.datetime(2026, 5, 1, tzinfo=PARIS), "pair": (1, 2),
              "level": Level.LOW, "point": Point(decimal.Decimal("0.1"), b"x")}

    def make() -> Any:
        config = CheckpointConfig(backend="sqlite", path=str(tmp_path / "agent.db"))
        return checkpointed(Agent(AgentConfig(model=ScriptedModel(), name="bot")), config=config, agent_id="bot")

    first = make()
    first.agent._state.update(custom)
    asyncio.run(first.run("hello"))
    second = make()
    assert second.restore_latest()
    assert same({key: second.agent._state[key] for key in custom}, custom)
    with pytest.raises(EncodeError, match="lock"):
        first.agent._state["lock"] = threading.Lock()
        first.checkpoint()


def make_agent(path: Path, tools: list | None = None) -> Any:
    from agent_workers.scripted import ScriptedModel
    from spark.agents import Agent, AgentConfig

    config = CheckpointConfig(backend="sqlite", path=str(path))
    return checkpointed(Agent(AgentConfig(model=ScriptedModel(), name="bot", tools=tools or [])), config=config,
                        agent_id="bot")


def test_agent_state_replaced_by_an_equal_value_of_another_type_is_kept(tmp_path) -> None:
    """A delta against the stored state must see 1 -> True, 2 -> 2.0, a Decimal's precision, a set becoming a
    frozenset and a datetime moving to another zone at the same instant: ``==`` says nothing changed."""
    utc = dt.datetime(2026, 5, 1, 12, tzinfo=dt.timezone.utc)
    before = {"price": decimal.Decimal("1.0"), "flag": 1, "ids": {1, 2}, "when": utc, "ratio": 2,
              "order": {"a": 1, "b": 2}}
    after = {"price": decimal.Decimal("1.00"), "flag": True, "ids": frozenset({1, 2}),
             "when": utc.astimezone(ZoneInfo("Asia/Tokyo")), "ratio": 2.0, "order": {"b": 2, "a": 1}}
    first = make_agent(tmp_path / "a.db")
    first.agent._state.update(before)
    asyncio.run(first.run("hello"))
    first.agent._state.update(after)
    asyncio.run(first.run("again"))
    second = make_agent(tmp_path / "a.db")
    assert second.restore_latest()
    assert same({key: second.agent._state[key] for key in after}, after)
    assert list(second.agent._state["order"]) == ["b", "a"]


def test_a_tool_result_is_the_same_live_and_restored(tmp_path) -> None:
    from spark.tools import tool

    @tool
    def step(i: int) -> tuple:
        """Do one unit of work.

        Args:
            i: which unit
        """
        return (i, "x")

    first = make_agent(tmp_path / "t.db", [step])
    asyncio.run(first.run("task:1"))
    live = [trace["output"] for trace in first.agent._state["tool_traces"]]
    assert live and all(type(output) is tuple for output in live)
    second = make_agent(tmp_path / "t.db", [step])
    assert second.restore_latest()
    assert same([trace["output"] for trace in second.agent._state["tool_traces"]], live)


def test_a_task_input_keeps_the_values_in_its_dict_fields() -> None:
    from spark.graphs.tasks import Task
    from spark.nodes.types import NodeMessage

    from spark_ckpt.adapters.graph_state import dump_run_input, load_run_input

    task = Task(inputs=NodeMessage(content={"a": (1, 2)}), metadata={"pair": (1, 2)},
                input_schema={"when": dt.datetime(2026, 1, 1), "range": (1, 5), "price": decimal.Decimal("1.10")},
                error={"codes": {1, 2}})
    back = load_run_input(loads_data(dumps_data(dump_run_input(task))))
    for field in ("input_schema", "error", "metadata"):
        assert same(getattr(back, field), getattr(task, field)), field
    assert same(back.inputs.content, task.inputs.content)


def test_a_node_output_keeps_its_values_and_only_an_unstorable_raw_becomes_its_repr() -> None:
    from spark.nodes.types import NodeMessage

    from spark_ckpt.adapters.graph_state import dump_message, load_message

    message = NodeMessage(content={"point": Point(1, (2, 3))}, raw=threading.Lock())
    data = dump_message(message)
    assert data["raw"]["__repr__"].startswith("<unlocked _thread.lock")
    assert same(load_message(loads_data(dumps_data(data))).content, message.content)
    kept = dump_message(NodeMessage(content="x", raw={"usage": (1, 2)}))
    assert same(kept["raw"], {"usage": (1, 2)})
    with pytest.raises(EncodeError, match="content.lock"):
        dumps_data(dump_message(NodeMessage(content={"lock": threading.Lock()})))


def test_huge_integers_are_kept_up_to_the_limit_and_refused_beyond() -> None:
    from spark_ckpt.codec.values import MAX_INT_BITS

    for value in (10**5000, -(10**5000), 2**64, -(2**63) - 1):
        assert same(loads_data(dumps_data({"n": value}))["n"], value)
    with pytest.raises(EncodeError, match="bit limit"):
        dumps_data({"n": 1 << (MAX_INT_BITS + 1)})


def test_a_type_reached_through_another_modules_import_is_not_rebuilt() -> None:
    """``spark.*`` is allowed, but ``spark.nodes.nodes:inspect._ParameterKind`` is the standard library's
    class, reached through Spark's import of ``inspect``: the path must be the class's own."""
    import spark.nodes.nodes as spark_nodes

    assert hasattr(spark_nodes, "inspect")
    tree = {TAG: "enum", "type": "spark.nodes.nodes:inspect._ParameterKind", "v": 0}
    with pytest.raises(UntrustedTypeError, match="own import path"):
        loads_data(orjson.dumps({"x": tree}))


def test_equal_sets_are_written_the_same_whatever_their_history() -> None:
    a, b = {-1, -2, None}, {None, -2, -1}
    assert dumps_data(a) == dumps_data(b)
    assert dumps_data(loads_data(dumps_data({1, "x", 9}))) == dumps_data({9, "x", 1})


def run_worker(mode: str, store: str, values_path: Path, out_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPARK_CKPT_DISABLE_PLUGINS": "1"}
    return subprocess.run(
        [sys.executable, str(HERE / "value_worker.py"), mode, store, str(values_path), str(out_path)],
        capture_output=True, text=True, timeout=120, env=env,
    )


@pytest.mark.slow
# bounded: every example starts two processes (and a failure is shown as found, not shrunk for minutes)
@settings(max_examples=6, deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(values=st.dictionaries(st.text(min_size=1, max_size=6), VALUES, min_size=1, max_size=5))
def test_values_come_back_exactly_after_sigkill_and_recovery(tmp_path_factory, values) -> None:
    """Through run input, graph state, node outputs and the journal: killed after the first node's
    checkpoint, recovered in a fresh process (the first node replayed, the second run live)."""
    work = tmp_path_factory.mktemp("values")
    store = f"sqlite:///{work / 'v.db'}"
    values_path, out_path = work / "values.pickle", work / "out.pickle"
    values_path.write_bytes(pickle.dumps(values))
    crashed = run_worker("run", store, values_path, out_path)
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    recovered = run_worker("recover", store, values_path, out_path)
    assert recovered.returncode == 0, recovered.stderr[-2000:]
    back = pickle.loads(out_path.read_bytes())
    assert same(back["state"]["values"], values)
    assert same(back["state"]["echo"], values)
    assert same(back["result"], values)


_ = value_types  # (imported for the worker's types to resolve in this process too)
