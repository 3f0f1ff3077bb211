"""Key material from the configuration: one parser for every key source, weak keys refused.

Every key reaches spark-ckpt through ``parse_key`` (one key) or ``parse_keys`` (key ids -> keys):
``CheckpointConfig(encryption_keys=..., pickle_signing_key=...)``, ``SPARK_CKPT_KEYS`` /
``SPARK_CKPT_ACTIVE_KEY`` and the CLI's ``--keys-env NAME`` / ``--active-key``. So every source
accepts the same forms (raw bytes, base64 standard or URL-safe, hex text) and refuses the same
mistakes with an ``InvalidKeyError``: a wrong size, an invalid or duplicate key id, and a trivially
weak key (all bytes equal, few distinct byte values, a short repeating pattern or a counting
sequence). A truly random key is refused by those checks with a probability below 10^-25.

Messages name a key by its id, or by its position in a ``keyid:base64key,...`` list, and never
contain any character of the key material (nor of a malformed entry, which may hold a key).

Parsed keys are held in ``Secret``, whose repr and str are ``'***'``: a config printed, logged or
passed through ``attrs.asdict`` shows no key material; the codec takes the bytes out with ``reveal()``.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from .errors import InvalidKeyError

KEY_SIZE = 32
KEYS_ENV = "SPARK_CKPT_KEYS"
ACTIVE_KEY_ENV = "SPARK_CKPT_ACTIVE_KEY"
KEYGEN_HINT = (
    "generate a random key with spark_ckpt.codec.crypto.new_key(), e.g. "
    "python -c \"from spark_ckpt.codec.crypto import new_key; print(new_key())\""
)
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_KEY_ID_RULE = "use 1-64 characters from letters, digits, '.', '_', '-'"
# fewer distinct byte values than this in a key is refused: 32 random bytes have fewer with p < 1e-25
_MIN_DISTINCT = 12


class Secret:
    """Key bytes that never show: repr/str are ``'***'``. ``reveal()`` gives the bytes to the codec."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = bytes(value)

    def reveal(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return _same(self._value, other._value)

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> tuple[Any, ...]:  # (copy and pickle: a config crosses to worker processes)
        return (Secret, (self._value,))


def weak_key_reason(raw: bytes) -> str | None:
    """Why ``raw`` is a trivially weak key, or None. Catches typed or patterned "keys", not bad randomness."""
    if not raw.strip(b"\x00"):
        return "it is all zero bytes"
    if len(set(raw)) == 1:
        return "all its bytes are equal"
    if len(set(raw)) < _MIN_DISTINCT:
        return f"it has only {len(set(raw))} distinct byte values"
    for period in range(1, min(len(raw) // 2, 64) + 1):
        if raw[period:] == raw[:-period]:
            return f"it repeats a {period}-byte pattern"
    steps = {(b - a) % 256 for a, b in zip(raw, raw[1:])}
    if len(steps) == 1:
        return "it is a counting sequence"
    return None


def _same(a: bytes, b: bytes) -> bool:
    import hmac  # (here, not at the top: `import spark_ckpt` stays fast)

    return hmac.compare_digest(a, b)


def _decode_text(text: str) -> bytes | None:
    import base64
    import binascii

    # hex first: 64 hex digits are also valid base64, but of 48 bytes
    if re.fullmatch(r"(?:[0-9a-fA-F]{2})+", text) and len(text) >= 2 * KEY_SIZE:
        return bytes.fromhex(text)
    alphabet = "-_" if re.search(r"[-_]", text) else "+/"
    try:
        return base64.b64decode(text, altchars=alphabet.encode(), validate=True) or None
    except (binascii.Error, ValueError):
        return None


def parse_key(value: Any, *, name: str = "encryption key", size: int = KEY_SIZE, exact: bool = True) -> bytes:
    """Raw key bytes from a ``Secret``, raw bytes, base64 or hex text; ``name`` says which key in errors.

    Raises ``InvalidKeyError`` for a malformed, wrongly sized or trivially weak key; the message never
    contains the key material.
    """
    if isinstance(value, Secret):
        raw = value.reveal()
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
    elif isinstance(value, str):
        decoded = _decode_text(value.strip())
        if decoded is None:
            raise InvalidKeyError(f"{name} is not valid base64 or hex text; {KEYGEN_HINT}")
        raw = decoded
    else:
        raise InvalidKeyError(f"{name} must be bytes or base64/hex text, got {type(value).__name__}")
    if (exact and len(raw) != size) or len(raw) < size:
        need = f"exactly {size}" if exact else f"at least {size}"
        raise InvalidKeyError(f"{name} must be {need} bytes, got {len(raw)}; {KEYGEN_HINT}")
    reason = weak_key_reason(raw)
    if reason is not None:
        raise InvalidKeyError(f"{name} is refused as trivially weak ({reason}): use a random key; {KEYGEN_HINT}")
    return raw


def check_key_id(kid: Any, *, what: str = "encryption key id") -> str:
    """``kid`` if it is a well-formed key id, else ``InvalidKeyError`` (without echoing it: it may be a key)."""
    if not isinstance(kid, str) or not _KEY_ID.fullmatch(kid):
        raise InvalidKeyError(f"{what} is invalid: {_KEY_ID_RULE}")
    return kid


def parse_keys(keys: Any, *, origin: str = "encryption_keys") -> dict[str, Secret]:
    """Key id -> ``Secret`` from a mapping or from the ``"k1:<base64>,k2:<base64>"`` text form.

    ``origin`` names the source in errors (``encryption_keys``, ``SPARK_CKPT_KEYS``, a ``--keys-env``
    variable). A key id listed twice is refused.
    """
    if keys is None:
        return {}
    if isinstance(keys, str):
        return _parse_spec(keys, origin)
    if not isinstance(keys, Mapping):
        raise InvalidKeyError(
            f"{origin} must be a mapping of key id -> key (or 'keyid:base64key,...' text), "
            f"got {type(keys).__name__}"
        )
    parsed: dict[str, Secret] = {}
    for kid, value in keys.items():
        if not isinstance(kid, str) or not _KEY_ID.fullmatch(kid):
            raise InvalidKeyError(f"{origin} has an invalid key id (not shown): {_KEY_ID_RULE}")
        parsed[kid] = Secret(parse_key(value, name=f"encryption key {kid!r} in {origin}"))
    return parsed


def _parse_spec(spec: str, origin: str) -> dict[str, Secret]:
    parsed: dict[str, Secret] = {}
    where: dict[str, int] = {}
    for position, item in enumerate(spec.split(","), 1):
        item = item.strip()
        if not item:
            continue  # (a trailing comma, or a blank between two)
        kid, sep, value = item.partition(":")
        kid = kid.strip()
        entry = f"{origin} entry {position}"
        if not sep:
            raise InvalidKeyError(
                f"{entry} is not of the form 'keyid:base64key' (entries are separated by commas); "
                "it is not shown, as it may hold key material"
            )
        if not _KEY_ID.fullmatch(kid):
            raise InvalidKeyError(f"{entry} has an invalid key id (not shown): {_KEY_ID_RULE}")
        if kid in where:
            raise InvalidKeyError(
                f"{origin} lists key id {kid!r} twice (entries {where[kid]} and {position}); "
                "each key id must name one key"
            )
        where[kid] = position
        parsed[kid] = Secret(parse_key(value, name=f"{entry} (key id {kid!r})"))
    return parsed


def refuse_shared_signing_key(signing_key: bytes, keys: Mapping[str, bytes]) -> None:
    """A pickle signing key must not also be an encryption key: one leaked purpose would expose the other."""
    for kid, key in keys.items():
        if _same(signing_key, key):
            raise InvalidKeyError(
                f"pickle_signing_key is the same key as encryption key {kid!r}; use a separate random key "
                f"for signing pickles; {KEYGEN_HINT}"
            )
