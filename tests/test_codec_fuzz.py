"""Fuzzing the decoder: random bytes, mutated envelopes and hostile headers only ever raise
``SparkCkptError`` subclasses (no other exception, no unbounded work)."""

from __future__ import annotations

from spark_ckpt.codec.envelope import digest as envelope_digest

import pickle
import struct

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spark_ckpt.codec import (
    Codec,
    GzipTransform,
    Identity,
    Keyring,
    SignedPickleSerializer,
    ZstdTransform,
    new_key,
    pack,
)
from spark_ckpt.codec.envelope import MAGIC, Envelope
from spark_ckpt.errors import CorruptCheckpointError, SparkCkptError
from spark_ckpt.model import GraphCheckpoint, GraphMetadata, NodeSnapshot, Visit

K1, K2, SIGNING = new_key(), new_key(), new_key()
IDENT = Identity("g", "e", 1)
LIMIT = 64 * 1024  # keeps any decompression bomb hypothesis finds cheap
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def codecs() -> list[Codec]:
    """Readers with every layer enabled, strict and lenient."""
    common = dict(
        readable=[SignedPickleSerializer(SIGNING), ZstdTransform(max_size=LIMIT)], max_decompressed_size=LIMIT
    )
    return [
        Codec(**common),
        Codec(keyring=Keyring({"k1": K1, "k2": K2}, "k1"), **common),
        Codec(keyring=Keyring({"k1": K1}), allow_plaintext=True, **common),
    ]


READERS = codecs()


def seal(body: bytes) -> bytes:
    """Magic + a correct checksum around arbitrary bytes, so fuzzing reaches past the checksum."""
    return MAGIC + body[:1] + envelope_digest(body) + body[1:]


def only_spark_errors(blob: bytes) -> None:
    for codec in READERS:
        for decode in (lambda: codec.decode_data(blob), lambda: codec.decode(blob, GraphCheckpoint)):
            try:
                decode()
            except SparkCkptError:
                pass


def valid_blobs() -> list[bytes]:
    record = GraphCheckpoint(
        "c", 1, 1.0, GraphMetadata("g", "v", "e"), graph_state={"k": list(range(300))},
        node_states={"n": NodeSnapshot(1, outputs="o")}, execution_history=[Visit("n", 0, 0, output="o")],
    )
    gz = GzipTransform(threshold=0, max_size=LIMIT)
    return [
        Codec().encode(record, IDENT),
        Codec(pipeline=[gz]).encode(record, IDENT),
        Codec(keyring=Keyring({"k1": K1}), pipeline=[gz]).encode(record, IDENT),
        Codec(serializer=SignedPickleSerializer(SIGNING)).encode(record, IDENT),
    ]


VALID = valid_blobs()


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes(blob):
    """Arbitrary bytes, with or without the signature prefix."""
    only_spark_errors(blob)
    only_spark_errors(MAGIC + blob)


@FUZZ
@given(st.binary(max_size=400))
def test_random_bodies_with_a_valid_checksum(body):
    """Arbitrary bytes behind a correct checksum exercise header parsing."""
    only_spark_errors(seal(b"\x01" + body))


@FUZZ
@given(
    which=st.integers(0, len(VALID) - 1),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.none() | st.integers(0, 10**6),
    resealed=st.booleans(),
)
def test_mutated_envelopes(which, edits, cut, resealed):
    """Valid envelopes with bytes overwritten, cut, and optionally resealed."""
    blob = bytearray(VALID[which])
    for position, value in edits:
        blob[position % len(blob)] = value
    blob = bytes(blob[:cut] if cut is not None else blob)
    if resealed and len(blob) > 11:
        blob = seal(blob[6:7] + blob[11:])
    only_spark_errors(blob)


json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=10)
params = st.dictionaries(
    st.sampled_from(["name", "size", "kid", "kcv", "sig", "x"]),
    json_scalars | st.lists(json_scalars, max_size=3),
    max_size=4,
)
layer = st.builds(
    lambda name, extra: {**extra, "name": name},
    st.sampled_from(["json", "gzip", "zstd", "aes256gcm", "pickle", "msgpack", ""]),
    params,
)


@FUZZ
@given(
    layers=st.lists(layer, max_size=4),
    payload=st.binary(max_size=300) | st.sampled_from([pickle.dumps({"a": 1}), b"{}", b"[]", b"null"]),
    seq=st.integers(-(2**63), 2**63 - 1),
)
def test_hostile_layer_lists_and_payloads(layers, payload, seq):
    """Well-formed envelopes naming any mix of layers with any parameters are refused cleanly."""
    only_spark_errors(pack(Envelope(layers=layers, identity=Identity("g", "e", seq), payload=payload)))


@FUZZ
@given(header=st.recursive(json_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(
    st.sampled_from(["layers", "id", "n", "name"]), c, max_size=3), max_leaves=12), payload=st.binary(max_size=50))
def test_hostile_headers(header, payload):
    """Any JSON value as the header (wrong types everywhere) is refused cleanly."""
    raw = orjson.dumps(header)
    only_spark_errors(seal(b"\x01" + struct.pack(">I", len(raw)) + raw + payload))


class FragileTransform:
    """A plugin layer that crashes on bytes it did not write."""

    name = "fragile"

    def encode(self, payload, identity):
        return payload[::-1], {}

    def decode(self, payload, params, identity):
        return payload.decode("ascii")[::-1].encode()


def test_a_crashing_plugin_layer_is_reported_as_corrupt():
    """An exception escaping a plugin layer becomes a CorruptCheckpointError naming the layer."""
    codec = Codec(pipeline=[FragileTransform()])
    assert codec.decode_data(codec.encode_data({"a": 1}, IDENT))[0] == {"a": 1}
    hostile = pack(Envelope(layers=[{"name": "json"}, {"name": "fragile"}], identity=IDENT, payload=b"\xff"))
    with pytest.raises(CorruptCheckpointError, match="fragile"):
        codec.decode_data(hostile)
