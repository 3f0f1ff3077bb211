"""``S3Backend``: checkpoints as S3 objects, published atomically with conditional writes.

Its key layout is ``layout``, its requests ``objects``, its executions index ``head_objects`` (or
``external_index``), its leases ``leases``; this module holds the backend itself.

* Publication is the single ``PutObject`` of the checkpoint key with ``If-None-Match: *``: S3 stores
  an object whole or not at all, so a reader never sees part of a checkpoint, and a second writer
  of the same ``(execution_id, seq)`` gets ``412 Precondition Failed`` -> ``DuplicateCheckpointError``.
  The id pointer is written first; a pointer whose checkpoint never appeared is invisible.
* Limitation: S3 has no multi-object transactions, so the fencing check (read the lease) and the
  checkpoint write are two requests. A worker that stalls exactly between them can still publish
  one checkpoint after a takeover. It cannot fork the history silently: the new owner continues
  from the same last checkpoint and so writes the same sequence numbers, and each position can be
  published only once; the loser gets ``DuplicateCheckpointError`` or ``LeaseError``.

URL options: ``endpoint_url`` (any S3-compatible server), ``region``, ``addressing_style``
(``path`` by default with a custom endpoint), ``create_bucket`` (``true`` to create a missing
bucket), ``max_workers`` (parallel ``HeadObject`` calls when listing, default 8), ``index``
(``external_index``). Credentials come from the usual boto3 sources (environment, ``~/.aws``,
instance roles); never from the URL.
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable
from urllib.parse import parse_qsl, unquote, urlsplit

import attrs

from spark_ckpt.backends import heads
from spark_ckpt.backends.base import Backend
from spark_ckpt.backends.codec_choices import compression_choice
from spark_ckpt.backends.rows import checked_blob, storable
from spark_ckpt.errors import BackendError, CheckpointNotFoundError, ConfigError, DuplicateCheckpointError
from spark_ckpt.masking import mask_url
from spark_ckpt.model import CheckpointHeader, Lease, StoredCheckpoint

from .external_index import ExternalIndex
from .head_objects import HeadObjects
from .layout import _ATTEMPT_META, _HEADER_META, KeyLayout, _damaged, _header_json, _q
from .leases import S3Leases
from .objects import S3Objects

_TRUE = {"1", "true", "yes", "on"}
_SEQ_LIMIT = 10**20  # (a key holds the seq in 20 digits)
_OPTIONS = {"endpoint_url", "region", "addressing_style", "create_bucket", "max_workers", "index", "compression"}


def _compression_option(value: Any) -> Any:
    """The URL's ``compression=true`` / ``gzip`` / ``zstd`` (an argument passes as it is)."""
    if isinstance(value, str) and value.lower() in _TRUE:
        return True
    if isinstance(value, str) and value.lower() in {"", "0", "false", "no", "off"}:
        return None
    return value


def _newest_first(headers: Iterable[CheckpointHeader]) -> list[CheckpointHeader]:
    # ties on (time, seq) across executions: the id decides, so every listing agrees
    return sorted(headers, key=lambda h: (h.created_at, h.seq, h.checkpoint_id), reverse=True)


class S3Backend(S3Leases, ExternalIndex, HeadObjects, S3Objects, KeyLayout, Backend):
    """Checkpoints in an S3 bucket; see the module docstrings of ``spark_ckpt_s3`` for the layout and guarantees.

    ``S3Backend(bucket="my-checkpoints", prefix="workflows/", region="us-east-1")`` (the guide's form):
    ``prefix`` is this store's place in the bucket, so stores under different prefixes are independent.
    ``compression`` (True = "gzip", "zstd") is a codec choice a config given this object applies when it
    does not set its own (``spark_ckpt.backends.codec_choices``).
    """

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
        compression: bool | str | None = None,
    ) -> None:
        if not bucket or not isinstance(bucket, str):
            raise ConfigError("S3 backend needs a bucket: S3Backend(bucket='my-checkpoints') or s3://bucket/prefix")
        if not isinstance(prefix, str):
            raise ConfigError(f"S3Backend prefix must be a string (e.g. 'workflows/'), got {type(prefix).__name__}")
        self.compression_choice = compression_choice(compression, "S3Backend")
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
            raise ConfigError(f"not an S3 URL: {mask_url(url)!r} (expected s3://bucket/prefix?endpoint_url=...)")
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
            "compression": _compression_option(values.get("compression")),
        }
        if "max_workers" in values:
            try:
                kwargs["max_workers"] = int(values["max_workers"])  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise ConfigError(f"s3 option max_workers={values['max_workers']!r} is not an integer") from None
        return cls(parts.hostname or parts.netloc, unquote(parts.path), **kwargs)

    def describe(self) -> str:
        where = f" at {mask_url(self.endpoint_url)}" if self.endpoint_url else ""
        return f"s3 (s3://{self.bucket}/{self.prefix}{where})"

    # -- checkpoints -------------------------------------------------------------------------------
    def check_header(self, header: CheckpointHeader) -> None:
        """A header this store would refuse to read back (``rows.storable``) is refused, as is a seq
        past the 20 digits of its key; so is one the index refuses."""
        storable(header, self.describe())
        if header.seq >= _SEQ_LIMIT:
            raise BackendError(
                f"checkpoint {header.checkpoint_id!r} was not stored in {self.describe()}: its seq {header.seq} "
                "does not fit the 20 digits of its key; nothing was written"
            )
        if self._index is not None:
            self._index.check_header(header)

    def put(self, header: CheckpointHeader, blob: bytes, *, lease: Lease | None = None) -> None:
        self.check_header(header)  # before anything is written to S3
        key = self._ckpt_key(header.graph_id, header.execution_id, header.seq)
        # under a lease, the lease and the head are read while the pointer is written (one round trip)
        reads = self._read_for_leased_put(header.execution_id) if lease is not None else None
        # 1. the id pointer (invisible on its own: a pointer without its checkpoint is "not found")
        pointer = self._key("ids", _q(header.checkpoint_id))
        created_pointer = self._put_new(pointer, key.encode())
        if not created_pointer:
            existing = self._get_object(pointer)
            if existing is not None and self._pointer(existing, pointer) != key:
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

    def get(self, checkpoint_id: str) -> StoredCheckpoint:
        known = self._key_of.get(checkpoint_id)
        if known is not None:
            item = self._get_object(known)
            if item is not None:
                header = self._stored_header(item, known)
                if header.checkpoint_id == checkpoint_id:
                    return StoredCheckpoint(header, checked_blob(item["Body"], header, self._where(known)))
        pointer_key = self._key("ids", _q(checkpoint_id))
        pointer = self._get_object(pointer_key)
        key = self._pointer(pointer, pointer_key) if pointer is not None else None
        if key is not None and not key.startswith(self._key("ckpt") + "/"):
            raise _damaged(f"the pointer {self._where(pointer_key)}", f"it leads to {key[:80]!r}, outside this store")
        item = self._get_object(key) if key else None
        header = self._stored_header(item, key) if item is not None else None
        # (a pointer whose checkpoint never appeared, or went, is invisible)
        if header is None or header.checkpoint_id != checkpoint_id:
            raise CheckpointNotFoundError(f"no checkpoint with id {checkpoint_id!r} in {self.describe()}")
        return StoredCheckpoint(header, checked_blob(item["Body"], header, self._where(key)))

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
            key = self._pointer(pointer, pointer_key)
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
        if head is None or self._stored_header(head, key).checkpoint_id != header.checkpoint_id:
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

    def close(self) -> None:
        self._executor.shutdown(wait=False)
        self._s3.close()
        if self._index is not None:
            self._index.close()
