"""S3Backend against an S3 server over HTTP: conformance, leases across processes, interrupted
uploads, and the key layout that keeps listing a prefix query."""

from __future__ import annotations

import time
import uuid
from urllib.parse import urlsplit

import pytest
from spark_ckpt.testing.leases import check_leases

from spark_ckpt.config import open_backend
from spark_ckpt.errors import BackendError, CheckpointNotFoundError, ConfigError, DuplicateCheckpointError
from spark_ckpt.model import CheckpointHeader
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
        real_index = backend._index
        backend._index = None  # the crash: publish without indexing
        backend.put(make_header(1, execution_id="e", checkpoint_id="orphan"), b"never acknowledged")
        backend._index = real_index
        assert [h.seq for h in backend.list(execution_id="e")] == [0]
        lease = backend.acquire_lease("e", "next-owner", 30)
        backend.put(make_header(1, execution_id="e", checkpoint_id="e-1"), b"second", lease=lease)
        assert backend.get("e-1").blob == b"second"
        assert [h.checkpoint_id for h in backend.list(execution_id="e")] == ["e-1", "e-0"]
        # without a lease nobody may overwrite a position, indexed or not
        with pytest.raises(DuplicateCheckpointError):
            backend.put(make_header(1, execution_id="e", checkpoint_id="other"), b"x")
        backend._index = None
        backend.put(make_header(2, execution_id="e"), b"late orphan")
        backend._index = real_index
        assert backend.rebuild_index() == 1
        assert [h.seq for h in backend.list(execution_id="e")] == [2, 1, 0]
    finally:
        backend.close()
