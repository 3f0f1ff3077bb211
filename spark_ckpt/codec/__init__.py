"""Checkpoint codec: record -> data (cattrs) -> bytes (serializer) -> transforms -> envelope."""

from __future__ import annotations

from typing import Any, Iterable, TypeVar

from ..errors import GraphMismatchError, UnsupportedFormatError
from .convert import converter, from_data, to_data
from .envelope import Envelope, Identity, pack, unpack
from .layers import GzipTransform, JsonSerializer, Serializer, Transform

T = TypeVar("T")

__all__ = [
    "Codec", "Identity", "Envelope", "Serializer", "Transform", "JsonSerializer", "GzipTransform",
    "converter", "to_data", "from_data", "pack", "unpack",
]


class Codec:
    """Encodes records into verified envelopes and back.

    ``serializers``/``transforms`` are every layer this codec can *read*; ``serializer`` and
    ``pipeline`` (names, in order) are what it *writes*.
    """

    def __init__(
        self,
        serializer: Serializer | None = None,
        pipeline: Iterable[Transform] = (),
        *,
        readable: Iterable[Serializer | Transform] = (),
    ) -> None:
        self.serializer = serializer or JsonSerializer()
        self.pipeline = list(pipeline)
        self.layers: dict[str, Serializer | Transform] = {}
        for layer in [JsonSerializer(), GzipTransform(), *readable, self.serializer, *self.pipeline]:
            self.layers[layer.name] = layer

    def encode_data(self, data: Any, identity: Identity) -> bytes:
        payload = self.serializer.dumps(data)
        layers: list[dict[str, Any]] = [{"name": self.serializer.name}]
        for transform in self.pipeline:
            done = transform.encode(payload, identity)
            if done is not None:
                payload, params = done
                layers.append({"name": transform.name, **params})
        return pack(Envelope(layers=layers, identity=identity, payload=payload))

    def encode(self, record: Any, identity: Identity) -> bytes:
        return self.encode_data(to_data(record), identity)

    def decode_data(self, blob: bytes, expected: Identity | None = None) -> tuple[Any, Identity]:
        envelope = unpack(blob)
        if expected is not None and envelope.identity != expected:
            raise GraphMismatchError(
                f"checkpoint was written for {envelope.identity} but was read as {expected}: "
                "it was copied or swapped onto another execution or position"
            )
        payload = envelope.payload
        for layer in reversed(envelope.layers[1:]):
            transform = self._layer(layer["name"])
            payload = transform.decode(payload, layer, envelope.identity)  # type: ignore[union-attr]
        serializer = self._layer(envelope.layers[0]["name"])
        return serializer.loads(payload, envelope.layers[0]), envelope.identity  # type: ignore[union-attr]

    def decode(self, blob: bytes, cls: type[T], expected: Identity | None = None) -> T:
        data, _ = self.decode_data(blob, expected)
        return from_data(data, cls)

    def _layer(self, name: str) -> Serializer | Transform:
        try:
            return self.layers[name]
        except KeyError:
            raise UnsupportedFormatError(
                f"checkpoint uses codec layer {name!r}, which is not available here "
                f"(known: {', '.join(sorted(self.layers))}); install or configure the plugin that provides it"
            ) from None
