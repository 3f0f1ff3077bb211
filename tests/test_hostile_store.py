"""A hostile store: index rows and record contents changed behind spark-ckpt's back reach the caller
only as ``SparkCkptError`` (list, get, restore, recover, verify), and the CLI prints one error line.

Every built-in backend gets real checkpoints from a small Spark graph run and a standalone agent run
(each with a completed execution and a failed one, so there is something to recover), written once;
each case copies that store, changes one thing in it (seeded random), and calls every reading API.
The graph's nodes and the agent's model and tool never read what they are given, so nothing a
damaged record restores can make *user* code raise: any other exception is spark-ckpt's to catch.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import attrs
import orjson
import pytest
from spark.agents import Agent, AgentConfig
from spark.graphs import Graph
from spark.models.base import Model
from spark.nodes import Node
from spark.tools import tool

from spark_ckpt import CheckpointConfig, checkpointed
from spark_ckpt.adapters.agent import CheckpointedAgent
from spark_ckpt.backends.file import MAGIC as FILE_MAGIC
from spark_ckpt.backends.memory import MemoryBackend
from spark_ckpt.cli import main
from spark_ckpt.codec import Codec, Identity
from spark_ckpt.codec.envelope import pack_parts
from spark_ckpt.errors import CorruptCheckpointError, SparkCkptError
from spark_ckpt.model import StoredCheckpoint

SEED = 20_240_611
BACKENDS = ("memory", "file", "sqlite")
CASES = {"rows": int(os.environ.get("HX_ROWS", 45)), "contents": int(os.environ.get("HX_CONTENTS", 60))}  # per backend; a few hundred in all, ~20 s


# -- what is run (user code that reads nothing it is given) ----------------------------------------
FAIL_ONCE: set[str] = set()


class Mark(Node):
    """Writes its own keys (a list that grows at its end, node-local state); never reads state or input."""

    async def process(self, context):
        self.visits = getattr(self, "visits", 0) + 1
        await context.graph_state.set(f"{self.id}_seen", list(range(self.visits)))
        await context.graph_state.set("last", self.id)
        context.state["note"] = {"visits": self.visits}
        if self.id in FAIL_ONCE:
            FAIL_ONCE.discard(self.id)
            raise RuntimeError(f"injected failure in {self.id}")
        return {"node": self.id, "done": self.visits >= 3}


def build() -> Graph:
    """a -> b (three passes) -> c -> d."""
    a, b, c, d = Mark(id="a"), Mark(id="b"), Mark(id="c"), Mark(id="d")
    a >> b
    b.on(done=False) >> b
    b.on(done=True) >> c
    c >> d
    return Graph(start=a, initial_state={"log": []})


class Steady(Model):
    """Asks for one tool call, then answers; fails once when told to. Reads nothing it is sent."""

    fail_next = False

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def update_config(self, **model_config: Any) -> None:
        pass

    def get_config(self) -> dict[str, Any]:
        return {"model_id": "gpt-4o-mini"}

    async def get_text(self, messages, system_prompt=None, tool_specs=None, tool_choice=None, **kwargs):
        self.calls += 1
        usage = {"input_tokens": 5, "output_tokens": 2}
        if Steady.fail_next and self.calls % 2 == 0:  # after its tool call: one call to replay
            Steady.fail_next = False
            raise ConnectionError("provider down")
        if self.calls % 2 == 1:
            call = {"id": f"call-{self.calls}", "type": "function",
                    "function": {"name": "poke", "arguments": json.dumps({"i": self.calls})}}
            return {"role": "assistant", "content": "", "stop_reason": "tool_use", "tool_calls": [call], "usage": usage}
        return {"role": "assistant", "content": "answered", "stop_reason": "end_turn", "usage": usage}

    async def get_json(self, output_model, messages, system_prompt=None, tool_specs=None, tool_choice=None, **kwargs):
        return await self.get_text(messages, system_prompt, tool_specs, tool_choice)


@tool
def poke(i: int) -> str:
    """Do nothing much.

    Args:
        i: which call
    """
    return "poked"


def agent_config() -> AgentConfig:
    return AgentConfig(model=Steady(), name="bot", tools=[poke])


# -- the stores -------------------------------------------------------------------------------------
def config_for(backend: str, where: Path | str) -> CheckpointConfig:
    if backend == "memory":
        return CheckpointConfig(backend=f"memory://{where}")
    if backend == "file":
        return CheckpointConfig(backend="file", path=str(where), backend_options={"fsync": False})
    return CheckpointConfig(backend="sqlite", path=str(where))


def store_url(backend: str, where: Path | str) -> str:
    return config_for(backend, where).backend_url()


@attrs.define
class Pristine:
    backend: str
    where: Any
    graph_ids: list[str]  # checkpoint ids of the graph, as written
    agent_ids: list[str]
    snapshot: dict[str, Any]  # the agent's checkpoint() dict


def write_store(backend: str, where: Any) -> Pristine:
    """A completed and a failed graph execution, a completed and a failed agent run."""
    config = config_for(backend, where)
    graph = checkpointed(build(), config=config, graph_id="hostile")
    asyncio.run(graph.run({}))
    FAIL_ONCE.add("c")
    failing = checkpointed(build(), config=config, graph_id="hostile")
    with pytest.raises(RuntimeError):
        asyncio.run(failing.run({}))
    failing.close()
    graph_ids = [h.checkpoint_id for h in graph.list_checkpoints()]
    agent = checkpointed(Agent(agent_config()), config=config, agent_id="bot")
    asyncio.run(agent.run("first"))
    Steady.fail_next = True
    asyncio.run(agent.run("second"))
    assert agent.list_checkpoints(limit=1)[0].status == "failed"
    agent_ids = [h.checkpoint_id for h in agent.list_checkpoints()]
    snapshot = agent.checkpoint()
    graph.close()
    agent.close()
    if backend == "sqlite":  # everything in the database file itself, so a copy of the file is whole
        with contextlib.closing(sqlite3.connect(where)) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return Pristine(backend, where, graph_ids, agent_ids, snapshot)


def copy_store(pristine: Pristine, where: Any) -> Any:
    if pristine.backend == "memory":
        source = MemoryBackend._stores[str(pristine.where)]
        copy = MemoryBackend()
        copy._items, copy._by_position = dict(source._items), dict(source._by_position)
        copy._heads, copy._leases = dict(source._heads), dict(source._leases)
        MemoryBackend._stores[str(where)] = copy
    elif pristine.backend == "file":
        shutil.copytree(pristine.where, where, symlinks=True)  # (ids/ holds relative links)
    else:
        shutil.copyfile(pristine.where, where)
    return where


# -- hostile values ---------------------------------------------------------------------------------
SPLICE = "__hostile_raw_json__"
RAW = [
    b"[" * 900 + b"]" * 900,  # deeper than Python recurses through it (but within orjson's limit)
    b'"\\ud800"',  # a lone surrogate
    b'"a\\udc00b"',
    b"123456789012345678901234567890",
    b"-0.0",
]


def hostile_value(rng: random.Random) -> Any:
    choices: list[Callable[[], Any]] = [
        lambda: None, lambda: True, lambda: False, lambda: 0, lambda: -1, lambda: 2**63 - 1, lambda: -(2**63),
        lambda: 1.5, lambda: 1e308, lambda: -1e308, lambda: "", lambda: "x", lambda: "\x00\n",
        lambda: "running", lambda: "completed", lambda: [], lambda: {}, lambda: [1, "two", None],
        lambda: {"content": {"x": 1}}, lambda: {"role": 5}, lambda: [[[[{}]]]], lambda: list(range(5_000)),
        lambda: {"visit_index": "x", "data": 1}, lambda: {"__spark_ckpt_delta__": [["x", 1]]},
        lambda: SPLICE,
    ]
    return rng.choice(choices)()


def mutate_data(data: Any, rng: random.Random) -> tuple[Any, bytes | None]:
    """``data`` with one random change: a value replaced, a key dropped or added. Returns the data and
    the raw JSON to splice in for ``SPLICE`` (values orjson will not write: deep nesting, surrogates)."""
    slots: list[tuple[Any, Any]] = []

    def walk(node: Any, depth: int) -> None:
        if depth > 12 or len(slots) > 4000:
            return
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            slots.append((node, key))
            walk(value, depth + 1)

    walk(data, 0)
    if not slots:
        return hostile_value(rng), None
    container, key = rng.choice(slots)
    action = rng.random()
    if action < 0.15 and isinstance(container, dict):
        del container[key]
    elif action < 0.25 and isinstance(container, dict):
        container[rng.choice(["extra", "kind", "version", "status", "seq"])] = hostile_value(rng)
    else:
        container[key] = hostile_value(rng)
    text = orjson.dumps(data)
    if b'"' + SPLICE.encode() + b'"' in text:
        return data, rng.choice(RAW)
    return data, None


def encoded(data: Any, raw: bytes | None, identity: Identity) -> bytes:
    """A valid plaintext envelope (right checksum, right identity) around ``data``."""
    payload = orjson.dumps(data)
    if raw is not None:
        payload = payload.replace(b'"' + SPLICE.encode() + b'"', raw)
    return pack_parts([{"name": "json"}], identity, payload)


# -- changing a copied store ------------------------------------------------------------------------
HEADER_FIELDS = ("checkpoint_id", "graph_id", "execution_id", "seq", "created_at", "status", "kind", "size")


def sql_value(rng: random.Random, ids: list[str]) -> Any:
    return rng.choice([None, "", "x", -1, -(2**63), 2**63 - 1, 1e308, float("inf"), float("-inf"), 1.5,
                       b"\x00\xff", "running", "completed", "agent", "graph", rng.choice(ids), 0])


def mutate_row(backend: str, where: Any, rng: random.Random, ids: list[str]) -> str:
    if backend == "sqlite":
        conn = sqlite3.connect(where)
        try:
            for _ in range(20):
                if rng.random() < 0.7:
                    column = rng.choice([*HEADER_FIELDS, "blob"])
                    rowid = rng.choice([r for (r,) in conn.execute("SELECT rowid FROM checkpoints")])
                    table = "checkpoints"
                else:
                    column = rng.choice(["head_seq", "head_id", "head_created_at", "head_status", "head_kind",
                                         "head_size", "head_tag", "graph_id", "execution_id"])
                    rowid = rng.choice([r for (r,) in conn.execute("SELECT rowid FROM executions")])
                    table = "executions"
                value = sql_value(rng, ids)
                if rng.random() < 0.2 and column in ("checkpoint_id", "execution_id", "head_id"):
                    value = rng.choice(ids)  # ids swapped between rows
                try:
                    conn.execute(f"UPDATE {table} SET {column} = ? WHERE rowid = ?", (value, rowid))
                    conn.commit()
                    return f"{table}.{column} = {value!r:.40}"
                except sqlite3.IntegrityError:
                    conn.rollback()
            return "nothing"
        finally:
            conn.close()
    if backend == "file":
        root = Path(where)
        if rng.random() < 0.75:
            path = rng.choice(sorted(root.glob("graphs/*/*/*.ckpt")))
            data = path.read_bytes()
            size = int.from_bytes(data[len(FILE_MAGIC):len(FILE_MAGIC) + 4], "big")
            start = len(FILE_MAGIC) + 4
            meta, blob = orjson.loads(data[start:start + size]), data[start + size:]
        else:
            path = rng.choice(sorted(root.glob("heads/*.head")))
            meta, blob = orjson.loads(path.read_bytes().strip()), None
        field = rng.choice([*HEADER_FIELDS, "tag"] if blob is None else HEADER_FIELDS)
        if rng.random() < 0.1:
            meta = hostile_value(rng) if rng.random() < 0.5 else [meta]
        elif rng.random() < 0.15:
            meta.pop(field, None)
        else:
            meta[field] = rng.choice([hostile_value(rng), rng.choice(ids)])
        text = orjson.dumps(meta) if meta != SPLICE else b"[" * 900 + b"]" * 900
        if blob is None:
            path.write_bytes(text)
        else:
            path.write_bytes(FILE_MAGIC + len(text).to_bytes(4, "big") + text + blob)
        return f"{path.name}: {field}"
    store = MemoryBackend._stores[str(where)]
    value = rng.choice([hostile_value(rng), rng.choice(ids)])
    if rng.random() < 0.25:
        execution = rng.choice(sorted(store._heads))
        field = rng.choice([*HEADER_FIELDS, "tag"])
        store._heads[execution] = attrs.evolve(store._heads[execution], **{field: value})
        return f"head {execution}.{field}"
    checkpoint_id = rng.choice(sorted(store._items))
    item = store._items[checkpoint_id]
    if rng.random() < 0.15:
        store._items[checkpoint_id] = StoredCheckpoint(item.header, value)
        return f"{checkpoint_id}.blob"
    field = rng.choice(HEADER_FIELDS)
    store._items[checkpoint_id] = StoredCheckpoint(attrs.evolve(item.header, **{field: value}), item.blob)
    return f"{checkpoint_id}.{field}"


def read_stored(backend: str, where: Any, checkpoint_id: str) -> tuple[Any, bytes]:
    config = config_for(backend, where)
    store = config.open_backend()
    try:
        stored = store.get(checkpoint_id)
    finally:
        store.close()
    return stored.header, stored.blob


def replace_blob(backend: str, where: Any, checkpoint_id: str, blob: bytes) -> None:
    if backend == "sqlite":
        conn = sqlite3.connect(where)
        conn.execute("UPDATE checkpoints SET blob = ? WHERE checkpoint_id = ?", (blob, checkpoint_id))
        conn.commit()
        conn.close()
    elif backend == "file":
        path = Path(os.path.realpath(Path(where) / "ids" / checkpoint_id))
        data = path.read_bytes()
        size = int.from_bytes(data[len(FILE_MAGIC):len(FILE_MAGIC) + 4], "big")
        path.write_bytes(data[:len(FILE_MAGIC) + 4 + size] + blob)
    else:
        store = MemoryBackend._stores[str(where)]
        store._items[checkpoint_id] = StoredCheckpoint(store._items[checkpoint_id].header, blob)


def mutate_content(backend: str, where: Any, rng: random.Random, ids: list[str]) -> str:
    checkpoint_id = rng.choice(ids)
    header, blob = read_stored(backend, where, checkpoint_id)
    data, _ = Codec().decode_data(blob)
    data, raw = mutate_data(data, rng)
    replace_blob(backend, where, checkpoint_id,
                 encoded(data, raw, Identity(header.graph_id, header.execution_id, header.seq)))
    return f"content of {checkpoint_id}"


# -- what must only raise SparkCkptError ------------------------------------------------------------
class Escapes:
    """Exceptions other than SparkCkptError that reached a caller, with where and how."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def call(self, what: str, case: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except SparkCkptError:
            return None
        except Exception:
            self.found.append(f"{case} / {what}:\n{traceback.format_exc(limit=-6)}")
            return None

    def cli(self, case: str, argv: list[str]) -> None:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                code = main(argv, out=io.StringIO())
        except BaseException:
            self.found.append(f"{case} / cli {argv[2:]}:\n{traceback.format_exc(limit=-6)}")
            return
        text = err.getvalue()
        errors = [line for line in text.splitlines() if line.startswith("spark-ckpt: error:")]
        if code not in (0, 1, 2) or "Traceback" in text or len(errors) > 1 or (code == 2 and not errors):
            self.found.append(f"{case} / cli {argv[2:]}: exit {code}, stderr {text[:500]!r}")


