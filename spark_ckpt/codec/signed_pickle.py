"""Pickle, only by explicit opt-in and only signed.

``pickle.loads`` runs arbitrary code, so a pickled checkpoint is unpickled only after its
HMAC-SHA256 signature verified under the configured signing key. The signature covers the
checkpoint identity too, so a signed pickle copied to another execution or position is refused.
JSON remains the default and recommended format; this layer exists for state that JSON cannot
hold and is registered with a codec only when ``CheckpointConfig(serializer="pickle",
pickle_signing_key=...)`` (or just a signing key, to read old pickles) is configured.

The HMAC key is derived from the configured signing key with HKDF-SHA256 (``kdf``, a label of its
own), and the layer entry says so: ``{"name": "pickle", "kdf": 1, "sig": <hex>}``. A pickle signed
before that (no ``kdf``: the configured key itself was the HMAC key) is still verified that way on
reading, and ``Codec.is_current`` reports it as not current so ``spark-ckpt rekey`` re-signs it.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
from typing import Any

from ..errors import CorruptCheckpointError, EncodeError, PickleSignatureError, UnsignedPickleError
from ..keys import Secret, parse_key
from . import kdf
from .envelope import Identity

PICKLE_LAYER = "pickle"
_LABEL = b"spark-ckpt signed pickle v1\x00"
_MIN_KEY = 32


def refuse_unconfigured_pickle() -> UnsignedPickleError:
    """The error for a pickled checkpoint met by a codec with no signing key."""
    return UnsignedPickleError(
        "checkpoint is a pickle, and pickles are never loaded without verifying their signature: "
        "configure CheckpointConfig(pickle_signing_key=...) with the key that signed it, "
        "or do not load this checkpoint"
    )


class SignedPickleSerializer:
    """``pickle`` with an HMAC-SHA256 signature (over identity + payload) checked before loading."""

    name = PICKLE_LAYER

    def __init__(self, signing_key: bytes | str | Secret, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
        self._raw = parse_key(signing_key, name="pickle signing key", size=_MIN_KEY, exact=False)
        self._derived: bytes | None = None
        self.protocol = protocol

    def __repr__(self) -> str:  # never the key
        return "SignedPickleSerializer()"

    @property
    def signing_key(self) -> bytes:
        """The configured key (to check it is not also an encryption key)."""
        return self._raw

    def _sign(self, payload: bytes, identity: Identity, kdf_version: int | None = kdf.KDF_VERSION) -> str:
        if kdf_version is None:  # signed before derived keys: the configured key itself
            key = self._raw
        else:
            if self._derived is None:
                self._derived = kdf.derive(self._raw, kdf.PICKLE_SIGNING)
            key = self._derived
        return hmac.new(key, _LABEL + identity.as_bytes() + b"\x00" + payload, hashlib.sha256).hexdigest()

    def entry_is_current(self, params: dict[str, Any]) -> bool:
        """True when the layer entry ``params`` was signed the way this version signs."""
        return kdf.is_current(params)

    def encode(self, data: Any, identity: Identity) -> tuple[bytes, dict[str, Any]]:
        try:
            payload = pickle.dumps(data, protocol=self.protocol)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise EncodeError(f"cannot pickle checkpoint: {exc}") from None
        return payload, {"kdf": kdf.KDF_VERSION, "sig": self._sign(payload, identity)}

    def decode(self, payload: bytes, params: dict[str, Any], identity: Identity) -> Any:
        signature = params.get("sig")
        if not isinstance(signature, str) or not signature:
            raise UnsignedPickleError(
                "checkpoint is an unsigned pickle; it was refused without unpickling. Re-create it "
                "with a signing key configured, or do not load it"
            )
        expected = self._sign(payload, identity, kdf.version_of(params, PICKLE_LAYER))
        # compare as bytes: compare_digest refuses non-ASCII str, and the header is attacker-controlled
        if not hmac.compare_digest(signature.encode("utf-8", "replace"), expected.encode()):
            raise PickleSignatureError(
                "pickled checkpoint's signature does not match the configured pickle_signing_key "
                f"(for {identity.graph_id}/{identity.execution_id}/#{identity.seq}); it was refused without "
                "unpickling. Configure the key that signed it; if it is the right key, the checkpoint was altered"
            )
        try:
            return pickle.loads(payload)  # verified above: written by a holder of the signing key
        except Exception as exc:  # e.g. a class it references is not importable here
            raise CorruptCheckpointError(
                f"signed pickle could not be loaded: {exc!r}; every class it references must be importable"
            ) from None

    # plain Serializer protocol, for callers that do not pass an identity
    def dumps(self, data: Any) -> bytes:
        raise UnsignedPickleError("signed pickles are written through encode(data, identity) only")

    def loads(self, payload: bytes, params: dict[str, Any]) -> Any:
        raise refuse_unconfigured_pickle()
