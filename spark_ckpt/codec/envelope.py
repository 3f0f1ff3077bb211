"""The envelope every stored checkpoint is wrapped in.

Layout (all integers big-endian)::

    b"SPCKPT" | envelope version (1 byte) | blake2b-128 digest (16 bytes) | header length (4 bytes)
    | header (JSON) | payload

The digest covers everything after itself, so a torn write or a flipped byte is detected without
any key. The header names the codec layers applied to the payload, in order (e.g.
``["json", "gzip"]``), and the identity ``(graph_id, execution_id, seq)`` the checkpoint was
written for, so a reader can tell what the bytes are before trying to decode them.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import attrs
import orjson

from ..errors import CorruptCheckpointError, UnsupportedFormatError

MAGIC = b"SPCKPT"
ENVELOPE_VERSION = 1
_DIGEST_SIZE = 16
_PREFIX = len(MAGIC) + 1 + _DIGEST_SIZE + 4


@attrs.frozen
class Identity:
    """Where a checkpoint belongs; encryption binds ciphertext to it as associated data."""

    graph_id: str
    execution_id: str
    seq: int

    def as_bytes(self) -> bytes:
        return orjson.dumps([self.graph_id, self.execution_id, self.seq])


@attrs.frozen
class Envelope:
    layers: list[dict[str, Any]]  # each {"name": ..., **params}; applied in order on encode
    identity: Identity
    payload: bytes
    version: int = ENVELOPE_VERSION

    @property
    def layer_names(self) -> list[str]:
        return [layer["name"] for layer in self.layers]


def _digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=_DIGEST_SIZE).digest()


def pack(envelope: Envelope) -> bytes:
    ident = envelope.identity
    header = orjson.dumps(
        {"layers": envelope.layers, "id": [ident.graph_id, ident.execution_id, ident.seq]}
    )
    body = bytes([envelope.version]) + struct.pack(">I", len(header)) + header + envelope.payload
    # version byte goes before the digest on disk; the digest covers it too
    return MAGIC + body[:1] + _digest(body) + body[1:]


def unpack(blob: bytes) -> Envelope:
    """Parse and verify an envelope; raise ``CorruptCheckpointError``/``UnsupportedFormatError``."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise CorruptCheckpointError(f"expected bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) < _PREFIX or not blob.startswith(MAGIC):
        if blob.startswith(MAGIC[:3]) or len(blob) < len(MAGIC):
            raise CorruptCheckpointError(
                f"checkpoint is truncated ({len(blob)} bytes): it was not written completely"
            )
        raise CorruptCheckpointError(
            "not a spark-ckpt checkpoint (missing the SPCKPT signature); was it written by another tool?"
        )
    version = blob[len(MAGIC)]
    digest = blob[len(MAGIC) + 1 : len(MAGIC) + 1 + _DIGEST_SIZE]
    body = bytes([version]) + blob[len(MAGIC) + 1 + _DIGEST_SIZE :]
    if version > ENVELOPE_VERSION:
        raise UnsupportedFormatError(
            f"checkpoint envelope version {version} is newer than this spark-ckpt understands "
            f"({ENVELOPE_VERSION}); upgrade spark-ckpt to read it"
        )
    if _digest(body) != digest:
        raise CorruptCheckpointError(
            "checkpoint checksum mismatch: the bytes were truncated or altered after writing; "
            "use an earlier checkpoint (get_checkpoint(offset=1)) or `spark-ckpt verify` to find intact ones"
        )
    (header_len,) = struct.unpack(">I", body[1:5])
    header_bytes = body[5 : 5 + header_len]
    if len(header_bytes) != header_len:
        raise CorruptCheckpointError("checkpoint header is truncated")
    try:
        header = orjson.loads(header_bytes)
        graph_id, execution_id, seq = header["id"]
        layers = list(header["layers"])
        if not all(isinstance(layer, dict) and isinstance(layer.get("name"), str) for layer in layers):
            raise ValueError("bad layer list")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CorruptCheckpointError(f"checkpoint header is unreadable: {exc}") from None
    return Envelope(
        layers=layers,
        identity=Identity(str(graph_id), str(execution_id), int(seq)),
        payload=body[5 + header_len :],
        version=version,
    )
