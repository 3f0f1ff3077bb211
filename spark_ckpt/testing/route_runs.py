"""A pytest plugin that routes every Spark ``Graph.run`` through ``spark_ckpt.checkpointed``.

Run any test suite written against Spark (Spark's own, or your own) with it, to see what changes
when every graph is checkpointed:

    pytest -p spark_ckpt.testing.route_runs tests/

``scripts/spark-suite.sh`` runs Spark's own test suite (from its source repository) this way.
``SPARK_CKPT_ROUTE_RUNS=0`` turns the plugin off without changing the command. pytest's header says
whether routing is on; its summary says how many runs of how many graphs went through a wrapper.

What it does: for the whole session, ``spark.graphs.graph.Graph.run`` (and nothing else) is replaced
by a function that wraps the graph, once per graph instance, with
``checkpointed(graph, config=CheckpointConfig(backend="memory", strategy="iteration", interval=1))``
(every superstep checkpointed, nothing written to disk) and awaits ``wrapped.run(arg)``. Everything
that reaches ``Graph.run`` is routed: ``graph.run(...)``, Spark's ``resume_from`` and ``run_tasks``,
and the inner graph a ``SubgraphNode`` runs (a fresh copy per visit, so a fresh wrapper per visit).
Runs in other processes (a CLI a test starts with ``subprocess``) are not.

The wrapper itself calls ``graph.run`` to run Spark's loop; that call goes to Spark's original
``Graph.run``, decided by a context variable holding the graphs the wrapper is running in this
context (it propagates into the tasks Spark's loop starts, and a nested graph is another instance).

For a reviewer:

* ``Graph.run`` is marked ``@final`` but is an ordinary method; the replacement keeps its name,
  docstring and ``__final__`` marker (``functools.wraps``). ``BaseGraph`` classes other than
  ``Graph`` and its subclasses are not touched.
* A subclass that overrides ``run`` and calls ``super().run()`` is routed from that call. While
  the wrapper runs it, Spark's original ``run`` is bound on the instance, so the wrapper's own
  ``graph.run`` does not enter the override a second time (a concurrent run of that instance in that
  time runs bare). No such subclass exists in Spark 0.3.2 or its tests.
* A graph the test wrapped itself (``checkpointed(graph)``, found by the ``_spark_ckpt_wrapped`` mark
  ``CheckpointedGraph`` puts on the nodes it wraps) is not wrapped again: while that wrapper runs it,
  ``run`` is Spark's original; a direct ``graph.run`` otherwise goes through that wrapper.
* The wrapper is cached in an attribute of the graph (``_spark_ckpt_route_runs``) whose copy and
  pickle are empty: a graph and its wrapper are collected together (a global cache would keep every
  graph alive, since a wrapper refers to its graph), and a copied graph gets its own wrapper.
* Wrapping changes the graph as ``checkpointed`` does (node ``do`` wrappers, an ``AFTER_ITERATION``
  hook); a test that inspects those sees them. A graph that ran once can no longer be deep-copied
  (``TypeError: cannot pickle '_thread.lock'``, through those references), so a ``SubgraphNode``
  whose template graph also ran on its own fails: ``CheckpointedGraph``'s limitation, not this
  plugin's (Spark 0.3.2's own tests never do that).
"""

from __future__ import annotations

import contextvars
import functools
import os
import types
from typing import Any

ATTRIBUTE = "_spark_ckpt_route_runs"

#: ids of the graphs whose ``run`` is Spark's original in this context (the wrapper is running them)
_inside_wrapper: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar(
    "spark_ckpt_route_runs_inside", default=frozenset()
)
_original_run: Any = None
#: wrappers built and runs routed this session (shown in pytest's summary)
_counts = {"graphs": 0, "runs": 0}


