"""Key configuration: weak keys refused, one parser for every key source, keys never shown."""

from __future__ import annotations

import base64
import copy
import io
import os
import pickle

import attrs
import pytest

from spark_ckpt.cli import main
from spark_ckpt.codec import Codec, Identity, Keyring, SignedPickleSerializer, new_key
from spark_ckpt.config import CheckpointConfig
from spark_ckpt.errors import ConfigError, InvalidKeyError, SparkCkptError
from spark_ckpt.keys import Secret, parse_key, parse_keys, weak_key_reason

K1, K2, K3 = new_key(), new_key(), new_key()
RAW = os.urandom(32)

WEAK = {
    "all zero": bytes(32),
    "constant": b"k" * 32,
    "two values": bytes([0, 255] * 16),
    "short pattern": b"0123456789abcdef" * 2,
    "period 3": (b"abc" * 11)[:32],
    "few distinct values": bytes([1, 2, 3, 4, 5, 6, 7]) * 4 + b"\x08\x09\x0a\x01",
    "counting": bytes(range(32)),
    "counting down": bytes(range(200, 168, -1)),
}


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def assert_not_echoed(error: BaseException, *secrets: str | bytes) -> None:
    text = str(error)
    for secret in secrets:
        if isinstance(secret, bytes):
            assert secret.hex() not in text and b64(secret) not in text and repr(secret) not in text
        else:
            assert secret not in text


# -- weak keys -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw", list(WEAK.values()), ids=list(WEAK))
def test_weak_encryption_keys_are_refused_with_how_to_generate_one(raw, no_env_config):
    """All-zero, constant, few-valued, patterned or counting keys: InvalidKeyError (a ConfigError)
    naming the problem and new_key(), never a character of the key, from every source."""
    for form in (raw, b64(raw), raw.hex()):
        for build in (
            lambda: CheckpointConfig(backend="memory", encryption_keys={"k1": form}),
            lambda: Keyring({"k1": form}),
        ):
            with pytest.raises(InvalidKeyError, match="weak") as info:
                build()
            assert isinstance(info.value, ConfigError)
            assert "new_key()" in str(info.value) and "'k1'" in str(info.value)
            assert_not_echoed(info.value, raw, form if isinstance(form, str) else raw)
    with pytest.raises(InvalidKeyError, match="weak"):
        Keyring.parse(f"k1:{b64(raw)}")


@pytest.mark.parametrize("raw", list(WEAK.values()), ids=list(WEAK))
def test_weak_pickle_signing_keys_are_refused(raw, no_env_config):
    longer = raw + raw  # a signing key may be longer than 32 bytes: still weak
    for key in (raw, b64(raw), longer):
        with pytest.raises(InvalidKeyError, match="weak") as info:
            CheckpointConfig(backend="memory", pickle_signing_key=key)
        assert "new_key()" in str(info.value) and "pickle signing key" in str(info.value)
        assert_not_echoed(info.value, raw)
        with pytest.raises(InvalidKeyError, match="weak"):
            SignedPickleSerializer(key)


def test_random_keys_are_accepted():
    """The checks never refuse a random key (a thousand of them here)."""
    for _ in range(1000):
        assert weak_key_reason(os.urandom(32)) is None
    assert parse_key(new_key()) and parse_key(os.urandom(64), exact=False)


def test_pickle_signing_key_equal_to_an_encryption_key_is_refused(monkeypatch, no_env_config):
    """Explicitly configured, or with the encryption key from SPARK_CKPT_KEYS, in any form."""
    raw = base64.b64decode(K1)
    for form in (K1, raw, raw.hex()):
        with pytest.raises(InvalidKeyError, match="same key as encryption key 'k1'") as info:
            CheckpointConfig(backend="memory", encryption_keys={"k0": K2, "k1": K1}, active_key="k0",
                             pickle_signing_key=form)
        assert_not_echoed(info.value, raw, K1)
    monkeypatch.setenv("SPARK_CKPT_KEYS", f"env1:{K1}")
    config = CheckpointConfig(backend="memory", serializer="pickle", pickle_signing_key=raw)
    with pytest.raises(InvalidKeyError, match="same key as encryption key 'env1'"):
        config.make_codec()
    with pytest.raises(InvalidKeyError, match="same key"):
        Codec(SignedPickleSerializer(K1), keyring=Keyring({"k1": K1}))
    monkeypatch.setenv("SPARK_CKPT_KEYS", f"env1:{K2}")
    assert config.make_codec().encrypts  # a separate signing key is fine


