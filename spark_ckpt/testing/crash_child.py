"""The child-process side of ``crash_matrix`` and ``run_with_kills``: runs a user's graph, recovers it,
or gets itself SIGKILLed at an exact point, and hands back what it ended with.

    python -m spark_ckpt.testing.crash_child serve FACTORY   # a template process: one fork per job
    python -m spark_ckpt.testing.crash_child job JOB_JSON    # one job in this fresh interpreter

``serve`` imports Spark, spark-ckpt and the factory's module once, then reads one job (JSON) per line
from stdin, forks a child for it, waits for it and writes its wait status as one JSON line. Each job
runs in a new process that never ran a graph before, without paying Spark's import (a second) per
process. ``job`` runs a job in the interpreter it starts (``isolation="interpreter"``: for code that
must not be forked, e.g. a module that starts threads on import).

Kill points (``KillSwitch``) are counted over the live work of one run, by kind:

* ``boundary``: at a superstep boundary, before its checkpoint is decided (``spark_ckpt_should_checkpoint``);
* ``visit``: at the start of a live node visit (``spark_ckpt_pre_node``): the visit is in flight;
* ``before_write`` / ``after_write``: a checkpoint record is about to be handed to the store / the store
  has committed it (the backend's ``put`` / ``start_execution`` of this graph's backend instance);
* ``before_call`` / ``after_call``: an agent's live LLM or tool call is about to be made / its result
  was journaled (``spark_ckpt_pre_agent_call`` / ``spark_ckpt_post_agent_call``).

A job's outcome is pickled to the file the job names (``result``: the result's content; ``state``: the
graph state, without the wall-clock times Spark stamps into ``task_metadata``).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import json
import os
import pickle
import signal
import sys
import traceback
from typing import Any

from ..markers import hookimpl

KINDS = ("boundary", "visit", "before_write", "after_write", "before_call", "after_call")
#: wall-clock times Spark writes into the task metadata of the graph state: never equal in two runs
VOLATILE_TASK_FIELDS = ("started_at", "updated_at", "duration_seconds")
JOB_FAILED = 3


def die() -> None:
    """SIGKILL this process: no cleanup, no atexit, nothing flushed that was not flushed already."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os.kill(os.getpid(), signal.SIGKILL)


class KillSwitch:
    """Counts the kill points of one run (see the module docstring); with ``kill_at=(kind, n)``,
    SIGKILLs the process at the n-th point of that kind (0-based). ``trail`` describes each point."""

    def __init__(self, kill_at: tuple[str, int] | None = None) -> None:
        self.kill_at = tuple(kill_at) if kill_at is not None else None
        self.trail: dict[str, list[str]] = {kind: [] for kind in KINDS}
        self._writing = False

    def _point(self, kind: str, description: str) -> None:
        seen = self.trail[kind]
        if self.kill_at == (kind, len(seen)):
            die()
        seen.append(description)

    @hookimpl
    def spark_ckpt_should_checkpoint(self, decision: Any) -> None:
        self._point("boundary", f"superstep {decision.superstep} ({decision.reason})")
        return None  # defer to the configured strategy

    @hookimpl
    def spark_ckpt_pre_node(self, event: Any) -> None:
        if not event.replayed:
            self._point("visit", f"{event.node_key}#{event.visit_index}")

    @hookimpl
    def spark_ckpt_pre_agent_call(self, event: Any) -> None:
        if not event.replayed:
            self._point("before_call", _call(event))

    @hookimpl
    def spark_ckpt_post_agent_call(self, event: Any) -> None:
        if not event.replayed:
            self._point("after_call", _call(event))

    def watch_writes(self, backend: Any) -> None:
        """Count (and kill at) the checkpoint writes of ``backend``: its write methods are wrapped on
        this instance only. A write made inside another (``start_execution`` calling ``put``) is one."""
        for name in ("put", "start_execution"):
            setattr(backend, name, self._sync_write(getattr(backend, name), name))
        for name in ("aput", "astart_execution"):
            setattr(backend, name, self._async_write(getattr(backend, name), name))

    @staticmethod
    def _describe(args: tuple[Any, ...]) -> str:
        header = args[0] if args else None
        return f"seq {getattr(header, 'seq', '?')} ({getattr(header, 'status', '?')})"

    def _sync_write(self, write: Any, name: str) -> Any:
        @functools.wraps(write)
        def watched(*args: Any, **kwargs: Any) -> Any:
            if self._writing:
                return write(*args, **kwargs)
            what = self._describe(args)
            self._point("before_write", what)
            self._writing = True
            try:
                out = write(*args, **kwargs)
            finally:
                self._writing = False
            self._point("after_write", what)
            return out

        return watched

    def _async_write(self, write: Any, name: str) -> Any:
        @functools.wraps(write)
        async def watched(*args: Any, **kwargs: Any) -> Any:
            if self._writing:
                return await write(*args, **kwargs)
            what = self._describe(args)
            self._point("before_write", what)
            self._writing = True
            try:
                out = await write(*args, **kwargs)
            finally:
                self._writing = False
            self._point("after_write", what)
            return out

        return watched


