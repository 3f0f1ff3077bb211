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


#: the default ``CheckpointConfig.max_decompressed_size``: a checkpoint's JSON rarely nears it, and a
#: decompression bomb (a few hundred KB that would expand to gigabytes) costs at most this much memory
DEFAULT_MAX_DECOMPRESSED = 64 * 1024 * 1024
#: decoders expand this much at a time, and stop once the total passes the limit: a bomb never makes
#: them hold more than the limit plus one chunk
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


class _Expanded:
    """The chunks a decoder expanded so far, refused (``DecompressionLimitError``) as soon as their
    total passes ``max_size``: kept as a list, not a growing buffer, so a bomb costs the limit and one
    chunk, never a buffer grown (and copied) past it. Joined once, at the end."""

    def __init__(self, name: str, max_size: int) -> None:
        self.name = name
        self.max_size = max_size
        self.chunks: list[bytes] = []
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_size:
            self.chunks.clear()
            raise _over_limit(self.name, self.max_size)
        self.chunks.append(chunk)

    def joined(self) -> bytes:
        out = b"".join(self.chunks)
        self.chunks.clear()
        return out


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
        # Expanded a chunk at a time: a decompression bomb is refused once it passes the limit.
        decomp = zlib.decompressobj(wbits=31)
        expanded = _Expanded(self.name, self.max_size)
        data = payload
        try:
            while not decomp.eof:
                chunk = decomp.decompress(data, _CHUNK)
                expanded.add(chunk)
                data = decomp.unconsumed_tail
                if not chunk and not data:
                    break  # all input read, no output to come: the stream ends early
        except zlib.error as exc:
            raise CorruptCheckpointError(f"gzip layer is corrupt: {exc}") from None
        if not decomp.eof or decomp.unused_data:
            raise CorruptCheckpointError(
                "gzip layer is corrupt: the compressed stream is incomplete or has trailing bytes"
            )
        return expanded.joined()


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
        # Read a chunk at a time through a streaming reader: a bomb stops once it passes the limit.
        expanded = _Expanded(self.name, self.max_size)
        try:
            reader = zstd.ZstdDecompressor().stream_reader(payload, read_across_frames=False)
            with reader:
                while chunk := reader.read(_CHUNK):
                    expanded.add(chunk)
        except zstd.ZstdError as exc:
            raise CorruptCheckpointError(f"zstd layer is corrupt: {exc}") from None
        declared = params.get("size")
        # the recorded size also catches a frame cut short, which the stream reader may not flag
        if not isinstance(declared, int) or declared != expanded.size:
            raise CorruptCheckpointError(
                f"zstd layer is corrupt: expanded to {expanded.size} bytes, header says {declared}"
            )
        return expanded.joined()