# -- one parser ----------------------------------------------------------------------------------------
def test_every_key_source_accepts_the_same_forms(monkeypatch, no_env_config):
    """A mapping, the env text form (in the config too), SPARK_CKPT_KEYS and --keys-env read one key alike."""
    identity = Identity("g", "e", 1)
    blob = Codec(keyring=Keyring({"k1": RAW})).encode_data({"x": 1}, identity)
    readers = [
        Keyring({"k1": b64(RAW)}),
        Keyring({"k1": RAW.hex()}),
        Keyring({"k1": Secret(RAW)}),
        Keyring.parse(f"k1:{base64.urlsafe_b64encode(RAW).decode()}"),
        Keyring(f" k1 : {b64(RAW)} ,"),
    ]
    for keyring in readers:
        assert Codec(keyring=keyring).decode_data(blob)[0] == {"x": 1}
    config = CheckpointConfig(backend="memory", encryption_keys=f"k1:{b64(RAW)}")
    assert config.make_codec().decode_data(blob)[0] == {"x": 1}
    monkeypatch.setenv("SPARK_CKPT_KEYS", f"k1:{RAW.hex()}")
    assert CheckpointConfig(backend="memory").make_codec().decode_data(blob)[0] == {"x": 1}


def test_duplicate_key_id_is_refused_by_every_parser(monkeypatch, tmp_path, capsys, no_env_config):
    """SPARK_CKPT_KEYS, the config's text form and the CLI's --keys-env all refuse one id listed twice
    (the CLI used to keep the last one silently)."""
    spec = f"k1:{K1},k2:{K2}, k1:{K3}"
    for parse in (
        lambda: Keyring.parse(spec),
        lambda: CheckpointConfig(backend="memory", encryption_keys=spec),
        lambda: parse_keys(spec, origin="MY_KEYS"),
    ):
        with pytest.raises(InvalidKeyError, match="'k1' twice") as info:
            parse()
        assert "entries 1 and 3" in str(info.value)
        assert_not_echoed(info.value, K1, K2, K3)
    monkeypatch.setenv("SPARK_CKPT_KEYS", spec)
    with pytest.raises(InvalidKeyError, match="twice"):
        CheckpointConfig(backend="memory").make_codec()

    monkeypatch.delenv("SPARK_CKPT_KEYS")
    monkeypatch.setenv("MY_KEYS", spec)
    store = tmp_path / "s.db"
    from spark_ckpt.config import open_backend

    open_backend(f"sqlite:///{store}").close()
    code = main(["--store", f"sqlite:///{store}", "--keys-env", "MY_KEYS", "verify"], out=io.StringIO())
    err = capsys.readouterr().err
    assert code == 2 and "MY_KEYS lists key id 'k1' twice" in err
    assert K1 not in err and K3 not in err


@pytest.mark.parametrize(
    "entry, named",
    [
        ("k2{key}", False),  # the ':' forgotten: no id part at all
        ("k 2:{key}", False),  # a malformed id may be pasted key material
        ("{key}:{key}", False),
        ("k2:{key}!!", True),  # the id is fine, the key is not base64
        ("k2:abc", True),  # too short
    ],
)
def test_malformed_keys_entry_names_its_position_never_its_characters(entry, named, monkeypatch, no_env_config):
    """A bad SPARK_CKPT_KEYS entry is named "entry 2" (and by key id when the id is well-formed);
    not one of its characters is echoed (the old message showed the first three)."""
    text = entry.format(key=K2)
    monkeypatch.setenv("SPARK_CKPT_KEYS", f"k1:{K1},{text}")
    with pytest.raises(InvalidKeyError) as info:
        CheckpointConfig(backend="memory").make_codec()
    message = str(info.value)
    assert "SPARK_CKPT_KEYS entry 2" in message
    assert ("'k2'" in message) is named
    assert_not_echoed(info.value, K1, K2, text, text[:3])
    if not named:
        assert "k2" not in message and "k 2" not in message