def _call(event: Any) -> str:
    what = f"tool {event.tool_name}" if event.method == "tool" else event.method
    return f"agent {event.agent_id} call {event.call_index} ({what})"


# -- the user's graph --------------------------------------------------------------------------------
def factory_path(factory: Any) -> str:
    """``"pkg.module:function"`` for a factory given as that string or as a module-level function."""
    from ..errors import ConfigError

    if isinstance(factory, str):
        if ":" not in factory:
            raise ConfigError(f"a graph factory path reads 'pkg.module:function', got {factory!r}")
        return factory
    module, qualname = getattr(factory, "__module__", None), getattr(factory, "__qualname__", "")
    if not callable(factory) or not module or module == "__main__" or "<" in qualname:
        raise ConfigError(
            f"the graph factory {factory!r} must be importable by a child process: a module-level function "
            "of an importable module, or its path as 'pkg.module:function' (not a lambda, a nested function "
            "or one defined in __main__)"
        )
    return f"{module}:{qualname}"


def load_factory(path: str) -> Any:
    from ..errors import ConfigError

    from ..codec.values import import_by_path

    try:
        return import_by_path(path)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import the graph factory {path!r} in the child process: {exc}") from exc


async def build(job: dict[str, Any], setup: dict[str, Any]) -> Any:
    """The user's graph, wrapped with the job's store and graph id."""
    import attrs

    from .. import CheckpointConfig, checkpointed
    from ..errors import ConfigError

    made = load_factory(job["factory"])()
    if inspect.isawaitable(made):
        made = await made
    config = setup.get("config")
    if hasattr(made, "recover_and_continue") and hasattr(made, "graph"):  # already checkpointed: keep its config
        config = config or made.config
        made = made.graph
    if not hasattr(made, "run") or hasattr(made, "agent"):
        raise ConfigError(f"the graph factory {job['factory']!r} returned {type(made).__name__}, not a Spark Graph")
    config = attrs.evolve(config or CheckpointConfig(), backend=job["store"], path=None)
    return checkpointed(made, config=config, graph_id=job["graph_id"])


def clean_state(state: Any) -> Any:
    if isinstance(state, dict) and isinstance(state.get("task_metadata"), dict):
        state = dict(state)
        state["task_metadata"] = {k: v for k, v in state["task_metadata"].items() if k not in VOLATILE_TASK_FIELDS}
    return state


def outcome(graph: Any, result: Any) -> dict[str, Any]:
    report = graph.last_recovery
    return {
        "result": getattr(result, "content", result),
        "state": clean_state(graph.get_state_snapshot()),
        "replayed": len(report.replayed) if report else 0,
        "live": len(report.live) if report else 0,
        "already_completed": bool(getattr(report, "already_completed", False)),
    }


async def recover(graph: Any) -> dict[str, Any]:
    """What a recovering service does: continue the unfinished execution; if the newest one completed
    (the crash came after its final checkpoint), take its stored result."""
    from ..errors import NothingToRecoverError
    from ..model import COMPLETED

    try:
        return outcome(graph, await graph.recover_and_continue())
    except NothingToRecoverError:
        heads = graph.backend.executions(graph_id=graph.graph_id, limit=1)
        if not heads:
            return {"nothing_stored": True}
        if heads[0].status != COMPLETED:
            raise
        return outcome(graph, await graph.recover_and_continue(execution_id=heads[0].execution_id))


