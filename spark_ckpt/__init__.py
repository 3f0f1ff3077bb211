"""spark-ckpt: checkpoint and crash recovery for Spark graphs and agents.

    from spark_ckpt import checkpointed, CheckpointConfig, checkpoint_now

Spark itself is imported lazily (it takes ~1 s), so ``import spark_ckpt`` and the CLI stay fast.
"""

from __future__ import annotations

from typing import Any

from .config import CheckpointConfig
from .errors import (  # noqa: F401  (re-exported: the whole error hierarchy)
    SparkCkptError,
    ConfigError,
    UnknownBackendError,
    BackendError,
    CheckpointNotFoundError,
    CheckpointInUseError,
    DuplicateCheckpointError,
    GraphMismatchError,
    CodecError,
    EncodeError,
    UntrustedTypeError,
    CorruptCheckpointError,
    CorruptIndexError,
    UnsupportedFormatError,
    NotACheckpointError,
    ChecksumMismatchError,
    TruncatedCheckpointError,
    TamperedCheckpointError,
    CheckpointSwappedError,
    DecompressionLimitError,
    EncryptionKeyError,
    MissingKeyError,
    WrongKeyError,
    PlaintextRefusedError,
    PickleRefusedError,
    UnsignedPickleError,
    PickleSignatureError,
    InvalidKeyError,
    RekeyError,
    NothingToRecoverError,
    UnrecoverableExecutionError,
    MissingCheckpointError,
    RecoveryDivergedError,
    LeaseError,
    ExecutionCompletedError,
    PluginError,
    RunStopped,
    BudgetExceededError,
    UnsafeToRetryError,
    RestoreConflictError,
    ExecutionExistsError,
)
from .markers import hookimpl

__version__ = "0.1.0"

__all__ = [
    "checkpointed", "checkpoint_now", "CheckpointConfig", "hookimpl", "open_backend",
    "CheckpointedGraph", "CheckpointedAgent", "not_safe_to_rerun", "allow_types", "recover_orphans",
    "SparkCkptError", "ConfigError", "UnknownBackendError", "BackendError", "CheckpointNotFoundError", "CheckpointInUseError", "DuplicateCheckpointError", "GraphMismatchError", "CodecError", "EncodeError", "UntrustedTypeError", "CorruptCheckpointError", "CorruptIndexError", "UnsupportedFormatError", "NotACheckpointError", "ChecksumMismatchError", "TruncatedCheckpointError", "TamperedCheckpointError", "CheckpointSwappedError", "DecompressionLimitError", "EncryptionKeyError", "MissingKeyError", "WrongKeyError", "PlaintextRefusedError", "PickleRefusedError", "UnsignedPickleError", "PickleSignatureError", "InvalidKeyError", "RekeyError", "NothingToRecoverError", "UnrecoverableExecutionError", "MissingCheckpointError", "RecoveryDivergedError", "LeaseError", "ExecutionCompletedError", "PluginError", "RunStopped", "BudgetExceededError", "UnsafeToRetryError", "RestoreConflictError", "ExecutionExistsError",
]


def checkpointed(target: Any = None, /, *, config: CheckpointConfig | None = None, **kwargs: Any) -> Any:
    """Wrap a Spark ``Graph`` (-> ``CheckpointedGraph``) or ``Agent`` (-> ``CheckpointedAgent``).

    Also a decorator for a factory: ``@checkpointed(config=cfg, graph_id="etl")`` over a function
    that returns a graph or agent wraps whatever the factory returns on each call.

    ``backend=`` (a backend object such as ``SQLiteBackend(db_path=...)``, a name or a URL) replaces the
    config's backend. A backend object stays open when the wrapper is closed: its creator closes it.
    """
    if target is None or (callable(target) and not _is_spark_object(target)):
        def decorate(factory: Any) -> Any:
            import functools

            @functools.wraps(factory)
            def build(*args: Any, **kw: Any) -> Any:
                return checkpointed(factory(*args, **kw), config=config, **kwargs)

            return build

        return decorate(target) if target is not None else decorate

    from spark.agents import Agent

    if isinstance(target, Agent):
        from .adapters.agent import CheckpointedAgent

        return CheckpointedAgent(target, config=config, **kwargs)
    from .adapters.graph import CheckpointedGraph

    return CheckpointedGraph(target, config=config, **kwargs)


def _is_spark_object(obj: Any) -> bool:
    module = type(obj).__module__ or ""
    return module.startswith("spark.") and not isinstance(obj, type)


async def checkpoint_now(reason: str = "explicit") -> str:
    """From inside a node's ``process()``: checkpoint at the end of the current superstep.

    Returns the id the checkpoint will have. Raises ``SparkCkptError`` outside a checkpointed run.
    """
    from .adapters.graph import request_checkpoint

    return await request_checkpoint(reason)


def open_backend(url: str, **options: Any) -> Any:
    """Open a backend by URL or name, e.g. ``open_backend("sqlite:///runs.db")``."""
    from .config import open_backend as _open

    return _open(url, **options)


def __getattr__(name: str) -> Any:
    if name == "CheckpointedGraph":
        from .adapters.graph import CheckpointedGraph

        return CheckpointedGraph
    if name == "not_safe_to_rerun":
        from .adapters.agent_calls import not_safe_to_rerun

        return not_safe_to_rerun
    if name == "allow_types":
        from .codec.values import allow_types

        return allow_types
    if name == "recover_orphans":
        from .orphans import recover_orphans

        return recover_orphans
    if name == "CheckpointedAgent":
        from .adapters.agent import CheckpointedAgent

        return CheckpointedAgent
    raise AttributeError(f"module 'spark_ckpt' has no attribute {name!r}")
