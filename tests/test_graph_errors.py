"""Bad input gets a clear SparkCkptError, and nothing already stored is lost or corrupted."""

from __future__ import annotations

from contextlib import closing

import asyncio
import threading
import os
import stat

import pytest

import graphs
from spark_ckpt import CheckpointConfig, checkpointed
from spark_ckpt.codec import Identity
from spark_ckpt.codec.envelope import pack, unpack
from spark_ckpt.errors import (
    BackendError, CheckpointNotFoundError, ConfigError, CorruptCheckpointError, EncodeError,
    GraphMismatchError, NothingToRecoverError, SparkCkptError, UnknownBackendError, UnsupportedFormatError,
)


@pytest.fixture
def graph(tmp_path):
    g = checkpointed(graphs.chain(3), config=CheckpointConfig(backend="sqlite", path=str(tmp_path / "e.db")),
                     graph_id="errors")
    asyncio.run(g.run({}))
    return g


def all_decode(g) -> None:
    """Every stored checkpoint still decodes (nothing was corrupted)."""
    for h in g.list_checkpoints():
        g._decode(g.backend.get(h.checkpoint_id).blob, h)


@pytest.mark.parametrize("backend", ["nosuch", "nosuch://x", "mysql://db"])
def test_unknown_backend_lists_the_available_ones(backend) -> None:
    with pytest.raises(UnknownBackendError) as exc:
        checkpointed(graphs.chain(2), config=CheckpointConfig(backend=backend))
    message = str(exc.value)
    assert "memory" in message and "sqlite" in message and "file" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere; checked through a file in the way instead")
def test_unwritable_path_as_user(tmp_path) -> None:  # pragma: no cover - CI runs as root
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    with pytest.raises(BackendError):
        checkpointed(graphs.chain(2), config=CheckpointConfig(backend="sqlite", path=str(locked / "sub" / "x.db")))