def exercise(pristine: Pristine, where: Any, case: str, escapes: Escapes) -> None:
    config = config_for(pristine.backend, where)
    graph = escapes.call("checkpointed(graph)", case, lambda: checkpointed(build(), config=config, graph_id="hostile"))
    if graph is not None:
        escapes.call("list_checkpoints", case, graph.list_checkpoints)
        escapes.call("get_checkpoint", case, lambda: graph.get_checkpoint(0))
        escapes.call("get_checkpoint(1)", case, lambda: graph.get_checkpoint(1))
        for checkpoint_id in pristine.graph_ids[::3]:
            escapes.call(f"restore_from_checkpoint({checkpoint_id})", case,
                         lambda: graph.restore_from_checkpoint(checkpoint_id))
        completed = pristine.graph_ids[-1].rsplit("-", 1)[0][3:]  # the first run's execution
        escapes.call("recover completed", case,
                     lambda: asyncio.run(graph.recover_and_continue(execution_id=completed)))
        escapes.call("recover_and_continue", case, lambda: asyncio.run(graph.recover_and_continue()))
        graph.close()
    agent = escapes.call("checkpointed(agent)", case,
                         lambda: checkpointed(Agent(agent_config()), config=config, agent_id="bot"))
    if agent is not None:
        escapes.call("agent list_checkpoints", case, agent.list_checkpoints)
        escapes.call("agent restore_latest", case, agent.restore_latest)
        escapes.call("agent recover_and_continue", case, lambda: asyncio.run(agent.recover_and_continue()))
        agent.close()
    url = store_url(pristine.backend, where)
    for argv in (["list"], ["list", "--executions"], ["list", "--json"], ["verify"],
                 ["show", pristine.graph_ids[0]], ["show", pristine.graph_ids[-1], "--json"],
                 ["show", pristine.agent_ids[0]], ["show", pristine.agent_ids[-1], "--json"]):
        escapes.cli(case, ["--store", url, *argv])


