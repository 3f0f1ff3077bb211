"""Key rotation and rekey over a real backend; sensitive values never reach storage in the clear."""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import pytest

from spark_ckpt.backends.base import Backend
from spark_ckpt.backends.memory import MemoryBackend
from spark_ckpt.codec import Codec, GzipTransform, Identity, Keyring, describe, new_key
from spark_ckpt.codec.rekey import rekey_backend
from spark_ckpt.config import open_backend
from spark_ckpt.errors import (
    BackendError, MissingKeyError, RekeyError, UnknownBackendError,
)
from spark_ckpt.model import GraphCheckpoint, GraphMetadata, NodeSnapshot, Visit

K1, K2 = new_key(), new_key()


def record(graph_id: str, execution_id: str, seq: int, secret: str = "state") -> GraphCheckpoint:
    return GraphCheckpoint(
        checkpoint_id=f"{execution_id}-{seq}", seq=seq, timestamp=1_700_000_000 + seq,
        graph_metadata=GraphMetadata(graph_id, "v1", execution_id),
        graph_state={"secret": secret, "step": seq},
        node_states={"llm": NodeSnapshot(process_count=seq, outputs={"content": secret})},
        execution_history=[Visit("llm", 0, 1, output={"content": secret})],
        node_extras={"llm": {"messages": [{"role": "user", "content": secret}]}},
    )


def store(backend, codec: Codec, rec: GraphCheckpoint) -> None:
    blob = codec.encode(rec, Identity(rec.graph_id, rec.execution_id, rec.seq))
    backend.put(rec.header(size=len(blob)), blob)


def read_all(backend, codec: Codec) -> dict[str, GraphCheckpoint]:
    out = {}
    for header in backend.list():
        identity = Identity(header.graph_id, header.execution_id, header.seq)
        out[header.checkpoint_id] = codec.decode(backend.get(header.checkpoint_id).blob, GraphCheckpoint, identity)
    return out


def keyring(keys: dict, active: str | None = None) -> Keyring:
    return Keyring({kid: {"k1": K1, "k2": K2}[kid] for kid in keys}, active)


def open_scheme(scheme: str, root: Path):
    if scheme == "memory":
        return MemoryBackend()
    root.mkdir()
    url = f"sqlite://{root}/checkpoints.db" if scheme == "sqlite" else f"file://{root}"
    try:
        return open_backend(url)
    except UnknownBackendError:
        pytest.skip(f"the {scheme} backend is not available in this build")


@pytest.mark.parametrize("scheme", ["memory", "sqlite", "file"])
def test_rotation_then_rekey_then_drop_old_key(scheme, tmp_path):
    """Write with k1, rotate to k2, read both, rekey, drop k1: everything still reads, unchanged."""
    backend = open_scheme(scheme, tmp_path / "store")
    old = Codec(keyring=keyring(["k1"]))
    originals = [record("g", "e1", seq) for seq in range(3)]
    for rec in originals:
        store(backend, old, rec)

    rotated = Codec(keyring=keyring(["k1", "k2"], active="k2"), pipeline=[GzipTransform(threshold=0)])
    newer = [record("g", "e2", seq) for seq in range(2)]
    for rec in newer:
        store(backend, rotated, rec)
    expected = {rec.checkpoint_id: rec for rec in originals + newer}
    assert read_all(backend, rotated) == expected
    with pytest.raises(MissingKeyError):
        read_all(backend, Codec(keyring=keyring(["k2"])))  # k1 checkpoints still need k1

    calls: list[tuple[int, int]] = []
    assert rekey_backend(backend, rotated, progress=lambda done, total: calls.append((done, total))) == 3
    assert calls == [(i, 5) for i in range(1, 6)]
    assert {describe(backend.get(h.checkpoint_id).blob)["key_id"] for h in backend.list()} == {"k2"}
    for header in backend.list():
        assert header.size == len(backend.get(header.checkpoint_id).blob)

    assert read_all(backend, Codec(keyring=keyring(["k2"]))) == expected
    assert rekey_backend(backend, rotated) == 0  # idempotent: nothing left under k1
    backend.close()


def test_rekey_limited_to_one_graph():
    """graph_id= re-encrypts only that graph's checkpoints."""
    backend = MemoryBackend()
    old = Codec(keyring=keyring(["k1"]))
    store(backend, old, record("g1", "e1", 1))
    store(backend, old, record("g2", "e2", 1))
    rotated = Codec(keyring=keyring(["k1", "k2"], active="k2"))
    assert rekey_backend(backend, rotated, graph_id="g1") == 1
    assert describe(backend.get("e1-1").blob)["key_id"] == "k2"
    assert describe(backend.get("e2-1").blob)["key_id"] == "k1"


def test_rekey_encrypts_plaintext_only_when_migration_is_allowed():
    """Plaintext checkpoints are left alone and reported unless allow_plaintext is set; then encrypted."""
    backend = MemoryBackend()
    store(backend, Codec(), record("g", "e", 1))
    store(backend, Codec(keyring=keyring(["k1"])), record("g", "e", 2))
    strict = Codec(keyring=keyring(["k1", "k2"], active="k2"))
    with pytest.raises(RekeyError, match="1 of 2") as info:
        rekey_backend(backend, strict)
    assert info.value.rekeyed == 1 and [cid for cid, _ in info.value.failures] == ["e-1"]
    assert describe(backend.get("e-1").blob)["encrypted"] is False  # left exactly as it was

    migrating = Codec(keyring=keyring(["k2"]), allow_plaintext=True)
    assert rekey_backend(backend, migrating) == 1
    assert read_all(backend, Codec(keyring=keyring(["k2"]))) == {"e-1": record("g", "e", 1), "e-2": record("g", "e", 2)}


