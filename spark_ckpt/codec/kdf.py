"""Subkeys: every key spark-ckpt uses is derived from configured key material, one per purpose.

``derive(material, label)`` is HKDF-SHA256 (RFC 5869, no salt: the material is a uniformly random
key) with ``label`` as the info string. Each purpose has its own label, so the AES-GCM key, the
executions index MAC key, the key check value key and the pickle signing key are independent: what
one of them reveals or is used for tells nothing about the others, nor about the configured key.

Envelopes, signed pickles and index tags written before derived keys existed used the configured
key directly (or an HMAC of a constant under it); their readers keep that path for reading only,
and mark what they write with ``KDF_VERSION`` (``"kdf": 1`` in the layer entry).
"""

from __future__ import annotations

from typing import Any

from ..errors import UnsupportedFormatError

KDF_VERSION = 1
ENCRYPTION = b"spark-ckpt/kdf1/aes-256-gcm"
INDEX_TAG = b"spark-ckpt/kdf1/executions-index-tag"
KEY_CHECK = b"spark-ckpt/kdf1/key-check-value"
PICKLE_SIGNING = b"spark-ckpt/kdf1/pickle-signing"
SUBKEY_SIZE = 32


def derive(material: bytes, label: bytes, size: int = SUBKEY_SIZE) -> bytes:
    """The ``size``-byte subkey of ``material`` for the purpose ``label`` (HKDF-SHA256)."""
    # imported here so `import spark_ckpt` stays fast when no key is configured
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=size, salt=None, info=label).derive(material)


def version_of(params: dict[str, Any], layer: str) -> int | None:
    """The ``kdf`` a layer entry records: None when written before derived keys, else ``KDF_VERSION``.

    Any other value is refused (a newer spark-ckpt wrote it; or it was altered, which the layer's
    own authentication would catch).
    """
    if "kdf" not in params:
        return None
    kdf = params["kdf"]
    if type(kdf) is not int or kdf != KDF_VERSION:
        raise UnsupportedFormatError(
            f"checkpoint's {layer} layer uses key derivation {kdf!r}, which this spark-ckpt does not know "
            f"(it knows {KDF_VERSION}); upgrade spark-ckpt to read it"
        )
    return kdf


def is_current(params: dict[str, Any]) -> bool:
    """True when a layer entry says its keys were derived the way this version derives them."""
    kdf = params.get("kdf")
    return type(kdf) is int and kdf == KDF_VERSION