@pytest.fixture(scope="module")
def pristine_stores(tmp_path_factory) -> dict[str, Pristine]:
    root = tmp_path_factory.mktemp("pristine")
    stores = {}
    for backend in BACKENDS:
        where = f"hostile-pristine-{os.getpid()}" if backend == "memory" else root / (
            "store" if backend == "file" else "store.db")
        stores[backend] = write_store(backend, where)
    yield stores
    for name in [n for n in MemoryBackend._stores if n.startswith("hostile-")]:
        del MemoryBackend._stores[name]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("target", sorted(CASES))
def test_only_spark_errors_reach_the_caller(pristine_stores, backend, target, tmp_path, no_env_config) -> None:
    """Seeded random changes to index rows or record contents: every API and CLI command either works
    or raises (prints) a SparkCkptError."""
    pristine = pristine_stores[backend]
    rng = random.Random(f"{SEED}-{backend}-{target}")
    ids = pristine.graph_ids + pristine.agent_ids
    escapes = Escapes()
    for n in range(CASES[target]):
        where = copy_store(pristine, f"hostile-{n}-{os.getpid()}" if backend == "memory" else tmp_path / f"case{n}"
                           if backend == "file" else tmp_path / f"case{n}.db")
        change = (mutate_row if target == "rows" else mutate_content)(backend, where, rng, ids)
        exercise(pristine, where, f"case {n} ({change})", escapes)
        if backend == "memory":
            del MemoryBackend._stores[str(where)]
    assert not escapes.found, f"{len(escapes.found)} escaped:\n\n" + "\n\n".join(escapes.found[:5])


