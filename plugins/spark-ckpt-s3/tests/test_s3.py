"""S3Backend against an S3 server over HTTP: conformance, leases across processes, interrupted
uploads, the key layout that keeps listing a prefix query, and the head objects (and index heads)
that survive a writer dying between a checkpoint and its head."""

from __future__ import annotations

import time
import uuid
from urllib.parse import urlsplit

import attrs
import pytest
from spark_ckpt.testing.leases import check_leases

from spark_ckpt.config import open_backend
from spark_ckpt.errors import (
    BackendError, CheckpointNotFoundError, ConfigError, DuplicateCheckpointError, LeaseError,
)
from spark_ckpt.model import COMPLETED, FAILED, CheckpointHeader
from spark_ckpt.testing.conformance import BackendConformance, make_header
from spark_ckpt_s3 import S3Backend
from spark_ckpt_s3.testing import CuttingProxy


class TestS3Backend(BackendConformance):
    lease_expiry_s = 0.2  # lease expiry is judged on the worker's clock; leave room for request time

    @pytest.fixture(autouse=True)
    def _server(self, s3_endpoint):
        self.endpoint = s3_endpoint

    def _url(self, prefix: str) -> str:
        return f"s3://spark-ckpt-tests/{prefix}?endpoint_url={self.endpoint}&region=us-east-1&create_bucket=true"

    def make_backend(self, tmp_path):
        return S3Backend.from_url(self._url(f"c-{uuid.uuid4().hex[:12]}"))

    def reopen_backend(self, backend, tmp_path):
        return S3Backend.from_url(self._url(backend.prefix))


def test_found_through_the_entry_point(s3_url):
    """The installed plugin makes s3:// URLs open an S3Backend."""
    backend = open_backend(s3_url)
    try:
        assert isinstance(backend, S3Backend)
    finally:
        backend.close()


@pytest.mark.parametrize(
    "url, message",
    [
        ("s3://?endpoint_url=http://127.0.0.1:9", "needs a bucket"),
        ("s3://b/p?endpoint=http://x", "unknown s3 backend option"),
        ("s3://key:secret@bucket/p", "credentials"),
        ("s3://b/p?max_workers=many", "max_workers"),
    ],
)
def test_bad_urls_are_config_errors(url, message):
    """Malformed S3 URLs raise ConfigError saying what to fix."""
    with pytest.raises(ConfigError, match=message):
        S3Backend.from_url(url)


