"""Where the S3 backend keeps everything in its bucket, and what each object holds.

Key layout under ``s3://bucket/prefix``::

    ckpt/<graph_id>/<execution_id>/<seq, 20 digits>   the checkpoint bytes; its header in user metadata
    ids/<checkpoint_id>                               body: the key above (lookup by id)
    execs/<execution_id>                              body: the graph_id (lookup by execution alone)
    leases/<execution_id>                             JSON {owner, token, expires_at}
    heads/<execution_id>                              JSON: the execution's head (header and tag)

(each id is percent-encoded, so one id never spans two key segments).

Invariants: ``_q`` never yields ``.``, ``..`` or a ``/`` (HTTP clients collapse dot segments); the
seq is zero-padded, so the greatest key under an execution's prefix is its newest checkpoint; the
header travels as ASCII JSON (user metadata goes in HTTP headers).
"""

from __future__ import annotations

import json
from urllib.parse import quote

import attrs

from spark_ckpt.model import CheckpointHeader

_HEADER_META = "spark-ckpt-header"
_ATTEMPT_META = "spark-ckpt-attempt"


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


class KeyLayout:
    """Mixin of ``S3Backend``: the keys of its objects under ``prefix``, and the narrowest prefix to
    list. Needs the host's ``prefix`` and ``_get_object``."""

    prefix: str

    def _key(self, *parts: str) -> str:
        return "/".join(([self.prefix] if self.prefix else []) + list(parts))

    def _ckpt_key(self, graph_id: str, execution_id: str, seq: int) -> str:
        return self._key("ckpt", _q(graph_id), _q(execution_id), f"{seq:020d}")


    def _head_key(self, execution_id: str) -> str:
        return self._key("heads", _q(execution_id))

    def _lease_key(self, execution_id: str) -> str:
        return self._key("leases", _q(execution_id))

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