def test_rekey_on_a_backend_without_replace_changes_nothing():
    """A backend that cannot replace makes rekey stop with a BackendError before touching anything."""
    class NoReplaceBackend(MemoryBackend):
        replace = Backend.replace

    backend = NoReplaceBackend()
    store(backend, Codec(keyring=keyring(["k1"])), record("g", "e", 1))
    before = backend.get("e-1").blob
    with pytest.raises(BackendError, match="cannot replace"):
        rekey_backend(backend, Codec(keyring=keyring(["k1", "k2"], active="k2")))
    assert backend.get("e-1").blob == before


def test_rekey_without_an_active_key_is_refused():
    """rekey with no keys configured is a clear error, not a silent decrypt-to-plaintext."""
    with pytest.raises(RekeyError, match="SPARK_CKPT_KEYS"):
        rekey_backend(MemoryBackend(), Codec())


# -- sentinel search ---------------------------------------------------------------------------------
SENTINEL = "SENTINEL-7f3a9c-do-not-store"


def sentinel_record(seq: int) -> GraphCheckpoint:
    rec = record("graph-s", "exec-s", seq, secret=SENTINEL)
    return attrs.evolve(rec, run_input={"q": SENTINEL}, result=SENTINEL * 50)


def test_sentinel_never_appears_in_encoded_bytes():
    """Graph state, node outputs, history and messages all sit inside the cipher."""
    rec = sentinel_record(1)
    identity = Identity("graph-s", "exec-s", 1)
    needles = [SENTINEL.encode(), SENTINEL.encode("utf-16-le"), SENTINEL[:12].encode()]
    assert SENTINEL.encode() in Codec().encode(rec, identity)  # the search can find it in plaintext
    for pipeline in ([], [GzipTransform(threshold=0)]):
        blob = Codec(keyring=keyring(["k1"]), pipeline=pipeline).encode(rec, identity)
        assert not any(needle in blob for needle in needles)


def _raw_storage(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


@pytest.mark.parametrize("scheme", ["sqlite", "file"])
def test_sentinel_never_reaches_raw_storage(tmp_path, scheme):
    """No stored byte (database, WAL, checkpoint files) holds the sentinel when encryption is on."""
    def open_store(name: str):
        location = tmp_path / name
        url = f"sqlite://{location}/checkpoints.db" if scheme == "sqlite" else f"file://{location}"
        location.mkdir()
        try:
            return open_backend(url), location
        except UnknownBackendError:
            pytest.skip(f"the {scheme} backend is not available in this build")

    # control: the same search finds the sentinel when the codec does not encrypt
    plain, plain_root = open_store("plain")
    store(plain, Codec(), sentinel_record(1))
    assert SENTINEL.encode() in _raw_storage(plain_root)
    plain.close()

    backend, root = open_store("encrypted")
    codec = Codec(keyring=keyring(["k1"]), pipeline=[GzipTransform(threshold=64)])
    for seq in range(1, 6):
        store(backend, codec, sentinel_record(seq))
    files = {p.name for p in root.rglob("*") if p.is_file()}
    if scheme == "sqlite":
        assert any(name.endswith("-wal") for name in files), files  # WAL is searched while open
    assert SENTINEL.encode() not in _raw_storage(root)
    assert codec.decode(backend.get("exec-s-3").blob, GraphCheckpoint) == sentinel_record(3)
    backend.close()
    assert SENTINEL.encode() not in _raw_storage(root)  # and after the WAL is folded in
    assert os.listdir(root)


MARKER = "PLAINTEXT-MARKER-5e1d"


@pytest.mark.parametrize("how", ["cli", "library"])
def test_rekey_leaves_no_plaintext_in_the_sqlite_files(how, tmp_path, monkeypatch, no_env_config):
    """After `spark-ckpt rekey` (or rekey_backend on a store kept open) no byte of the plaintext
    checkpoints is left in the database file, in its free pages, or in its write-ahead log. SQLite
    starts with secure_delete off unless built with SQLITE_SECURE_DELETE (Debian's is; python.org's and
    macOS's are not): every connection here starts with it off, so the backend must turn it on."""
    import io
    from contextlib import closing
    import sqlite3

    from spark_ckpt.cli import main

    connect = sqlite3.connect

    def connect_without_secure_delete(*args, **kwargs):
        conn = connect(*args, **kwargs)
        conn.execute("PRAGMA secure_delete=OFF")
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect_without_secure_delete)
    path = tmp_path / "plain.db"
    url = f"sqlite:///{path}"
    backend = open_backend(url)
    for seq in range(12):  # small rows in shared pages, large ones in overflow pages
        store(backend, Codec(), record("g", "e1", seq, secret=MARKER + "x" * (seq * 1500)))
    raw = lambda: b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())  # noqa: E731
    with closing(sqlite3.connect(path)) as conn:  # the plaintext is in the database file, as in any older store
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert MARKER.encode() in path.read_bytes()

    if how == "cli":
        backend.close()
        monkeypatch.setenv("REKEY_TEST_KEYS", f"k2:{K2}")
        code = main(["--store", url, "--keys-env", "REKEY_TEST_KEYS", "--allow-plaintext", "rekey"], out=io.StringIO())
        assert code == 0
        with closing(sqlite3.connect(path)) as conn:  # whatever the log still held goes into the file
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    else:
        assert rekey_backend(backend, Codec(keyring=keyring(["k2"], "k2"), allow_plaintext=True)) == 12
    assert MARKER.encode() not in raw()
    reader = open_backend(url)
    assert all(rec.graph_state["secret"].startswith(MARKER) for rec in read_all(reader, Codec(keyring=keyring(["k2"]))).values())
    reader.close()
    backend.close()