def test_credentials_in_an_endpoint_url_are_never_shown(monkeypatch):
    """Credentials written into endpoint_url (or a secret query parameter of it) are masked in
    describe(), in a bad-URL error and in a connection failure quoting the endpoint."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    password = "s3cr@t!"
    for endpoint in (f"http://user:{password}@127.0.0.1:1", f"http://127.0.0.1:1/?token={password}"):
        with pytest.raises(BackendError) as info:
            S3Backend.from_url(f"s3://bucket/p?endpoint_url={endpoint}&region=us-east-1")
        assert password not in str(info.value) and "127.0.0.1:1" in str(info.value)
    with pytest.raises(ConfigError) as info:
        S3Backend.from_url(f"gs://bucket/p?endpoint_url=http://user:{password}@127.0.0.1:1")
    assert password not in str(info.value)


def test_missing_bucket_is_a_clear_error(s3_endpoint):
    """A bucket that does not exist (and create_bucket not set) is reported by name."""
    with pytest.raises(BackendError, match="does not exist"):
        S3Backend.from_url(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/p?endpoint_url={s3_endpoint}")


def test_key_layout_keeps_listing_a_prefix_query(s3_url):
    """Checkpoints live under ckpt/<graph>/<execution>/<seq>: one graph's listing never sees another's."""
    backend = S3Backend.from_url(s3_url)
    try:
        backend.put(make_header(0, graph_id="g1", execution_id="e1"), b"a")
        backend.put(make_header(0, graph_id="g2", execution_id="e2"), b"b")
        keys = sorted(o["Key"] for o in backend._s3.list_objects_v2(Bucket=backend.bucket, Prefix=backend.prefix)["Contents"])
        assert f"{backend.prefix}/ckpt/g1/e1/{0:020d}" in keys
        assert f"{backend.prefix}/ckpt/g2/e2/{0:020d}" in keys
        assert backend._prefix_for("g1", None) == f"{backend.prefix}/ckpt/g1/"
        # a second backend (cold cache) lists the same headers
        fresh = S3Backend.from_url(s3_url)
        try:
            assert fresh.list(graph_id="g1") == backend.list(graph_id="g1")
            assert fresh.list(execution_id="e2") == backend.list(execution_id="e2")
        finally:
            fresh.close()
    finally:
        backend.close()


def test_interrupted_upload_publishes_nothing(s3_url, s3_endpoint):
    """An upload cut mid-body fails cleanly; nothing partial is visible and the slot is still free."""
    target = urlsplit(s3_endpoint)
    direct = S3Backend.from_url(s3_url)
    proxy = CuttingProxy(target.hostname, target.port, cut_after=256 * 1024)
    cut = S3Backend.from_url(s3_url.replace(s3_endpoint, proxy.endpoint))
    try:
        direct.put(make_header(0), b"small and complete")
        blob = bytes(range(256)) * 8192  # 2 MB, far past the cut
        header = make_header(1, size=len(blob))
        with pytest.raises(BackendError):
            cut.put(header, blob)
        assert proxy.cuts >= 1
        assert [h.seq for h in direct.list()] == [0]
        with pytest.raises(CheckpointNotFoundError):
            direct.get(header.checkpoint_id)
        # the same checkpoint can be written once the network is back
        direct.put(header, blob)
        assert direct.get(header.checkpoint_id).blob == blob
    finally:
        cut.close()
        proxy.close()
        direct.close()


def test_orphan_pointer_from_a_crashed_put_is_invisible(s3_url):
    """A put that died after its id pointer but before publication leaves nothing visible."""
    backend = S3Backend.from_url(s3_url)
    try:
        header = CheckpointHeader("orphan", "g", "e", 0, time.time())
        key = backend._ckpt_key("g", "e", 0)
        backend._put_new(backend._key("ids", "orphan"), key.encode())
        with pytest.raises(CheckpointNotFoundError):
            backend.get("orphan")
        assert backend.list() == []
        assert backend.delete(["orphan"]) == 0
        backend.put(header, b"finished later")
        assert backend.get("orphan").blob == b"finished later"
    finally:
        backend.close()


def test_two_worker_processes_race_and_a_stalled_worker_is_fenced(s3_url, tmp_path):
    """Two real processes recover one execution: exactly one continues it, history does not fork.
    A worker frozen past its lease cannot write after another worker took the execution over."""
    check_leases(s3_url, tmp_path)


class TestS3BackendWithIndex(TestS3Backend):
    """The same contract with ``?index=sqlite://...``: listings come from the index."""

    def make_backend(self, tmp_path):
        self.index_path = tmp_path / f"index-{uuid.uuid4().hex[:8]}.db"
        return S3Backend.from_url(self._url(f"i-{uuid.uuid4().hex[:12]}") + f"&index=sqlite:///{self.index_path}")

    def reopen_backend(self, backend, tmp_path):
        return S3Backend.from_url(self._url(backend.prefix) + f"&index=sqlite:///{self.index_path}")


