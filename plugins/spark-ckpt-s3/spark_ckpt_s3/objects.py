"""S3 requests of the backend: errors worded for the user, conditional writes, cached header reads.

* A write that must not replace anything is a ``PutObject`` with ``If-None-Match: *``; a change of
  an object read before carries ``If-Match: <etag>``. A write whose condition no longer holds
  returns ``None`` or ``False`` (``_call(none_on=...)``, ``_put_new``) instead of raising, so callers
  read again and retry.
* Listing is a prefix query (one graph, or one execution), never a scan of the bucket. Headers are
  read with ``HeadObject`` the first time a key is seen and cached by (key, ETag): checkpoints are
  immutable, so later listings cost one ``ListObjectsV2`` page per 1000 checkpoints.

Invariants: every other S3 or botocore error becomes a ``BackendError`` naming what failed; the
caches are changed only under ``_cache_lock``, which is never held during a request.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

from spark_ckpt.errors import BackendError
from spark_ckpt.masking import mask_text
from spark_ckpt.model import CheckpointHeader


#: a conditional write lost to another writer is read and tried again this many times
_CONDITIONAL_ATTEMPTS = 5
#: answers to a conditional write whose condition no longer held
_CONDITION_FAILED = ("PreconditionFailed", "412", "ConditionalRequestConflict", "NoSuchKey", "404")


class S3Objects:
    """Mixin of ``S3Backend``: calling S3. Needs the host's ``_s3`` client, ``bucket``, ``endpoint_url``,
    ``_botocore_errors``, ``_executor``, ``_cache_lock``, the ``_headers``/``_key_of`` caches and
    ``_stored_header``."""

    _s3: Any
    bucket: str
    endpoint_url: str | None
    _botocore_errors: Any
    _executor: ThreadPoolExecutor
    _cache_lock: threading.Lock
    _headers: dict[str, tuple[str, CheckpointHeader]]
    _key_of: dict[str, str]

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
        # botocore's message may quote the endpoint URL (and so any credentials written into it)
        return BackendError(
            f"S3 {action} on {self.describe()} failed: {mask_text(str(exc), self.endpoint_url)}; check the "
            "endpoint, bucket and credentials (a failed write publishes nothing)"
        )

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

    def _head(self, key: str) -> dict[str, Any] | None:
        return self._call(f"read of {key}", self._s3.head_object, none_on=("NoSuchKey", "404", "NotFound"), Bucket=self.bucket, Key=key)

    def _objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        paginator = self._s3.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                yield from page.get("Contents", [])
        except (self._botocore_errors.BotoCoreError, self._botocore_errors.ClientError) as exc:
            raise self._failed(f"listing of {prefix}", exc) from exc

    def _headers_of(self, objects: list[dict[str, Any]]) -> list[CheckpointHeader]:
        """Headers for listed objects: cached by (key, ETag), the rest read in parallel; a damaged one
        raises ``CorruptIndexError`` naming its object (and is not cached)."""
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
            header = self._stored_header(head, key)
            out[key] = header
            with self._cache_lock:
                self._headers[key] = (head["ETag"], header)
                self._key_of[header.checkpoint_id] = key
        return list(out.values())
