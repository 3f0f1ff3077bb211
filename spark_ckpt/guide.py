"""Spark's "Checkpointing and Recovery" guide, ported by changing its imports.

    from spark_ckpt.guide import Graph, CheckpointConfig, Agent, AgentConfig    # was: from spark.graphs ...
    from spark_ckpt.guide import FileBackend, SQLiteBackend                     # was: from spark.graphs.backends ...

``Graph(...)`` builds Spark's own ``Graph`` from the same arguments and returns it wrapped
(``CheckpointedGraph``): the guide's ``checkpoint_config=`` is spark-ckpt's ``CheckpointConfig`` and its
``state_backend=`` a spark-ckpt backend object, which checkpoints go to. ``Agent(config=...)`` builds
Spark's ``Agent`` wrapped (``CheckpointedAgent``); ``Agent.restore`` / ``Agent.load_checkpoint`` are
``CheckpointedAgent``'s. Everything else is spark-ckpt's ordinary API; the README's "Porting the guide"
lists, section by section, what behaves differently from the guide's text.

Spark is imported when a graph or agent is built, not when this module is.
"""

from __future__ import annotations

from typing import Any

from .config import CheckpointConfig, with_backend
from .errors import ConfigError
from .model import GraphCheckpoint

# also, imported on first use: AgentConfig (Spark's), MemoryBackend, FileBackend, SQLiteBackend,
# PostgreSQLBackend and S3Backend (the plugins')
__all__ = ["Agent", "CheckpointConfig", "Graph", "GraphCheckpoint"]


def _with_backend(config: CheckpointConfig | None, backend: Any) -> CheckpointConfig:
    if config is not None and not isinstance(config, CheckpointConfig):
        raise ConfigError(
            f"checkpoint_config must be spark_ckpt's CheckpointConfig, got {type(config).__module__}."
            f"{type(config).__qualname__}; import CheckpointConfig from spark_ckpt.guide (or spark_ckpt)"
        )
    return with_backend(config, backend)  # (a backend object replaces the config's path and options too)


class Graph:
    """``Graph(*edges, start=..., enable_graph_state=..., initial_state=..., checkpoint_config=...,
    state_backend=..., graph_id=..., **spark_kwargs)``: Spark's Graph, checkpointed (a
    ``CheckpointedGraph``). ``state_backend`` is where checkpoints go (a spark-ckpt backend object or
    name); a Spark graph-state backend (``spark.graphs.state_backend``) is passed on to Spark instead."""

    def __new__(cls, *edges: Any, checkpoint_config: CheckpointConfig | None = None, state_backend: Any = None,
                graph_id: str | None = None, **kwargs: Any) -> Any:
        from spark.graphs import Graph as SparkGraph

        from . import checkpointed
        from .backends.base import Backend

        if state_backend is not None and not isinstance(state_backend, (Backend, str)):
            kwargs["state_backend"], state_backend = state_backend, None  # Spark's own graph-state backend
        graph = SparkGraph(*edges, **kwargs)
        return checkpointed(graph, config=_with_backend(checkpoint_config, state_backend), graph_id=graph_id)

    @staticmethod
    def load_from_checkpoint(path: Any) -> Any:
        raise ConfigError(
            f"Graph.load_from_checkpoint({str(path)!r}): a checkpoint holds a graph's state, not its nodes (they are "
            "code). Build the graph as before, then call graph.load_from_checkpoint(path) on it"
        )


class Agent:
    """``Agent(config=AgentConfig(...), checkpoint_config=..., agent_id=...)``: Spark's Agent, checkpointed
    (a ``CheckpointedAgent``); ``Agent.restore(checkpoint, config)`` and ``Agent.load_checkpoint(path,
    config)`` build one from a snapshot as the guide does."""

    def __new__(cls, config: Any = None, *, checkpoint_config: CheckpointConfig | None = None,
                state_backend: Any = None, **kwargs: Any) -> Any:
        from spark.agents import Agent as SparkAgent

        from .adapters.agent import CheckpointedAgent

        wrapper_options = {k: kwargs.pop(k) for k in ("agent_id", "worker_id") if k in kwargs}
        agent = SparkAgent(config=config, **kwargs)
        return CheckpointedAgent(agent, config=_with_backend(checkpoint_config, state_backend), **wrapper_options)

    @staticmethod
    def restore(checkpoint: dict[str, Any], config: Any = None, checkpoint_config: Any = None, **kwargs: Any) -> Any:
        from .adapters.agent import CheckpointedAgent

        return CheckpointedAgent.restore(checkpoint, config, checkpoint_config, **kwargs)

    @staticmethod
    def load_checkpoint(path: Any, config: Any = None, checkpoint_config: Any = None, **kwargs: Any) -> Any:
        from .adapters.agent import CheckpointedAgent

        return CheckpointedAgent.load_checkpoint(path, config, checkpoint_config, **kwargs)


def __getattr__(name: str) -> Any:
    # Spark's AgentConfig and the backends: imported on first use (Spark takes ~1 s to import)
    if name == "AgentConfig":
        from spark.agents import AgentConfig

        return AgentConfig
    if name in ("MemoryBackend", "FileBackend", "SQLiteBackend"):
        from . import backends

        return getattr(backends, name)
    if name == "PostgreSQLBackend":
        return _plugin_backend("spark_ckpt_postgres", name, "postgres")
    if name == "S3Backend":
        return _plugin_backend("spark_ckpt_s3", name, "s3")
    raise AttributeError(f"module 'spark_ckpt.guide' has no attribute {name!r}")


def _plugin_backend(module: str, name: str, extra: str) -> Any:
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        raise ConfigError(f"{name} is in a separate package: pip install spark-ckpt[{extra}]") from None
