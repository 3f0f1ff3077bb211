"""Exporting checkpoints between backends (``spark_ckpt.transfer.export_checkpoints``).

Memory, file and SQLite always run. PostgreSQL and S3 join when their plugin is installed and
``SPARK_CKPT_TEST_PG_DSN`` / ``SPARK_CKPT_TEST_S3_ENDPOINT`` name a server (the CI script sets both;
with ``SPARK_CKPT_TEST_REQUIRE_SERVERS`` set, an installed plugin without its server is a failure).
"""

from __future__ import annotations

import itertools
import os
import uuid

import pytest
from server_availability import postgres_unavailable, s3_unavailable

from spark_ckpt.backends.file import FileBackend
from spark_ckpt.backends.memory import MemoryBackend
from spark_ckpt.backends.sqlite import SqliteBackend
from spark_ckpt.codec import Codec, GzipTransform, Identity
from spark_ckpt.errors import CheckpointSwappedError, CorruptCheckpointError, DuplicateCheckpointError
from spark_ckpt.model import COMPLETED, CheckpointHeader
from spark_ckpt.transfer import export_checkpoints

T0 = 1_700_000_000.0


def _server(env_var: str) -> str:
    value = os.environ.get(env_var)
    if not value:
        pytest.fail(f"{env_var} is not set but SPARK_CKPT_TEST_REQUIRE_SERVERS asks for every backend")
    return value


def open_store(kind: str, tmp_path, name: str):
    """A new, empty store of this kind."""
    if kind == "memory":
        return MemoryBackend()
    if kind == "file":
        return FileBackend(tmp_path / f"{name}-files")
    if kind == "sqlite":
        return SqliteBackend(tmp_path / f"{name}.db")
    unique = uuid.uuid4().hex[:12]
    if kind == "postgres":
        from spark_ckpt_postgres import PostgresBackend

        return PostgresBackend.from_url(f"{_server('SPARK_CKPT_TEST_PG_DSN')}?schema=x_{unique}")
    from spark_ckpt_s3 import S3Backend
    from spark_ckpt_s3.testing import set_test_credentials

    set_test_credentials()
    return S3Backend.from_url(
        f"s3://spark-ckpt-tests/x-{unique}?endpoint_url={_server('SPARK_CKPT_TEST_S3_ENDPOINT')}"
        "&region=us-east-1&create_bucket=true"
    )


KINDS = [
    pytest.param("memory"), pytest.param("file"), pytest.param("sqlite"),
    pytest.param("postgres", marks=pytest.mark.skipif(postgres_unavailable() is not None, reason=str(postgres_unavailable()))),
    pytest.param("s3", marks=pytest.mark.skipif(s3_unavailable() is not None, reason=str(s3_unavailable()))),
]
PAIRS = [
    pytest.param(a.values[0], b.values[0], marks=[*a.marks, *b.marks], id=f"{a.values[0]}-to-{b.values[0]}")
    for a, b in itertools.permutations(KINDS, 2)
]


@pytest.fixture
def stores(tmp_path):
    """open(kind, name) -> a new store, closed after the test."""
    opened = []

    def make(kind: str, name: str):
        store = open_store(kind, tmp_path, name)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def fill(store) -> list[CheckpointHeader]:
    """Real encoded checkpoints: two graphs, three executions, one compressed, one completed."""
    plain, gzipped = Codec(), Codec(pipeline=[GzipTransform(threshold=64)])
    written = []
    layout = [("g1", "e1", 3), ("g1", "e2", 2), ("g2", "e3", 2)]
    for n, (graph_id, execution_id, count) in enumerate(layout):
        for seq in range(count):
            codec = gzipped if seq == 1 else plain
            data = {"graph": graph_id, "seq": seq, "state": ["x" * 50] * (seq + 1)}
            blob = codec.encode_data(data, Identity(graph_id, execution_id, seq))
            header = CheckpointHeader(
                f"{execution_id}-{seq}", graph_id, execution_id, seq, T0 + n * 10 + seq + 0.25,
                status=COMPLETED if (execution_id, seq) == ("e2", 1) else "running", size=len(blob),
            )
            store.put(header, blob)
            written.append(header)
    return written


def contents(store) -> dict[str, tuple[CheckpointHeader, bytes]]:
    return {h.checkpoint_id: (h, store.get(h.checkpoint_id).blob) for h in store.list()}