def test_indexed_listing_makes_no_bucket_listing_calls(s3_url, tmp_path):
    """With an index, list/executions are one local query: no ListObjects or HeadObject request."""
    backend = S3Backend.from_url(s3_url + f"&index=sqlite:///{tmp_path}/index.db")
    try:
        for seq in range(5):
            backend.put(make_header(seq, graph_id="g", execution_id="e"), b"x")
        requests = []
        backend._s3.meta.events.register("before-call.s3", lambda model, **_: requests.append(model.name))
        assert [h.seq for h in backend.list(graph_id="g")] == [4, 3, 2, 1, 0]
        assert [h.execution_id for h in backend.executions(graph_id="g")] == ["e"]
        assert requests == []
        assert backend.get("e-3").blob == b"x"
        assert requests == ["GetObject"]
    finally:
        backend.close()


def test_orphan_of_a_writer_killed_before_indexing_is_replaced_by_the_next_owner(s3_url, tmp_path):
    """Published but never indexed (the writer died in between): invisible, and the next lease owner
    writes that position instead of failing on it; rebuild_index() adopts orphans on request."""
    url = s3_url + f"&index=sqlite:///{tmp_path}/index.db"
    backend = S3Backend.from_url(url)
    try:
        backend.put(make_header(0, execution_id="e"), b"first")
        backend._index_put = lambda header: None  # the crash: publish without indexing
        backend.put(make_header(1, execution_id="e", checkpoint_id="orphan", status=COMPLETED), b"never acknowledged")
        del backend._index_put
        assert [h.seq for h in backend.list(execution_id="e")] == [0]
        assert backend.execution_head("e").seq == 0  # the index's head lags by that write, never leads
        lease = backend.acquire_lease("e", "next-owner", 30)
        backend.put(make_header(1, execution_id="e", checkpoint_id="e-1"), b"second", lease=lease)
        assert backend.get("e-1").blob == b"second"
        assert [h.checkpoint_id for h in backend.list(execution_id="e")] == ["e-1", "e-0"]
        assert (backend.execution_head("e").checkpoint_id, backend.executions()[0].status) == ("e-1", "running")
        # without a lease nobody may overwrite a position, indexed or not
        with pytest.raises(DuplicateCheckpointError):
            backend.put(make_header(1, execution_id="e", checkpoint_id="other"), b"x")
        backend._index_put = lambda header: None
        backend.put(make_header(2, execution_id="e"), b"late orphan")
        del backend._index_put
        assert backend.rebuild_index() == 1
        assert [h.seq for h in backend.list(execution_id="e")] == [2, 1, 0]
        assert backend.execution_head("e").seq == 2
        heads = backend._s3.list_objects_v2(Bucket=backend.bucket, Prefix=f"{backend.prefix}/heads/")
        assert heads["KeyCount"] == 0  # with an index, the index holds the heads
    finally:
        backend.close()


def _dropping_head_writes(backend: S3Backend):
    """The crash between the two requests: the checkpoint is published, its head write never happens."""
    backend._advance_head = lambda header, state=None: None
    return backend


def test_head_object_lagging_after_a_writer_died_between_its_two_requests(s3_url):
    """A writer that died after publishing a checkpoint but before writing the head leaves the head
    object one write behind: readers (also a cold process) take the newest listed checkpoint, the
    position is still published only once, and the next owner's put moves the head past it."""
    backend = S3Backend.from_url(s3_url)
    cold = None
    try:
        lease = backend.acquire_lease("e", "worker-a", 30)
        for seq in range(2):
            backend.put(make_header(seq, execution_id="e"), b"x", lease=lease)
        _dropping_head_writes(backend).put(make_header(2, execution_id="e", status=FAILED), b"lost head", lease=lease)
        del backend._advance_head
        assert backend._read_head("e")[0].seq == 1
        cold = S3Backend.from_url(s3_url)
        for reader in (backend, cold):
            assert (reader.execution_head("e").seq, reader.execution_head("e").status) == (2, FAILED)
            assert [(h.checkpoint_id, h.status) for h in reader.executions(unfinished_only=True)] == [("e-2", FAILED)]
        backend.release_lease(lease)
        taken = cold.acquire_lease("e", "worker-b", 30)
        with pytest.raises(DuplicateCheckpointError):  # the lagging head does not free the position
            cold.put(make_header(2, execution_id="e", checkpoint_id="again"), b"x", lease=taken)
        cold.put(make_header(3, execution_id="e"), b"continued", lease=taken)
        assert cold._read_head("e")[0].seq == 3
        assert backend.execution_head("e").checkpoint_id == "e-3"
    finally:
        backend.close()
        if cold is not None:
            cold.close()


