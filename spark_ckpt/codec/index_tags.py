"""Authentication of the executions index: a MAC over an execution's head, under a subkey.

With encryption on, each put carries ``tag = key id + ":" + HMAC(subkey, head)`` over (graph,
execution, seq, status, kind); the backend keeps it with the execution's head only. A store holder
without the key can then neither lower an execution's head nor mark a finished one unfinished (each
would need a tag for a head that was never written). It cannot stop a rollback to a head and tag
that really were written, nor a whole store restored from an older backup: that needs the store's
own protection (see the README's "Rollback").

The subkey is derived from the encryption key with HKDF-SHA256 and a label of its own (``kdf``), so
a tag never reveals anything usable against the data's encryption. Tags written before that (subkey =
HMAC-SHA256 of a label under the key) are still accepted on reading; tags are always written the new
way, and ``rekey`` re-tags heads that carry an old one. Both have the same form (``kid:mac``), so a
check tries the current subkey first and the old one second.
"""

from __future__ import annotations

import hashlib
import hmac

import orjson

from ..errors import TamperedCheckpointError
from ..model import CheckpointHeader
from . import kdf
from .crypto import Keyring

_LEGACY_SUBKEY_LABEL = b"spark-ckpt executions index tag v1"
_TAG_SIZE = 16


def _legacy_subkey(keyring: Keyring, kid: str) -> bytes:
    return hmac.new(keyring.key(kid), _LEGACY_SUBKEY_LABEL, hashlib.sha256).digest()


def _mac(subkey: bytes, header: CheckpointHeader) -> bytes:
    message = orjson.dumps([header.graph_id, header.execution_id, header.seq, header.status, header.kind])
    return hmac.new(subkey, message, hashlib.sha256).digest()[:_TAG_SIZE]


class IndexTagger:
    """Tags heads under the active key and checks them under any configured one (subkeys cached)."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._legacy: dict[str, bytes] = {}

    @property
    def enabled(self) -> bool:
        return self.keyring.active is not None

    def _subkey(self, kid: str) -> bytes:
        return self.keyring.subkey(kid, kdf.INDEX_TAG)

    def _legacy_subkey(self, kid: str) -> bytes:
        subkey = self._legacy.get(kid)
        if subkey is None:
            subkey = self._legacy[kid] = _legacy_subkey(self.keyring, kid)
        return subkey

    def tag(self, header: CheckpointHeader) -> bytes | None:
        kid = self.keyring.active
        if kid is None:
            return None
        return kid.encode() + b":" + _mac(self._subkey(kid), header)

    def is_current(self, head: CheckpointHeader) -> bool:
        """True when ``head``'s tag is what ``tag`` writes now (the active key, the current subkey)."""
        kid = self.keyring.active
        if kid is None or not head.tag:
            return False
        tagged_kid, _, mac = head.tag.partition(b":")
        return tagged_kid == kid.encode() and hmac.compare_digest(mac, _mac(self._subkey(kid), head))

    def check(self, head: CheckpointHeader) -> None:
        """Raise ``TamperedCheckpointError`` unless ``head`` carries a valid tag (no-op without keys)."""
        if not self.keyring:
            return
        where = f"the executions index entry of execution {head.execution_id} (seq {head.seq}, {head.status})"
        if not head.tag or b":" not in head.tag:
            raise TamperedCheckpointError(
                f"{where} carries no authentication tag while encryption is on: it was altered, or written "
                "by a spark-ckpt without index tags (then `spark-ckpt rekey` tags it). Nothing was run; or "
                "continue from a checkpoint you choose with continue_from_checkpoint(<id>)"
            )
        kid, _, mac = head.tag.partition(b":")
        key_id = kid.decode(errors="replace")
        if not (
            hmac.compare_digest(mac, _mac(self._subkey(key_id), head))
            or hmac.compare_digest(mac, _mac(self._legacy_subkey(key_id), head))  # tagged before kdf
        ):
            raise TamperedCheckpointError(
                f"{where} does not authenticate under key {kid.decode(errors='replace')!r}: it was altered "
                "(an execution's head lowered, or its status changed). Nothing was run; restore the store "
                "from a backup, or continue from a checkpoint you choose with continue_from_checkpoint(<id>)"
            )
