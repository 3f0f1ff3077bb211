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
header travels as ASCII JSON (user metadata goes in HTTP headers); a header or head read back is
checked (``spark_ckpt.backends.rows``) before anything uses it, and anything else found there is a
``CorruptIndexError`` naming the object.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from spark_ckpt.backends.rows import checked
from spark_ckpt.errors import CorruptIndexError
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


def _damaged(what: str, why: str) -> CorruptIndexError:
    return CorruptIndexError(
        f"{what} is damaged ({why}): the store was changed outside spark-ckpt. Restore the store from a "
        "backup, or delete that checkpoint; `spark-ckpt verify` lists what else is damaged"
    )


def _fields(text: str | bytes, count: int, what: str) -> list[Any]:
    """The JSON list of ``count`` fields in ``text``; ``CorruptIndexError`` naming ``what`` otherwise."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # (bad JSON, bad UTF-8, nested too deep)
        raise _damaged(what, f"not JSON: {_short(exc)}") from None
    if type(data) is not list or len(data) != count:
        raise _damaged(what, f"not a list of {count} fields but {_short(data)}")
    return data


def _time(value: Any, what: str) -> Any:
    """A whole-number time as a float, as it was written (any other value is left to ``checked``)."""
    if type(value) is not int:
        return value
    try:
        return float(value)
    except OverflowError:
        raise _damaged(what, f"created_at is {_short(value)}, not a finite time") from None


def _header_from_json(text: Any, where: str) -> CheckpointHeader:
    """The header stored in an object's metadata (``text``; None when it has none), checked: a
    ``CorruptIndexError`` naming the object (``where``) for anything but a sound header."""
    what = f"the header metadata of {where}"
    if not isinstance(text, str):
        raise _damaged(what, "it is missing")
    cid, gid, eid, seq, created_at, status, kind, size = _fields(text, 8, what)
    return checked(CheckpointHeader(cid, gid, eid, seq, _time(created_at, what), status, kind, size), where)


def _head_json(header: CheckpointHeader) -> bytes:
    fields = json.loads(_header_json(header))
    return json.dumps([*fields, header.tag.hex() if header.tag is not None else None], separators=(",", ":")).encode()


def _head_from_json(body: bytes, where: str) -> CheckpointHeader:
    """The head stored in a head object's body, checked like ``_header_from_json`` (its tag too)."""
    what = f"the head object {where}"
    cid, gid, eid, seq, created_at, status, kind, size, tag = _fields(body, 9, what)
    if tag is not None:
        try:
            tag = bytes.fromhex(tag)
        except (TypeError, ValueError):
            raise _damaged(what, f"its tag is {_short(tag)}, not hex digits") from None
    header = CheckpointHeader(cid, gid, eid, seq, _time(created_at, what), status, kind, size, tag=tag)
    return checked(header, where, row="head")


def _short(value: Any) -> str:
    text = str(value) if isinstance(value, Exception) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class KeyLayout:
    """Mixin of ``S3Backend``: the keys of its objects under ``prefix``, and the narrowest prefix to
    list. Needs the host's ``prefix``, ``describe`` and ``_get_object``."""

    prefix: str

    def _where(self, key: str) -> str:
        """The object ``key``, for messages about what it holds."""
        return f"object {key!r} of {self.describe()}"

    def _stored_header(self, found: dict[str, Any], key: str) -> CheckpointHeader:
        """The checked header in the metadata of the checkpoint object ``key`` (``found``: its
        ``HeadObject`` or ``GetObject`` answer); it must name the position the key stands for."""
        where = self._where(key)
        header = _header_from_json((found.get("Metadata") or {}).get(_HEADER_META), where)
        if self._ckpt_key(header.graph_id, header.execution_id, header.seq) != key:
            raise _damaged(
                f"the header metadata of {where}",
                f"it names seq {header.seq} of execution {_short(header.execution_id)} of graph "
                f"{_short(header.graph_id)}, another position than its key",
            )
        return header

    def _pointer(self, found: dict[str, Any], key: str) -> str:
        """The text of a pointer object (``ids/``, ``execs/``): a key, or a graph id."""
        try:
            return found["Body"].decode()
        except UnicodeDecodeError:
            raise _damaged(f"the pointer {self._where(key)}", "not UTF-8 text") from None

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
            key = self._key("execs", _q(execution_id))
            found = self._get_object(key)
            if found is None:
                return None
            graph_id = self._pointer(found, key)
        parts = ["ckpt"]
        if graph_id is not None:
            parts.append(_q(graph_id))
            if execution_id is not None:
                parts.append(_q(execution_id))
        return self._key(*parts) + "/"