class _Slot:
    """Holds a graph's wrapper; copies and pickles as empty, so a copied graph is wrapped anew."""

    __slots__ = ("ours", "wrapper")

    def __init__(self, wrapper: Any = None, ours: bool = True) -> None:
        self.wrapper = wrapper
        self.ours = ours

    def __copy__(self) -> _Slot:
        return _Slot()

    def __deepcopy__(self, memo: dict[int, Any]) -> _Slot:
        return _Slot()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Slot, ())


def checkpoint_config() -> Any:
    """The configuration every routed graph is wrapped with."""
    from spark_ckpt import CheckpointConfig

    return CheckpointConfig(backend="memory", strategy="iteration", interval=1)


def _marked_wrapper(graph: Any) -> Any:
    """The ``CheckpointedGraph`` whose mark (``_spark_ckpt_wrapped``) the graph's nodes carry, if any."""
    for node in (getattr(graph, "start", None), *(getattr(graph, "nodes", None) or ())):
        owner = getattr(node, "_spark_ckpt_wrapped", None)
        if owner is not None and getattr(owner, "graph", None) is graph:
            return owner
    return None


def _slot(graph: Any) -> _Slot:
    slot = graph.__dict__.get(ATTRIBUTE)
    marked = _marked_wrapper(graph)
    if marked is not None and (slot is None or slot.wrapper is not marked):
        return _Slot(marked, ours=False)  # the test wrapped this graph itself (not cached: it may wrap again)
    if slot is None or slot.wrapper is None:
        from spark_ckpt import checkpointed

        slot = graph.__dict__[ATTRIBUTE] = _Slot(checkpointed(graph, config=checkpoint_config()))
        _counts["graphs"] += 1
    return slot


def wrapper_for(graph: Any) -> Any:
    """The ``CheckpointedGraph`` this plugin routes ``graph``'s runs through (built on first use)."""
    return _slot(graph).wrapper


def install() -> bool:
    """Replace ``Graph.run``; False if it was replaced already."""
    global _original_run
    from spark.graphs.graph import Graph

    if _original_run is not None:
        return False
    original = Graph.run

    @functools.wraps(original)
    async def run(self: Any, arg: Any = None) -> Any:
        inside = _inside_wrapper.get()
        if id(self) in inside:
            return await original(self, arg)
        slot = _slot(self)
        wrapped = slot.wrapper
        if not slot.ours and getattr(getattr(wrapped, "_runner", None), "active", None) is not None:
            return await original(self, arg)  # the test's own wrapper is running it
        _counts["runs"] += 1
        token = _inside_wrapper.set(inside | {id(self)})
        shadow = type(self).run is not run and "run" not in vars(self)  # a subclass override sent us here
        if shadow:
            self.run = types.MethodType(original, self)
        try:
            return await wrapped.run(arg)
        finally:
            if shadow:
                vars(self).pop("run", None)
            _inside_wrapper.reset(token)

    run.__spark_ckpt_routed__ = True  # type: ignore[attr-defined]
    _original_run = original
    Graph.run = run
    return True


def uninstall() -> None:
    """Put Spark's ``Graph.run`` back (wrappers already built stay on their graphs)."""
    global _original_run
    if _original_run is None:
        return
    from spark.graphs.graph import Graph

    Graph.run = _original_run
    _original_run = None


def _enabled() -> bool:
    return os.environ.get("SPARK_CKPT_ROUTE_RUNS", "1").strip().lower() not in {"0", "false", "no", "off"}


# -- pytest hooks -----------------------------------------------------------------------------------
def pytest_configure(config: Any) -> None:
    if _enabled():
        install()


def pytest_unconfigure(config: Any) -> None:
    uninstall()


def pytest_report_header(config: Any) -> str:
    if _original_run is None:
        return "spark-ckpt route_runs: off (SPARK_CKPT_ROUTE_RUNS)"
    return "spark-ckpt route_runs: every Graph.run goes through checkpointed(backend='memory', interval=1)"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _original_run is not None:
        terminalreporter.write_line(
            f"spark-ckpt route_runs: {_counts['runs']} run(s) of {_counts['graphs']} graph(s) went through a wrapper"
        )
