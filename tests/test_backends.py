"""The conformance suite against the built-in backends, plus what is specific to each."""

from __future__ import annotations

from contextlib import closing

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spark_ckpt.backends.file import FileBackend
from spark_ckpt.backends.memory import MemoryBackend
from spark_ckpt.backends.sqlite import SqliteBackend
from spark_ckpt.codec.envelope import Envelope, Identity, pack, unpack
from spark_ckpt.config import CheckpointConfig, open_backend
from spark_ckpt.errors import (
    BackendError,
    ConfigError,
    CorruptCheckpointError,
    DuplicateCheckpointError,
    LeaseError,
)
from spark_ckpt.testing.conformance import BackendConformance, make_header


class TestMemoryBackend(BackendConformance):
    def make_backend(self, tmp_path):
        return MemoryBackend()


class TestFileBackend(BackendConformance):
    def make_backend(self, tmp_path):
        return FileBackend(tmp_path / "store")

    def reopen_backend(self, backend, tmp_path):
        return FileBackend(tmp_path / "store")


class TestSqliteBackend(BackendConformance):
    def make_backend(self, tmp_path):
        return SqliteBackend(tmp_path / "ckpt.db")

    def reopen_backend(self, backend, tmp_path):
        return SqliteBackend(tmp_path / "ckpt.db")


# -- helpers ---------------------------------------------------------------------------------------
RACE_SCRIPT = r"""
import os, sys, time
from spark_ckpt.config import open_backend
from spark_ckpt.errors import LeaseError

url, start_file, owner = sys.argv[1:4]
backend = open_backend(url)
while not os.path.exists(start_file):
    time.sleep(0.001)
try:
    lease = backend.acquire_lease("exec-1", owner, 60)
except LeaseError:
    print("lost")
else:
    print(f"won {lease.token}")
"""

WRITER_SCRIPT = r"""
import sys
from spark_ckpt.config import open_backend
from spark_ckpt.testing.conformance import make_header

url, execution_id, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
backend = open_backend(url)
for seq in range(count):
    backend.put(make_header(seq, execution_id=execution_id), f"{execution_id}:{seq}".encode())
backend.close()
"""


def run_processes(script: str, argv_per_process: list[list[str]], start_file=None) -> list[str]:
    """Start one interpreter per argv, release them together via ``start_file``, return their stdout."""
    procs = [
        subprocess.Popen([sys.executable, "-c", script, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for argv in argv_per_process
    ]
    if start_file is not None:
        start_file.write_text("go")
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outputs.append(out.strip())
    return outputs


def store_urls(tmp_path):
    return {"file": f"file://{tmp_path}/store", "sqlite": f"sqlite://{tmp_path}/ckpt.db"}


# -- both durable backends -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_processes_racing_for_one_lease_exactly_one_wins(tmp_path, kind):
    """Several processes acquire one execution's lease at the same moment: exactly one gets it."""
    url = store_urls(tmp_path)[kind]
    open_backend(url).close()  # create the store before the race
    start = tmp_path / "start"
    results = run_processes(RACE_SCRIPT, [[url, str(start), f"worker-{i}"] for i in range(4)], start)
    assert sorted(r.split()[0] for r in results) == ["lost", "lost", "lost", "won"]
    (winner,) = [i for i, result in enumerate(results) if result.startswith("won")]
    backend = open_backend(url)
    renewed = backend.acquire_lease("exec-1", f"worker-{winner}", 60)
    assert renewed.token == int(results[winner].split()[1])
    backend.close()


@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_processes_writing_one_store(tmp_path, kind):
    """Two processes creating and writing the same new store at once lose nothing."""
    url = store_urls(tmp_path)[kind]
    run_processes(WRITER_SCRIPT, [[url, "proc-a", "40"], [url, "proc-b", "40"]])
    backend = open_backend(url)
    assert len(backend.list()) == 80
    assert backend.get("proc-a-39").blob == b"proc-a:39"
    assert sorted(h.checkpoint_id for h in backend.executions()) == ["proc-a-39", "proc-b-39"]
    backend.close()


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (CheckpointConfig(backend="file", path="store"), FileBackend),
        (CheckpointConfig(backend="sqlite", path="ckpt.db"), SqliteBackend),
        (CheckpointConfig(backend="file://./store"), FileBackend),
        (CheckpointConfig(backend="sqlite://ckpt.db"), SqliteBackend),
    ],
)
def test_selected_through_config_relative_paths(tmp_path, monkeypatch, config, expected):
    """backend names with path=, and relative URLs, open the built-ins relative to the working directory."""
    monkeypatch.chdir(tmp_path)
    backend = config.open_backend()
    try:
        assert type(backend) is expected
        backend.put(make_header(0), b"here")
    finally:
        backend.close()
    assert (tmp_path / ("store" if expected is FileBackend else "ckpt.db")).exists()


