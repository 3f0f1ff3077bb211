"""A pytest plugin that routes every Spark ``Graph.run`` through ``spark_ckpt.checkpointed``.

Run any test suite written against Spark (Spark's own, or a user's) with it, to see what changes
when each graph is checkpointed:

    pytest -p spark_ckpt.testing.route_runs tests/

``scripts/spark-suite.sh`` runs Spark's own suite (from its source repository) this way.

What it does: ``spark.graphs.graph.Graph.run`` (and nothing else) is replaced, for the whole pytest
session, by a function that wraps the graph once per graph instance with
``checkpointed(graph, config=CheckpointConfig(backend="memory", strategy="iteration", interval=1))``
(every superstep checkpointed, nothing written to disk) and awaits ``wrapped.run(arg)``. The wrapper
itself calls ``graph.run`` to run Spark's loop: that call, and any other ``run`` of the same graph
made while the wrapper runs it (in the same task or the tasks Spark's loop starts), goes to Spark's
original ``Graph.run``. A graph run from inside another graph's node (``SubgraphNode``) is a
different graph instance, so it is wrapped too.

Notes for a reader of the results:

* ``Graph.run`` is marked ``@final`` but is an ordinary method; the replacement keeps its name,
  docstring and ``__final__`` marker (``functools.wraps``). ``BaseGraph`` subclasses other than
  ``Graph`` are not touched.
* A subclass of ``Graph`` that overrides ``run`` and calls ``super().run()`` is routed from that
  call; while the wrapper runs it, Spark's original ``run`` is bound on the instance so the wrapper
  does not re-enter the override (its body runs once, as without the plugin). A concurrent run of
  such a graph during that time bypasses the wrapper.
* Wrappers are cached in a ``WeakKeyDictionary`` (nothing is stored on the graph, so a graph that
  is deep-copied, as ``SubgraphNode`` does with its template, does not carry its wrapper along).
* ``SPARK_CKPT_ROUTE_RUNS=0`` in the environment turns the plugin off without changing the command.
* The header pytest prints says whether routing is on; the terminal summary says how many graphs
  were wrapped and how many runs went through a wrapper.
"""

from __future__ import annotations

import contextvars
import functools
import os
import types
import weakref
from typing import Any

#: ids of the graphs whose ``run`` is Spark's original in this context (the wrapper is running them)
_inside_wrapper: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar(
    "spark_ckpt_route_runs_inside", default=frozenset()
)
_wrappers: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_original_run: Any = None
#: graphs wrapped and runs routed through a wrapper this session (the terminal summary shows them)
_counts = {"graphs": 0, "runs": 0}


def _config() -> Any:
    from spark_ckpt import CheckpointConfig

    return CheckpointConfig(backend="memory", strategy="iteration", interval=1)


def wrapper_for(graph: Any) -> Any:
    """The ``CheckpointedGraph`` this plugin routes ``graph``'s runs through (built on first use)."""
    wrapped = _wrappers.get(graph)
    if wrapped is None:
        from spark_ckpt import checkpointed

        wrapped = _wrappers[graph] = checkpointed(graph, config=_config())
        _counts["graphs"] += 1
    return wrapped


def install() -> bool:
    """Replace ``Graph.run``; returns False if it was already replaced."""
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
        wrapped = wrapper_for(self)
        _counts["runs"] += 1
        token = _inside_wrapper.set(inside | {id(self)})
        # A subclass override of ``run`` got us here through super(): the wrapper must call Spark's
        # loop, not the override again.
        shadow = type(self).run is not run and "run" not in vars(self)
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
    """Put Spark's ``Graph.run`` back."""
    global _original_run
    if _original_run is None:
        return
    from spark.graphs.graph import Graph

    Graph.run = _original_run
    _original_run = None
    _wrappers.clear()


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
    return "spark-ckpt route_runs: every Graph.run goes through checkpointed(..., backend='memory', interval=1)"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _original_run is not None:
        terminalreporter.write_line(
            f"spark-ckpt route_runs: {_counts['runs']} run(s) of {_counts['graphs']} graph(s) went through a wrapper"
        )
