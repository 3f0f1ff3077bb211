"""What an orphan-recovering worker builds a fresh wrapper with, for a stored execution's graph id.

``recover_orphans(factory, ...)`` and ``spark-ckpt worker module:factory`` accept, as ``factory``:

* a callable taking the graph id, ``factory(graph_id)``: one factory for several graphs. It returns
  the wrapper for that id, or None for an id it does not know (that execution is skipped);
* a callable taking no argument (e.g. a function decorated with ``@checkpointed(config=..., graph_id=...)``):
  it serves the one graph id its wrappers have; it is called once up front to learn that id;
* a mapping ``{graph_id: factory}`` of such zero-argument callables;
* a ``"module:attribute"`` string naming any of these.

Whatever is returned must be a ``CheckpointedGraph`` or ``CheckpointedAgent`` (a bare Spark graph or
agent is wrapped with the worker's config and that graph id). Each recovery gets a fresh one: a wrapper
runs one execution at a time. Invariant: a wrapper whose graph id or store differs from what was asked is
refused (``ConfigError``) before anything runs, so a worker never continues an execution as another graph.
"""

from __future__ import annotations

import inspect
import os
import sys
from typing import Any, Callable, Mapping

from .errors import ConfigError


def wrapper_id(wrapper: Any) -> str | None:
    """The graph id (agent id, for an agent) a wrapper checkpoints under."""
    for name in ("graph_id", "agent_id"):
        value = getattr(wrapper, name, None)
        if isinstance(value, str):
            return value
    return None


def import_factory(path: str) -> Any:
    """The object ``"module:attribute"`` names, importable from the current directory as well (as
    ``uvicorn`` and ``celery`` do), or a ``ConfigError`` saying what is wrong."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"factory {path!r} must be 'module:function' (e.g. 'myapp.workflows:build_graph')")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    from .codec.values import import_by_path

    try:
        return import_by_path(path)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"factory {path!r}: no module {exc.name!r} (run from the directory that holds it, "
                          "or put it on PYTHONPATH)") from exc
    except AttributeError:
        raise ConfigError(f"factory {path!r}: module {module_name!r} has no attribute {attribute!r}") from None


def _takes_graph_id(factory: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin or extension callable: assume the one-graph form
        return False
    required = [p for p in parameters if p.default is inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return bool(required) or any(p.kind == p.VAR_POSITIONAL for p in parameters)


class WrapperFactory:
    """Fresh wrappers by graph id from whatever ``factory`` form was given (see the module docstring)."""

    def __init__(self, factory: Any, config: Any = None) -> None:
        if isinstance(factory, str):
            factory = import_factory(factory)
        self.config = config
        #: graph id -> zero-argument factory; None when ``factory(graph_id)`` decides per id
        self.by_id: dict[str, Callable[[], Any]] | None = None
        self.per_id: Callable[[str], Any] | None = None
        #: graph ids ``factory(graph_id)`` returned None for: not asked again
        self.unknown: set[str] = set()
        #: a wrapper built to learn a zero-argument factory's graph id (and store), not yet used
        self._spare: dict[str, Any] = {}
        if isinstance(factory, Mapping):
            bad = [k for k, v in factory.items() if not isinstance(k, str) or not callable(v)]
            if bad:
                raise ConfigError(f"a factory mapping takes graph ids to callables; not so for {bad[:3]!r}")
            self.by_id = dict(factory)
        elif callable(factory) and _takes_graph_id(factory):
            self.per_id = factory
        elif callable(factory):
            wrapper = self._checked(factory(), None)
            self.by_id = {wrapper_id(wrapper): factory}  # type: ignore[dict-item]
            self._spare[wrapper_id(wrapper)] = wrapper  # type: ignore[index]
        else:
            raise ConfigError(
                f"factory must be a callable returning a checkpointed graph or agent (given the graph id, or "
                f"nothing), a mapping of graph ids to such callables, or a 'module:function' string; got "
                f"{type(factory).__name__}"
            )

    @property
    def known_ids(self) -> list[str] | None:
        """The graph ids served, or None when ``factory(graph_id)`` decides for each id."""
        return None if self.by_id is None else sorted(self.by_id)

    def serves(self, graph_id: str) -> bool:
        """False for a graph id this factory does not serve (as far as is known before building)."""
        return graph_id not in self.unknown if self.by_id is None else graph_id in self.by_id

    def learned_config(self) -> Any:
        """The config of the wrappers a zero-argument factory or mapping builds (the store to scan when
        none was given), or None."""
        if self.by_id is None:
            return None
        graph_id = sorted(self.by_id)[0]
        wrapper = self._spare.get(graph_id) or self._spare.setdefault(graph_id, self.build(graph_id))
        return getattr(wrapper, "config", None)

    def build(self, graph_id: str) -> Any:
        """A fresh wrapper for ``graph_id``, or None when this factory does not serve that id."""
        spare = self._spare.pop(graph_id, None)
        if spare is not None:
            return spare
        if self.per_id is not None:
            made = self.per_id(graph_id)
            if made is None:
                self.unknown.add(graph_id)
                return None
            return self._checked(made, graph_id)
        assert self.by_id is not None
        maker = self.by_id.get(graph_id)
        return None if maker is None else self._checked(maker(), graph_id)

    def close_spares(self) -> None:
        for wrapper in self._spare.values():
            close_quietly(wrapper)
        self._spare.clear()

    def _checked(self, made: Any, graph_id: str | None) -> Any:
        from . import _is_spark_object, checkpointed

        if _is_spark_object(made):  # a bare Spark graph or agent: wrapped with the worker's config
            if self.config is None:
                raise ConfigError("the factory returned a bare Spark graph or agent and no config was given; "
                                  "wrap it with checkpointed(..., config=...) or pass config=")
            id_kw = {"agent_id": graph_id} if type(made).__name__.endswith("Agent") else {"graph_id": graph_id}
            made = checkpointed(made, config=self.config, **({} if graph_id is None else id_kw))
        made_id = wrapper_id(made)
        if made_id is None or not hasattr(made, "recover_and_continue"):
            raise ConfigError(f"the factory returned {type(made).__name__}, not a checkpointed graph or agent "
                              "(wrap it with spark_ckpt.checkpointed)")
        if graph_id is not None and made_id != graph_id:
            close_quietly(made)
            raise ConfigError(f"the factory was asked for graph {graph_id!r} and returned one with graph id "
                              f"{made_id!r}: it would continue the execution as another graph; nothing was run")
        return made


def close_quietly(wrapper: Any) -> None:
    close = getattr(wrapper, "close", None)
    if callable(close):
        try:
            close()
        except Exception:  # pragma: no cover - closing must not hide the outcome
            pass


def same_store(a: Any, b: Any) -> bool:
    """Whether two backend objects are the same store (the same object, description, or local path)."""
    if a is b or a.describe() == b.describe():
        return True
    for attribute in ("path", "root"):
        pa, pb = getattr(a, attribute, None), getattr(b, attribute, None)
        if isinstance(pa, str) and isinstance(pb, str) and type(a) is type(b):
            return os.path.realpath(pa) == os.path.realpath(pb) and \
                getattr(a, "table_name", None) == getattr(b, "table_name", None)
    return False
