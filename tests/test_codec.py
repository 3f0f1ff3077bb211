"""Codec: round trips, the envelope's tamper/truncation detection, encryption that fails closed,
key configuration, signed pickle, compression limits."""

from __future__ import annotations

from spark_ckpt.codec.envelope import digest as envelope_digest

import base64
import os
import pickle
import struct
import zlib

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spark_ckpt.codec import (
    Codec, GzipTransform, Identity, Keyring, SignedPickleSerializer, ZstdTransform, describe, new_key, pack,
    unpack, zstandard_available,
)
from spark_ckpt.codec.envelope import Envelope
from spark_ckpt.config import CheckpointConfig
from spark_ckpt.errors import (
    CheckpointSwappedError, ChecksumMismatchError, ConfigError, CorruptCheckpointError, DecompressionLimitError,
    GraphMismatchError, InvalidKeyError, MissingKeyError, NotACheckpointError, PickleSignatureError,
    PlaintextRefusedError, SparkCkptError, TamperedCheckpointError, TruncatedCheckpointError,
    UnsignedPickleError, UnsupportedFormatError, WrongKeyError,
)
from spark_ckpt.model import FailureInfo, GraphCheckpoint, GraphMetadata, NodeSnapshot, Visit

K1, K2 = new_key(), new_key()
IDENT = Identity("graph-a", "exec-1", 3)
PREFIX = 6 + 1 + 4 + 4  # magic, version, checksum, header length


def reseal(blob: bytes) -> bytes:
    """Recompute the envelope checksum, as an attacker who edits stored bytes can."""
    body = blob[6:7] + blob[11:]
    return blob[:7] + envelope_digest(body) + blob[11:]


def with_header(blob: bytes, edit) -> bytes:
    """Rewrite the clear-text header JSON with ``edit(header) -> header`` and reseal."""
    (header_len,) = struct.unpack(">I", blob[11:15])
    header = orjson.loads(blob[PREFIX : PREFIX + header_len])
    new = orjson.dumps(edit(header))
    return reseal(blob[:11] + struct.pack(">I", len(new)) + new + blob[PREFIX + header_len :])


def regions(blob: bytes) -> dict[str, range]:
    (header_len,) = struct.unpack(">I", blob[11:15])
    payload = PREFIX + header_len
    return {
        "magic": range(0, 6), "version": range(6, 7), "digest": range(7, 11), "header length": range(11, 15),
        "header": range(27, payload), "nonce": range(payload, payload + 12),
        "ciphertext": range(payload + 12, len(blob) - 16), "tag": range(len(blob) - 16, len(blob)),
    }


def flip(blob: bytes, i: int, mask: int = 0x01) -> bytes:
    return blob[:i] + bytes([blob[i] ^ mask]) + blob[i + 1 :]


def sample_checkpoint(secret: str = "value", size: int = 0) -> GraphCheckpoint:
    return GraphCheckpoint(
        checkpoint_id="c-1", seq=IDENT.seq, timestamp=1_700_000_000.25,
        graph_metadata=GraphMetadata(IDENT.graph_id, "v1", IDENT.execution_id),
        graph_state={"note": secret, "blob": "x" * size, "nested": {"list": [1, 2.5, None, True]}},
        node_states={"a": NodeSnapshot(process_count=2, outputs={"content": secret})},
        execution_history=[Visit("a", 0, 1, output={"content": secret})],
        failure=FailureInfo("b", 0, "ValueError", "boom", input={"content": secret}),
    )


def encrypted(keys=None, active=None, **kwargs) -> Codec:
    return Codec(keyring=Keyring(keys or {"k1": K1}, active), **kwargs)


# -- round trips -----------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@st.composite
def checkpoints(draw) -> GraphCheckpoint:
    nodes = draw(st.lists(st.text(min_size=1, max_size=6), max_size=3, unique=True))
    return GraphCheckpoint(
        checkpoint_id=draw(st.text(min_size=1, max_size=10)),
        seq=draw(st.integers(0, 2**31)),
        timestamp=draw(st.floats(0, 2e9)),
        graph_metadata=GraphMetadata(draw(st.text(max_size=8)), "v", draw(st.text(max_size=8))),
        superstep=draw(st.integers(0, 1000)),
        run_input=draw(json_values),
        graph_state=draw(st.dictionaries(st.text(max_size=8), json_values, max_size=4)),
        node_states={
            n: NodeSnapshot(draw(st.integers(0, 99)), False, draw(st.lists(json_values, max_size=2)), draw(json_values))
            for n in nodes
        },
        current_node=draw(st.none() | st.sampled_from(nodes or ["x"])),
        execution_history=[Visit(n, i, i, output=draw(json_values)) for i, n in enumerate(nodes)],
        node_extras=draw(st.dictionaries(st.text(max_size=6), json_values, max_size=2)),
        result=draw(json_values),
    )


