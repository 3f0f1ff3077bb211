"""``S3Backend``: checkpoints as S3 objects, published atomically with conditional writes.

Key layout under ``s3://bucket/prefix``::

    ckpt/<graph_id>/<execution_id>/<seq, 20 digits>   the checkpoint bytes; its header in user metadata
    ids/<checkpoint_id>                               body: the key above (lookup by id)
    execs/<execution_id>                              body: the graph_id (lookup by execution alone)
    leases/<execution_id>                             JSON {owner, token, expires_at}
    heads/<execution_id>                              JSON: the execution's head (header and tag)

(each id is percent-encoded, so one id never spans two key segments).

* Publication is the single ``PutObject`` of the checkpoint key with ``If-None-Match: *``: S3 stores
  an object whole or not at all, so a reader never sees part of a checkpoint, and a second writer
  of the same ``(execution_id, seq)`` gets ``412 Precondition Failed`` -> ``DuplicateCheckpointError``.
  The id pointer is written first; a pointer whose checkpoint never appeared is invisible.
* Listing is a prefix query (one graph, or one execution), never a scan of the bucket. Headers are
  read with ``HeadObject`` the first time a key is seen and cached by (key, ETag): checkpoints are
  immutable, so later listings cost one ``ListObjectsV2`` page per 1000 checkpoints.
* The executions index (``spark_ckpt.backends.heads``) is one ``heads/<execution_id>`` object per
  execution: the header of the highest seq ever stored, with the writer's ``tag``. S3 has no
  transactions, so it is written after the checkpoint is published, and only forward: with
  ``If-Match: <etag>`` of the head it read (``If-None-Match: *`` when there is none), so of two
  writers the later one to commit re-reads it and writes only if it is still behind. Deleting
  checkpoints leaves it alone. A writer killed between the two requests (or whose head write
  failed) leaves the head one write behind, never ahead: readers (``execution_head``,
  ``executions``) take the later of it and the newest listed checkpoint (``heads.newest``). A put
  under a lease checks the head object before publishing, so right after such a crash the rules
  hold from the head before the lost write; each position can still be published only once.
  Cost: one ``PutObject`` per put (``If-Match`` the ETag this process last saw, so no read first),
  and under a lease one ``GetObject`` of the head, sent together with the lease read and the id
  pointer's write (the round trips per put stay three). ``executions()`` lists ``heads/`` once and
  reads only the heads whose ETag changed.
* Leases are an object per execution, changed only with ``If-Match: <etag>`` (or ``If-None-Match``
  when new), so two workers racing for one execution cannot both win; a renewal is the same
  conditional write of the same token. Expiry uses the workers' clocks: keep them in sync (NTP)
  and ``ttl`` far above the skew.
* Limitation: S3 has no multi-object transactions, so the fencing check (read the lease) and the
  checkpoint write are two requests. A worker that stalls exactly between them can still publish
  one checkpoint after a takeover. It cannot fork the history silently: the new owner continues
  from the same last checkpoint and so writes the same sequence numbers, and each position can be
  published only once; the loser gets ``DuplicateCheckpointError`` or ``LeaseError``.

* Optional index (``index=<backend URL>``, e.g. ``sqlite:///var/ckpt-index.db`` or a
  ``postgresql://`` URL): every header is also stored in that backend (with an empty blob), and
  ``list``/``executions`` answer from it with one query instead of listing objects. The index row
  is written right after the object is published; a writer killed in between leaves an object the
  index does not know. That orphan was never acknowledged, so the next owner of the execution (it
  holds the lease) replaces it when it writes the same position; ``rebuild_index()`` re-reads the
  bucket into the index (e.g. when adding an index to an existing store).
  The index's own executions index does the job of the head objects (none are written): a put
  under a lease checks the index's head before publishing, and the index advances it when the row
  is written, so it may lag the bucket by that one write like the rows. Use one mode per bucket:
  a process without the index would read head objects nobody advances.

URL options: ``endpoint_url`` (any S3-compatible server), ``region``, ``addressing_style``
(``path`` by default with a custom endpoint), ``create_bucket`` (``true`` to create a missing
bucket), ``max_workers`` (parallel ``HeadObject`` calls when listing, default 8), ``index`` (above).
Credentials come from the usual boto3 sources (environment, ``~/.aws``, instance roles); never from
the URL.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterable, Iterator
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import attrs

from spark_ckpt.backends import heads
from spark_ckpt.backends.base import Backend
from spark_ckpt.backends.leases import check_fence, extend_lease, grant_lease
from spark_ckpt.errors import (
    BackendError,
    CheckpointNotFoundError,
    ConfigError,
    DuplicateCheckpointError,
    LeaseError,
)
from spark_ckpt.model import CheckpointHeader, Lease, StoredCheckpoint

_HEADER_META = "spark-ckpt-header"
_ATTEMPT_META = "spark-ckpt-attempt"
_TRUE = {"1", "true", "yes", "on"}
_OPTIONS = {"endpoint_url", "region", "addressing_style", "create_bucket", "max_workers", "index"}
#: a conditional write lost to another writer is read and tried again this many times
_CONDITIONAL_ATTEMPTS = 5
#: answers to a conditional write whose condition no longer held
_CONDITION_FAILED = ("PreconditionFailed", "412", "ConditionalRequestConflict", "NoSuchKey", "404")


def _q(value: str) -> str:
    # "." too: HTTP clients collapse "/./" and "/../" path segments
    return quote(value, safe="").replace(".", "%2E") or "%00"


def _header_json(header: CheckpointHeader) -> str:
    # ASCII-only: S3 user metadata travels in HTTP headers
    return json.dumps(
        [header.checkpoint_id, header.graph_id, header.execution_id, header.seq, header.created_at,
         header.status, header.kind, header.size],
        separators=(",", ":"),
    )


def _header_from_json(text: str) -> CheckpointHeader:
    cid, gid, eid, seq, created_at, status, kind, size = json.loads(text)
    return CheckpointHeader(cid, gid, eid, int(seq), float(created_at), status, kind, int(size))


def _head_json(header: CheckpointHeader) -> bytes:
    fields = json.loads(_header_json(header))
    return json.dumps([*fields, header.tag.hex() if header.tag is not None else None], separators=(",", ":")).encode()


def _head_from_json(body: bytes) -> CheckpointHeader:
    *fields, tag = json.loads(body)
    header = _header_from_json(json.dumps(fields))
    return attrs.evolve(header, tag=bytes.fromhex(tag)) if tag is not None else header


def _newest_first(headers: Iterable[CheckpointHeader]) -> list[CheckpointHeader]:
    # ties on (time, seq) across executions: the id decides, so every listing agrees
    return sorted(headers, key=lambda h: (h.created_at, h.seq, h.checkpoint_id), reverse=True)


class S3Backend(Backend):
    """Checkpoints in an S3 bucket; see the module docstring for the layout and guarantees."""

    name = "s3"
    url_schemes = ("s3",)

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        addressing_style: str | None = None,
        create_bucket: bool = False,
        max_workers: int = 8,
        client: Any = None,
        index: str | None = None,
    ) -> None:
        if not bucket:
            raise ConfigError("S3 backend needs a bucket: s3://bucket/prefix")
        import boto3
        import botocore.config
        import botocore.exceptions

        self._botocore_errors = botocore.exceptions
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        if client is None:
            style = addressing_style or ("path" if endpoint_url else "auto")
            config = botocore.config.Config(
                s3={"addressing_style": style},
                retries={"max_attempts": 3, "mode": "standard"},
                max_pool_connections=max(10, max_workers * 2),
                connect_timeout=5,
                read_timeout=60,
            )
            client = boto3.session.Session().client(
                "s3", endpoint_url=endpoint_url, region_name=region, config=config
            )
        self._s3 = client
        self._max_workers = max(1, max_workers)
        self._headers: dict[str, tuple[str, CheckpointHeader]] = {}  # key -> (etag, header)
        self._known_execs: set[str] = set()
        self._key_of: dict[str, str] = {}  # checkpoint_id -> key, saves the pointer read on get
        #: execution_id -> (ETag, head) of its head object as last written or read here: the next put
        #: of the execution writes If-Match that ETag without reading it first
        self._head_cache: dict[str, tuple[str, CheckpointHeader]] = {}
        self._cache_lock = threading.Lock()  # guards the caches only, never a request
        # parallel reads (header reads when listing, the head beside the lease on a leased put)
        self._executor = ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="spark-ckpt-s3")
        self._check_bucket(create_bucket)
        self._index = None
        if index:
            from spark_ckpt.config import open_backend

            if index.split("://", 1)[0].lower() == "s3":
                raise ConfigError("the index of an S3 backend must be another kind of store (sqlite://, postgresql://)")
            self._index = open_backend(index)

    @classmethod
    def from_url(cls, url: str, **options: object) -> "S3Backend":
        parts = urlsplit(url)
        if parts.scheme.lower() != "s3":
            raise ConfigError(f"not an S3 URL: {url!r} (expected s3://bucket/prefix?endpoint_url=...)")
        values: dict[str, Any] = dict(parse_qsl(parts.query))
        values.update(options)
        unknown = set(values) - _OPTIONS
        if unknown:
            raise ConfigError(
                f"unknown s3 backend option(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_OPTIONS))}"
                " (credentials go in the usual AWS environment variables or ~/.aws, not the URL)"
            )
        if parts.username or parts.password:
            raise ConfigError("do not put credentials in the s3:// URL; use AWS_ACCESS_KEY_ID / ~/.aws instead")
        kwargs: dict[str, Any] = {
            "endpoint_url": values.get("endpoint_url"),
            "region": values.get("region"),
            "addressing_style": values.get("addressing_style"),
            "create_bucket": str(values.get("create_bucket", "")).lower() in _TRUE,
            "index": values.get("index") or None,
        }
        if "max_workers" in values:
            try:
                kwargs["max_workers"] = int(values["max_workers"])  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise ConfigError(f"s3 option max_workers={values['max_workers']!r} is not an integer") from None
        return cls(parts.hostname or parts.netloc, unquote(parts.path), **kwargs)

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"s3 (s3://{self.bucket}/{self.prefix}{where})"

    # -- low-level helpers -------------------------------------------------------------------------
    def _key(self, *parts: str) -> str:
        return "/".join(([self.prefix] if self.prefix else []) + list(parts))

    def _ckpt_key(self, graph_id: str, execution_id: str, seq: int) -> str:
        return self._key("ckpt", _q(graph_id), _q(execution_id), f"{seq:020d}")

    def _code(self, exc: Exception) -> str:
        if isinstance(exc, self._botocore_errors.ClientError):
            return str(exc.response.get("Error", {}).get("Code", ""))
        return ""

    def _failed(self, action: str, exc: Exception) -> BackendError:
        if isinstance(exc, self._botocore_errors.NoCredentialsError):
            return BackendError(
                f"S3 {action} failed: no AWS credentials found. Set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or configure ~/.aws) for the S3 endpoint"
            )
        if self._code(exc) == "NoSuchBucket":
            return BackendError(
                f"S3 bucket {self.bucket!r} does not exist; create it or add create_bucket=true to the URL"
            )
        return BackendError(f"S3 {action} on {self.describe()} failed: {exc}; check the endpoint, bucket and credentials (a failed write publishes nothing)")

    def _call(self, action: str, fn: Any, /, *, none_on: tuple[str, ...] = (), **kwargs: Any) -> Any:
        """``fn(**kwargs)``; ``None`` if S3 answers with an error code in ``none_on`` (no such key, a
        failed condition); any other error is a ``BackendError`` naming ``action``."""
        try:
            return fn(**kwargs)
        except self._botocore_errors.ClientError as exc:
            if self._code(exc) in none_on:
                return None
            raise self._failed(action, exc) from exc
        except self._botocore_errors.BotoCoreError as exc:
            raise self._failed(action, exc) from exc

    def _get_object(self, key: str) -> dict[str, Any] | None:
        """The object (body read), or None if it does not exist."""

        def fetch() -> dict[str, Any]:
            response = self._s3.get_object(Bucket=self.bucket, Key=key)
            response["Body"] = response["Body"].read()
            return response

        return self._call(f"read of {key}", fetch, none_on=("NoSuchKey", "404"))

    def _put_new(self, key: str, body: bytes, **extra: Any) -> bool:
        """Create ``key`` only if absent; False if it already existed."""
        written = self._call(
            f"write of {key}", self._s3.put_object, none_on=("PreconditionFailed", "412", "ConditionalRequestConflict"),
            Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*", **extra,
        )
        return written is not None

    def _check_bucket(self, create: bool) -> None:
        try:
            self._s3.head_bucket(Bucket=self.bucket)
            return
        except self._botocore_errors.ClientError as exc:
            if self._code(exc) not in ("404", "NoSuchBucket", "NotFound") or not create:
                if self._code(exc) in ("404", "NoSuchBucket", "NotFound"):
                    raise BackendError(
                        f"S3 bucket {self.bucket!r} does not exist; create it or add create_bucket=true to the URL"
                    ) from exc
                raise self._failed("bucket check", exc) from exc
        except self._botocore_errors.BotoCoreError as exc:
            raise self._failed("bucket check", exc) from exc
        self._call("bucket creation", self._s3.create_bucket, Bucket=self.bucket)

    # -- checkpoints -------------------------------------------------------------------------------
    def put(self, header: CheckpointHeader, blob: bytes, *, lease: Lease | None = None) -> None:
        if self._index is not None:
            self._index.check_header(header)  # before anything is written to S3
        key = self._ckpt_key(header.graph_id, header.execution_id, header.seq)
        # under a lease, the lease and the head are read while the pointer is written (one round trip)
        reads = self._read_for_leased_put(header.execution_id) if lease is not None else None
        # 1. the id pointer (invisible on its own: a pointer without its checkpoint is "not found")
        pointer = self._key("ids", _q(header.checkpoint_id))
        created_pointer = self._put_new(pointer, key.encode())
        if not created_pointer:
            existing = self._get_object(pointer)
            if existing is not None and existing["Body"].decode() != key:
                raise DuplicateCheckpointError(
                    f"checkpoint id {header.checkpoint_id} is already used by another checkpoint in "
                    f"{self.describe()}; it was not overwritten"
                )
        # 2. the execution -> graph pointer, once per execution and process
        if header.execution_id not in self._known_execs:
            self._put_new(self._key("execs", _q(header.execution_id)), header.graph_id.encode())
            with self._cache_lock:
                self._known_execs.add(header.execution_id)
        # 3. fencing and the head's rules, then publication in one conditional PUT
        head_state = None
        if lease is not None:
            try:
                head_state = self._check_leased_put(header, lease, reads)
            except BaseException:
                if created_pointer:  # refused: leave no pointer to the position behind
                    self._call("cleanup", self._s3.delete_object, Bucket=self.bucket, Key=pointer)
                raise
        attempt = uuid.uuid4().hex
        published = self._put_new(
            key, bytes(blob),
            Metadata={_HEADER_META: _header_json(header), _ATTEMPT_META: attempt},
            ContentType="application/octet-stream",
        )
        if not published and lease is not None and self._is_unindexed_orphan(header, key):
            # left by a writer killed between publication and indexing: never acknowledged, and we
            # own the execution now, so the position is ours to write
            self._call("replace orphan", self._s3.delete_object, Bucket=self.bucket, Key=key)
            published = self._put_new(
                key, bytes(blob),
                Metadata={_HEADER_META: _header_json(header), _ATTEMPT_META: attempt},
                ContentType="application/octet-stream",
            )
        if published:
            with self._cache_lock:
                self._key_of[header.checkpoint_id] = key
            self._index_after_publishing(header, head_state)
            return
        # 412: either another checkpoint holds the position, or botocore retried our own PUT
        # after its response was lost; only the attempt marker tells them apart.
        head = self._head(key)
        if head is not None and head["Metadata"].get(_ATTEMPT_META) == attempt:
            with self._cache_lock:
                self._key_of[header.checkpoint_id] = key
            self._index_after_publishing(header, head_state)
            return
        if created_pointer:
            self._call("cleanup", self._s3.delete_object, Bucket=self.bucket, Key=pointer)
        raise DuplicateCheckpointError(
            f"checkpoint seq {header.seq} of execution {header.execution_id} already exists in "
            f"{self.describe()}; it was not overwritten"
        )

    # -- the executions index: head objects, or the optional index's heads ---------------------------
    def _read_for_leased_put(self, execution_id: str) -> tuple[Future, Future]:
        """Start reading the lease and the execution's head (object, or the index's) in parallel."""
        read_head = self._index.execution_head if self._index is not None else self._read_head
        return self._executor.submit(self._read_lease, execution_id), self._executor.submit(read_head, execution_id)

    def _check_leased_put(
        self, header: CheckpointHeader, lease: Lease, reads: tuple[Future, Future]
    ) -> tuple[CheckpointHeader | None, str | None] | None:
        """Raise unless ``lease`` is current and the execution's head lets it write ``header``
        (``heads.advance``); returns the head object and its ETag (None with an index), to advance from."""
        current, _ = reads[0].result()
        found = reads[1].result()
        check_fence(current, lease, header.execution_id)
        if self._index is not None:
            heads.advance(found, header, leased=True)
            return None
        heads.advance(found[0], header, leased=True)
        return found

    def _index_after_publishing(
        self, header: CheckpointHeader, head_state: tuple[CheckpointHeader | None, str | None] | None
    ) -> None:
        """Index the published checkpoint: the index row (which advances the index's head), else the head object."""
        if self._index is not None:
            self._index_put(header)
            return
        try:
            self._advance_head(header, head_state)
        except BackendError as exc:
            raise BackendError(
                f"checkpoint {header.checkpoint_id} was stored in {self.describe()}, but the head of execution "
                f"{header.execution_id} was not advanced ({exc}); readers still see the checkpoint (the head "
                "lags it by this write)"
            ) from exc

    def _head_key(self, execution_id: str) -> str:
        return self._key("heads", _q(execution_id))

    def _remember_head(self, execution_id: str, etag: str, head: CheckpointHeader) -> None:
        with self._cache_lock:
            if len(self._head_cache) > 10_000:  # bound the memory of very long-lived workers
                self._head_cache.clear()
            self._head_cache[execution_id] = (etag, head)

    def _read_head(self, execution_id: str) -> tuple[CheckpointHeader | None, str | None]:
        """The head object and its ETag; (None, None) if the execution has none."""
        found = self._get_object(self._head_key(execution_id))
        if found is None:
            return None, None
        head = _head_from_json(found["Body"])
        self._remember_head(execution_id, found["ETag"], head)
        return head, found["ETag"]

    def _advance_head(
        self, header: CheckpointHeader, state: tuple[CheckpointHeader | None, str | None] | None = None
    ) -> None:
        """Move the head object forward to ``header`` (its checkpoint is published). ``state`` is the
        head and ETag read before publishing; else the one this process last saw is assumed (no read).
        A write whose condition failed (another writer moved it) reads it again."""
        execution_id = header.execution_id
        if state is None:
            with self._cache_lock:
                cached = self._head_cache.get(execution_id)
            # nothing known here: most often a new execution, so try to create it before reading it
            state = (cached[1], cached[0]) if cached is not None else (None, None)
        for _ in range(_CONDITIONAL_ATTEMPTS):
            if state is None:
                state = self._read_head(execution_id)
            head, etag = state
            if not heads.advance(head, header, leased=False):
                return  # (heads only grow: a head known here is never ahead of the real one)
            condition = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
            written = self._call(
                "head write", self._s3.put_object, none_on=_CONDITION_FAILED,
                Bucket=self.bucket, Key=self._head_key(execution_id), Body=_head_json(header),
                ContentType="application/json", **condition,
            )
            if written is not None:
                self._remember_head(execution_id, written["ETag"], header)
                return
            state = None  # another writer moved it meanwhile: read it again
        raise BackendError(f"the head object kept changing under other writers ({_CONDITIONAL_ATTEMPTS} attempts)")

    def _heads_of(self, execution_ids: set[str]) -> dict[str, CheckpointHeader]:
        """The head objects of these executions: one listing of ``heads/``, then a read of each head
        not cached with the listed ETag."""
        if not execution_ids:
            return {}
        wanted = {self._head_key(execution_id): execution_id for execution_id in execution_ids}
        found: dict[str, CheckpointHeader] = {}
        stale: list[str] = []
        listed = [obj for obj in self._objects(self._key("heads") + "/") if obj["Key"] in wanted]
        with self._cache_lock:
            for obj in listed:
                execution_id = wanted[obj["Key"]]
                cached = self._head_cache.get(execution_id)
                if cached is not None and cached[0] == obj["ETag"]:
                    found[execution_id] = cached[1]
                else:
                    stale.append(execution_id)
        for execution_id, (head, _) in zip(stale, self._executor.map(self._read_head, stale)):
            if head is not None:
                found[execution_id] = head
        return found

    def _newest_stored(self, objects: list[dict[str, Any]]) -> CheckpointHeader | None:
        """The header of the highest seq among one execution's listed objects (zero-padded keys)."""
        for obj in sorted(objects, key=lambda o: o["Key"], reverse=True):
            found = self._headers_of([obj])
            if found:
                return found[0]
        return None  # (each one deleted between the listing and now)

    def execution_head(self, execution_id: str) -> CheckpointHeader | None:
        if self._index is not None:
            return self._index.execution_head(execution_id)
        head, _ = self._read_head(execution_id)
        # the head object may lag the newest checkpoint by one write (its writer died in between)
        prefix = self._prefix_for(head.graph_id if head is not None else None, execution_id)
        stored = self._newest_stored(list(self._objects(prefix))) if prefix is not None else None
        return heads.newest(head, stored)

    # -- the optional index ---------------------------------------------------------------------------
    def _index_put(self, header: CheckpointHeader) -> None:
        if self._index is None:
            return
        try:
            self._index.put(header, b"")
        except DuplicateCheckpointError:
            pass  # already indexed (a retried put)

    def _is_unindexed_orphan(self, header: CheckpointHeader, key: str) -> bool:
        if self._index is None:
            return False
        indexed = {h.seq for h in self._index.list(execution_id=header.execution_id)}
        return header.seq not in indexed and self._head(key) is not None

    def rebuild_index(self, graph_id: str | None = None) -> int:
        """Put every checkpoint of the bucket (or of one graph) that the index lacks into it."""
        if self._index is None:
            raise ConfigError("this S3 backend has no index (add ?index=sqlite:///path.db to its URL)")
        known = {h.checkpoint_id for h in self._index.list(graph_id=graph_id)}
        missing = [
            h for h in self._headers_of(list(self._objects(self._prefix_for(graph_id, None) or self._key("ckpt") + "/")))
            if h.checkpoint_id not in known
        ]
        # a head object written without the index gives its checkpoint's header the writer's tag
        head_of = self._heads_of({h.execution_id for h in missing})
        for header in sorted(missing, key=lambda h: (h.execution_id, h.seq)):
            head = head_of.get(header.execution_id)
            self._index_put(head if head is not None and head.checkpoint_id == header.checkpoint_id else header)
        return len(missing)

    def _head(self, key: str) -> dict[str, Any] | None:
        return self._call(f"read of {key}", self._s3.head_object, none_on=("NoSuchKey", "404", "NotFound"), Bucket=self.bucket, Key=key)

    def get(self, checkpoint_id: str) -> StoredCheckpoint:
        known = self._key_of.get(checkpoint_id)
        if known is not None:
            item = self._get_object(known)
            if item is not None:
                header = _header_from_json(item["Metadata"][_HEADER_META])
                if header.checkpoint_id == checkpoint_id:
                    return StoredCheckpoint(header, item["Body"])
        pointer = self._get_object(self._key("ids", _q(checkpoint_id)))
        item = self._get_object(pointer["Body"].decode()) if pointer is not None else None
        if item is None:
            raise CheckpointNotFoundError(f"no checkpoint with id {checkpoint_id!r} in {self.describe()}")
        return StoredCheckpoint(_header_from_json(item["Metadata"][_HEADER_META]), item["Body"])

    def _prefix_for(self, graph_id: str | None, execution_id: str | None) -> str | None:
        """The narrowest listing prefix; None when the execution is unknown."""
        if execution_id is not None and graph_id is None:
            found = self._get_object(self._key("execs", _q(execution_id)))
            if found is None:
                return None
            graph_id = found["Body"].decode()
        parts = ["ckpt"]
        if graph_id is not None:
            parts.append(_q(graph_id))
            if execution_id is not None:
                parts.append(_q(execution_id))
        return self._key(*parts) + "/"

    def _objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        paginator = self._s3.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                yield from page.get("Contents", [])
        except (self._botocore_errors.BotoCoreError, self._botocore_errors.ClientError) as exc:
            raise self._failed(f"listing of {prefix}", exc) from exc

    def _headers_of(self, objects: list[dict[str, Any]]) -> list[CheckpointHeader]:
        """Headers for listed objects: cached by (key, ETag), the rest read in parallel."""
        out: dict[str, CheckpointHeader] = {}
        missing = []
        with self._cache_lock:
            for obj in objects:
                cached = self._headers.get(obj["Key"])
                if cached is not None and cached[0] == obj["ETag"]:
                    out[obj["Key"]] = cached[1]
                else:
                    missing.append(obj["Key"])

        def load(key: str) -> tuple[str, dict[str, Any] | None]:
            return key, self._head(key)

        for key, head in self._executor.map(load, missing):
            if head is None:  # deleted between the listing and now
                continue
            header = _header_from_json(head["Metadata"][_HEADER_META])
            out[key] = header
            with self._cache_lock:
                self._headers[key] = (head["ETag"], header)
                self._key_of[header.checkpoint_id] = key
        return list(out.values())

    def list(self, *, graph_id=None, execution_id=None, limit=None) -> list[CheckpointHeader]:
        if self._index is not None:
            return self._index.list(graph_id=graph_id, execution_id=execution_id, limit=limit)
        prefix = self._prefix_for(graph_id, execution_id)
        if prefix is None:
            return []
        headers = _newest_first(self._headers_of(list(self._objects(prefix))))
        return headers[:limit] if limit is not None else headers

    def executions(self, *, graph_id=None, unfinished_only=False, limit=None) -> list[CheckpointHeader]:
        if self._index is not None:
            return self._index.executions(graph_id=graph_id, unfinished_only=unfinished_only, limit=limit)
        newest: dict[str, dict[str, Any]] = {}
        for obj in self._objects(self._prefix_for(graph_id, None) or ""):
            execution_dir = obj["Key"].rsplit("/", 1)[0]
            if execution_dir not in newest or obj["Key"] > newest[execution_dir]["Key"]:
                newest[execution_dir] = obj  # zero-padded seq: the greatest key is the newest
        stored = self._headers_of(list(newest.values()))
        # each execution's head object, or its newest checkpoint where that is later (a lagging head)
        head_of = self._heads_of({h.execution_id for h in stored})
        headers = []
        for header in stored:
            head = heads.newest(head_of.get(header.execution_id), header)
            headers.append(attrs.evolve(head, tag=None) if head.tag is not None else head)
        headers = _newest_first(headers)
        if unfinished_only:
            headers = [h for h in headers if h.unfinished]
        return headers[:limit] if limit is not None else headers

    def delete(self, checkpoint_ids: Iterable[str]) -> int:
        count = 0
        checkpoint_ids = list(dict.fromkeys(checkpoint_ids))  # may be a generator; read it once
        for checkpoint_id in checkpoint_ids:
            pointer_key = self._key("ids", _q(checkpoint_id))
            pointer = self._get_object(pointer_key)
            if pointer is None:
                continue
            key = pointer["Body"].decode()
            if self._head(key) is not None:
                count += 1
                self._call("delete", self._s3.delete_object, Bucket=self.bucket, Key=key)
            # the checkpoint goes first: a pointer left behind by a crash here is invisible
            self._call("delete", self._s3.delete_object, Bucket=self.bucket, Key=pointer_key)
            with self._cache_lock:
                self._headers.pop(key, None)
                self._key_of.pop(checkpoint_id, None)
        if self._index is not None:
            self._index.delete(checkpoint_ids)
        return count

    def replace(self, header: CheckpointHeader, blob: bytes) -> None:
        """Swap an existing checkpoint's bytes (key rotation): one PUT conditional on its ETag."""
        key = self._ckpt_key(header.graph_id, header.execution_id, header.seq)
        head = self._head(key)
        if head is None or _header_from_json(head["Metadata"][_HEADER_META]).checkpoint_id != header.checkpoint_id:
            raise CheckpointNotFoundError(f"no checkpoint with id {header.checkpoint_id!r} in {self.describe()} to replace")
        try:
            self._s3.put_object(
                Bucket=self.bucket, Key=key, Body=bytes(blob), IfMatch=head["ETag"],
                Metadata={_HEADER_META: _header_json(header), _ATTEMPT_META: uuid.uuid4().hex},
                ContentType="application/octet-stream",
            )
        except self._botocore_errors.ClientError as exc:
            if self._code(exc) in ("PreconditionFailed", "412", "NoSuchKey", "404"):
                raise CheckpointNotFoundError(
                    f"checkpoint {header.checkpoint_id!r} changed or was deleted while being replaced; not replaced"
                ) from exc
            raise self._failed(f"replace of {key}", exc) from exc
        except self._botocore_errors.BotoCoreError as exc:
            raise self._failed(f"replace of {key}", exc) from exc
        if self._index is not None:
            self._index.replace(header, b"")  # the header's size may have changed (and a tag re-tags its head)
        elif header.tag is not None:
            self._retag_head(header)

    def _retag_head(self, header: CheckpointHeader) -> None:
        """Key rotation: the head object gets ``header``'s tag if it is still at that seq."""
        for _ in range(_CONDITIONAL_ATTEMPTS):
            head, etag = self._read_head(header.execution_id)
            if head is None or head.seq != header.seq:
                return
            retagged = attrs.evolve(head, tag=header.tag)
            written = self._call(
                "head write", self._s3.put_object, none_on=_CONDITION_FAILED,
                Bucket=self.bucket, Key=self._head_key(header.execution_id), Body=_head_json(retagged),
                ContentType="application/json", IfMatch=etag,
            )
            if written is not None:
                self._remember_head(header.execution_id, written["ETag"], retagged)
                return
        raise BackendError(f"the head object kept changing under other writers ({_CONDITIONAL_ATTEMPTS} attempts)")

    # -- leases ------------------------------------------------------------------------------------
    def _lease_key(self, execution_id: str) -> str:
        return self._key("leases", _q(execution_id))

    def _read_lease(self, execution_id: str) -> tuple[Lease | None, str | None]:
        found = self._get_object(self._lease_key(execution_id))
        if found is None:
            return None, None
        data = json.loads(found["Body"])
        return Lease(execution_id, data["owner"], int(data["token"]), float(data["expires_at"])), found["ETag"]

    def _write_lease(self, lease: Lease, etag: str | None) -> bool:
        body = json.dumps({"owner": lease.owner, "token": lease.token, "expires_at": lease.expires_at}).encode()
        condition = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
        written = self._call(
            "lease write", self._s3.put_object, none_on=_CONDITION_FAILED,
            Bucket=self.bucket, Key=self._lease_key(lease.execution_id), Body=body, **condition,
        )
        return written is not None

    def acquire_lease(self, execution_id: str, owner: str, ttl_s: float) -> Lease:
        for _ in range(_CONDITIONAL_ATTEMPTS):
            current, etag = self._read_lease(execution_id)
            lease = grant_lease(current, execution_id, owner, ttl_s, time.time())
            if self._write_lease(lease, etag):
                return lease
            # someone changed the lease between our read and write: look again
        raise LeaseError(
            f"execution {execution_id}'s lease kept changing under contention in {self.describe()}; "
            "another worker is taking it over. Try again later"
        )

    def renew_lease(self, lease: Lease, ttl_s: float) -> Lease:
        for _ in range(_CONDITIONAL_ATTEMPTS):
            current, etag = self._read_lease(lease.execution_id)
            renewed = extend_lease(current, lease, ttl_s, time.time())
            if self._write_lease(renewed, etag):  # If-Match: a takeover in between makes it fail
                return renewed
            # the lease object changed between our read and write: look again (a takeover refuses)
        raise LeaseError(
            f"execution {lease.execution_id}'s lease kept changing under contention in {self.describe()}; "
            "another worker is taking it over. This worker must stop"
        )

    def release_lease(self, lease: Lease) -> None:
        current, etag = self._read_lease(lease.execution_id)
        if current is not None and current.token == lease.token and current.owner == lease.owner:
            self._write_lease(Lease(lease.execution_id, "", lease.token, 0.0), etag)

    def close(self) -> None:
        self._executor.shutdown(wait=False)
        self._s3.close()
        if self._index is not None:
            self._index.close()
