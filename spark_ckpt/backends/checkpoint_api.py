"""The guide's checkpoint methods on every backend object: ``list_checkpoints``, ``get_checkpoint`` and
``delete_checkpoint`` (``Backend`` calls these), usable with and without ``await``.

* The sync methods return values that are also awaitable (``CheckpointList``, ``Deleted``, and the
  records themselves: ``model.AwaitableValue``), so ``await backend.list_checkpoints(...)`` from the
  guide works as written; the ``a*`` twins go through the backend's async path instead.
* A checkpoint is read the way the CLI and recovery read it: a graph record decoded against the
  position it is stored at and made whole (``engine.records.RecordReader``), an agent record decoded
  and its state resolved along its delta chain (``adapters.agent_records.AgentRecords``). The codec is
  the one the backend was last bound to (``Backend.bind_codec``: a wrapped graph or agent binds its own),
  else ``CheckpointConfig().make_codec()``.
* Deleting follows retention's rule (``retention.protected_ids``): nothing recovery may still read goes,
  that is no checkpoint of an unfinished execution, nor an agent record its newest state is built on
  (``AgentRecords.needed_ids``). A later record of the same finished execution that holds only what
  changed since the doomed one is first made to stand alone (``engine.records.rebase``), as pruning does.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..errors import CheckpointInUseError, ConfigError
from ..model import AGENT, GRAPH, CheckpointHeader, StoredCheckpoint


class CheckpointList(list):
    """Checkpoint headers, newest first; ``await`` gives the same list."""

    def __await__(self):
        return self
        yield  # (unreachable: makes this a generator)


class Deleted(int):
    """Whether ``delete_checkpoint`` deleted something: true or false like a bool (``if``, ``==``),
    and ``await`` gives the bool itself."""

    def __new__(cls, deleted: bool) -> "Deleted":
        return super().__new__(cls, bool(deleted))

    def __repr__(self) -> str:
        return repr(bool(self))

    __str__ = __repr__

    def __await__(self):
        return bool(self)
        yield  # (unreachable: makes this a generator)


def listed(headers: list[CheckpointHeader]) -> CheckpointList:
    return CheckpointList(headers)


def _checkpoint_id(value: Any) -> str:
    """An id, or a record (``GraphCheckpoint``, ``AgentRecord``, header) whose id it is."""
    checkpoint_id = value if isinstance(value, str) else getattr(value, "checkpoint_id", None)
    if not isinstance(checkpoint_id, str) or not checkpoint_id:
        raise ConfigError(
            f"expected a checkpoint id (a string, e.g. from list_checkpoints()), got {type(value).__name__}"
        )
    return checkpoint_id


def codec_of(backend: Any) -> Any:
    codec = getattr(backend, "_bound_codec", None)
    if codec is None:
        from ..config import CheckpointConfig

        codec = backend._bound_codec = CheckpointConfig().make_codec()
    return codec


class _AgentOwner:
    """What ``AgentRecords`` reads from its agent, without an agent: the store, the codec, the id."""

    def __init__(self, backend: Any, codec: Any, agent_id: str) -> None:
        from ..config import CheckpointConfig

        self.backend, self.codec, self.agent_id = backend, codec, agent_id
        self.config = CheckpointConfig()  # (its durability only: these records are never written)


def _agent_records(backend: Any, codec: Any, agent_id: str) -> Any:
    from ..adapters.agent_records import AgentRecords

    return AgentRecords(_AgentOwner(backend, codec, agent_id))


def _decoded(backend: Any, codec: Any, stored: StoredCheckpoint) -> Any:
    """The stored checkpoint decoded and made whole (see the module docstring)."""
    import attrs

    header = stored.header
    if header.kind == AGENT:
        records = _agent_records(backend, codec, header.graph_id)
        record = records.decode(stored)
        state = records.resolve_state(record)
        return attrs.evolve(record, state_full=state, state_delta=None) if state is not None else record
    from ..engine.records import RecordReader

    reader = RecordReader(backend, codec)
    reader.load(header, stored)
    return reader.whole(header)


def read_checkpoint(backend: Any, checkpoint_id: Any) -> Any:
    stored = backend.get(_checkpoint_id(checkpoint_id))
    return _decoded(backend, codec_of(backend), stored)


async def aread_checkpoint(backend: Any, checkpoint_id: Any) -> Any:
    from .base import LocalBackend

    stored = await backend.aget(_checkpoint_id(checkpoint_id))
    codec = codec_of(backend)
    if isinstance(backend, LocalBackend):
        return _decoded(backend, codec, stored)
    # making a record whole may read earlier ones: off the event loop for a remote store
    return await asyncio.to_thread(_decoded, backend, codec, stored)


def _refuse_if_needed(backend: Any, header: CheckpointHeader) -> None:
    """Raise ``CheckpointInUseError`` if recovery or a kept record needs ``header``'s checkpoint;
    make the next record of its execution stand alone if it is built on it."""
    where = f"checkpoint {header.checkpoint_id} (graph {header.graph_id}, execution {header.execution_id}, seq {header.seq})"
    head = backend.execution_head(header.execution_id)
    if head is not None and head.unfinished:
        raise CheckpointInUseError(
            f"{where} was not deleted: its execution is {head.status}, and recovering it reads every "
            "checkpoint it stored. Recover or finish that execution first, or pass force=True to delete "
            "it anyway (the execution can then no longer be recovered)"
        )
    codec = codec_of(backend)
    if header.kind == AGENT:
        if header.checkpoint_id in _agent_records(backend, codec, header.graph_id).needed_ids():
            raise CheckpointInUseError(
                f"{where} was not deleted: agent {header.graph_id!r}'s newest state is built on it (later "
                "records hold only what changed since). Pass force=True to delete it anyway"
            )
    elif header.kind == GRAPH:
        _keep_later_records_whole(backend, codec, header, where)


def _keep_later_records_whole(backend: Any, codec: Any, header: CheckpointHeader, where: str) -> None:
    from ..engine.records import RecordReader, rebase

    later = sorted((h for h in backend.list(execution_id=header.execution_id)
                    if h.kind == GRAPH and h.seq > header.seq), key=lambda h: h.seq)
    if not later:
        return
    reader = RecordReader(backend, codec)
    refused = CheckpointInUseError(
        f"{where} was not deleted: a later checkpoint of its execution is built on it and could not be "
        "made to stand alone (unreadable here, or a store without replace()). Pass force=True to delete "
        "it anyway (those later checkpoints then cannot be read whole)"
    )
    if any(reader.load(h).base_seq == header.seq for h in later):
        raise refused
    keep_from = rebase(backend, codec, later[0])
    if keep_from is None or keep_from <= header.seq:
        raise refused


def delete_one(backend: Any, checkpoint_id: Any, *, force: bool = False) -> Deleted:
    checkpoint_id = _checkpoint_id(checkpoint_id)
    header = backend.get(checkpoint_id).header  # CheckpointNotFoundError for an unknown id
    if not force:
        _refuse_if_needed(backend, header)
    return Deleted(backend.delete([checkpoint_id]) > 0)


async def adelete_one(backend: Any, checkpoint_id: Any, *, force: bool = False) -> bool:
    from .base import LocalBackend

    checkpoint_id = _checkpoint_id(checkpoint_id)
    header = (await backend.aget(checkpoint_id)).header
    if not force:
        if isinstance(backend, LocalBackend):
            _refuse_if_needed(backend, header)
        else:
            await asyncio.to_thread(_refuse_if_needed, backend, header)
    return await backend.adelete([checkpoint_id]) > 0
