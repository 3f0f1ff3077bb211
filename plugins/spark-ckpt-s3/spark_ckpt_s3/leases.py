"""Leases of the S3 backend: one object per execution, changed only by conditional writes.

Leases are an object per execution, changed only with ``If-Match: <etag>`` (or ``If-None-Match``
when new), so two workers racing for one execution cannot both win; a renewal is the same
conditional write of the same token. Expiry uses the workers' clocks: keep them in sync (NTP)
and ``ttl`` far above the skew.

Invariants: a lease object is never written unconditionally; releasing keeps the token (the next
owner's token still grows).
"""

from __future__ import annotations

import json
import math
import time

from spark_ckpt.backends.leases import extend_lease, grant_lease
from spark_ckpt.errors import BackendError, LeaseError
from spark_ckpt.model import Lease

from .objects import _CONDITION_FAILED, _CONDITIONAL_ATTEMPTS


class S3Leases:
    """Mixin of ``S3Backend``: acquire, renew and release leases. Needs the host's request helpers."""

    def _read_lease(self, execution_id: str) -> tuple[Lease | None, str | None]:
        found = self._get_object(self._lease_key(execution_id))
        if found is None:
            return None, None
        owner = token = expires_at = None
        try:
            data = json.loads(found["Body"])
            owner, token = data["owner"], data["token"]
            expires_at = float(data["expires_at"]) if type(data["expires_at"]) in (int, float) else None
        except (ValueError, RecursionError, TypeError, KeyError, OverflowError):  # (not JSON, not an object, ...)
            pass
        if (type(owner) is not str or type(token) is not int or token < 0
                or expires_at is None or not math.isfinite(expires_at)):
            raise BackendError(
                f"the lease object {self._where(self._lease_key(execution_id))} is damaged (not a JSON object of "
                "owner, token and expires_at): the store was changed outside spark-ckpt. Delete it to let a "
                "worker take the execution over"
            )
        return Lease(execution_id, owner, token, expires_at), found["ETag"]

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