@pytest.mark.parametrize("src_kind, dst_kind", PAIRS)
def test_round_trip_between_backends(stores, src_kind, dst_kind):
    """src -> dst -> fresh src-kind store: every header and byte identical; a re-run copies nothing."""
    src = stores(src_kind, "src")
    written = fill(src)
    dst = stores(dst_kind, "dst")
    assert export_checkpoints(src, dst) == len(written)
    assert contents(dst) == contents(src)
    assert dst.list() == src.list()
    assert dst.executions() == src.executions()
    assert export_checkpoints(src, dst) == 0  # everything already there, identical
    back = stores(src_kind, "back")
    assert export_checkpoints(dst, back) == len(written)
    assert contents(back) == contents(src)


def test_graph_filter_copies_one_graph(stores):
    """graph_id= copies only that graph's checkpoints."""
    src, dst = stores("memory", "src"), stores("sqlite", "dst")
    fill(src)
    assert export_checkpoints(src, dst, graph_id="g2") == 2
    assert {h.graph_id for h in dst.list()} == {"g2"}


def test_progress_reports_every_checkpoint(stores):
    """progress(done, total) is called once per checkpoint, done counting up to total."""
    src, dst = stores("sqlite", "src"), stores("file", "dst")
    total = len(fill(src))
    calls = []
    export_checkpoints(src, dst, progress=lambda done, of: calls.append((done, of)))
    assert calls == [(i, total) for i in range(1, total + 1)]


def test_interrupted_export_resumes(stores):
    """An export stopped half-way leaves whole histories' prefixes; running it again finishes it."""
    src, dst = stores("sqlite", "src"), stores("file", "dst")
    total = len(fill(src))

    def stop_at_four(done: int, of: int) -> None:
        if done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_checkpoints(src, dst, progress=stop_at_four)
    assert len(dst.list()) == 4
    assert export_checkpoints(src, dst) == total - 4
    assert contents(dst) == contents(src)


def test_damaged_checkpoint_is_not_copied(stores):
    """verify=True refuses a checkpoint whose checksum fails, names it, and writes nothing for it."""
    src, dst = stores("memory", "src"), stores("sqlite", "dst")
    good = Codec().encode_data({"ok": True}, Identity("g", "e", 0))
    src.put(CheckpointHeader("good", "g", "e", 0, T0), good)
    damaged = bytearray(Codec().encode_data({"ok": False}, Identity("g", "e", 1)))
    damaged[-1] ^= 0xFF
    src.put(CheckpointHeader("damaged", "g", "e", 1, T0 + 1), bytes(damaged))
    with pytest.raises(CorruptCheckpointError, match="damaged"):
        export_checkpoints(src, dst)
    assert [h.checkpoint_id for h in dst.list()] == ["good"]
    # without verification it is copied as it is, for forensics
    assert export_checkpoints(src, dst, verify=False) == 1
    assert dst.get("damaged").blob == bytes(damaged)


def test_checkpoint_stored_at_the_wrong_position_is_refused(stores):
    """Bytes written for another (graph, execution, seq) are refused as swapped."""
    src, dst = stores("memory", "src"), stores("memory", "dst")
    src.put(CheckpointHeader("moved", "g", "e", 5, T0), Codec().encode_data({}, Identity("g", "e", 4)))
    with pytest.raises(CheckpointSwappedError, match="moved"):
        export_checkpoints(src, dst)
    assert dst.list() == []


def test_conflicting_destination_is_not_overwritten(stores):
    """A different checkpoint under the same id or position in the destination stops the export."""
    src, dst = stores("memory", "src"), stores("sqlite", "dst")
    blob = Codec().encode_data({"v": 1}, Identity("g", "e", 0))
    src.put(CheckpointHeader("ck", "g", "e", 0, T0), blob)
    other = Codec().encode_data({"v": 2}, Identity("g", "e", 0))
    dst.put(CheckpointHeader("ck", "g", "e", 0, T0), other)
    with pytest.raises(DuplicateCheckpointError, match="different checkpoint with id ck"):
        export_checkpoints(src, dst)
    assert dst.get("ck").blob == other
    dst2 = stores("memory", "dst2")
    dst2.put(CheckpointHeader("someone-else", "g", "e", 0, T0), other)
    with pytest.raises(DuplicateCheckpointError, match="seq 0 of execution e"):
        export_checkpoints(src, dst2)
    assert [h.checkpoint_id for h in dst2.list()] == ["someone-else"]