def test_invalid_active_key_ids_and_mapping_ids_are_not_echoed(no_env_config):
    """A malformed key id (perhaps a key pasted in the wrong place) is refused without being shown."""
    with pytest.raises(InvalidKeyError, match="active encryption key id is invalid") as info:
        Keyring({"k1": K1}, active=K2)
    assert_not_echoed(info.value, K2)
    with pytest.raises(InvalidKeyError, match="invalid key id") as info:
        CheckpointConfig(backend="memory", encryption_keys={K2: K1})
    assert_not_echoed(info.value, K1, K2)
    with pytest.raises(InvalidKeyError, match="mapping"):
        Keyring(42)  # type: ignore[arg-type]


def test_cli_active_key_goes_through_the_same_checks(monkeypatch, tmp_path, capsys, no_env_config):
    from spark_ckpt.config import open_backend

    store = tmp_path / "s.db"
    open_backend(f"sqlite:///{store}").close()
    monkeypatch.setenv("MY_KEYS", f"k1:{K1},k2:{K2}")
    code = main(["--store", f"sqlite:///{store}", "--keys-env", "MY_KEYS", "--active-key", "k3", "rekey"],
                out=io.StringIO())
    err = capsys.readouterr().err
    assert code == 2 and "'k3' is not among the configured keys" in err and K1 not in err


# -- keys never shown ----------------------------------------------------------------------------------
def test_asdict_and_repr_of_a_config_hold_no_key_material(no_env_config):
    """attrs.asdict(config), repr(config) and str() of both show '***' for every key, in any form given."""
    raw = os.urandom(32)
    for keys, signing in (({"k1": K1, "k2": raw}, K3), ({"k1": raw.hex()}, os.urandom(48))):
        config = CheckpointConfig(backend="memory", encryption_keys=keys, active_key="k1", pickle_signing_key=signing)
        shown = [repr(config), str(config), repr(attrs.asdict(config)), str(attrs.asdict(config)),
                 repr(attrs.astuple(config))]
        for text in shown:
            for key in [*keys.values(), signing]:
                raw_key = parse_key(key, exact=False)
                for form in (raw_key.hex(), b64(raw_key), repr(raw_key)[2:-1]):
                    assert form not in text
            assert "***" in text
        dumped = attrs.asdict(config)
        assert sorted(dumped["encryption_keys"]) == sorted(keys)
        assert all(str(value) == "***" for value in dumped["encryption_keys"].values())
        assert str(dumped["pickle_signing_key"]) == "***"


def test_config_keys_stay_usable(no_env_config):
    """config.encryption_keys is still a mapping of key ids the codec reads; a config survives
    evolve, copy, pickle and a rebuild from its own asdict."""
    config = CheckpointConfig(backend="memory", encryption_keys={"k1": K1}, pickle_signing_key=K2)
    assert list(config.encryption_keys) == ["k1"] and "k1" in config.encryption_keys
    assert config.encryption_keys["k1"] == Secret(base64.b64decode(K1))
    identity = Identity("g", "e", 1)
    blob = config.make_codec().encode_data({"x": 1}, identity)
    again = [
        attrs.evolve(config, compression="gzip"), copy.deepcopy(config), pickle.loads(pickle.dumps(config)),
        CheckpointConfig(**attrs.asdict(config, recurse=False)),
        CheckpointConfig(backend="memory", encryption_keys=config.encryption_keys,
                         pickle_signing_key=config.pickle_signing_key),
    ]
    for other in again:
        assert other == config or other.compression == "gzip"
        assert other.make_codec().decode_data(blob)[0] == {"x": 1}
    config.encryption_keys = {"k1": K3}  # assignment goes through the parser too
    assert isinstance(config.encryption_keys["k1"], Secret)
    with pytest.raises(InvalidKeyError):
        config.encryption_keys = {"k1": bytes(32)}


def test_key_errors_are_spark_errors():
    with pytest.raises(SparkCkptError):
        parse_keys("k1")