CODECS = {
    "json": lambda: Codec(),
    "json+gzip": lambda: Codec(pipeline=[GzipTransform(threshold=0)]),
    "json+aes": lambda: encrypted(),
    "json+gzip+aes": lambda: encrypted(pipeline=[GzipTransform(threshold=0)]),
    "pickle+gzip+aes": lambda: encrypted(
        serializer=SignedPickleSerializer(K2), pipeline=[GzipTransform(threshold=0)]
    ),
}


@pytest.mark.parametrize("name", sorted(CODECS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=checkpoints(), seq=st.integers(0, 2**40))
def test_round_trip_of_checkpoint_records(name, record, seq):
    """Every codec chain gives back exactly the record it was given."""
    codec = CODECS[name]()
    identity = Identity(record.graph_id, record.execution_id, seq)
    blob = codec.encode(record, identity)
    assert codec.decode(blob, GraphCheckpoint, expected=identity) == record


@settings(max_examples=60, deadline=None)
@given(data=json_values)
def test_round_trip_of_plain_data_with_encryption_and_compression(data):
    """encode_data/decode_data round-trip any JSON value and report the identity."""
    codec = encrypted(pipeline=[GzipTransform(threshold=0)])
    assert codec.decode_data(codec.encode_data(data, IDENT)) == (data, IDENT)


def test_layer_order_and_threshold():
    """Serialize -> compress (only above the threshold) -> encrypt; the envelope names each layer."""
    codec = encrypted(pipeline=[GzipTransform(threshold=1024)])
    small = describe(codec.encode(sample_checkpoint(), IDENT))
    large = describe(codec.encode(sample_checkpoint(size=10_000), IDENT))
    assert small["layers"] == ["json", "aes256gcm"]
    assert large["layers"] == ["json", "gzip", "aes256gcm"]
    assert large["key_id"] == "k1" and large["payload_size"] < 10_000


def test_nonce_is_fresh_per_envelope():
    """Encrypting the same record twice never produces the same bytes (random nonce)."""
    codec = encrypted()
    assert codec.encode(sample_checkpoint(), IDENT) != codec.encode(sample_checkpoint(), IDENT)


# -- envelope: flips and truncation, no keys involved ---------------------------------------------------
@pytest.mark.parametrize("make", [lambda: Codec(), lambda: encrypted(pipeline=[GzipTransform(threshold=0)])])
def test_every_truncation_is_reported_as_truncated(make):
    """Cutting the envelope anywhere raises TruncatedCheckpointError, never a decode of partial data."""
    codec = make()
    blob = codec.encode(sample_checkpoint(size=300), IDENT)
    for cut in range(len(blob)):
        with pytest.raises(TruncatedCheckpointError):
            codec.decode_data(blob[:cut])


def test_flipped_byte_in_every_region_is_detected_without_keys():
    """A flipped bit anywhere is caught by the envelope checksum (or signature/version checks) first."""
    codec = encrypted()
    blob = codec.encode(sample_checkpoint(), IDENT)
    expected = {
        "magic": (NotACheckpointError,), "version": (UnsupportedFormatError,), "digest": (ChecksumMismatchError,),
        "header length": (ChecksumMismatchError,), "header": (ChecksumMismatchError,),
        "nonce": (ChecksumMismatchError,), "ciphertext": (ChecksumMismatchError,), "tag": (ChecksumMismatchError,),
    }
    keyless = Codec()
    for region, positions in regions(blob).items():
        assert len(positions) > 0, region
        for i in positions:
            for reader in (codec, keyless):
                with pytest.raises(expected[region]) as info:
                    reader.decode_data(flip(blob, i))
                if region in ("digest", "nonce", "ciphertext", "tag"):
                    assert type(info.value) is ChecksumMismatchError  # not misreported as truncation


def test_resealed_tampering_of_the_encrypted_payload_fails_authentication():
    """With the checksum recomputed, a flipped nonce/ciphertext/tag byte is caught by AES-GCM."""
    codec = encrypted()
    blob = codec.encode(sample_checkpoint(), IDENT)
    for region in ("nonce", "ciphertext", "tag"):
        for i in regions(blob)[region]:
            with pytest.raises(TamperedCheckpointError):
                codec.decode_data(reseal(flip(blob, i, 0x80)))


def test_resealed_header_byte_flips_never_decode():
    """Every resealed header edit is refused with a codec error: the layer chain is authenticated."""
    codec = encrypted(keys={"k1": K1, "k2": K2}, active="k1", pipeline=[GzipTransform(threshold=0)])
    blob = codec.encode(sample_checkpoint(size=100), IDENT)
    for i in [*regions(blob)["header"], *regions(blob)["header length"], *regions(blob)["version"]]:
        with pytest.raises(SparkCkptError):
            codec.decode_data(reseal(flip(blob, i)))


@pytest.mark.parametrize(
    "edit, error",
    [
        (lambda h: {**h, "layers": [*h["layers"][:-1], {**h["layers"][-1], "kid": "nope"}]}, MissingKeyError),
        (lambda h: {**h, "layers": [*h["layers"][:-1], {**h["layers"][-1], "kid": "k2"}]}, WrongKeyError),
        (lambda h: {**h, "layers": [*h["layers"][:-1], {**h["layers"][-1], "kcv": "00" * 8}]}, WrongKeyError),
        (lambda h: {**h, "layers": [h["layers"][0], {**h["layers"][1], "size": 5}, h["layers"][2]]},
         TamperedCheckpointError),
        (lambda h: {**h, "layers": h["layers"][:-1]}, PlaintextRefusedError),
        (lambda h: {**h, "layers": [*h["layers"], {"name": "gzip"}]}, TamperedCheckpointError),
        (lambda h: {**h, "id": ["graph-a", "exec-2", 3]}, TamperedCheckpointError),
        (lambda h: {**h, "n": h["n"] + 1}, CorruptCheckpointError),
    ],
    ids=["unknown-kid", "other-kid", "kcv", "gzip-params", "strip-cipher", "layer-after-cipher", "identity", "n"],
)
def test_resealed_header_edits_raise_distinct_errors(edit, error):
    """Editing the clear header (and resealing) is refused with the error that names the problem."""
    codec = encrypted(keys={"k1": K1, "k2": K2}, active="k1", pipeline=[GzipTransform(threshold=0)])
    blob = codec.encode(sample_checkpoint(), IDENT)
    with pytest.raises(error):
        codec.decode_data(with_header(blob, edit))


def test_unencrypted_envelope_still_detects_torn_and_altered_bytes():
    """Without keys the checksum still catches damage, and a newer version is named as such."""
    codec = Codec()
    blob = codec.encode(sample_checkpoint(), IDENT)
    assert codec.decode(blob, GraphCheckpoint) == sample_checkpoint()
    with pytest.raises(ChecksumMismatchError):
        codec.decode_data(flip(blob, len(blob) - 3))
    newer = reseal(blob[:6] + bytes([2]) + blob[7:])
    with pytest.raises(UnsupportedFormatError, match="upgrade"):
        codec.decode_data(newer)
    with pytest.raises(NotACheckpointError):
        codec.decode_data(b"PK\x03\x04" + blob)


# -- identity binding (AAD) ------------------------------------------------------------------------------
def test_checkpoint_read_at_another_position_is_refused():
    """A blob stored under another (graph, execution, seq) than it was written for is refused."""
    codec = encrypted()
    blob = codec.encode(sample_checkpoint(), IDENT)
    for other in (Identity("graph-b", "exec-1", 3), Identity("graph-a", "exec-2", 3), Identity("graph-a", "exec-1", 4)):
        with pytest.raises(CheckpointSwappedError) as info:
            codec.decode_data(blob, expected=other)
        assert isinstance(info.value, GraphMismatchError) and isinstance(info.value, CorruptCheckpointError)


def test_swapped_checkpoint_with_rewritten_header_fails_authentication():
    """Copying a checkpoint onto another position *and* rewriting its clear identity breaks the AAD."""
    codec = encrypted()
    blob = codec.encode(sample_checkpoint(), IDENT)
    moved = with_header(blob, lambda h: {**h, "id": ["graph-a", "exec-2", 9]})
    assert unpack(moved).identity == Identity("graph-a", "exec-2", 9)
    with pytest.raises(TamperedCheckpointError):
        codec.decode_data(moved, expected=Identity("graph-a", "exec-2", 9))


def test_payload_from_one_envelope_in_another_fails_authentication():
    """Splicing the ciphertext of checkpoint A under the header of checkpoint B is rejected."""
    codec = encrypted()
    a = unpack(codec.encode(sample_checkpoint("a"), IDENT))
    b_ident = Identity("graph-a", "exec-1", 4)
    b = unpack(codec.encode(sample_checkpoint("b"), b_ident))
    spliced = pack(Envelope(layers=b.layers, identity=b_ident, payload=a.payload))
    with pytest.raises(TamperedCheckpointError):
        codec.decode_data(spliced, expected=b_ident)


# -- fail closed -----------------------------------------------------------------------------------------
def test_plaintext_refused_when_encryption_is_configured_unless_allowed():
    """A plaintext checkpoint is refused by an encrypting codec; allow_plaintext reads it (migration)."""
    plain = Codec().encode(sample_checkpoint(), IDENT)
    with pytest.raises(PlaintextRefusedError, match="allow_plaintext"):
        encrypted().decode_data(plain)
    assert encrypted(allow_plaintext=True).decode(plain, GraphCheckpoint) == sample_checkpoint()


def test_missing_and_wrong_keys_are_distinct():
    """Unknown key id -> MissingKeyError; same id with other key material -> WrongKeyError."""
    blob = encrypted().encode(sample_checkpoint(), IDENT)
    with pytest.raises(MissingKeyError, match="'k1'"):
        Codec().decode_data(blob)  # no keys at all
    with pytest.raises(MissingKeyError, match="k2"):
        encrypted(keys={"k2": K2}).decode_data(blob)
    with pytest.raises(WrongKeyError, match="'k1'"):
        encrypted(keys={"k1": K2}).decode_data(blob)


# -- key configuration -----------------------------------------------------------------------------------
def test_key_material_is_validated_without_echoing_it(no_env_config):
    """A short or malformed key raises InvalidKeyError (a ConfigError) that never contains the key."""
    short = base64.b64encode(os.urandom(16)).decode()
    for bad in (short, "not base64 !!", os.urandom(31), 42):
        with pytest.raises(InvalidKeyError) as info:
            CheckpointConfig(backend="memory", encryption_keys={"k1": bad})
        assert isinstance(info.value, ConfigError)
        if isinstance(bad, str):
            assert bad not in str(info.value)
    with pytest.raises(InvalidKeyError, match="key id"):
        Keyring({"bad id!": K1})
    with pytest.raises(InvalidKeyError, match="none is active"):
        Keyring({"k1": K1, "k2": K2})
    with pytest.raises(InvalidKeyError, match="'k3'"):
        Keyring({"k1": K1}, active="k3")


def test_key_forms_are_equivalent():
    """Raw bytes, base64, URL-safe base64 and hex of one key decrypt each other's checkpoints."""
    raw = os.urandom(32)
    forms = [raw, base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode(), raw.hex()]
    blob = encrypted(keys={"k": forms[0]}).encode(sample_checkpoint(), IDENT)
    for form in forms:
        assert encrypted(keys={"k": form}).decode(blob, GraphCheckpoint) == sample_checkpoint()


def test_config_never_shows_keys():
    """repr(config) and repr(keyring) list key ids, never key material."""
    config = CheckpointConfig(backend="memory", encryption_keys={"k1": K1}, pickle_signing_key=K2)
    keyring = Keyring({"k1": K1})
    for text in (repr(config), repr(keyring)):
        assert K1 not in text and K2 not in text
    assert "k1" in repr(keyring)


def test_keys_from_environment(monkeypatch, no_env_config):
    """SPARK_CKPT_KEYS/SPARK_CKPT_ACTIVE_KEY configure encryption when the config names no keys."""
    monkeypatch.setenv("SPARK_CKPT_KEYS", f"k1:{K1}, k2:{K2}")
    monkeypatch.setenv("SPARK_CKPT_ACTIVE_KEY", "k2")
    codec = CheckpointConfig(backend="memory").make_codec()
    blob = codec.encode(sample_checkpoint(), IDENT)
    assert describe(blob)["key_id"] == "k2"
    assert encrypted(keys={"k2": K2}).decode(blob, GraphCheckpoint) == sample_checkpoint()
    assert describe(CheckpointConfig(backend="memory", active_key="k1").make_codec().encode(
        sample_checkpoint(), IDENT))["key_id"] == "k1"
    with pytest.raises(PlaintextRefusedError):
        codec.decode_data(Codec().encode(sample_checkpoint(), IDENT))
    monkeypatch.setenv("SPARK_CKPT_KEYS", f"k1{K1}")
    with pytest.raises(InvalidKeyError, match="keyid:base64key"):
        CheckpointConfig(backend="memory").make_codec()


def test_config_builds_the_whole_chain(no_env_config):
    """make_codec wires keys, active key, compression, plaintext policy and the decompression limit."""
    config = CheckpointConfig(
        backend="memory", encryption_keys={"old": K1, "new": K2}, active_key="new", compression="gzip",
        compression_threshold=100, max_decompressed_size=5000,
    )
    codec = config.make_codec()
    assert describe(codec.encode(sample_checkpoint(size=1000), IDENT))["layers"] == ["json", "gzip", "aes256gcm"]
    with pytest.raises(DecompressionLimitError):
        codec.decode_data(codec.encode(sample_checkpoint(size=10_000), IDENT))
    with pytest.raises(ConfigError, match="unknown compression"):
        CheckpointConfig(backend="memory", compression="lz5").make_codec()


# -- compression limits ----------------------------------------------------------------------------------
def test_gzip_bomb_is_refused_before_expanding():
    """A payload expanding past the limit raises DecompressionLimitError, whatever size it declares."""
    bomb = zlib.compressobj(9, wbits=31)
    payload = bomb.compress(b"\0" * 50_000_000) + bomb.flush()
    blob = pack(Envelope(layers=[{"name": "json"}, {"name": "gzip", "size": 10}], identity=IDENT, payload=payload))
    with pytest.raises(DecompressionLimitError, match="1000000"):
        Codec(max_decompressed_size=1_000_000).decode_data(blob)
    declared = pack(Envelope(layers=[{"name": "json"}, {"name": "gzip", "size": 2**40}], identity=IDENT,
                             payload=payload))
    with pytest.raises(DecompressionLimitError, match="declares"):
        Codec(max_decompressed_size=1_000_000).decode_data(declared)


def _expanded_peak(codec, blob: bytes) -> int:
    """Peak bytes allocated while ``codec`` refuses ``blob`` as a decompression bomb."""
    import tracemalloc

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        with pytest.raises(DecompressionLimitError, match=r"Raise CheckpointConfig\(max_decompressed_size"):
            codec.decode_data(blob)
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_a_gzip_bomb_costs_at_most_the_limit_and_a_chunk(no_env_config):
    """With the default limit (64 MiB), a ~130 KB bomb that would expand to 128 MiB is refused having
    held at most the limit plus one chunk, never a buffer of the whole expansion; a lower limit lowers
    the cost with it."""
    limit = CheckpointConfig().max_decompressed_size
    assert limit == 64 * 1024 * 1024
    bomb = zlib.compressobj(9, wbits=31)
    zeros = b"\0" * (1 << 20)
    payload = b"".join(bomb.compress(zeros) for _ in range(128)) + bomb.flush()
    assert len(payload) < 200_000
    blob = pack(Envelope(layers=[{"name": "json"}, {"name": "gzip"}], identity=IDENT, payload=payload))
    chunk = 1 << 20
    assert _expanded_peak(CheckpointConfig(backend="memory").make_codec(), blob) < limit + 3 * chunk
    small = 4 * chunk
    assert _expanded_peak(Codec(max_decompressed_size=small), blob) < small + 3 * chunk


def test_gzip_expands_a_payload_of_many_chunks_exactly():
    """Streaming a chunk at a time gives back every byte of a payload larger than one chunk."""
    data = orjson.dumps({"rows": [f"row {i}" * 20 for i in range(60_000)]})
    assert len(data) > 3 * (1 << 20)
    codec = Codec(pipeline=[GzipTransform(threshold=0)])
    assert codec.decode_data(codec.encode_data(orjson.loads(data), IDENT))[0] == orjson.loads(data)


def test_incomplete_gzip_stream_is_corrupt():
    """A gzip stream cut short (then resealed) is refused rather than decoded partially."""
    data = orjson.dumps(list(range(5000)))
    full = zlib.compressobj(6, wbits=31)
    payload = full.compress(data) + full.flush()
    blob = pack(Envelope(layers=[{"name": "json"}, {"name": "gzip"}], identity=IDENT, payload=payload[:-12]))
    with pytest.raises(CorruptCheckpointError, match="gzip"):
        Codec().decode_data(blob)


@pytest.mark.skipif(not zstandard_available(), reason="optional zstandard package is not installed")
def test_zstd_round_trip_and_bomb_limit():
    """zstd compresses above the threshold and refuses a bomb before it expands."""
    import zstandard

    codec = encrypted(pipeline=[ZstdTransform(threshold=100)])
    blob = codec.encode(sample_checkpoint(size=5000), IDENT)
    assert describe(blob)["layers"] == ["json", "zstd", "aes256gcm"]
    assert codec.decode(blob, GraphCheckpoint) == sample_checkpoint(size=5000)
    bomb = zstandard.ZstdCompressor().compress(b"\0" * 20_000_000)
    blob = pack(Envelope(layers=[{"name": "json"}, {"name": "zstd"}], identity=IDENT, payload=bomb))
    with pytest.raises(DecompressionLimitError):
        Codec(max_decompressed_size=1_000_000).decode_data(blob)
    big = zstandard.ZstdCompressor().compress(b"\0" * 128 * (1 << 20))
    blob = pack(Envelope(layers=[{"name": "json"}, {"name": "zstd", "size": 10}], identity=IDENT, payload=big))
    assert _expanded_peak(Codec(max_decompressed_size=4 << 20), blob) < 7 << 20


@pytest.mark.skipif(zstandard_available(), reason="checks the message shown when zstandard is missing")
def test_zstd_without_the_package_is_a_clear_error(no_env_config):
    """Asking for zstd without the package is a ConfigError naming the package."""
    with pytest.raises(ConfigError, match="pip install zstandard"):
        CheckpointConfig(backend="memory", compression="zstd").make_codec()


# -- signed pickle -----------------------------------------------------------------------------------------
class Explodes:
    """Unpickling this would run code; a refused pickle must never get that far."""

    def __reduce__(self):
        return (os._exit, (99,))


def _pickle_envelope(params: dict) -> bytes:
    return pack(Envelope(layers=[{"name": "pickle", **params}], identity=IDENT, payload=pickle.dumps(Explodes())))


def test_pickle_refused_unless_configured_and_signed(no_env_config):
    """Unsigned, mis-signed or unconfigured pickles are refused before pickle.loads runs."""
    json_codec = CheckpointConfig(backend="memory").make_codec()
    pickle_codec = CheckpointConfig(backend="memory", pickle_signing_key=K1).make_codec()
    with pytest.raises(UnsignedPickleError, match="pickle_signing_key"):
        json_codec.decode_data(_pickle_envelope({"sig": "ab" * 32}))
    with pytest.raises(UnsignedPickleError):
        pickle_codec.decode_data(_pickle_envelope({}))
    with pytest.raises(PickleSignatureError):
        pickle_codec.decode_data(_pickle_envelope({"sig": "ab" * 32}))
    # signed with another key, or bound to another identity
    other = Codec(serializer=SignedPickleSerializer(K2)).encode(sample_checkpoint(), IDENT)
    with pytest.raises(PickleSignatureError):
        pickle_codec.decode_data(other)
    mine = Codec(serializer=SignedPickleSerializer(K1)).encode(sample_checkpoint(), IDENT)
    with pytest.raises(PickleSignatureError):
        pickle_codec.decode_data(with_header(mine, lambda h: {**h, "id": ["graph-a", "exec-1", 4]}))
    assert pickle_codec.decode(mine, GraphCheckpoint) == sample_checkpoint()


def test_pickle_serializer_needs_explicit_opt_in(no_env_config):
    """serializer='pickle' without a signing key is a ConfigError; with one, checkpoints are signed."""
    with pytest.raises(ConfigError, match="pickle_signing_key"):
        CheckpointConfig(backend="memory", serializer="pickle").make_codec()
    with pytest.raises(InvalidKeyError, match="at least 32"):
        CheckpointConfig(backend="memory", serializer="pickle", pickle_signing_key=b"short").make_codec()
    codec = CheckpointConfig(backend="memory", serializer="pickle", pickle_signing_key=K1).make_codec()
    blob = codec.encode(sample_checkpoint(), IDENT)
    assert describe(blob)["layers"] == ["pickle"]
    assert "sig" in unpack(blob).layers[0]