def test_selected_through_absolute_urls(tmp_path):
    """file:///abs and sqlite:///abs URLs point at absolute paths."""
    file_backend = open_backend(f"file://{tmp_path}/abs-store")
    sqlite_backend = open_backend(f"sqlite://{tmp_path}/abs.db")
    assert isinstance(file_backend, FileBackend) and file_backend.root == str(tmp_path / "abs-store")
    assert isinstance(sqlite_backend, SqliteBackend) and sqlite_backend.path == str(tmp_path / "abs.db")
    file_backend.close()
    sqlite_backend.close()


@pytest.mark.parametrize("url", ["file://{d}/x", "sqlite://{d}/x.db"])
def test_unknown_backend_option_refused(tmp_path, url):
    """A misspelt backend option is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="fsinc"):
        open_backend(url.format(d=tmp_path), fsinc=False)


@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_unwritable_location_raises_backend_error(tmp_path, kind):
    """A location under a regular file cannot be created: BackendError naming the path."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    url = {"file": f"file://{blocker}/store", "sqlite": f"sqlite://{blocker}/ckpt.db"}[kind]
    with pytest.raises(BackendError, match="a-file") as info:
        open_backend(url)
    assert "writable" in str(info.value)
    assert blocker.read_text() == "not a directory"


# -- file backend ----------------------------------------------------------------------------------
def checkpoint_path(backend: FileBackend, header) -> Path:
    return Path(backend.root, "graphs", header.graph_id, header.execution_id, f"{header.seq:012d}.ckpt")


def test_file_ignores_stray_temp_and_foreign_files(tmp_path):
    """Leftover temp files from a crashed write and unrelated names are never listed or read."""
    backend = FileBackend(tmp_path / "store", fsync=False)
    header = make_header(0)
    backend.put(header, b"good")
    directory = checkpoint_path(backend, header).parent
    (directory / ".tmp-crashed.part").write_bytes(b"half a checkp")
    (directory / "000000000001.ckpt.part").write_bytes(b"junk")
    (directory / "notes.txt").write_text("hello")
    (Path(backend.root, "graphs", header.graph_id) / ".hidden").mkdir()
    assert backend.list() == [header]
    assert backend.executions() == [header]
    backend.put(make_header(1), b"next")
    assert [h.seq for h in backend.list()] == [1, 0]


def test_file_put_leaves_no_temp_files(tmp_path):
    """Successful and refused writes both clean up their temp files."""
    backend = FileBackend(tmp_path / "store", fsync=False)
    backend.put(make_header(0), b"a")
    with pytest.raises(DuplicateCheckpointError):
        backend.put(make_header(0, checkpoint_id="other"), b"b")
    leftovers = [p.name for p in Path(backend.root).rglob("*") if ".tmp" in p.name]
    assert leftovers == []


def test_file_truncated_checkpoint_is_returned_for_the_codec_to_reject(tmp_path):
    """A truncated blob is returned as stored; the backend never decodes, the codec refuses it."""
    backend = FileBackend(tmp_path / "store")
    header = make_header(0)
    blob = pack(Envelope(layers=[{"name": "json"}], identity=Identity("graph-a", "exec-1", 0), payload=b"{}" * 500))
    backend.put(header, blob)
    path = checkpoint_path(backend, header)
    path.write_bytes(path.read_bytes()[:-100])
    stored = backend.get(header.checkpoint_id)
    assert stored.blob == blob[:-100]
    assert stored.header == header
    with pytest.raises(CorruptCheckpointError):
        unpack(stored.blob)