@pytest.mark.parametrize("backend", ["sqlite", "file"])
def test_unwritable_path(tmp_path, backend) -> None:
    """A path that cannot be created (a regular file is in the way) is refused with the path in the message."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    with pytest.raises(BackendError, match="blocker"):
        checkpointed(graphs.chain(2), config=CheckpointConfig(backend=backend, path=str(blocker / "inside" / "ckpt")))
    assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_corrupt_checkpoint_file(graph, tmp_path, damage) -> None:
    path = graph.save_checkpoint(tmp_path / "x.ckpt")
    blob = path.read_bytes()
    damaged = {"truncate": blob[: len(blob) // 2], "flip": blob[:-5] + bytes([blob[-5] ^ 0x40]) + blob[-4:],
               "garbage": b"{\"not\": \"a checkpoint\"}", "empty": b""}[damage]
    path.write_bytes(damaged)
    with pytest.raises(CorruptCheckpointError):
        graph.load_from_checkpoint(path)
    all_decode(graph)


def test_checkpoint_from_another_graph(graph, tmp_path) -> None:
    path = graph.save_checkpoint(tmp_path / "x.ckpt")
    other = checkpointed(graphs.chain(3), config=CheckpointConfig(backend="memory://"), graph_id="someone-else")
    with pytest.raises(GraphMismatchError, match="belongs to graph 'errors'"):
        other.load_from_checkpoint(path)


def test_changed_structure_is_refused_unless_allowed(tmp_path, monkeypatch) -> None:
    config = CheckpointConfig(backend="sqlite", path=str(tmp_path / "s.db"))
    monkeypatch.setenv("SPARK_CKPT_TEST_FAIL", "s1:0")
    with pytest.raises(RuntimeError):
        asyncio.run(checkpointed(graphs.chain(3), config=config, graph_id="shape").run({}))
    monkeypatch.delenv("SPARK_CKPT_TEST_FAIL")
    changed = checkpointed(graphs.chain(4), config=config, graph_id="shape")
    with pytest.raises(GraphMismatchError, match="changed structure"):
        asyncio.run(changed.recover_and_continue())
    allowed = checkpointed(graphs.chain(4), config=CheckpointConfig(backend="sqlite", path=str(tmp_path / "s.db"),
                                                                    allow_graph_change=True), graph_id="shape")
    assert asyncio.run(allowed.recover_and_continue()).content["count"] == 4


def test_newer_envelope_version(graph, tmp_path) -> None:
    path = graph.save_checkpoint(tmp_path / "x.ckpt")
    env = unpack(path.read_bytes())
    path.write_bytes(pack(type(env)(layers=env.layers, identity=env.identity, payload=env.payload, version=9)))
    with pytest.raises(UnsupportedFormatError, match="upgrade"):
        graph.load_from_checkpoint(path)


def test_newer_content_version(graph, tmp_path) -> None:
    last = graph.get_last_checkpoint()
    data, identity = graph.codec.decode_data(graph.backend.get(last.checkpoint_id).blob)
    data["version"] = 99
    path = tmp_path / "future.ckpt"
    path.write_bytes(graph.codec.encode_data(data, identity))
    with pytest.raises(UnsupportedFormatError, match="content version 99"):
        graph.load_from_checkpoint(path)


def test_unknown_codec_layer(graph, tmp_path) -> None:
    blob = pack(type(unpack(graph.save_checkpoint(tmp_path / "a").read_bytes()))(
        layers=[{"name": "json"}, {"name": "rot13"}], identity=Identity("errors", "e", 0), payload=b"{}"))
    (tmp_path / "b").write_bytes(blob)
    with pytest.raises(UnsupportedFormatError, match="rot13"):
        graph.load_from_checkpoint(tmp_path / "b")


def test_non_encodable_state_names_the_key_path(tmp_path) -> None:
    """A value that cannot be stored faithfully fails the run with the state key path; earlier checkpoints
    stay intact."""
    from spark.graphs import Graph
    from spark.nodes import Node

    class Stamp(Node):
        async def process(self, context):
            await context.graph_state.set("notes", ["fine"])  # encoded on its own before the bad value
            await context.graph_state.set("audit", {"events": [{"at": threading.Lock()}]})
            return {"ok": True}

    first = graphs.Step(id="first")
    first >> Stamp(id="stamp")
    g = checkpointed(Graph(start=first), config=CheckpointConfig(backend="sqlite", path=str(tmp_path / "n.db")),
                     graph_id="encode")
    with pytest.raises(EncodeError, match=r"graph_state\.audit\.events\[0\]\.at") as exc:
        asyncio.run(g.run({}))
    assert "lock" in str(exc.value)
    all_decode(g)
    assert g.get_last_checkpoint().status == "failed"


def test_an_encode_error_is_reported_once(tmp_path, caplog) -> None:
    """The EncodeError raised at a superstep boundary reaches the caller with its traceback; nothing logs
    that traceback a second time (Spark logged every exception its lifecycle hook raised, then re-raised it)."""
    from spark.graphs import Graph
    from spark.nodes import Node

    class Stamp(Node):
        async def process(self, context):
            await context.graph_state.set("at", threading.Lock())
            return {"ok": True}

    first = graphs.Step(id="first")
    first >> Stamp(id="stamp")
    g = checkpointed(Graph(start=first), config=CheckpointConfig(backend="memory"), graph_id="encode-once")
    with caplog.at_level("DEBUG"), pytest.raises(EncodeError):
        asyncio.run(g.run({}))
    logged = [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], EncodeError)]
    assert logged == [], [r.getMessage() for r in logged]


def test_checkpoint_id_that_does_not_exist(graph) -> None:
    with pytest.raises(CheckpointNotFoundError, match="ck-missing"):
        graph.restore_from_checkpoint("ck-missing")
    with pytest.raises(CheckpointNotFoundError, match="offset 99"):
        graph.get_checkpoint(offset=99)


def test_recover_with_nothing_to_recover(graph) -> None:
    """All runs completed: recovery refuses instead of silently starting a fresh run."""
    with pytest.raises(NothingToRecoverError, match="no unfinished execution"):
        asyncio.run(graph.recover_and_continue())
    fresh = checkpointed(graphs.chain(3), config=CheckpointConfig(backend="memory://"), graph_id="never-ran")
    with pytest.raises(NothingToRecoverError):
        asyncio.run(fresh.recover_and_continue())


@pytest.mark.parametrize("kwargs", [dict(durability="maybe"), dict(interval=0), dict(retention_count=-1)])
def test_bad_config_values(kwargs) -> None:
    with pytest.raises(ConfigError):
        CheckpointConfig(**kwargs)


def test_unknown_strategy() -> None:
    with pytest.raises(ConfigError, match="iteration"):
        checkpointed(graphs.chain(2), config=CheckpointConfig(backend="memory://", strategy="sometimes"))


def test_all_errors_share_one_base() -> None:
    for error in (UnknownBackendError, BackendError, CheckpointNotFoundError, CorruptCheckpointError, EncodeError,
                  GraphMismatchError, NothingToRecoverError, UnsupportedFormatError, ConfigError):
        assert issubclass(error, SparkCkptError)


def test_recovery_falls_back_past_a_corrupt_newest_checkpoint(tmp_path, monkeypatch) -> None:
    """A torn newest checkpoint is passed over (and reported); recovery resumes from the one before it."""
    import sqlite3

    db = tmp_path / "fallback.db"
    config = CheckpointConfig(backend="sqlite", path=str(db))
    monkeypatch.setenv("SPARK_CKPT_TEST_FAIL", "s3:0")
    g = checkpointed(graphs.chain(5), config=config, graph_id="fallback")
    with pytest.raises(RuntimeError):
        asyncio.run(g.run({}))
    monkeypatch.delenv("SPARK_CKPT_TEST_FAIL")
    newest = g.list_checkpoints(limit=1)[0]
    with closing(sqlite3.connect(db)) as conn:  # tear the newest row's blob as a crash mid-write on a bad disk would
        conn.execute("UPDATE checkpoints SET blob = substr(blob, 1, 40) WHERE checkpoint_id = ?", (newest.checkpoint_id,))
        conn.commit()
    fresh = checkpointed(graphs.chain(5), config=config, graph_id="fallback")
    result = asyncio.run(fresh.recover_and_continue())
    assert fresh.last_recovery.fell_back == [newest.checkpoint_id]
    assert result.content == {"step": "s4", "count": 5}
