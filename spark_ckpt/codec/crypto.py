"""Authenticated encryption of checkpoint payloads: a keyring with key ids, and the AES-256-GCM layer.

The payload is ``nonce (12 bytes) | ciphertext | tag (16 bytes)``, with a fresh random nonce per
envelope, under a key derived from the configured one (``kdf``: HKDF-SHA256, its own label). The
associated data binds the ciphertext to the checkpoint's identity ``(graph_id, execution_id, seq)``
and to every layer entry up to and including this one, so copying a checkpoint to another execution
or position, or editing the clear-text layer list (e.g. the compression parameters), fails
authentication.

The layer entry is ``{"name": "aes256gcm", "kid": <key id>, "kdf": 1, "kcs": <8 random bytes, hex>,
"kcv": <4 bytes, hex>}``. Entries without ``"kdf"`` were written before derived keys: the configured
key is the AES key, and ``kcv`` is an HMAC of a constant under it; they are still read, and
``Codec.is_current`` reports them as not current so ``spark-ckpt rekey`` rewrites them.

The key check value (``kcv``) lets a reader say "key k1 is not the k1 that wrote this"
(``WrongKeyError``) instead of reporting a bare authentication failure. It is an HMAC, under a
subkey of its own, of ``kcs``, a random salt drawn for each checkpoint, truncated to 32 bits.

* What it protects: the kcv differs for every checkpoint, even under one key, so no table of
  precomputed kcvs (of weak, default or leaked keys) matches it, and checkpoints or stores that share
  a key cannot be linked by comparing kcvs (the pre-``kdf`` kcv was the same everywhere for a key).
* What it does not: anyone holding a stored checkpoint can test a guessed key offline, with the
  kcv as with the AES-GCM tag (one HKDF and one HMAC or AES per guess); a 32-bit kcv alone also
  passes about one wrong guess in 4 billion. Only the key's own randomness protects it, which is
  why trivially weak keys are refused (``spark_ckpt.keys``). The kcv is not authentication: a
  forged one only changes which error is raised; the AES-GCM tag decides what is trusted.

Keys come from ``CheckpointConfig(encryption_keys={"k1": key, ...}, active_key="k1")`` or from the
environment: ``SPARK_CKPT_KEYS="k1:<base64>,k2:<base64>"`` and ``SPARK_CKPT_ACTIVE_KEY="k2"``, all
read by ``spark_ckpt.keys``. Rotation: add a key and make it active; checkpoints written under older
keys stay readable as long as those keys are configured; ``rekey_backend`` re-encrypts them under the
active key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Any, Mapping

import orjson

from ..errors import InvalidKeyError, MissingKeyError, TamperedCheckpointError, WrongKeyError
from ..keys import (
    ACTIVE_KEY_ENV, KEY_SIZE, KEYS_ENV, Secret, check_key_id, parse_keys, refuse_shared_signing_key,
)
from . import kdf
from .envelope import ENVELOPE_VERSION, Identity

NONCE_SIZE = 12
TAG_SIZE = 16
KCS_SIZE = 8
KCV_SIZE = 4
_LEGACY_KCV_LABEL = b"spark-ckpt key check v1"
_AAD_LABEL = b"spark-ckpt aead v1\x00"


def new_key() -> str:
    """A fresh random 256-bit key as base64 text (the form ``SPARK_CKPT_KEYS`` takes)."""
    return base64.b64encode(os.urandom(KEY_SIZE)).decode()


def key_check_value(key: bytes) -> str:
    """The key check value of envelopes written before derived keys (an HMAC of a constant): reading only."""
    return hmac.new(key, _LEGACY_KCV_LABEL, hashlib.sha256).hexdigest()[:16]


class Keyring:
    """Encryption keys by id, one of them active (used for every new checkpoint), and their subkeys."""

    def __init__(
        self, keys: Mapping[str, bytes | str | Secret] | str | None = None, active: str | None = None,
        *, origin: str = "encryption_keys",
    ) -> None:
        self._keys = {kid: secret.reveal() for kid, secret in parse_keys(keys, origin=origin).items()}
        self._subkeys: dict[tuple[str, bytes], bytes] = {}
        if active is None and len(self._keys) == 1:
            active = next(iter(self._keys))
        if active is not None:
            check_key_id(active, what="active encryption key id")
            if active not in self._keys:
                raise InvalidKeyError(
                    f"active encryption key {active!r} is not among the configured keys "
                    f"({', '.join(sorted(self._keys)) or 'none'}); add it to encryption_keys / {KEYS_ENV}"
                )
        if active is None and self._keys:
            raise InvalidKeyError(
                f"{len(self._keys)} encryption keys are configured but none is active: set active_key= "
                f"(or {ACTIVE_KEY_ENV}) to the id new checkpoints should be encrypted with"
            )
        self.active = active

    @classmethod
    def parse(cls, spec: str, active: str | None = None, *, origin: str = KEYS_ENV) -> "Keyring":
        """From the env form ``"k1:<base64>,k2:<base64>"``."""
        return cls(spec, active.strip() if active else None, origin=origin)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Keyring":
        """From ``SPARK_CKPT_KEYS`` / ``SPARK_CKPT_ACTIVE_KEY``; empty when they are not set."""
        environ = os.environ if environ is None else environ
        spec = environ.get(KEYS_ENV, "").strip()
        if not spec:
            return cls()
        return cls.parse(spec, environ.get(ACTIVE_KEY_ENV) or None)

    @property
    def ids(self) -> list[str]:
        return sorted(self._keys)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __repr__(self) -> str:  # never the key material
        return f"Keyring(ids={self.ids!r}, active={self.active!r})"

    def key(self, kid: str) -> bytes:
        """The configured key itself: only for reading what was written before derived keys."""
        try:
            return self._keys[kid]
        except (KeyError, TypeError):
            configured = ", ".join(self.ids) or "none configured"
            raise MissingKeyError(
                f"checkpoint is encrypted with key id {kid!r}, which is not configured here "
                f"(configured: {configured}); add that key to encryption_keys or {KEYS_ENV} "
                "(old keys must stay configured until `spark-ckpt rekey` has re-encrypted everything)"
            ) from None

    def subkey(self, kid: str, label: bytes) -> bytes:
        """The subkey of key ``kid`` for the purpose ``label`` (``kdf``), derived once."""
        subkey = self._subkeys.get((kid, label))
        if subkey is None:
            subkey = self._subkeys[(kid, label)] = kdf.derive(self.key(kid), label)
        return subkey

    def key_check(self, kid: str, salt: bytes) -> str:
        """The key check value of key ``kid`` for one checkpoint's ``salt`` (hex)."""
        return hmac.new(self.subkey(kid, kdf.KEY_CHECK), salt, hashlib.sha256).digest()[:KCV_SIZE].hex()

    def check_value(self, kid: str) -> str:
        """The legacy key check value of ``kid`` (envelopes without ``kdf``)."""
        return key_check_value(self.key(kid))

    def refuse_signing_key(self, signing_key: bytes) -> None:
        """``InvalidKeyError`` if ``signing_key`` is one of these encryption keys."""
        refuse_shared_signing_key(signing_key, self._keys)


