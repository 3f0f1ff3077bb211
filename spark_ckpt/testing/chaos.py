"""Chaos testing for checkpointed graphs and agents: injected failures, recovery, and crash matrices.

The guide's ``ChaosTestingGraph`` restores a checkpoint taken before the run and runs everything
again. These tools test what a real recovery does instead: the run fails part-way, and
``recover_and_continue()`` finishes it from the journal (completed visits replayed, not re-run).

``ChaosPlugin`` -- a spark-ckpt plugin that fails live node visits and agent LLM/tool calls at a
seeded rate. Replayed visits and calls are never failed: chaos hits live work only::

    from spark_ckpt.testing.chaos import ChaosPlugin, ChaosError

    with ChaosPlugin(seed=7, failure_rate=0.3) as monkey:       # registered for the block only
        try:
            await graph.run(inputs)
        except ChaosError:
            result = await graph.recover_and_continue()
    monkey.injected                                               # what was failed, in order

``failure_rate`` is one rate for every node, or ``{"node_key": rate}`` (``"*"`` for the others);
``agent_call_failure_rate`` likewise per agent id. Whether a visit fails is a pure function of
``(seed, graph id, node key, visit index, attempt)``, where attempt counts how often this plugin saw
that visit run live: the same seed fails the same visits in every run, whatever order a parallel
superstep runs them in, and a recovered visit gets a fresh draw. ``mode="exception"`` raises
``exception`` (default ``ChaosError``) as the node's (or the agent call's) own failure;
``mode="sigkill"`` kills the process there instead (only in a child process: refused in the process
pytest runs in, unless ``allow_kill_here=True``).

``run_with_chaos(graph, inputs, failure_rate=..., seed=...)`` -- runs a ``CheckpointedGraph`` (or
``CheckpointedAgent``) under a ``ChaosPlugin`` and recovers with ``recover_and_continue()`` after each
injected failure until the run completes; returns a ``ChaosRun`` (result, faults injected, attempts).

``run_with_kills("pkg.module:build_graph", inputs, failure_rate=..., seed=...)`` -- the same with real
processes: each attempt runs in a child that the plugin SIGKILLs at a seeded live visit; the next child
recovers.

``crash_matrix("pkg.module:build_graph", inputs)`` -- kills the graph at every superstep boundary, node
visit and checkpoint write (before and after it commits) in turn, each in a child process, recovers
each in a fresh one, and asserts every recovery ends with the uninterrupted run's result and graph
state (``spark_ckpt.testing.crash_matrix``).
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from typing import Any, Callable, Mapping

import attrs

from ..errors import ConfigError
from ..markers import hookimpl
from .crash_matrix import CrashMatrixFailure, CrashMatrixReport, CrashPoint, PointOutcome, crash_matrix

__all__ = [
    "ChaosError", "ChaosPlugin", "InjectedFault", "ChaosRun", "chaos", "run_with_chaos", "run_with_kills",
    "crash_matrix", "CrashMatrixReport", "CrashMatrixFailure", "CrashPoint", "PointOutcome",
]

MODES = ("exception", "sigkill")


class ChaosError(Exception):
    """The failure a ``ChaosPlugin`` injects (a user-facing fault, deliberately not a ``SparkCkptError``:
    to the run it is the node's or the model's own error)."""


@attrs.frozen
class InjectedFault:
    """One failure the plugin injected: ``kind`` "node" (``graph_id``; ``where`` the node key, ``index``
    the visit) or "agent_call" (``where`` the agent id, ``index`` the call's index in its run, ``call``
    the model method or the tool's name); ``attempt``: how often that visit or call had run live before."""

    kind: str
    graph_id: str
    where: str
    index: int
    attempt: int
    call: str | None = None

    def __str__(self) -> str:
        what = f"node {self.where!r} visit {self.index}" if self.kind == "node" else \
            f"agent {self.where!r} call {self.index} ({self.call})"
        return f"{what}, attempt {self.attempt}"


def _rates(value: Any, name: str) -> dict[str, float]:
    """A rate or a mapping of rates, checked: ``{"*": rate}`` for a single rate."""
    items = {"*": value} if not isinstance(value, Mapping) else dict(value)
    for key, rate in items.items():
        if not isinstance(key, str):
            raise ConfigError(f"ChaosPlugin {name} keys must be node keys or agent ids (str), got {key!r}")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
            raise ConfigError(f"ChaosPlugin {name} must be a number from 0 to 1 (or a dict of them), "
                              f"got {rate!r}" + (f" for {key!r}" if key != "*" else ""))
    return {key: float(rate) for key, rate in items.items()}


def _draw(seed: Any, *parts: Any) -> float:
    """A uniform number in [0, 1) that depends only on its arguments (no shared random state)."""
    digest = hashlib.blake2b(repr((seed, *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64


def in_pytest_process() -> bool:
    """True in the process pytest itself runs in (where a SIGKILL would end the whole test session)."""
    if "_pytest" not in sys.modules:
        return False
    argv0 = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return os.path.basename(argv0) in ("pytest", "py.test") or os.path.basename(os.path.dirname(argv0)) == "pytest"


class ChaosPlugin:
    """Fails live node visits and agent calls at a seeded rate (see the module docstring).

    ``seed``: any hashable value; ``failure_rate``: per node visit, a float or ``{node_key: rate}``
    (``"*"``: every other node); ``agent_call_failure_rate``: per agent LLM or tool call, a float or
    ``{agent_id: rate}``; ``mode``: "exception" or "sigkill"; ``exception``: the exception class raised
    (called with a message) or a callable returning the exception; ``max_failures``: inject at most
    this many (None: no limit); ``allow_kill_here``: allow ``mode="sigkill"`` in pytest's own process.

    ``injected`` lists the faults injected so far (``InjectedFault``); ``failures`` is their number.
    Use it as a context manager (registered for the block), or ``install()`` / ``uninstall()``.
    """

    #: exceptions raised from this plugin's hooks reach the run (``spark_ckpt.plugins.Hooks``)
    spark_ckpt_raises = True

    def __init__(
        self, *, seed: Any = 0, failure_rate: float | Mapping[str, float] = 0.0,
        agent_call_failure_rate: float | Mapping[str, float] = 0.0, mode: str = "exception",
        exception: type[BaseException] | Callable[[str], BaseException] = ChaosError,
        max_failures: int | None = None, allow_kill_here: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"ChaosPlugin mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "sigkill" and not allow_kill_here and in_pytest_process():
            raise ConfigError(
                "ChaosPlugin(mode='sigkill') would kill the pytest process itself: use it in a child process "
                "(run_with_kills() or crash_matrix() start them for you), or pass allow_kill_here=True if "
                "this process is one you started to be killed"
            )
        if isinstance(exception, type) and not issubclass(exception, Exception):
            raise ConfigError(f"ChaosPlugin exception must be an Exception subclass, got {exception.__name__}")
        if not callable(exception):
            raise ConfigError(f"ChaosPlugin exception must be an exception class or a callable, got {exception!r}")
        if max_failures is not None and (not isinstance(max_failures, int) or max_failures < 0):
            raise ConfigError(f"ChaosPlugin max_failures must be an int >= 0 or None, got {max_failures!r}")
        self.seed = seed
        self.node_rates = _rates(failure_rate, "failure_rate")
        self.agent_rates = _rates(agent_call_failure_rate, "agent_call_failure_rate")
        self.mode = mode
        self.exception = exception
        self.max_failures = max_failures
        self.injected: list[InjectedFault] = []
        #: the exceptions raised, to tell an injected failure from the run's own (``caused``)
        self.raised: list[BaseException] = []
        self._attempts: dict[tuple[Any, ...], int] = {}
        self._installed = False

    # -- registration -----------------------------------------------------------------------------
    def install(self) -> ChaosPlugin:
        """Register with spark-ckpt's plugin manager (runs started from now on see it)."""
        from .. import plugins

        if not self._installed:
            plugins.register(self, name=f"spark-ckpt-chaos-{id(self)}")
            self._installed = True
        return self

    def uninstall(self) -> None:
        from .. import plugins

        if self._installed:
            plugins.unregister(self)
            self._installed = False

    def __enter__(self) -> ChaosPlugin:
        return self.install()

    def __exit__(self, *exc_info: Any) -> None:
        self.uninstall()

    # -- what was injected ------------------------------------------------------------------------
    @property
    def failures(self) -> int:
        return len(self.injected)

    def caused(self, exc: BaseException | None) -> bool:
        """True if ``exc`` (or an exception it was raised from) is one this plugin injected."""
        seen: set[int] = set()
        while exc is not None and id(exc) not in seen:
            if any(exc is raised for raised in self.raised):
                return True
            seen.add(id(exc))
            exc = exc.__cause__ or exc.__context__
        return False

    # -- hooks --------------------------------------------------------------------------------------
    @hookimpl
    def spark_ckpt_pre_node(self, event: Any) -> None:
        if event.replayed:
            return
        rate = self.node_rates.get(event.node_key, self.node_rates.get("*", 0.0))
        self._maybe_fail(rate, InjectedFault("node", event.graph_id, event.node_key, event.visit_index, 0))

    @hookimpl
    def spark_ckpt_pre_agent_call(self, event: Any) -> None:
        if event.replayed:
            return
        rate = self.agent_rates.get(event.agent_id, self.agent_rates.get("*", 0.0))
        call = event.tool_name if event.method == "tool" else event.method
        self._maybe_fail(rate, InjectedFault("agent_call", "", event.agent_id, event.call_index, 0, call))

    def _maybe_fail(self, rate: float, fault: InjectedFault) -> None:
        if rate <= 0.0:
            return
        key = (fault.kind, fault.graph_id, fault.where, fault.index, fault.call)
        attempt = self._attempts.get(key, 0)
        self._attempts[key] = attempt + 1
        if self.max_failures is not None and len(self.injected) >= self.max_failures:
            return
        if _draw(self.seed, *key, attempt) >= rate:
            return
        fault = attrs.evolve(fault, attempt=attempt)
        self.injected.append(fault)
        if self.mode == "sigkill":
            sys.stdout.flush()
            print(f"chaos: killing this process at {fault} (seed {self.seed!r})", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        exc = self.exception(f"chaos: injected failure in {fault} (seed {self.seed!r})")
        self.raised.append(exc)
        raise exc


def chaos(**options: Any) -> ChaosPlugin:
    """``with chaos(seed=1, failure_rate=0.2) as monkey:`` -- a ``ChaosPlugin`` to use as a context manager."""
    return ChaosPlugin(**options)


# -- chaos with recovery ------------------------------------------------------------------------------
@attrs.define
class ChaosRun:
    """What a chaos run ended with: the run's ``result`` (for ``run_with_kills``: its content, and
    ``state`` the final graph state), the faults ``injected`` (for ``run_with_kills``: one per process
    killed), the number of ``attempts`` (the first run plus each recovery), and the recovery reports."""

    result: Any
    injected: list[Any]
    attempts: int
    recoveries: list[Any] = attrs.Factory(list)
    state: Any = None

    @property
    def failures(self) -> int:
        return len(self.injected)


async def run_with_chaos(
    target: Any, inputs: Any = None, *, failure_rate: float | Mapping[str, float] = 0.1,
    agent_call_failure_rate: float | Mapping[str, float] = 0.0, seed: Any = 0, max_attempts: int = 10,
    exception: type[BaseException] | Callable[[str], BaseException] = ChaosError, max_failures: int | None = None,
) -> ChaosRun:
    """Run ``target`` (a ``CheckpointedGraph`` or ``CheckpointedAgent``) with injected failures until it
    completes: ``run(inputs)`` first, then ``recover_and_continue()`` after each injected failure, so
    each recovery continues from the journal (completed visits and calls replayed, not run again).

    An exception the plugin did not inject (the run's own) propagates at once. After ``max_attempts``
    attempts that all failed, the last ``ChaosError`` is raised, saying so (lower the rate or raise
    ``max_attempts``). The options are ``ChaosPlugin``'s (``mode`` is always "exception").
    """
    if not hasattr(target, "recover_and_continue") or not hasattr(target, "run"):
        raise ConfigError(
            f"run_with_chaos needs a checkpointed graph or agent, got {type(target).__name__}: wrap it first, "
            "checkpointed(graph, config=CheckpointConfig(...)), so recovery has a journal to continue from"
        )
    if not isinstance(max_attempts, int) or max_attempts < 1:
        raise ConfigError(f"run_with_chaos max_attempts must be an int >= 1, got {max_attempts!r}")
    plugin = ChaosPlugin(seed=seed, failure_rate=failure_rate, agent_call_failure_rate=agent_call_failure_rate,
                         exception=exception, max_failures=max_failures)
    recoveries: list[Any] = []
    with plugin:
        for attempt in range(1, max_attempts + 1):
            try:
                if attempt == 1:
                    result = await target.run(inputs)
                else:
                    result = await target.recover_and_continue()
                    recoveries.append(getattr(target, "last_recovery", None))
            except Exception as exc:
                if not plugin.caused(exc):
                    raise
                if attempt == max_attempts:
                    raise ChaosError(
                        f"run_with_chaos gave up: all {max_attempts} attempts failed under chaos (seed {seed!r}, "
                        f"{plugin.failures} failures injected); lower the failure rate or raise max_attempts"
                    ) from exc
                continue
            return ChaosRun(result=result, injected=list(plugin.injected), attempts=attempt, recoveries=recoveries)
    raise AssertionError("unreachable")  # pragma: no cover


def run_with_kills(
    factory: Any, inputs: Any = None, *, failure_rate: float | Mapping[str, float] = 0.1,
    agent_call_failure_rate: float | Mapping[str, float] = 0.0, seed: Any = 0, max_attempts: int = 10,
    config: Any = None, store: str | None = None, graph_id: str = "chaos", isolation: str = "fork",
    timeout_s: float = 120.0,
) -> ChaosRun:
    """``run_with_chaos`` with real crashes: each attempt runs in a child process in which a
    ``ChaosPlugin(mode="sigkill")`` SIGKILLs the process at a seeded live visit (or agent call); the
    next child recovers with ``recover_and_continue()``, until one completes.

    ``factory``: ``"pkg.module:function"`` (or a module-level function) returning the Spark graph (the
    children import it). ``config``: the ``CheckpointConfig`` (its store is replaced by ``store``:
    default a temporary SQLite file). Attempt ``n`` draws with seed ``(seed, n)``, so a recovering
    process does not die at the same visit again. Returns a ``ChaosRun`` whose ``result`` is the
    result's content and ``state`` the final graph state; ``injected`` has one entry per process killed.
    """
    from .crash_matrix import run_with_kills as run

    return run(factory, inputs, failure_rate=failure_rate, agent_call_failure_rate=agent_call_failure_rate,
               seed=seed, max_attempts=max_attempts, config=config, store=store, graph_id=graph_id,
               isolation=isolation, timeout_s=timeout_s)