# -- jobs -------------------------------------------------------------------------------------------------
async def job_run(job: dict[str, Any], setup: dict[str, Any]) -> dict[str, Any]:
    """Run the graph from the start (``kill_at``: dying there); the kill points it passed."""
    from ..plugins import register

    switch = KillSwitch(job.get("kill_at"))
    register(switch, name="spark-ckpt-kill-switch")  # last registered: asked first at every boundary
    graph = await build(job, setup)
    switch.watch_writes(graph.backend)
    return {**outcome(graph, await graph.run(setup.get("inputs"))), "trail": switch.trail}


async def job_recover(job: dict[str, Any], setup: dict[str, Any]) -> dict[str, Any]:
    return await recover(await build(job, setup))


async def job_chaos(job: dict[str, Any], setup: dict[str, Any]) -> dict[str, Any]:
    """One attempt of ``run_with_kills``: the run (first) or a recovery under a SIGKILLing ChaosPlugin."""
    from .chaos import ChaosPlugin

    options = job["chaos"]
    plugin = ChaosPlugin(seed=tuple(options["seed"]), failure_rate=options["failure_rate"],
                         agent_call_failure_rate=options["agent_call_failure_rate"], mode="sigkill",
                         allow_kill_here=True)
    with plugin:
        graph = await build(job, setup)
        if job["first"]:
            return outcome(graph, await graph.run(setup.get("inputs")))
        return await recover(graph)


JOBS = {"run": job_run, "recover": job_recover, "chaos": job_chaos}


def _picklable(value: Any) -> Any:
    try:
        pickle.dumps(value)
        return value
    except Exception:
        return {"__unpicklable__": repr(value)}


def run_job(job: dict[str, Any]) -> int:
    """Run one job in this process; write its outcome (or its error) to ``job["out"]``."""
    try:
        with open(job["setup"], "rb") as fh:
            setup = pickle.load(fh)
        data = asyncio.run(JOBS[job["kind"]](job, setup))
        code = 0
    except BaseException as exc:
        traceback.print_exc()
        data = {"error": f"{type(exc).__name__}: {exc}"[:4000], "error_type": type(exc).__name__}
        code = JOB_FAILED
    data = {key: _picklable(value) for key, value in data.items()}
    tmp = job["out"] + ".tmp"
    with open(tmp, "wb") as fh:
        pickle.dump(data, fh)
    os.replace(tmp, job["out"])
    return code


def _forked(job: dict[str, Any]) -> None:
    """In the forked child: output to the job's log, a deadline, the job, then exit without cleanup."""
    code = JOB_FAILED
    try:
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        signal.alarm(max(1, int(job.get("timeout_s", 120))))
        code = run_job(job)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def serve(factory: str) -> None:
    """The template process (see the module docstring)."""
    protocol = sys.stdout
    try:
        # the expensive imports, paid once: Spark, its agents, spark-ckpt's adapters, the plugin
        # manager with the backends it registers (building nothing that belongs to a run)
        import spark.agents  # noqa: F401
        import spark.graphs  # noqa: F401

        import spark_ckpt.adapters.graph  # noqa: F401
        from spark_ckpt.plugins import backends

        backends()
        load_factory(factory)
    except BaseException as exc:
        protocol.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
        protocol.flush()
        return
    gc.freeze()  # the template's objects stay out of the children's collections (fewer pages copied)
    protocol.write(json.dumps({"ready": True}) + "\n")
    protocol.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _forked(job)
        _, status = os.waitpid(pid, 0)
        protocol.write(json.dumps({"status": status}) + "\n")
        protocol.flush()


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "serve":
        serve(argv[1])
        return 0
    if len(argv) == 2 and argv[0] == "job":
        job = json.loads(argv[1])
        signal.alarm(max(1, int(job.get("timeout_s", 120))))
        return run_job(job)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
