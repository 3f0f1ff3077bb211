"""Codec layers: serializers (data <-> bytes) and byte transforms (compression, encryption ...).

A transform tags its output in the envelope with its name and parameters, so a reader knows how to
undo it. A transform may decline to run (e.g. compression below its size threshold): then it is
simply not listed in the envelope.
"""

from __future__ import annotations

import gzip
import zlib
from typing import Any, Protocol, runtime_checkable

from ..errors import CorruptCheckpointError, DecompressionLimitError, UnsupportedFormatError
from .convert import dumps_data, loads_data
from .envelope import Identity


@runtime_checkable
class Serializer(Protocol):
    """Turns JSON-able data into bytes and back. The first layer of every envelope.

    A serializer that needs to record parameters or bind itself to the checkpoint's identity
    (the signed pickle) may instead define ``encode(data, identity) -> (bytes, params)`` and
    ``decode(payload, params, identity) -> data``; the codec prefers those when present.
    """

    name: str

    def dumps(self, data: Any) -> bytes: ...

    def loads(self, payload: bytes, params: dict[str, Any]) -> Any: ...


@runtime_checkable
class Transform(Protocol):
    """A reversible byte transform applied after serialization.

    A transform with ``binds_layers = True`` (encryption) is also given ``preceding=``, the layer
    list applied before it, so it can authenticate the whole chain, not just its own bytes.
    """

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
_CHUNK = 1 << 20


def _declared_size(name: str, params: dict[str, Any], max_size: int) -> None:
    declared = params.get("size")
    if isinstance(declared, int) and declared > max_size:
        raise DecompressionLimitError(
            f"{name}-compressed checkpoint declares {declared} bytes, over the {max_size}-byte limit; "
            "it was not expanded. Raise CheckpointConfig(max_decompressed_size=...) if it is trusted"
        )


def _over_limit(name: str, max_size: int) -> DecompressionLimitError:
    return DecompressionLimitError(
        f"{name}-compressed checkpoint expands past the {max_size}-byte limit; refused before expanding "
        "further. Raise CheckpointConfig(max_decompressed_size=...) if it is trusted"
    )


class GzipTransform:
    """gzip (zlib) compression, applied only to payloads of at least ``threshold`` bytes.

    Level 1 by default: on checkpoint-like JSON it is ~5x faster than level 6 for ~1.5x the size,
    and a checkpoint is written far more often than it is read.
    """

    name = "gzip"

    def __init__(self, threshold: int = 4096, level: int = 1, max_size: int = DEFAULT_MAX_DECOMPRESSED):
        self.threshold = threshold
        self.level = level
        self.max_size = max_size

    def encode(self, payload: bytes, identity: Identity) -> tuple[bytes, dict[str, Any]] | None:
        if len(payload) < self.threshold:
            return None
        return gzip.compress(payload, compresslevel=self.level, mtime=0), {"size": len(payload)}

    def decode(self, payload: bytes, params: dict[str, Any], identity: Identity) -> bytes:
        _declared_size(self.name, params, self.max_size)
        # Stream-decompress with a hard cap so a decompression bomb is refused before it expands.
        decomp = zlib.decompressobj(wbits=31)
        try:
            out = decomp.decompress(payload, self.max_size + 1)
        except zlib.error as exc:
            raise CorruptCheckpointError(f"gzip layer is corrupt: {exc}") from None
        if len(out) > self.max_size or decomp.unconsumed_tail:
            raise _over_limit(self.name, self.max_size)
        if not decomp.eof or decomp.unused_data:
            raise CorruptCheckpointError(
                "gzip layer is corrupt: the compressed stream is incomplete or has trailing bytes"
            )
        return out


def zstandard_available() -> bool:
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return False
    return True


class ZstdTransform:
    """Zstandard compression (needs the optional ``zstandard`` package), above ``threshold`` bytes."""

    name = "zstd"

    def __init__(self, threshold: int = 4096, level: int = 3, max_size: int = DEFAULT_MAX_DECOMPRESSED):
        self.threshold = threshold
        self.level = level
        self.max_size = max_size

    @staticmethod
    def _module():
        try:
            import zstandard
        except ImportError:
            raise UnsupportedFormatError(
                "checkpoint is zstd-compressed but the zstandard package is not installed: pip install zstandard"
            ) from None
        return zstandard

    def encode(self, payload: bytes, identity: Identity) -> tuple[bytes, dict[str, Any]] | None:
        if len(payload) < self.threshold:
            return None
        zstd = self._module()
        return zstd.ZstdCompressor(level=self.level).compress(payload), {"size": len(payload)}

    def decode(self, payload: bytes, params: dict[str, Any], identity: Identity) -> bytes:
        _declared_size(self.name, params, self.max_size)
        zstd = self._module()
        # Read at most max_size + 1 bytes through a streaming reader: a bomb stops at the cap.
        out = bytearray()
        try:
            reader = zstd.ZstdDecompressor().stream_reader(payload, read_across_frames=False)
            with reader:
                while len(out) <= self.max_size:
                    chunk = reader.read(min(_CHUNK, self.max_size + 1 - len(out)))
                    if not chunk:
                        break
                    out += chunk
        except zstd.ZstdError as exc:
            raise CorruptCheckpointError(f"zstd layer is corrupt: {exc}") from None
        if len(out) > self.max_size:
            raise _over_limit(self.name, self.max_size)
        declared = params.get("size")
        # the recorded size also catches a frame cut short, which the stream reader may not flag
        if not isinstance(declared, int) or declared != len(out):
            raise CorruptCheckpointError(
                f"zstd layer is corrupt: expanded to {len(out)} bytes, header says {declared}"
            )
        return bytes(out)