def test_file_damaged_header_falls_back_to_previous(tmp_path):
    """A checkpoint file whose own header is damaged is left out of listings, refused by get, deletable;
    the executions index still names it as the execution's head (recovery then falls back past it)."""
    backend = FileBackend(tmp_path / "store")
    first, second = make_header(0), make_header(1)
    backend.put(first, b"one")
    backend.put(second, b"two")
    checkpoint_path(backend, second).write_bytes(b"SCKPTF1\n\x00\x00\x10\x00{")
    assert backend.list() == [first]
    assert backend.executions() == [second]
    with pytest.raises(CorruptCheckpointError, match="000000000001.ckpt"):
        backend.get(second.checkpoint_id)
    assert backend.delete([second.checkpoint_id]) == 1
    assert not checkpoint_path(backend, second).exists()


def test_file_ids_cannot_escape_the_store(tmp_path):
    """Ids made of path syntax stay inside the store directory."""
    backend = FileBackend(tmp_path / "store", fsync=False)
    backend.put(make_header(0, checkpoint_id="../../../x", graph_id="../../g", execution_id="/etc"), b"x")
    outside = [p for p in tmp_path.rglob("*") if not str(p).startswith(str(tmp_path / "store"))]
    assert outside == []
    assert backend.get("../../../x").blob == b"x"


