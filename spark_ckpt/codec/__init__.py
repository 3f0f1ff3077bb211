"""Checkpoint codec: record -> data (cattrs) -> bytes (serializer) -> compression -> encryption -> envelope.

Reading undoes the chain named in the envelope, and fails closed: with encryption configured, an
envelope whose last layer is not the cipher is refused (``PlaintextRefusedError``) unless
``allow_plaintext=True``; a pickle is loaded only after its signature verified.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator, TypeVar

from ..errors import (
    CheckpointSwappedError, EncodeError, CorruptCheckpointError, PlaintextRefusedError, SparkCkptError,
    TamperedCheckpointError, UnsupportedFormatError,
)
from .convert import converter, dumps_data, from_data, to_data
from .crypto import AesGcmTransform, Keyring, new_key
from ..model import BlobParts, ValuePart
from .envelope import Envelope, Identity, describe, envelope_prefix, envelope_prefix_of_parts, pack, pack_parts, unpack
from .index_tags import IndexTagger
from .layers import (
    DEFAULT_MAX_DECOMPRESSED, GzipTransform, JsonSerializer, Serializer, Transform, ZstdTransform,
    zstandard_available,
)
from .signed_pickle import PICKLE_LAYER, SignedPickleSerializer, refuse_unconfigured_pickle

T = TypeVar("T")

__all__ = [
    "Codec", "Identity", "Envelope", "Serializer", "Transform", "JsonSerializer", "GzipTransform",
    "ZstdTransform", "AesGcmTransform", "Keyring", "SignedPickleSerializer", "new_key",
    "zstandard_available", "converter", "to_data", "from_data", "pack", "unpack", "describe",
]


class Codec:
    """Encodes records into verified envelopes and back.

    ``serializer`` and ``pipeline`` (in order) are what it *writes*; then, when ``keyring`` has an
    active key, the payload is encrypted under it as the last layer. ``readable`` adds layers it
    can *read* (plugin layers). With a non-empty keyring, reading refuses unencrypted envelopes
    unless ``allow_plaintext`` is set (for migrating old checkpoints).
    """

    def __init__(
        self,
        serializer: Serializer | None = None,
        pipeline: Iterable[Transform] = (),
        *,
        readable: Iterable[Serializer | Transform] = (),
        keyring: Keyring | None = None,
        allow_plaintext: bool = False,
        max_decompressed_size: int = DEFAULT_MAX_DECOMPRESSED,
    ) -> None:
        self.serializer = serializer or JsonSerializer()
        self.pipeline = list(pipeline)
        #: JSON and no other layer (unless encrypting): encode_data takes a direct path
        self._plain_json = type(self.serializer) is JsonSerializer and not self.pipeline
        self.keyring = keyring or Keyring()
        self.encryption = AesGcmTransform(self.keyring)
        #: authenticates the executions index when encryption is on (``index_tags``)
        self.index_tags = IndexTagger(self.keyring)
        self.allow_plaintext = allow_plaintext
        self.layers: dict[str, Serializer | Transform] = {}
        defaults = [
            JsonSerializer(),
            GzipTransform(max_size=max_decompressed_size),
            ZstdTransform(max_size=max_decompressed_size),
        ]
        for layer in [*defaults, *readable, self.serializer, *self.pipeline, self.encryption]:
            self.layers[layer.name] = layer
        for layer in self.layers.values():
            signing_key = getattr(layer, "signing_key", None)
            if isinstance(signing_key, bytes):  # (a signed pickle's key must not also encrypt)
                self.keyring.refuse_signing_key(signing_key)

    @property
    def encrypts(self) -> bool:
        """True when new checkpoints are encrypted (the keyring has an active key)."""
        return self.keyring.active is not None

    @property
    def takes_json_fragments(self) -> bool:
        """Whether data given to ``encode_data`` may hold ``orjson.Fragment`` values (JSON already
        encoded by ``dumps_data``): the JSON serializer embeds them as they are."""
        return type(self.serializer) is JsonSerializer

    @property
    def requires_encryption(self) -> bool:
        return bool(self.keyring) and not self.allow_plaintext

    # -- writing ---------------------------------------------------------------------------------
    def encode_data(self, data: Any, identity: Identity) -> bytes:
        if self._plain_json and not self.encrypts:  # the default: no layer but JSON
            return pack_parts([{"name": "json"}], identity, dumps_data(data))
        return self._encoded_through_layers(data, identity)

    @property
    def writes_plain_json(self) -> bool:
        """Whether records are written as JSON and nothing else (no compression, no encryption): then a
        large value can be stored apart (``encode_data_in_parts``'s ``values``)."""
        return self._plain_json and not self.encrypts

    def encode_data_in_parts(self, data: Any, identity: Identity, values: "list[ValuePart] | None" = None) -> "bytes | BlobParts":
        """``encode_data``, the envelope's prefix and the payload left apart on the default path (no
        layer but JSON), so a large record is never copied into one buffer: ``BlobParts``.

        ``values``: large values left out of ``data``, where ``data`` holds ``value_placeholder(i)`` for
        the i-th; they become ``ValuePart`` parts of the payload, stored apart by a backend that
        ``takes_values`` (only on the default path: the caller checks ``writes_plain_json``)."""
        if self._plain_json and not self.encrypts:
            payload = dumps_data(data)
            if not values:
                return BlobParts((envelope_prefix([{"name": "json"}], identity, payload), payload))
            pieces = payload.split(b"\0")  # (JSON written by orjson never holds a NUL byte: it escapes it)
            if pieces[1::2] != [b"%d" % i for i in range(len(values))]:
                raise EncodeError(f"a large value's place in the record was lost (found {len(pieces)} pieces)")
            parts: list[Any] = []
            for i, text in enumerate(pieces[0::2]):
                if text:
                    parts.append(text)
                if i < len(values):
                    parts.append(values[i].measure())
            return BlobParts((envelope_prefix_of_parts([{"name": "json"}], identity, parts), *parts))
        return self._encoded_through_layers(data, identity)

    def _encoded_through_layers(self, data: Any, identity: Identity) -> bytes:
        encode = getattr(self.serializer, "encode", None)
        if encode is not None:
            payload, params = encode(data, identity)
        else:
            payload, params = self.serializer.dumps(data), {}
        return self.encode_payload({"name": self.serializer.name, **params}, payload, identity)

    def encode_payload(self, serialized: dict[str, Any], payload: bytes, identity: Identity) -> bytes:
        """Serialized bytes (with their serializer's layer entry) through this codec's transforms and
        encryption into an envelope: what ``decode_payload`` returns is written again as it is."""
        layers: list[dict[str, Any]] = [serialized]
        pipeline = [*self.pipeline, self.encryption] if self.encrypts else self.pipeline
        for transform in pipeline:
            if getattr(transform, "binds_layers", False):
                done = transform.encode(payload, identity, preceding=list(layers))  # type: ignore[call-arg]
            else:
                done = transform.encode(payload, identity)
            if done is not None:
                payload, params = done
                layers.append({"name": transform.name, **params})
        return pack(Envelope(layers=layers, identity=identity, payload=payload))

    def encode(self, record: Any, identity: Identity) -> bytes:
        return self.encode_data(to_data(record), identity)

    # -- reading ---------------------------------------------------------------------------------
    def decode_data(self, blob: bytes, expected: Identity | None = None) -> tuple[Any, Identity]:
        serializer, serialized, payload, identity = self._undo_transforms(blob, expected)
        with _contained(serialized["name"]):
            decode = getattr(serializer, "decode", None)
            if decode is not None:
                return decode(payload, serialized, identity), identity
            return serializer.loads(payload, serialized), identity  # type: ignore[union-attr]

    def decode_payload(self, blob: bytes, expected: Identity | None = None) -> tuple[dict[str, Any], bytes]:
        """The serializer's layer entry and the serialized bytes, every transform (decryption,
        decompression) undone and nothing deserialized: ``rekey`` re-encrypts these bytes as they are,
        so no value is rebuilt (or needs its type allowed) on the way."""
        _, serialized, payload, _ = self._undo_transforms(blob, expected)
        return serialized, payload

    def _undo_transforms(self, blob: bytes, expected: Identity | None) -> tuple[Any, dict[str, Any], bytes, Identity]:
        envelope = unpack(blob)
        if expected is not None and envelope.identity != expected:
            raise CheckpointSwappedError(
                f"checkpoint was written for {_where(envelope.identity)} but was read as {_where(expected)}: "
                "it was copied or swapped onto another execution or position; use the checkpoint stored "
                "for this position (or an earlier one)"
            )
        layers = envelope.layers
        self._check_encrypted(layers)
        serializer = self._layer(layers[0]["name"])
        if not _is_serializer(serializer):
            raise CorruptCheckpointError(
                f"checkpoint's first layer {layers[0]['name']!r} is not a serializer; the header was altered"
            )
        payload = envelope.payload
        for index in range(len(layers) - 1, 0, -1):
            params = layers[index]
            transform = self._layer(params["name"])
            if _is_serializer(transform) or not hasattr(transform, "decode"):
                raise CorruptCheckpointError(
                    f"checkpoint lists serializer {params['name']!r} as a transform; the header was altered"
                )
            with _contained(params["name"]):
                if getattr(transform, "binds_layers", False):
                    payload = transform.decode(  # type: ignore[call-arg]
                        payload, params, envelope.identity, preceding=layers[:index]
                    )
                else:
                    payload = transform.decode(payload, params, envelope.identity)  # type: ignore[union-attr]
        return serializer, layers[0], payload, envelope.identity

    def decode(self, blob: bytes, cls: type[T], expected: Identity | None = None) -> T:
        data, _ = self.decode_data(blob, expected)
        return from_data(data, cls)

    def is_current(self, blob: bytes) -> bool:
        """True when ``blob`` is already written the way this codec writes (encrypted under the
        active key with derived keys, or plaintext when no key is active, and no layer in a format
        written before derived keys, such as a pickle signed the old way); ``rekey`` skips those."""
        layers = unpack(blob).layers
        last = layers[-1]
        if not self.encrypts:
            current = last["name"] != self.encryption.name
        else:
            current = last["name"] == self.encryption.name and self.encryption.entry_is_current(last)
        return current and all(
            _entry_is_current(self.layers.get(params["name"]), params)
            for params in layers if params["name"] != self.encryption.name
        )

    def serialized_is_current(self, serialized: dict[str, Any]) -> bool:
        """Whether a serializer's layer entry (from ``decode_payload``) is in the format it writes now."""
        return _entry_is_current(self.layers.get(serialized["name"]), serialized)

    def _check_encrypted(self, layers: list[dict[str, Any]]) -> None:
        names = [layer["name"] for layer in layers]
        if self.encryption.name in names[:-1]:
            # a layer after the cipher would be unauthenticated; we never write that
            raise TamperedCheckpointError(
                f"checkpoint layer chain {names} has layers outside the cipher; it was altered, "
                "use an earlier checkpoint"
            )
        if self.requires_encryption and names[-1] != self.encryption.name:
            raise PlaintextRefusedError(
                f"checkpoint is not encrypted (layers {names}) but encryption is configured, so it is "
                "refused: a plaintext checkpoint may have been planted. If it predates encryption, read it "
                "with CheckpointConfig(allow_plaintext=True) once and run `spark-ckpt rekey` to encrypt it"
            )

    def _layer(self, name: str) -> Serializer | Transform:
        try:
            return self.layers[name]
        except KeyError:
            if name == PICKLE_LAYER:
                raise refuse_unconfigured_pickle() from None
            raise UnsupportedFormatError(
                f"checkpoint uses codec layer {name!r}, which is not available here "
                f"(known: {', '.join(sorted(self.layers))}); install or configure the plugin that provides it"
            ) from None


@contextmanager
def _contained(layer_name: str) -> Iterator[None]:
    """A (plugin) layer failing on hostile bytes is reported as corrupt, never as a stray exception."""
    try:
        yield
    except SparkCkptError:
        raise
    except Exception as exc:
        raise CorruptCheckpointError(
            f"codec layer {layer_name!r} could not decode the checkpoint ({exc!r}); it is damaged or altered, "
            "use an earlier checkpoint"
        ) from exc


def _entry_is_current(layer: Any, params: dict[str, Any]) -> bool:
    """Whether a layer entry is in the format its layer writes now (layers without formats: always)."""
    is_current = getattr(layer, "entry_is_current", None)
    return is_current is None or bool(is_current(params))


def _is_serializer(layer: Any) -> bool:
    return hasattr(layer, "loads")


def _where(identity: Identity) -> str:
    return f"graph {identity.graph_id!r}, execution {identity.execution_id!r}, seq {identity.seq}"
