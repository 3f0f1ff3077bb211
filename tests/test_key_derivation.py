"""Derived keys (HKDF-SHA256, one label per purpose) and the per-checkpoint key check value, with
everything written before them still readable: envelopes, signed pickles and index tags built here
by hand the old way (the configured key used directly) decode, and ``rekey`` upgrades them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import pickle

import attrs
import orjson
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from spark_ckpt.backends.memory import MemoryBackend
from spark_ckpt.codec import Codec, Identity, Keyring, SignedPickleSerializer, new_key, pack, to_data, unpack
from spark_ckpt.codec.envelope import Envelope
from spark_ckpt.codec.rekey import rekey_backend
from spark_ckpt.errors import (
    MissingKeyError, PickleSignatureError, TamperedCheckpointError, UnsupportedFormatError, WrongKeyError,
)
from spark_ckpt.model import COMPLETED, CheckpointHeader, GraphCheckpoint, GraphMetadata

K1, K2, SIGNING = new_key(), new_key(), new_key()
RAW1, RAW_SIGNING = base64.b64decode(K1), base64.b64decode(SIGNING)
IDENT = Identity("g", "e", 2)


def record(seq: int = IDENT.seq, status: str = COMPLETED) -> GraphCheckpoint:
    return GraphCheckpoint(
        checkpoint_id=f"c-{seq}", seq=seq, timestamp=1_700_000_000.0 + seq, status=status,
        graph_metadata=GraphMetadata(IDENT.graph_id, "v1", IDENT.execution_id),
        graph_state={"note": "old", "n": seq},
    )


# -- the formats written before derived keys, rebuilt from their definition ------------------------------
def legacy_encrypted(raw_key: bytes, data, identity: Identity, kid: str = "k1") -> bytes:
    """AES-256-GCM under the configured key itself; kcv = HMAC(key, constant)[:8 bytes]."""
    entry = {"name": "aes256gcm", "kid": kid,
             "kcv": hmac.new(raw_key, b"spark-ckpt key check v1", hashlib.sha256).hexdigest()[:16]}
    layers = [{"name": "json"}, entry]
    aad = (b"spark-ckpt aead v1\x00" + bytes([1]) + identity.as_bytes() + b"\x00"
           + orjson.dumps(layers, option=orjson.OPT_SORT_KEYS))
    nonce = os.urandom(12)
    sealed = AESGCM(raw_key).encrypt(nonce, orjson.dumps(data), aad)
    return pack(Envelope(layers=layers, identity=identity, payload=nonce + sealed))


def legacy_signed_pickle(raw_key: bytes, data, identity: Identity) -> bytes:
    """A pickle signed with HMAC-SHA256 under the configured signing key itself (``sig``, no ``kdf``)."""
    payload = pickle.dumps(data)
    sig = hmac.new(raw_key, b"spark-ckpt signed pickle v1\x00" + identity.as_bytes() + b"\x00" + payload,
                   hashlib.sha256).hexdigest()
    return pack(Envelope(layers=[{"name": "pickle", "sig": sig}], identity=identity, payload=payload))


def legacy_tag(raw_key: bytes, header: CheckpointHeader, kid: str = "k1") -> bytes:
    """kid:HMAC(HMAC(key, label), head)[:16]: the index tag before derived keys."""
    subkey = hmac.new(raw_key, b"spark-ckpt executions index tag v1", hashlib.sha256).digest()
    message = orjson.dumps([header.graph_id, header.execution_id, header.seq, header.status, header.kind])
    return kid.encode() + b":" + hmac.new(subkey, message, hashlib.sha256).digest()[:16]


def encrypted_codec(**keys) -> Codec:
    return Codec(keyring=Keyring(keys or {"k1": K1}))


# -- old formats still read --------------------------------------------------------------------------------
def test_envelope_encrypted_with_the_raw_key_still_decrypts():
    blob = legacy_encrypted(RAW1, to_data(record()), IDENT)
    assert encrypted_codec().decode(blob, GraphCheckpoint, expected=IDENT) == record()
    with pytest.raises(WrongKeyError):
        encrypted_codec(k1=K2).decode_data(blob)
    with pytest.raises(MissingKeyError):
        encrypted_codec(k2=K2).decode_data(blob)
    other = Identity("g", "other", 2)  # still bound to its identity
    with pytest.raises(TamperedCheckpointError):
        encrypted_codec().decode_data(pack(Envelope(unpack(blob).layers, other, unpack(blob).payload)))


def test_new_envelopes_do_not_decrypt_with_the_raw_key():
    """What is written now is under a derived key, and the layer entry says so (covered by the AAD)."""
    blob = encrypted_codec().encode(record(), IDENT)
    entry = unpack(blob).layers[-1]
    assert entry["kdf"] == 1 and entry["kid"] == "k1" and set(entry) == {"name", "kid", "kdf", "kcs", "kcv"}
    payload = unpack(blob).payload
    from cryptography.exceptions import InvalidTag

    from spark_ckpt.codec.crypto import associated_data

    with pytest.raises(InvalidTag):
        AESGCM(RAW1).decrypt(payload[:12], payload[12:], associated_data(IDENT, unpack(blob).layers))
    # dropping the marker (so a reader would use the raw key) does not make it readable either
    stripped = pack(Envelope([unpack(blob).layers[0], {k: v for k, v in entry.items() if k != "kdf"}], IDENT,
                             payload))
    with pytest.raises((WrongKeyError, TamperedCheckpointError)):
        encrypted_codec().decode_data(stripped)


def test_unknown_key_derivation_is_an_unsupported_format():
    blob = encrypted_codec().encode(record(), IDENT)
    envelope = unpack(blob)
    newer = pack(Envelope([envelope.layers[0], {**envelope.layers[1], "kdf": 2}], IDENT, envelope.payload))
    with pytest.raises(UnsupportedFormatError, match="key derivation 2"):
        encrypted_codec().decode_data(newer)


def test_pickle_signed_with_the_raw_key_still_loads():
    blob = legacy_signed_pickle(RAW_SIGNING, {"x": {1, 2}}, IDENT)
    codec = Codec(readable=[SignedPickleSerializer(SIGNING)])
    assert codec.decode_data(blob)[0] == {"x": {1, 2}}
    with pytest.raises(PickleSignatureError):
        Codec(readable=[SignedPickleSerializer(K2)]).decode_data(blob)


def test_new_pickles_are_signed_with_a_derived_key():
    serializer = SignedPickleSerializer(SIGNING)
    blob = Codec(serializer).encode_data({"x": (1, 2)}, IDENT)
    params = unpack(blob).layers[0]
    assert params["kdf"] == 1
    payload = unpack(blob).payload
    old_way = hmac.new(RAW_SIGNING, b"spark-ckpt signed pickle v1\x00" + IDENT.as_bytes() + b"\x00" + payload,
                       hashlib.sha256).hexdigest()
    assert params["sig"] != old_way
    assert Codec(readable=[SignedPickleSerializer(SIGNING)]).decode_data(blob)[0] == {"x": (1, 2)}
    # a signature moved between the two formats is refused
    for forged in ({"name": "pickle", "sig": params["sig"]}, {"name": "pickle", "kdf": 1, "sig": old_way}):
        with pytest.raises(PickleSignatureError):
            Codec(readable=[serializer]).decode_data(pack(Envelope([forged], IDENT, payload)))


def test_index_tag_made_with_the_old_subkey_is_still_accepted():
    codec = encrypted_codec()
    header = record().header()
    old = attrs.evolve(header, tag=legacy_tag(RAW1, header))
    codec.index_tags.check(old)  # accepted for reading
    assert not codec.index_tags.is_current(old)
    new = attrs.evolve(header, tag=codec.index_tags.tag(header))
    assert new.tag != old.tag and codec.index_tags.is_current(new)
    codec.index_tags.check(new)
    with pytest.raises(TamperedCheckpointError):
        codec.index_tags.check(attrs.evolve(old, status="running"))
    with pytest.raises(TamperedCheckpointError):
        encrypted_codec(k1=K2).index_tags.check(old)


# -- rekey upgrades them ---------------------------------------------------------------------------------
def test_old_formats_are_not_current_and_rekey_upgrades_them():
    """Under the same key k1: old envelopes, old pickles and old index tags are rewritten the new way."""
    codec = Codec(keyring=Keyring({"k1": K1}), readable=[SignedPickleSerializer(SIGNING)])
    backend = MemoryBackend()
    first, last = record(1, "running"), record(2)
    for rec in (first, last):
        identity = Identity(rec.graph_id, rec.execution_id, rec.seq)
        blob = legacy_encrypted(RAW1, to_data(rec), identity)
        assert not codec.is_current(blob)
        header = rec.header(size=len(blob))
        backend.put(attrs.evolve(header, tag=legacy_tag(RAW1, header)), blob)
    assert not codec.index_tags.is_current(backend.execution_head(IDENT.execution_id))

    assert rekey_backend(backend, codec) == 2
    for header in backend.list():
        blob = backend.get(header.checkpoint_id).blob
        assert codec.is_current(blob) and unpack(blob).layers[-1]["kdf"] == 1
    assert codec.decode(backend.get("c-2").blob, GraphCheckpoint, IDENT) == last
    head = backend.execution_head(IDENT.execution_id)
    assert codec.index_tags.is_current(head)
    codec.index_tags.check(head)
    assert rekey_backend(backend, codec) == 0  # nothing left to upgrade


def test_old_signed_pickle_is_not_current_even_inside_a_current_cipher():
    """A pickle signed the old way, encrypted the new way under the active key: rekey re-signs it."""
    serializer = SignedPickleSerializer(SIGNING)
    codec = Codec(serializer, keyring=Keyring({"k1": K1}))
    assert codec.is_current(codec.encode_data({"x": 1}, IDENT))
    old = unpack(legacy_signed_pickle(RAW_SIGNING, {"x": 1}, IDENT))
    sealed, params = codec.encryption.encode(old.payload, IDENT, preceding=old.layers)
    blob = pack(Envelope([*old.layers, {"name": "aes256gcm", **params}], IDENT, sealed))
    assert codec.decode_data(blob)[0] == {"x": 1}
    assert not codec.is_current(blob)
    backend = MemoryBackend()
    header = CheckpointHeader("c-1", IDENT.graph_id, IDENT.execution_id, IDENT.seq, 1.0, size=len(blob))
    backend.put(attrs.evolve(header, tag=codec.index_tags.tag(header)), blob)
    assert rekey_backend(backend, codec) == 1
    assert unpack(backend.get("c-1").blob).layers[0]["kdf"] == 1


# -- the key check value -----------------------------------------------------------------------------------
def test_key_check_value_differs_per_checkpoint_and_is_not_the_old_one():
    """Same key, same content, same identity: each envelope has its own salt and kcv, none of them
    the precomputable HMAC of a constant."""
    codec = encrypted_codec()
    entries = [unpack(codec.encode(record(), IDENT)).layers[-1] for _ in range(20)]
    assert len({entry["kcs"] for entry in entries}) == 20
    assert len({entry["kcv"] for entry in entries}) == 20
    static = hmac.new(RAW1, b"spark-ckpt key check v1", hashlib.sha256).hexdigest()
    assert all(entry["kcv"] not in static for entry in entries)
    assert all(len(entry["kcv"]) == 8 for entry in entries)


def test_wrong_key_is_still_told_apart_from_tampering():
    blob = encrypted_codec().encode(record(), IDENT)
    with pytest.raises(WrongKeyError, match="'k1'"):
        encrypted_codec(k1=K2).decode_data(blob)
    rotated = Codec(keyring=Keyring({"k1": K2, "k2": K1}, "k1"))
    assert not rotated.is_current(encrypted_codec(k1=K1).encode(record(), IDENT))  # same id, other key
    envelope = unpack(blob)
    for kcs in ("zz" * 8, "00", 7):
        edited = pack(Envelope([envelope.layers[0], {**envelope.layers[1], "kcs": kcs}], IDENT, envelope.payload))
        with pytest.raises(TamperedCheckpointError):
            encrypted_codec().decode_data(edited)
    resalted = pack(Envelope([envelope.layers[0], {**envelope.layers[1], "kcs": "00" * 8}], IDENT, envelope.payload))
    with pytest.raises(WrongKeyError):
        encrypted_codec().decode_data(resalted)


def test_subkeys_are_independent_per_purpose():
    """One helper, one label per purpose: four different keys, none equal to the configured one."""
    from spark_ckpt.codec import kdf

    labels = [kdf.ENCRYPTION, kdf.INDEX_TAG, kdf.KEY_CHECK, kdf.PICKLE_SIGNING]
    subkeys = [kdf.derive(RAW1, label) for label in labels]
    assert len(set(subkeys)) == 4 and RAW1 not in subkeys and all(len(k) == 32 for k in subkeys)
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    expected = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=kdf.ENCRYPTION).derive(RAW1)
    assert subkeys[0] == expected
    keyring = Keyring({"k1": K1})
    assert keyring.subkey("k1", kdf.ENCRYPTION) == expected


def test_import_spark_ckpt_does_not_import_cryptography():
    import subprocess
    import sys

    code = "import sys, spark_ckpt; from spark_ckpt import CheckpointConfig; print('cryptography' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