def test_file_refuses_a_foreign_non_empty_directory(tmp_path):
    """Pointing the file backend at a directory holding other files is refused and touches nothing."""
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(BackendError, match="not a spark-ckpt file store"):
        FileBackend(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_file_overlong_id_is_refused_clearly(tmp_path):
    """An id too long for a file name is a BackendError, not an OSError."""
    backend = FileBackend(tmp_path / "store", fsync=False)
    with pytest.raises(BackendError, match="too long"):
        backend.put(make_header(0, checkpoint_id="x" * 300), b"x")
    assert backend.list() == []


def test_file_lease_file_survives_reopen_with_token(tmp_path):
    """The lease (owner and fencing token) is persisted: a new process sees the takeover token."""
    backend = FileBackend(tmp_path / "store", fsync=False)
    first = backend.acquire_lease("exec-1", "a", 0.01)
    time.sleep(0.05)
    second = FileBackend(tmp_path / "store").acquire_lease("exec-1", "b", 60)
    assert second.token == first.token + 1
    with pytest.raises(LeaseError):
        backend.put(make_header(0), b"stale", lease=first)


# -- SQLite backend --------------------------------------------------------------------------------
def test_sqlite_uses_wal_and_the_requested_synchronous_mode(tmp_path):
    """The database is in WAL mode; synchronous defaults to NORMAL and FULL can be chosen."""
    path = tmp_path / "ckpt.db"
    backend = SqliteBackend(path)
    with closing(sqlite3.connect(path)) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert backend._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    backend.close()
    full = open_backend(f"sqlite://{path}", synchronous="full")
    assert full._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    full.close()
    with pytest.raises(ConfigError, match="synchronous"):
        SqliteBackend(path, synchronous="sometimes")


def test_sqlite_migrations_are_idempotent_on_reopen(tmp_path):
    """Reopening applies nothing twice and keeps the data."""
    path = tmp_path / "ckpt.db"
    backend = SqliteBackend(path)
    applied = backend.applied_migrations()
    assert applied
    backend.put(make_header(0), b"kept")
    backend.close()
    for _ in range(2):
        again = SqliteBackend(path)
        assert again.applied_migrations() == applied
        assert again.get("exec-1-0").blob == b"kept"
        again.close()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM _sqlite_migrations").fetchone()[0] == len(applied)


@pytest.mark.parametrize(
    "content", [b"this is not a database at all", b"SQLite format 3\x00" + b"\xff" * 200, b"x"],
    ids=["text", "sqlite-magic-then-garbage", "one-byte"],
)
def test_sqlite_refuses_a_file_that_is_not_a_database(tmp_path, content):
    """A foreign or corrupt file at the path is a BackendError and is never overwritten."""
    path = tmp_path / "ckpt.db"
    path.write_bytes(content)
    with pytest.raises(BackendError, match="not a"):
        SqliteBackend(path)
    assert path.read_bytes() == content


def test_sqlite_directory_path_refused(tmp_path):
    """A directory given as the database path is a BackendError saying so."""
    with pytest.raises(BackendError, match="directory"):
        SqliteBackend(tmp_path)


def test_sqlite_closed_backend_raises_backend_error(tmp_path):
    """Using a closed backend is a BackendError saying it is closed."""
    backend = SqliteBackend(tmp_path / "ckpt.db")
    backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend.put(make_header(0), b"x")
    with pytest.raises(BackendError, match="closed"):
        backend.list()


def test_sqlite_listing_never_reads_blobs(tmp_path):
    """list() and executions() select header columns only (a traced connection sees no blob column)."""
    backend = SqliteBackend(tmp_path / "ckpt.db")
    backend.put(make_header(0), b"x")
    statements: list[str] = []
    backend._conn.set_trace_callback(statements.append)
    backend.list(graph_id="graph-a", limit=5)
    backend.executions(unfinished_only=True)
    backend._conn.set_trace_callback(None)
    assert len(statements) == 2
    assert all("blob" not in sql for sql in statements)
    backend.close()


def test_file_recreates_a_directory_removed_from_outside(tmp_path):
    """If an execution directory vanished (e.g. cleaned by hand), the next put recreates it."""
    import shutil

    backend = FileBackend(tmp_path / "store", fsync=False)
    backend.put(make_header(0), b"a")
    shutil.rmtree(Path(backend.root, "graphs"))
    backend.put(make_header(1), b"b")
    assert backend.get("exec-1-1").blob == b"b"
    assert [h.seq for h in backend.list()] == [1]


def test_sqlite_memory_url_refused_with_advice(tmp_path):
    """sqlite://:memory: is not a durable store: ConfigError pointing to memory://."""
    with pytest.raises(ConfigError, match="memory://"):
        open_backend("sqlite://:memory:")


@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_two_worker_processes_race_and_a_stalled_worker_is_fenced(tmp_path, kind):
    """The lease scenarios every backend plugin runs (spark_ckpt.testing.leases), on the local backends."""
    from spark_ckpt.testing.leases import check_leases

    check_leases(f"sqlite:///{tmp_path}/leases.db" if kind == "sqlite" else f"file://{tmp_path}/leases", tmp_path)


def _store_written_before(migration: str, path, headers) -> None:
    """A SQLite store as spark-ckpt wrote it before ``migration``, holding ``headers`` (blob b"old")."""
    from sqlite_utils import Database

    from spark_ckpt.backends.sqlite import _migrations

    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        db = Database(conn)
        _migrations().apply(db, stop_before=migration)
        for h in headers:
            conn.execute(
                "INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (h.checkpoint_id, h.graph_id, h.execution_id, h.seq, h.created_at, h.status, h.kind, h.size, b"old"),
            )
            if db["executions"].exists():
                conn.execute("INSERT OR IGNORE INTO executions VALUES (?, ?)", (h.execution_id, h.graph_id))


def test_sqlite_migrates_a_database_written_with_the_first_schema(tmp_path):
    """A store created before the executions table keeps every checkpoint, lists them by graph and
    execution as before, and new puts record their execution for listing by graph."""
    path = tmp_path / "old.db"
    old = [make_header(seq, execution_id=f"exec-{seq % 2}") for seq in range(4)]
    _store_written_before("m002_executions_table", path, old)

    backend = SqliteBackend(path)
    assert backend.applied_migrations()[1:] == [
        "m002_executions_table", "m003_canonical_ids_unindexed", "m004_derived_ids_name_the_whole_execution",
        "m005_checkpoints_keyed_by_position", "m006_executions_index_heads", "m007_values_stored_once",
    ]
    graph_id = old[0].graph_id
    assert {h.checkpoint_id for h in backend.list(graph_id=graph_id)} == {h.checkpoint_id for h in old}
    assert {h.execution_id for h in backend.executions(graph_id=graph_id)} == {"exec-0", "exec-1"}
    assert backend.get(old[3].checkpoint_id).blob == b"old"
    new = make_header(9, execution_id="exec-new", graph_id="other-graph")
    backend.put(new, b"new")
    assert [h.checkpoint_id for h in backend.list(graph_id="other-graph")] == [new.checkpoint_id]
    assert backend.list(graph_id="no-such-graph") == []
    with closing(sqlite3.connect(path)) as check:
        names = {row[0] for row in check.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'checkpoints'")}
        assert "checkpoints_by_graph" not in names and "checkpoints_by_named_id" in names
    backend.close()


def test_sqlite_migration_keys_every_checkpoint_by_its_position(tmp_path):
    """A store written before m005 (rows behind a UNIQUE(execution_id, seq) index) keeps every
    checkpoint readable, listable and deletable by id; afterwards each row's rowid is its position,
    the index is gone, and a duplicate (execution, seq) is still refused."""
    path = tmp_path / "m004.db"
    old = [
        make_header(0, execution_id="e1", checkpoint_id="ck-e1-0"),
        make_header(1, execution_id="e1", checkpoint_id="ck-e1-1"),
        make_header(0, execution_id="e3", checkpoint_id="named-before", created_at=1_699_999_997.0),
        make_header(0, execution_id="e2", graph_id="other", checkpoint_id="ck-e2-0"),
    ]
    _store_written_before("m005_checkpoints_keyed_by_position", path, old)

    backend = SqliteBackend(path)
    for h in old:
        assert backend.get(h.checkpoint_id).header == h
    assert [h.checkpoint_id for h in backend.list(execution_id="e1")] == ["ck-e1-1", "ck-e1-0"]
    assert [h.checkpoint_id for h in backend.executions()] == ["ck-e1-1", "ck-e2-0", "named-before"]
    assert _ids_of(backend.list(graph_id="other")) == {"ck-e2-0"}
    with pytest.raises(DuplicateCheckpointError):
        backend.put(make_header(1, execution_id="e1", checkpoint_id="ck-e1-1"), b"dup")
    backend.put(make_header(2, execution_id="e1", checkpoint_id="ck-e1-2"), b"new")
    assert backend.executions(graph_id=old[0].graph_id)[0].checkpoint_id == "ck-e1-2"
    assert backend.delete(["named-before", "ck-e2-0"]) == 2
    with closing(sqlite3.connect(path)) as check:
        numbers = dict(check.execute("SELECT execution_id, number FROM executions"))
        for rowid, execution_id, seq in check.execute("SELECT rowid, execution_id, seq FROM checkpoints"):
            assert rowid == numbers[execution_id] * 2**32 + seq + 2**31
        assert [row[1] for row in check.execute("PRAGMA index_list(checkpoints)")] == ["checkpoints_by_named_id"]
    backend.close()


def test_sqlite_refuses_a_seq_it_cannot_place(tmp_path):
    """A seq outside [-2**31, 2**31) is refused before anything is written, saying what range fits;
    an older store holding one is left unmigrated, its rows as they were."""
    backend = SqliteBackend(tmp_path / "ckpt.db")
    for seq in (2**31, -(2**31) - 1):
        with pytest.raises(BackendError, match=r"outside \[-2\*\*31, 2\*\*31\)"):
            backend.put(make_header(seq), b"x")
        with pytest.raises(BackendError, match="outside"):
            backend.start_execution(make_header(seq), b"x", "w", 30)
    assert backend.list() == [] and backend.executions() == []
    backend.close()

    path = tmp_path / "m004.db"
    _store_written_before("m005_checkpoints_keyed_by_position", path, [make_header(2**40)])
    with pytest.raises(BackendError, match="export them with an older spark-ckpt"):
        SqliteBackend(path)
    with closing(sqlite3.connect(path)) as check:
        assert check.execute("SELECT seq, blob FROM checkpoints").fetchall() == [(2**40, b"old")]
        applied = {row[0] for row in check.execute("SELECT name FROM _sqlite_migrations")}
        assert "m005_checkpoints_keyed_by_position" not in applied


def test_sqlite_extreme_seqs_stay_in_their_execution(tmp_path):
    """The first and last seq an execution can hold (0 and the top of its rowid range) are found,
    listed and counted as that execution's, never as a neighbour's; a negative seq is refused."""
    backend = SqliteBackend(tmp_path / "ckpt.db")
    backend.put(make_header(0, execution_id="before"), b"b")
    lowest, highest = make_header(0, execution_id="mid"), make_header(2**31 - 1, execution_id="mid")
    backend.put(highest, b"high")
    backend.put(lowest, b"low")
    backend.put(make_header(0, execution_id="after"), b"a")
    with pytest.raises(BackendError, match="not a whole number >= 0"):
        backend.put(make_header(-(2**31), execution_id="mid"), b"low")
    assert {h.seq for h in backend.list(execution_id="mid")} == {0, 2**31 - 1}
    assert {h.execution_id: h.seq for h in backend.executions()} == {"before": 0, "mid": 2**31 - 1, "after": 0}
    assert backend.get(lowest.checkpoint_id).blob == b"low"
    assert backend.delete([highest.checkpoint_id]) == 1
    # the executions index keeps the head; the remaining checkpoint is still that execution's
    assert [h.seq for h in backend.executions() if h.execution_id == "mid"] == [2**31 - 1]
    assert [h.seq for h in backend.list(execution_id="mid")] == [0]
    backend.close()


def test_sqlite_lists_by_graph_what_another_connection_wrote(tmp_path):
    """Each backend object records an execution's graph once; executions written through another
    object (another process) or started with start_execution are listed by graph all the same."""
    path = tmp_path / "ckpt.db"
    first, second = SqliteBackend(path), SqliteBackend(path)
    first.put(make_header(0, graph_id="g", execution_id="e1"), b"a")
    second.put(make_header(1, graph_id="g", execution_id="e1"), b"b")
    second.start_execution(make_header(0, graph_id="g", execution_id="e2"), b"c", "worker", 30)
    first.put(make_header(0, graph_id="h", execution_id="e3"), b"d")
    for backend in (first, second):
        assert _ids_of(backend.list(graph_id="g")) == {"e1-0", "e1-1", "e2-0"}
        assert {h.execution_id for h in backend.executions(graph_id="g")} == {"e1", "e2"}
        assert _ids_of(backend.list(graph_id="h")) == {"e3-0"}
    first.close()
    second.close()


def _ids_of(headers) -> set[str]:
    return {h.checkpoint_id for h in headers}


def test_sqlite_refuses_a_derived_id_at_another_position(tmp_path):
    """SQLite finds derived ids (``ck-<x>-<n>``) by position, so it refuses one given for another
    position with an error that says which, and stores nothing."""
    backend = SqliteBackend(tmp_path / "ckpt.db")
    with pytest.raises(BackendError, match="reserved for checkpoint 1 of execution c"):
        backend.put(make_header(5, execution_id="b", checkpoint_id="ck-c-1"), b"x")
    with pytest.raises(BackendError, match="reserved"):
        backend.start_execution(make_header(0, execution_id="b", checkpoint_id="ck-c-1"), b"x", "w", 30)
    # a negative seq is refused before its id is looked at ("ck-b--5" would name checkpoint 5 of "b-")
    with pytest.raises(BackendError, match="seq is -5, not a whole number >= 0"):
        backend.put(make_header(-5, execution_id="b", checkpoint_id="ck-b--5"), b"x")
    assert backend.list() == []
    backend.close()


def test_sqlite_keeps_checkpoints_stored_under_the_first_derived_id_form(tmp_path):
    """Checkpoints written before m004 (ids ``ck-<hex>-<seq>`` for execution ``ex-<hex>``) stay
    readable, listable and deletable by their ids; new checkpoints use the current form."""
    path = tmp_path / "m003.db"
    old = make_header(3, execution_id="ex-0abc", checkpoint_id="ck-0abc-3")
    _store_written_before("m004_derived_ids_name_the_whole_execution", path, [old])

    backend = SqliteBackend(path)
    assert backend.get("ck-0abc-3").blob == b"old"
    backend.put(make_header(4, execution_id="ex-0abc", checkpoint_id="ck-ex-0abc-4"), b"new")
    assert [h.checkpoint_id for h in backend.list(graph_id=old.graph_id)] == ["ck-ex-0abc-4", "ck-0abc-3"]
    with pytest.raises(BackendError):  # its shape names another position: refused, nothing overwritten
        backend.put(make_header(9, execution_id="other", checkpoint_id="ck-0abc-3"), b"dup")
    assert backend.delete(["ck-0abc-3"]) == 1 and backend.get("ck-ex-0abc-4").blob == b"new"
    backend.close()
