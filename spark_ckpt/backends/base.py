"""The storage contract every checkpoint backend implements.

A backend stores opaque, already-encoded checkpoint bytes together with a ``CheckpointHeader``
(ids, sequence, time, size, status) that it may index. It never sees Spark objects and never
decodes a blob. ``spark_ckpt.testing.conformance`` checks every rule written here; a backend is
done when it passes that suite.

Rules:

* ``put`` is atomic: a reader sees either the whole checkpoint or nothing; it never replaces an
  existing checkpoint. Storing a second checkpoint with the same ``(execution_id, seq)`` raises
  ``DuplicateCheckpointError`` and leaves the first intact. Ids are unique in the store; an id of the
  derived shape ``ck-<execution_id>-<seq>`` (``model.canonical_checkpoint_id``) may be refused
  (``BackendError``) anywhere but at that position, so a store can find such ids by position. A
  store may also refuse a ``seq`` past 2**31 - 1 (spark-ckpt numbers checkpoints from 0).
* The built-in backends check rows both ways (``spark_ckpt.backends.rows``; a plugin backend should
  too): ``put`` refuses (``BackendError``) a header whose fields have the wrong type or range (ids
  not strings, a seq below 0 or not an int, a time that is not a finite number, an unknown status or
  kind, a size below 0), and a header or head read back that fails the same check raises
  ``CorruptIndexError`` naming it (the store was changed outside spark-ckpt), as do stored bytes
  that are not bytes.
* ``list`` returns headers newest first: by ``created_at``, then ``seq``, then ``checkpoint_id``,
  descending (``newest_first``), so every backend orders ties alike.
* The executions index (``spark_ckpt.backends.heads``): each execution's *head* is the header of
  the highest seq ever stored in it, with the ``tag`` the writer gave (kept only there). ``put``
  advances it in the same write; ``delete`` never moves it back. ``execution_head`` returns it, and
  ``executions`` returns the heads of the executions that still have a stored checkpoint, so an
  execution whose final checkpoint was deleted stays completed. A put under a lease into an
  execution whose head is completed raises ``ExecutionCompletedError``; one whose seq is not after
  the head raises ``DuplicateCheckpointError``. A store that writes its index after the checkpoint
  may lag by that one write, never lead.
* Leases: ``acquire_lease`` grants an execution to one owner at a time. A lease that expired may
  be taken by another owner, and then its fencing ``token`` grows. ``renew_lease`` only extends the
  token it is given while it is still the current one (``LeaseError`` otherwise): a stalled worker
  never gets the execution back by renewing. ``put(..., lease=...)`` refuses to write
  (``LeaseError``) unless that exact token is still the execution's current one.
* ``start_execution`` takes a new execution's lease and stores its first checkpoint under it; the
  default does the two calls, a backend that can do both in one transaction overrides it.
* The sync methods are the core; the ``a*`` twins default to running them in a worker thread.
  Local backends override them to call straight through; remote ones give real async versions.
  No backend-wide lock on the async path.

Every backend also has the guide's methods (``list_checkpoints``, ``get_checkpoint``,
``delete_checkpoint`` and their ``a*`` twins, from ``checkpoint_api``), built on the contract above,
and refuses constructor arguments it does not take with a ``ConfigError`` (not a ``TypeError``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Iterable, Sequence

from ..errors import ConfigError
from ..masking import mask_urls
from ..model import CheckpointHeader, Lease, StoredCheckpoint


def newest_first(header: CheckpointHeader) -> tuple[float, int, str]:
    """Sort key (with ``reverse=True``) of the listing order every backend uses."""
    return header.created_at, header.seq, header.checkpoint_id


def _checked_arguments(cls: type, init: Any) -> Any:
    """``init`` refusing arguments it cannot take with a ``ConfigError`` that lists what it takes."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            signature.bind(self, *args, **kwargs)
        except TypeError as exc:
            accepted = ", ".join(
                p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
                for p in list(signature.parameters.values())[1:]
                if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
            )
            raise ConfigError(f"{cls.__name__}(...): {exc}; it takes: {accepted or 'no arguments'}") from None
        init(self, *args, **kwargs)

    __init__._checks_arguments = True  # type: ignore[attr-defined]
    return __init__