def associated_data(identity: Identity, layers: list[dict[str, Any]]) -> bytes:
    """What the ciphertext is bound to: envelope version, identity, the layer chain up to the cipher."""
    try:
        chain = orjson.dumps(layers, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        raise TamperedCheckpointError("checkpoint layer list cannot be authenticated (malformed)") from None
    return _AAD_LABEL + bytes([ENVELOPE_VERSION]) + identity.as_bytes() + b"\x00" + chain


def _salt(kcs: Any) -> bytes | None:
    if not isinstance(kcs, str) or len(kcs) != 2 * KCS_SIZE:
        return None
    try:
        return bytes.fromhex(kcs)
    except ValueError:
        return None


class AesGcmTransform:
    """AES-256-GCM encryption under the keyring's active key; decrypts under any configured key."""

    name = "aes256gcm"
    binds_layers = True

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._ciphers: dict[tuple[str, int | None], Any] = {}

    def _cipher(self, kid: str, kdf_version: int | None):
        cipher = self._ciphers.get((kid, kdf_version))
        if cipher is None:
            # imported here so `import spark_ckpt` stays fast when encryption is unused
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            key = self.keyring.subkey(kid, kdf.ENCRYPTION) if kdf_version else self.keyring.key(kid)
            cipher = self._ciphers[(kid, kdf_version)] = AESGCM(key)
        return cipher

    def layer_entry(self) -> dict[str, Any]:
        """A fresh layer entry for the active key (its own key check salt)."""
        kid = self.keyring.active
        if kid is None:
            raise MissingKeyError(f"no active encryption key to encrypt with; configure encryption_keys or {KEYS_ENV}")
        salt = os.urandom(KCS_SIZE)
        return {"name": self.name, "kid": kid, "kdf": kdf.KDF_VERSION, "kcs": salt.hex(),
                "kcv": self.keyring.key_check(kid, salt)}

    def encode(
        self, payload: bytes, identity: Identity, *, preceding: list[dict[str, Any]] = ()
    ) -> tuple[bytes, dict[str, Any]]:
        entry = self.layer_entry()
        nonce = os.urandom(NONCE_SIZE)
        aad = associated_data(identity, [*preceding, entry])
        sealed = self._cipher(entry["kid"], kdf.KDF_VERSION).encrypt(nonce, payload, aad)
        return nonce + sealed, {key: value for key, value in entry.items() if key != "name"}

    def key_matches(self, kid: str, params: dict[str, Any]) -> bool:
        """Whether the key configured as ``kid`` is the one whose check value ``params`` records."""
        if kdf.version_of(params, self.name) is None:
            return params.get("kcv") == self.keyring.check_value(kid)
        salt, kcv = _salt(params.get("kcs")), params.get("kcv")
        if salt is None:
            raise TamperedCheckpointError(
                "encrypted checkpoint has no valid key check salt (kcs) in its header; it was altered"
            )
        # compare as bytes: compare_digest refuses non-ASCII str, and the header is attacker-controlled
        expected = self.keyring.key_check(kid, salt).encode()
        return isinstance(kcv, str) and hmac.compare_digest(kcv.encode("utf-8", "replace"), expected)

    def entry_is_current(self, params: dict[str, Any]) -> bool:
        """True when ``params`` is a layer entry this transform would write now: the active key, derived
        keys, and the key material configured as the active id (``rekey`` skips those)."""
        kid = self.keyring.active
        return (
            kid is not None and params.get("kid") == kid and kdf.is_current(params)
            and self.key_matches(kid, params)
        )

    def decode(
        self, payload: bytes, params: dict[str, Any], identity: Identity, *, preceding: list[dict[str, Any]] = ()
    ) -> bytes:
        kid = params.get("kid")
        if not isinstance(kid, str):
            raise TamperedCheckpointError("encrypted checkpoint has no valid key id in its header; it was altered")
        self.keyring.key(kid)  # MissingKeyError names what to configure
        kdf_version = kdf.version_of(params, self.name)
        if not self.key_matches(kid, params):
            raise WrongKeyError(
                f"checkpoint was encrypted with a different key than the {kid!r} configured here "
                f"(key check value mismatch); configure the original key material for {kid!r} "
                "(key ids must never be reused for new key material)"
            )
        if len(payload) < NONCE_SIZE + TAG_SIZE:
            raise TamperedCheckpointError(
                f"encrypted payload is {len(payload)} bytes, shorter than nonce + tag: it was altered; "
                "use an earlier checkpoint"
            )
        from cryptography.exceptions import InvalidTag

        aad = associated_data(identity, [*preceding, {"name": self.name, **params}])
        try:
            return self._cipher(kid, kdf_version).decrypt(payload[:NONCE_SIZE], payload[NONCE_SIZE:], aad)
        except InvalidTag:
            raise TamperedCheckpointError(
                f"checkpoint failed authentication under key {kid!r}: its ciphertext, nonce, tag, layer "
                f"list or identity {identity.graph_id}/{identity.execution_id}/#{identity.seq} was altered "
                "or copied from elsewhere; do not trust it, use an earlier checkpoint"
            ) from None