def test_final_checkpoint_whose_head_write_was_lost_still_reads_completed(s3_url):
    """While the completed checkpoint is stored, a lost head write does not make the execution look
    unfinished: executions() and execution_head() take the later of head object and listing."""
    backend = S3Backend.from_url(s3_url)
    try:
        backend.put(make_header(0, execution_id="e"), b"x")
        _dropping_head_writes(backend).put(make_header(1, execution_id="e", status=COMPLETED), b"final")
        assert backend.executions(unfinished_only=True) == []
        assert backend.execution_head("e").status == COMPLETED
    finally:
        backend.close()


def test_two_writers_cannot_move_the_head_back(s3_url):
    """Head writes are conditional on the ETag the writer last saw: a writer whose view is stale
    loses the condition, reads the head again and leaves a later head alone (tag included)."""
    first, second = S3Backend.from_url(s3_url), S3Backend.from_url(s3_url)
    try:
        first.put(make_header(0, execution_id="e"), b"x")  # first now holds the head's ETag
        second.put(attrs.evolve(make_header(5, execution_id="e", status=COMPLETED), tag=b"mac-5"), b"x")
        first.put(make_header(3, execution_id="e"), b"x")  # If-Match a stale ETag: re-read, not written
        head = first._read_head("e")[0]
        assert (head.seq, head.status, head.tag) == (5, COMPLETED, b"mac-5")
        first.put(make_header(6, execution_id="e"), b"x")
        assert second.execution_head("e").seq == 6
        assert [h.seq for h in second.list(execution_id="e")] == [6, 5, 3, 0]
    finally:
        first.close()
        second.close()


def test_renewal_racing_a_takeover_is_refused(s3_url):
    """A renewal is a conditional write of the lease object: if another worker takes the expired
    lease between the renewer's read and write, the write fails, the re-read shows the takeover and
    renew_lease raises LeaseError; the new owner's lease is untouched."""
    stalled, other = S3Backend.from_url(s3_url), S3Backend.from_url(s3_url)
    try:
        lease = stalled.acquire_lease("e", "worker-a", 0.05)
        time.sleep(0.2)
        read_lease = stalled._read_lease
        taken = []

        def read_then_lose_the_race(execution_id):
            found = read_lease(execution_id)
            if not taken:
                taken.append(other.acquire_lease("e", "worker-b", 30))
            return found

        stalled._read_lease = read_then_lose_the_race
        with pytest.raises(LeaseError):
            stalled.renew_lease(lease, 30)
        current, _ = read_lease("e")
        assert (current.owner, current.token) == ("worker-b", taken[0].token)
    finally:
        stalled.close()
        other.close()


def test_rebuild_index_keeps_the_tags_of_head_objects(s3_url, tmp_path):
    """Adding an index to a store written without one: rebuild_index() gives each execution's head
    checkpoint the writer's tag from its head object."""
    plain = S3Backend.from_url(s3_url)
    try:
        plain.put(make_header(0, execution_id="e"), b"x")
        plain.put(attrs.evolve(make_header(1, execution_id="e"), tag=b"mac-1"), b"x")
    finally:
        plain.close()
    indexed = S3Backend.from_url(s3_url + f"&index=sqlite:///{tmp_path}/index.db")
    try:
        assert indexed.rebuild_index() == 2
        head = indexed.execution_head("e")
        assert (head.seq, head.tag) == (1, b"mac-1")
        assert indexed.list(execution_id="e")[0].tag is None
    finally:
        indexed.close()
