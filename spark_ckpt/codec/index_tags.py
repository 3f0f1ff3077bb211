"""Authentication of the executions index: a MAC over an execution's head, under a subkey.

With encryption on, each put carries ``tag = key id + ":" + HMAC(subkey, head)`` over (graph,
execution, seq, status, kind); the backend keeps it with the execution's head only. A store holder
without the key can then neither lower an execution's head nor mark a finished one unfinished (each
would need a tag for a head that was never written). It cannot stop a rollback to a head and tag
that really were written, nor a whole store restored from an older backup: that needs the store's
own protection (see the README's "Rollback").

The subkey is derived from the encryption key with a label of its own (HMAC-SHA256 as the KDF), so
a tag never reveals anything usable against the data's encryption.
"""

from __future__ import annotations

import hashlib
import hmac

import orjson

from ..errors import TamperedCheckpointError
from ..model import CheckpointHeader
from .crypto import Keyring

_SUBKEY_LABEL = b"spark-ckpt executions index tag v1"
_TAG_SIZE = 16


def _subkey(keyring: Keyring, kid: str) -> bytes:
    return hmac.new(keyring.key(kid), _SUBKEY_LABEL, hashlib.sha256).digest()


def _mac(subkey: bytes, header: CheckpointHeader) -> bytes:
    message = orjson.dumps([header.graph_id, header.execution_id, header.seq, header.status, header.kind])
    return hmac.new(subkey, message, hashlib.sha256).digest()[:_TAG_SIZE]


class IndexTagger:
    """Tags heads under the active key and checks them under any configured one (subkeys cached)."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._subkeys: dict[str, bytes] = {}

    @property
    def enabled(self) -> bool:
        return self.keyring.active is not None

    def _subkey(self, kid: str) -> bytes:
        subkey = self._subkeys.get(kid)
        if subkey is None:
            subkey = self._subkeys[kid] = _subkey(self.keyring, kid)
        return subkey

    def tag(self, header: CheckpointHeader) -> bytes | None:
        kid = self.keyring.active
        if kid is None:
            return None
        return kid.encode() + b":" + _mac(self._subkey(kid), header)

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
        subkey = self._subkey(kid.decode(errors="replace"))
        if not hmac.compare_digest(mac, _mac(subkey, head)):
            raise TamperedCheckpointError(
                f"{where} does not authenticate under key {kid.decode(errors='replace')!r}: it was altered "
                "(an execution's head lowered, or its status changed). Nothing was run; restore the store "
                "from a backup, or continue from a checkpoint you choose with continue_from_checkpoint(<id>)"
            )
