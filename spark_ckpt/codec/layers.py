"""Codec layers: serializers (data <-> bytes) and byte transforms (compression, encryption ...).

A transform tags its output in the envelope with its name and parameters, so a reader knows how to
undo it. A transform may decline to run (e.g. compression below its size threshold): then it is
simply not listed in the envelope.
"""

from __future__ import annotations

import gzip
import zlib
from typing import Any, Protocol, runtime_checkable

from ..errors import CorruptCheckpointError
from .convert import dumps_data, loads_data
from .envelope import Identity


@runtime_checkable
class Serializer(Protocol):
    """Turns JSON-able data into bytes and back. The first layer of every envelope."""

    name: str

    def dumps(self, data: Any) -> bytes: ...

    def loads(self, payload: bytes, params: dict[str, Any]) -> Any: ...


@runtime_checkable
class Transform(Protocol):
    """A reversible byte transform applied after serialization."""

    name: str

    def encode(self, payload: bytes, identity: Identity) -> tuple[bytes, dict[str, Any]] | None:
        """Return ``(new payload, params to record)``, or None to skip this layer for this payload."""

    def decode(self, payload: bytes, params: dict[str, Any], identity: Identity) -> bytes: ...


class JsonSerializer:
    """orjson through the shared cattrs converter: the default and recommended format."""

    name = "json"

    def dumps(self, data: Any) -> bytes:
        return dumps_data(data)

    def loads(self, payload: bytes, params: dict[str, Any]) -> Any:
        return loads_data(payload)


DEFAULT_MAX_DECOMPRESSED = 512 * 1024 * 1024


class GzipTransform:
    """gzip (zlib) compression, applied only to payloads of at least ``threshold`` bytes."""

    name = "gzip"

    def __init__(self, threshold: int = 4096, level: int = 6, max_size: int = DEFAULT_MAX_DECOMPRESSED):
        self.threshold = threshold
        self.level = level
        self.max_size = max_size

    def encode(self, payload: bytes, identity: Identity) -> tuple[bytes, dict[str, Any]] | None:
        if len(payload) < self.threshold:
            return None
        return gzip.compress(payload, compresslevel=self.level, mtime=0), {"size": len(payload)}

    def decode(self, payload: bytes, params: dict[str, Any], identity: Identity) -> bytes:
        declared = params.get("size")
        if isinstance(declared, int) and declared > self.max_size:
            raise CorruptCheckpointError(
                f"compressed checkpoint declares {declared} bytes, over the {self.max_size}-byte limit; "
                "raise max_decompressed_size if this checkpoint is trusted"
            )
        # Stream-decompress with a hard cap so a decompression bomb is refused before it expands.
        decomp = zlib.decompressobj(wbits=31)
        try:
            out = decomp.decompress(payload, self.max_size + 1)
        except zlib.error as exc:
            raise CorruptCheckpointError(f"gzip layer is corrupt: {exc}") from None
        if len(out) > self.max_size or decomp.unconsumed_tail:
            raise CorruptCheckpointError(
                f"compressed checkpoint expands past the {self.max_size}-byte limit; refused"
            )
        return out