def test_agent_snapshots_with_hostile_content_are_refused_cleanly(pristine_stores) -> None:
    """``CheckpointedAgent.restore`` of a snapshot dict with one random change works or raises a
    SparkCkptError (never a TypeError or a pydantic error from rebuilding the agent)."""
    rng = random.Random(f"{SEED}-snapshot")
    escapes = Escapes()
    for n in range(150):
        snapshot, raw = mutate_data(json.loads(json.dumps(pristine_stores["sqlite"].snapshot)), rng)
        if raw is not None:
            continue  # (a dict given in memory holds no raw JSON)
        escapes.call("restore", f"case {n}", lambda: CheckpointedAgent.restore(
            snapshot, agent_config(), CheckpointConfig(backend="memory")))
    assert not escapes.found, f"{len(escapes.found)} escaped:\n\n" + "\n\n".join(escapes.found[:5])


def test_the_cli_prints_one_line_through_a_real_process(pristine_stores, tmp_path, no_env_config) -> None:
    """A damaged row seen through ``python -m spark_ckpt.cli``: exit 1 or 2, one error line, no traceback."""
    where = copy_store(pristine_stores["sqlite"], tmp_path / "damaged.db")
    conn = sqlite3.connect(where)
    conn.execute("UPDATE checkpoints SET seq = 'seven', created_at = 1e308")
    conn.commit()
    conn.close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for argv in (["list"], ["verify"], ["show", pristine_stores["sqlite"].graph_ids[0], "--json"]):
        done = subprocess.run([sys.executable, "-m", "spark_ckpt.cli", "--store", f"sqlite:///{where}", *argv],
                              capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode in (1, 2), (argv, done.returncode, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        if done.returncode == 2:
            assert done.stderr.count("spark-ckpt: error:") == 1 and len(done.stderr.strip().splitlines()) == 1


# -- one damaged row, one damaged record: what exactly is raised ----------------------------------------
def damage_row(backend: str, where: Any, checkpoint_id: str, field: str, value: Any) -> None:
    """Give the stored header of ``checkpoint_id`` another ``field`` value, as an outside edit would."""
    if backend == "sqlite":
        with contextlib.closing(sqlite3.connect(where)) as conn:
            conn.execute(f"UPDATE checkpoints SET {field} = ? WHERE checkpoint_id = ?", (value, checkpoint_id))
            conn.commit()
    elif backend == "file":
        path = Path(os.path.realpath(Path(where) / "ids" / checkpoint_id))
        data = path.read_bytes()
        start = len(FILE_MAGIC) + 4
        size = int.from_bytes(data[len(FILE_MAGIC):start], "big")
        meta = {**orjson.loads(data[start:start + size]), field: value}
        text = orjson.dumps(meta)
        path.write_bytes(FILE_MAGIC + len(text).to_bytes(4, "big") + text + data[start + size:])
    else:
        store = MemoryBackend._stores[str(where)]
        item = store._items[checkpoint_id]
        store._items[checkpoint_id] = StoredCheckpoint(attrs.evolve(item.header, **{field: value}), item.blob)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("field, value, problem", [
    ("seq", "seven", "seq is 'seven'"),
    ("seq", -1, "seq is -1"),
    ("created_at", "soon", "created_at is 'soon'"),
    ("status", "paused", "status is 'paused'"),
    ("kind", "task", "kind is 'task'"),
    ("size", -5, "size is -5"),
])
def test_a_damaged_index_row_names_itself(pristine_stores, backend, field, value, problem, tmp_path) -> None:
    """A header row with a value of the wrong type or out of range: ``get`` raises CorruptCheckpointError
    naming the checkpoint, the problem and what to do; a listing raises the same (the file backend
    leaves a damaged file out of listings instead, as it always did)."""
    pristine = pristine_stores[backend]
    where = copy_store(pristine, f"hostile-row-{os.getpid()}" if backend == "memory" else tmp_path / (
        "store" if backend == "file" else "store.db"))
    victim = pristine.graph_ids[1]
    damage_row(backend, where, victim, field, value)
    store = config_for(backend, where).open_backend()
    try:
        with pytest.raises(CorruptCheckpointError) as raised:
            store.get(victim)
        message = str(raised.value)
        assert victim in message and problem in message and "backup" in message
        if backend == "file":
            assert victim not in {h.checkpoint_id for h in store.list()}
        else:
            with pytest.raises(CorruptCheckpointError, match=victim):
                store.list()
    finally:
        store.close()
        MemoryBackend._stores.pop(str(where), None)


def test_a_damaged_record_is_refused_before_the_graph_changes(pristine_stores, tmp_path) -> None:
    """A record whose content decodes but does not rebuild (a pending input that is not a message, a
    journaled output that is not one): restoring it or continuing from it raises CorruptCheckpointError
    naming it; nothing of the graph's state is replaced and no node runs."""
    pristine = pristine_stores["sqlite"]
    where = copy_store(pristine, tmp_path / "store.db")
    for victim in pristine.graph_ids:  # one holding node states and visits
        header, blob = read_stored("sqlite", where, victim)
        data, _ = Codec().decode_data(blob)
        if data.get("node_states") and data.get("execution_history"):
            break
    identity = Identity(header.graph_id, header.execution_id, header.seq)
    node = next(iter(data["node_states"]))
    pending = data["node_states"][node].get("pending_inputs", [])
    data["node_states"][node]["pending_inputs"] = ["not a message"]
    replace_blob("sqlite", where, victim, encoded(data, None, identity))

    graph = checkpointed(build(), config=config_for("sqlite", where), graph_id="hostile")
    before = graph.get_state_snapshot()
    with pytest.raises(CorruptCheckpointError, match=f"checkpoint {victim} is damaged"):
        graph.restore_from_checkpoint(victim)
    assert graph.get_state_snapshot() == before

    data["node_states"][node]["pending_inputs"] = pending
    data["execution_history"][-1]["output"] = ["not", "a", "message"]
    replace_blob("sqlite", where, victim, encoded(data, None, identity))
    with pytest.raises(CorruptCheckpointError, match="spark-ckpt verify"):
        asyncio.run(graph.continue_from_checkpoint(victim))
    assert not any(hasattr(n, "visits") for n in graph._nodes_by_key.values())  # no node ran
    graph.close()


class Fussy(Node):
    """User code that raises TypeError itself."""

    async def process(self, context):
        if "boom" in FAIL_ONCE:
            raise TypeError("the user's own TypeError")
        return {"ok": True}


def test_a_users_own_exceptions_still_propagate_as_they_are(tmp_path) -> None:
    """Nothing is wrapped around user code: a TypeError a node raises in a live run (a first run, or the
    live part of a recovery) reaches the caller as that TypeError."""
    def build_fussy() -> Graph:
        first, second = Mark(id="first"), Fussy(id="second")
        first >> second
        return Graph(start=first)

    config = config_for("sqlite", tmp_path / "user.db")
    FAIL_ONCE.add("boom")
    try:
        graph = checkpointed(build_fussy(), config=config, graph_id="fussy")
        with pytest.raises(TypeError, match="the user's own TypeError"):
            asyncio.run(graph.run({}))
        with pytest.raises(TypeError, match="the user's own TypeError"):
            asyncio.run(checkpointed(build_fussy(), config=config, graph_id="fussy").recover_and_continue())
    finally:
        FAIL_ONCE.discard("boom")
    assert asyncio.run(checkpointed(build_fussy(), config=config, graph_id="fussy").recover_and_continue()).content == {"ok": True}


def test_a_created_at_too_large_for_a_float_is_reported_not_raised() -> None:
    from spark_ckpt.backends.rows import checked
    from spark_ckpt.errors import CorruptIndexError
    from spark_ckpt.model import CheckpointHeader

    with pytest.raises(CorruptIndexError, match="not a finite time"):
        checked(CheckpointHeader("c", "g", "e", 1, 10**400), "a store")
