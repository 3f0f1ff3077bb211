"""Authenticated encryption of checkpoint payloads: a keyring with key ids, and the AES-256-GCM layer.

Each encrypted envelope records, in its layer entry, the key id (``kid``) and a short key check
value (``kcv``, an HMAC of a constant under the key) so a reader can say "key k1 is not configured"
or "the k1 configured here is not the k1 that wrote this" instead of a bare authentication
failure. The payload is ``nonce (12 bytes) | ciphertext | tag (16 bytes)``, with a fresh random
nonce per envelope. The associated data binds the ciphertext to the checkpoint's identity
``(graph_id, execution_id, seq)`` and to every layer entry up to and including this one, so
copying a checkpoint to another execution or position, or editing the clear-text layer list
(e.g. the compression parameters), fails authentication.

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
    ACTIVE_KEY_ENV, KEY_SIZE, KEYS_ENV, Secret, check_key_id, parse_key, parse_keys, refuse_shared_signing_key,
)
from .envelope import ENVELOPE_VERSION, Identity

NONCE_SIZE = 12
TAG_SIZE = 16
_KCV_LABEL = b"spark-ckpt key check v1"
_AAD_LABEL = b"spark-ckpt aead v1\x00"


def new_key() -> str:
    """A fresh random 256-bit key as base64 text (the form ``SPARK_CKPT_KEYS`` takes)."""
    return base64.b64encode(os.urandom(KEY_SIZE)).decode()


def key_material(kid: str, value: bytes | bytearray | str | Secret, *, size: int = KEY_SIZE, exact: bool = True,
                 what: str = "encryption key") -> bytes:
    """Raw key bytes (``spark_ckpt.keys.parse_key``, naming the key ``what kid``)."""
    return parse_key(value, name=f"{what} {kid!r}", size=size, exact=exact)


def key_check_value(key: bytes) -> str:
    """A short public fingerprint of a key (HMAC of a constant), to name the wrong-key case."""
    return hmac.new(key, _KCV_LABEL, hashlib.sha256).hexdigest()[:16]


class Keyring:
    """Encryption keys by id, one of them active (used for every new checkpoint)."""

    def __init__(
        self, keys: Mapping[str, bytes | str | Secret] | str | None = None, active: str | None = None,
        *, origin: str = "encryption_keys",
    ) -> None:
        self._keys = {kid: secret.reveal() for kid, secret in parse_keys(keys, origin=origin).items()}
        self._checks = {kid: key_check_value(key) for kid, key in self._keys.items()}
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
        try:
            return self._keys[kid]
        except (KeyError, TypeError):
            configured = ", ".join(self.ids) or "none configured"
            raise MissingKeyError(
                f"checkpoint is encrypted with key id {kid!r}, which is not configured here "
                f"(configured: {configured}); add that key to encryption_keys or {KEYS_ENV} "
                "(old keys must stay configured until `spark-ckpt rekey` has re-encrypted everything)"
            ) from None

    def check_value(self, kid: str) -> str:
        self.key(kid)
        return self._checks[kid]

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


class AesGcmTransform:
    """AES-256-GCM encryption under the keyring's active key; decrypts under any configured key."""

    name = "aes256gcm"
    binds_layers = True

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._ciphers: dict[str, Any] = {}

    def _cipher(self, kid: str):
        cipher = self._ciphers.get(kid)
        if cipher is None:
            # imported here so `import spark_ckpt` stays fast when encryption is unused
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            cipher = self._ciphers[kid] = AESGCM(self.keyring.key(kid))
        return cipher

    def layer_entry(self) -> dict[str, Any]:
        kid = self.keyring.active
        if kid is None:
            raise MissingKeyError(f"no active encryption key to encrypt with; configure encryption_keys or {KEYS_ENV}")
        return {"name": self.name, "kid": kid, "kcv": self.keyring.check_value(kid)}

    def encode(
        self, payload: bytes, identity: Identity, *, preceding: list[dict[str, Any]] = ()
    ) -> tuple[bytes, dict[str, Any]]:
        entry = self.layer_entry()
        nonce = os.urandom(NONCE_SIZE)
        aad = associated_data(identity, [*preceding, entry])
        sealed = self._cipher(entry["kid"]).encrypt(nonce, payload, aad)
        return nonce + sealed, {key: value for key, value in entry.items() if key != "name"}

    def decode(
        self, payload: bytes, params: dict[str, Any], identity: Identity, *, preceding: list[dict[str, Any]] = ()
    ) -> bytes:
        kid = params.get("kid")
        if not isinstance(kid, str):
            raise TamperedCheckpointError("encrypted checkpoint has no valid key id in its header; it was altered")
        key_check = self.keyring.check_value(kid)  # MissingKeyError names what to configure
        if params.get("kcv") != key_check:
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
            return self._cipher(kid).decrypt(payload[:NONCE_SIZE], payload[NONCE_SIZE:], aad)
        except InvalidTag:
            raise TamperedCheckpointError(
                f"checkpoint failed authentication under key {kid!r}: its ciphertext, nonce, tag, layer "
                f"list or identity {identity.graph_id}/{identity.execution_id}/#{identity.seq} was altered "
                "or copied from elsewhere; do not trust it, use an earlier checkpoint"
            ) from None