class Backend(ABC):
    """Abstract base for checkpoint stores. Subclasses set ``name`` and ``url_schemes``.

    A backend object can be given to ``CheckpointConfig(backend=...)`` (or ``checkpointed(...,
    backend=...)``) instead of a name or URL; whoever created it closes it (a wrapped graph or agent
    closes only the backends it opened itself from a name or URL).
    """

    #: short name used in ``CheckpointConfig(backend=...)``
    name: ClassVar[str] = ""
    #: URL schemes this backend accepts, e.g. ``("sqlite",)``
    url_schemes: ClassVar[tuple[str, ...]] = ()
    #: True when data survives the process (used by recovery to refuse a pointless in-memory restore)
    durable: ClassVar[bool] = True
    #: a blob at least this large may be given to ``put``/``start_execution`` as ``model.BlobParts``,
    #: which the backend writes part after part (None: always ``bytes``)
    takes_blob_parts: ClassVar[int | None] = None
    #: a backend that also takes ``model.ValuePart`` parts (values at least this large; in ``put``,
    #: ``start_execution`` and ``replace``) stores each value once by its digest and gives the whole
    #: bytes back on ``get`` (None: never given any)
    takes_values: ClassVar[int | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if ({"put", "start_execution"} & cls.__dict__.keys()) and "takes_blob_parts" not in cls.__dict__:
            cls.takes_blob_parts = None  # a subclass writing its own way gets bytes unless it says otherwise
        if ({"put", "start_execution", "get", "replace"} & cls.__dict__.keys()) and "takes_values" not in cls.__dict__:
            cls.takes_values = None
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_checks_arguments", False):
            cls.__init__ = _checked_arguments(cls, init)  # type: ignore[method-assign]

    # -- codec choices (the guide's ``format=`` / ``compression=`` constructor arguments) ----------------
    #: serializer / compression this object was built with (``codec_choices``), applied by a config that
    #: leaves its own at their defaults; None: no choice
    serializer_choice: str | None = None
    compression_choice: str | None = None

    def bind_codec(self, codec: Any) -> None:
        """Decode with ``codec`` in ``get_checkpoint`` (a wrapped graph or agent binds its own when it
        opens this backend; the last one bound wins)."""
        self._bound_codec = codec

    # -- the guide's API (sync results are also awaitable; see ``checkpoint_api``) ---------------------
    def list_checkpoints(
        self, graph_id: str | None = None, execution_id: str | None = None, limit: int | None = None
    ) -> Any:
        """Headers of the stored checkpoints (of ``graph_id`` / ``execution_id``), newest first, at most
        ``limit``. Also awaitable: ``await backend.list_checkpoints(graph_id=..., limit=10)``."""
        from .checkpoint_api import listed

        return listed(self.list(**_filters(graph_id, execution_id, limit)))

    def get_checkpoint(self, checkpoint_id: Any) -> Any:
        """The checkpoint with this id decoded and made whole: a ``GraphCheckpoint`` (with its whole
        history), or for an agent's record an ``AgentRecord`` whose ``state_full`` is the agent's state
        at that record. Decoded with the codec of the config this object was last used with (or
        ``CheckpointConfig().make_codec()``: keys from the environment). Also awaitable.
        ``CheckpointNotFoundError`` for an unknown id."""
        from .checkpoint_api import read_checkpoint

        return read_checkpoint(self, checkpoint_id)

    def delete_checkpoint(self, checkpoint_id: Any, *, force: bool = False) -> Any:
        """Delete one checkpoint; True if it existed (``CheckpointNotFoundError`` if it never did).
        Refused (``CheckpointInUseError``) while recovery still needs it: any checkpoint of an unfinished
        execution, or an agent record its newest state is built on; ``force=True`` deletes anyway. A later
        record of the same finished execution that holds only changes since this one is first made to
        stand alone. Also awaitable (``await`` gives a bool)."""
        from .checkpoint_api import delete_one

        return delete_one(self, checkpoint_id, force=force)

    async def alist_checkpoints(
        self, graph_id: str | None = None, execution_id: str | None = None, limit: int | None = None
    ) -> list[Any]:
        """``list_checkpoints`` through the backend's async path."""
        return await self.alist(**_filters(graph_id, execution_id, limit))

    async def aget_checkpoint(self, checkpoint_id: Any) -> Any:
        """``get_checkpoint`` through the backend's async path."""
        from .checkpoint_api import aread_checkpoint

        return await aread_checkpoint(self, checkpoint_id)

    async def adelete_checkpoint(self, checkpoint_id: Any, *, force: bool = False) -> bool:
        """``delete_checkpoint`` through the backend's async path."""
        from .checkpoint_api import adelete_one

        return await adelete_one(self, checkpoint_id, force=force)

    # -- factory -------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def from_url(cls, url: str, **options: object) -> "Backend":
        """Build the backend from a URL (``scheme://...``) or, for ``path=`` configs, a bare path."""

    # -- checkpoints ---------------------------------------------------------------------------
    @abstractmethod
    def put(self, header: CheckpointHeader, blob: bytes, *, lease: Lease | None = None) -> None:
        """Store one checkpoint atomically (see the module rules)."""

    @abstractmethod
    def get(self, checkpoint_id: str) -> StoredCheckpoint:
        """Return one checkpoint; raise ``CheckpointNotFoundError`` if there is none with that id."""

    @abstractmethod
    def list(
        self,
        *,
        graph_id: str | None = None,
        execution_id: str | None = None,
        limit: int | None = None,
    ) -> list[CheckpointHeader]:
        """Headers matching the filters, newest first, at most ``limit``."""

    @abstractmethod
    def executions(
        self, *, graph_id: str | None = None, unfinished_only: bool = False, limit: int | None = None
    ) -> list[CheckpointHeader]:
        """The newest header of each execution (optionally only running/failed ones), newest first."""

    def tail(self, execution_id: str, count: int) -> list[CheckpointHeader]:
        """The headers of the ``count`` highest seqs of ``execution_id``, highest first (what a recovery
        continuing from the newest record's frontier reads). This one lists the whole execution: a
        backend that keeps an execution in seq order overrides it to read only those."""
        return sorted(self.list(execution_id=execution_id), key=lambda h: h.seq, reverse=True)[:count]

    @abstractmethod
    def delete(self, checkpoint_ids: Iterable[str]) -> int:
        """Delete these checkpoints; return how many existed. Unknown ids are ignored. Execution heads
        are not changed."""

    @abstractmethod
    def execution_head(self, execution_id: str) -> CheckpointHeader | None:
        """The header of the highest seq ever stored in this execution, with its ``tag``, even if that
        checkpoint was deleted since; None for an execution this store never held."""

    def replace(self, header: CheckpointHeader, blob: bytes) -> None:
        """Atomically swap the bytes of an existing checkpoint for an equivalent re-encoding.

        Only key rotation (``spark_ckpt.codec.rekey``) and retention (making a kept record stand alone)
        call this, with the checkpoint's own header (``size`` updated) and bytes that decode to the
        same content. Readers see the old bytes or the new ones, never a mix or nothing;
        ``CheckpointNotFoundError`` if the checkpoint is gone. A header with a ``tag``, at the seq of
        its execution's head, also replaces the head's tag (key rotation re-tags the index).
        Optional: the default raises ``NotImplementedError`` and rekey reports it.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support replace()")

    def scrub(self) -> None:
        """Leave no copy of deleted or replaced checkpoint bytes where the store keeps old data of its
        own (SQLite: its write-ahead log). Key rotation and pruning call it once they are done, so
        plaintext a key rotation replaced is gone from disk. The default has nothing to do."""

    # -- leases --------------------------------------------------------------------------------
    @abstractmethod
    def acquire_lease(self, execution_id: str, owner: str, ttl_s: float) -> Lease:
        """Grant (or renew, for the same owner) the execution's lease; ``LeaseError`` if held by another."""

    @abstractmethod
    def renew_lease(self, lease: Lease, ttl_s: float) -> Lease:
        """Extend ``lease`` (same token) for ``ttl_s`` from now, only while it is still the execution's
        current lease; ``LeaseError`` once another owner took it or it was released."""

    @abstractmethod
    def release_lease(self, lease: Lease) -> None:
        """Give the lease up (no-op if it was already taken over)."""

    def check_header(self, header: CheckpointHeader) -> None:
        """Raise ``BackendError`` if this store cannot hold ``header`` as given (checked by ``put``
        before it writes anything; a store that indexes another one asks it first)."""

    def start_execution(self, header: CheckpointHeader, blob: bytes, owner: str, ttl_s: float) -> Lease:
        """Acquire the lease of ``header.execution_id`` for ``owner`` and ``put`` the execution's first
        checkpoint under it; returns the lease. Override to do both in one transaction."""
        lease = self.acquire_lease(header.execution_id, owner, ttl_s)
        try:
            self.put(header, blob, lease=lease)
        except BaseException:
            self.release_lease(lease)
            raise
        return lease

    # -- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        """Release connections and files."""

    def describe(self) -> str:
        """What this store is, for messages and listings: never a password (see ``spark_ckpt.masking``)."""
        return self.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {mask_urls(self.describe())}>"

    # -- async twins (override for real async I/O) ----------------------------------------------
    async def aput(self, header: CheckpointHeader, blob: bytes, *, lease: Lease | None = None) -> None:
        await asyncio.to_thread(self.put, header, blob, lease=lease)

    async def aget(self, checkpoint_id: str) -> StoredCheckpoint:
        return await asyncio.to_thread(self.get, checkpoint_id)

    async def alist(
        self, *, graph_id: str | None = None, execution_id: str | None = None, limit: int | None = None
    ) -> list[CheckpointHeader]:
        return await asyncio.to_thread(self.list, graph_id=graph_id, execution_id=execution_id, limit=limit)

    async def aexecutions(
        self, *, graph_id: str | None = None, unfinished_only: bool = False, limit: int | None = None
    ) -> list[CheckpointHeader]:
        return await asyncio.to_thread(
            self.executions, graph_id=graph_id, unfinished_only=unfinished_only, limit=limit
        )

    async def atail(self, execution_id: str, count: int) -> list[CheckpointHeader]:
        return await asyncio.to_thread(self.tail, execution_id, count)

    async def adelete(self, checkpoint_ids: Sequence[str]) -> int:
        return await asyncio.to_thread(self.delete, list(checkpoint_ids))

    async def aacquire_lease(self, execution_id: str, owner: str, ttl_s: float) -> Lease:
        return await asyncio.to_thread(self.acquire_lease, execution_id, owner, ttl_s)

    async def arenew_lease(self, lease: Lease, ttl_s: float) -> Lease:
        return await asyncio.to_thread(self.renew_lease, lease, ttl_s)

    async def aexecution_head(self, execution_id: str) -> CheckpointHeader | None:
        return await asyncio.to_thread(self.execution_head, execution_id)

    async def arelease_lease(self, lease: Lease) -> None:
        await asyncio.to_thread(self.release_lease, lease)

    async def astart_execution(self, header: CheckpointHeader, blob: bytes, owner: str, ttl_s: float) -> Lease:
        return await asyncio.to_thread(self.start_execution, header, blob, owner, ttl_s)


def _filters(graph_id: Any, execution_id: Any, limit: Any) -> dict[str, Any]:
    for name, value in (("graph_id", graph_id), ("execution_id", execution_id)):
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"list_checkpoints({name}=...) takes a string, got {type(value).__name__}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ConfigError(f"list_checkpoints(limit=...) takes a non-negative integer or None, got {limit!r}")
    return {"graph_id": graph_id, "execution_id": execution_id, "limit": limit}


class LocalBackend(Backend):
    """A backend whose calls are fast and local: the async twins call the sync methods directly.

    A thread hop costs ~50-100 us, several times a local SQLite commit; calling through keeps the
    per-checkpoint overhead close to the cost of the write itself.
    """

    async def aput(self, header: CheckpointHeader, blob: bytes, *, lease: Lease | None = None) -> None:
        self.put(header, blob, lease=lease)

    async def aget(self, checkpoint_id: str) -> StoredCheckpoint:
        return self.get(checkpoint_id)

    async def alist(
        self, *, graph_id: str | None = None, execution_id: str | None = None, limit: int | None = None
    ) -> list[CheckpointHeader]:
        return self.list(graph_id=graph_id, execution_id=execution_id, limit=limit)

    async def aexecutions(
        self, *, graph_id: str | None = None, unfinished_only: bool = False, limit: int | None = None
    ) -> list[CheckpointHeader]:
        return self.executions(graph_id=graph_id, unfinished_only=unfinished_only, limit=limit)

    async def atail(self, execution_id: str, count: int) -> list[CheckpointHeader]:
        return self.tail(execution_id, count)

    async def adelete(self, checkpoint_ids: Sequence[str]) -> int:
        return self.delete(list(checkpoint_ids))

    async def aacquire_lease(self, execution_id: str, owner: str, ttl_s: float) -> Lease:
        return self.acquire_lease(execution_id, owner, ttl_s)

    async def arenew_lease(self, lease: Lease, ttl_s: float) -> Lease:
        return self.renew_lease(lease, ttl_s)

    async def aexecution_head(self, execution_id: str) -> CheckpointHeader | None:
        return self.execution_head(execution_id)

    async def arelease_lease(self, lease: Lease) -> None:
        self.release_lease(lease)

    async def astart_execution(self, header: CheckpointHeader, blob: bytes, owner: str, ttl_s: float) -> Lease:
        return self.start_execution(header, blob, owner, ttl_s)
