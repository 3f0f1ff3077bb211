"""``crash_matrix``: kill a graph at every point where a crash can happen, recover each, and check that
every recovery ends exactly as the uninterrupted run.

    from spark_ckpt.testing.chaos import crash_matrix

    def test_my_graph_survives_every_crash():
        report = crash_matrix("myapp.graphs:build_order_graph", {"order": 42})
        assert report.points                     # (it raised CrashMatrixFailure on any divergence)

Steps, each in a child process of its own (``crash_child``), one at a time:

1. the graph runs uninterrupted: the reference result and final graph state, and the kill points it
   passes (superstep boundaries, live node visits, checkpoint writes before and after each commits,
   agent calls before and after each is journaled);
2. for every kill point (or those of the kinds in ``points``): a fresh run of the graph is SIGKILLed
   exactly there, then another process recovers it with ``recover_and_continue()``; its result's content
   and final graph state must equal the reference (compared type for type: ``1`` is not ``True``).

A point passes when the recovery ends like the reference; when the process was killed before the first
checkpoint was stored (nothing to recover: the caller starts the run again); or when it was killed after
the final checkpoint committed and the stored result equals the reference. It fails when the recovery
diverges, raises (``RecoveryDivergedError`` for a graph that does not run the same way twice, ...),
or the killed run never reached its point (the graph took another path than the reference).

The factory is ``"pkg.module:function"`` (or a module-level function): the children import it. It
returns a Spark ``Graph`` (or a checkpointed one, whose config is then used). Children inherit this
process's ``sys.path`` and environment. ``isolation="fork"`` (default) forks each child from a template
process that imported Spark and the factory's module once and never ran anything;
``isolation="interpreter"`` starts a new interpreter per child (slower: for code that cannot be forked).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Any, Iterable

import attrs

from ..errors import ConfigError
from .crash_child import KINDS, factory_path

#: the ``points`` shorthands
POINT_GROUPS = {
    "boundaries": ("boundary",),
    "visits": ("visit",),
    "writes": ("before_write", "after_write"),
    "calls": ("before_call", "after_call"),
    "all": KINDS,
}
ISOLATIONS = ("fork", "interpreter")


# -- the report -------------------------------------------------------------------------------------------
@attrs.frozen
class CrashPoint:
    """Where a run was killed: the ``ordinal``-th (0-based) point of ``kind`` in the reference run."""

    kind: str
    ordinal: int
    description: str = ""

    @property
    def label(self) -> str:
        return f"{self.kind}#{self.ordinal}"

    def __str__(self) -> str:
        return f"{self.label} [{self.description}]" if self.description else self.label


#: outcomes that pass
PASSING = ("recovered", "already_completed", "nothing_stored")


@attrs.define
class PointOutcome:
    """What happened at one point. ``status``: "recovered" (ended as the reference),
    "already_completed" (killed after the final checkpoint; the stored result matched),
    "nothing_stored" (killed before the first checkpoint was stored), "diverged", "recovery_failed",
    "not_reached" (the killed run finished without passing the point) or "crash_failed" (the run
    raised before it got there). ``detail`` says what differed or what was raised; ``replayed`` and
    ``live``: visits the recovery replayed from the journal and ran live."""

    point: CrashPoint
    status: str
    detail: str = ""
    replayed: int = 0
    live: int = 0

    @property
    def ok(self) -> bool:
        return self.status in PASSING

    def __str__(self) -> str:
        tail = f" (replayed {self.replayed}, live {self.live})" if self.status == "recovered" else ""
        return f"{self.point}: {self.status}{tail}" + (f" -- {self.detail}" if self.detail else "")


@attrs.define
class CrashMatrixReport:
    """Every point tried (``outcomes``) and the uninterrupted run's ``result`` (content) and ``state``."""

    factory: str
    result: Any
    state: Any
    outcomes: list[PointOutcome]

    @property
    def points(self) -> list[CrashPoint]:
        return [o.point for o in self.outcomes]

    @property
    def failures(self) -> list[PointOutcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def ok(self) -> bool:
        return not self.failures

    def __str__(self) -> str:
        failed = self.failures
        head = (f"crash matrix of {self.factory}: {len(self.outcomes)} kill points, "
                f"{len(self.outcomes) - len(failed)} recovered as the uninterrupted run, {len(failed)} failed")
        return "\n".join([head, *(f"  {o}" for o in self.outcomes)])


class CrashMatrixFailure(AssertionError):
    """A crash matrix found recoveries that did not end as the uninterrupted run (``report`` has them all)."""

    def __init__(self, report: CrashMatrixReport) -> None:
        failed = report.failures
        lines = [f"{len(failed)} of {len(report.outcomes)} kill points of {report.factory} did not recover to the "
                 "uninterrupted run's result and state:"]
        lines += [f"  {o}" for o in failed]
        lines.append(str(report))
        super().__init__("\n".join(lines))
        self.report = report


# -- comparing ------------------------------------------------------------------------------------------
def first_difference(expected: Any, got: Any, path: str = "") -> str | None:
    """Where ``got`` first differs from ``expected`` (type for type, dict keys in any order), or None."""
    if type(expected) is not type(got):
        return f"{path or 'value'}: expected {expected!r} ({type(expected).__name__}), got {got!r} ({type(got).__name__})"
    if isinstance(expected, dict):
        missing, extra = expected.keys() - got.keys(), got.keys() - expected.keys()
        if missing or extra:
            return f"{path or 'value'}: keys missing {sorted(map(repr, missing))}, unexpected {sorted(map(repr, extra))}"
        for key in expected:
            found = first_difference(expected[key], got[key], f"{path}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(expected, (list, tuple)):
        if len(expected) != len(got):
            return f"{path or 'value'}: expected {len(expected)} items, got {len(got)}: {got!r}"
        for i, (a, b) in enumerate(zip(expected, got)):
            found = first_difference(a, b, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(expected, float) and math.isnan(expected) and math.isnan(got):
        return None
    try:
        equal = bool(expected == got)
    except Exception:
        equal = repr(expected) == repr(got)
    return None if equal else f"{path or 'value'}: expected {expected!r}, got {got!r}"


# -- child processes --------------------------------------------------------------------------------
@attrs.frozen
class JobEnd:
    """How a child ended: ``killed`` by SIGKILL, ``timed_out``, or its exit ``code``; its outcome and log."""

    killed: bool
    timed_out: bool
    code: int | None
    data: dict[str, Any]
    log: str


class Children:
    """Runs jobs (``crash_child``) one at a time in fresh child processes; a context manager."""

    def __init__(self, factory: str, setup: dict[str, Any], *, isolation: str, timeout_s: float) -> None:
        if isolation not in ISOLATIONS:
            raise ConfigError(f"isolation must be one of {', '.join(ISOLATIONS)}, got {isolation!r}")
        if isolation == "fork" and not hasattr(os, "fork"):
            isolation = "interpreter"
        self.factory, self.isolation, self.timeout_s = factory, isolation, timeout_s
        self.dir = tempfile.mkdtemp(prefix="spark-ckpt-crash-")
        self.setup = os.path.join(self.dir, "setup.pickle")
        try:
            with open(self.setup, "wb") as fh:
                pickle.dump(setup, fh)
        except Exception as exc:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise ConfigError(f"the inputs and config must be picklable to reach the child processes: {exc}") from exc
        self.env = dict(os.environ)
        paths = [p or os.getcwd() for p in sys.path]
        self.env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        self.server: subprocess.Popen[str] | None = None
        self.jobs = 0

    def __enter__(self) -> Children:
        if self.isolation == "fork":
            self._start_server()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.server is not None:
            self.server.stdin.close()  # type: ignore[union-attr]
            try:
                self.server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
            self.server.stdout.close()  # type: ignore[union-attr]
        shutil.rmtree(self.dir, ignore_errors=True)

    def store(self, name: str) -> str:
        return f"sqlite:///{os.path.join(self.dir, name)}.db"

    def _start_server(self) -> None:
        log = open(os.path.join(self.dir, "template.log"), "w")
        with log:
            self.server = subprocess.Popen(
                [sys.executable, "-m", "spark_ckpt.testing.crash_child", "serve", self.factory],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=self.env,
            )
        hello = self.server.stdout.readline()  # type: ignore[union-attr]
        answer = json.loads(hello) if hello.strip() else {"error": self._tail("template.log")}
        if "error" in answer:
            self.__exit__(None, None, None)
            raise ConfigError(f"could not start the child processes for {self.factory}: {answer['error']}")

    def _tail(self, name: str, size: int = 3000) -> str:
        try:
            with open(os.path.join(self.dir, name), errors="replace") as fh:
                return fh.read()[-size:]
        except OSError:
            return ""

    def run(self, **job: Any) -> JobEnd:
        self.jobs += 1
        name = f"job-{self.jobs}"
        job.update(factory=self.factory, setup=self.setup, timeout_s=self.timeout_s,
                   out=os.path.join(self.dir, f"{name}.out"), log=os.path.join(self.dir, f"{name}.log"))
        if self.server is not None:
            self.server.stdin.write(json.dumps(job) + "\n")  # type: ignore[union-attr]
            self.server.stdin.flush()  # type: ignore[union-attr]
            line = self.server.stdout.readline()  # type: ignore[union-attr]
            if not line:
                raise RuntimeError(f"the template process for {self.factory} died: {self._tail('template.log')}")
            status = json.loads(line)["status"]
            killed_by = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
            code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        else:
            with open(job["log"], "w") as log:
                done = subprocess.run([sys.executable, "-m", "spark_ckpt.testing.crash_child", "job", json.dumps(job)],
                                      stdout=log, stderr=subprocess.STDOUT, env=self.env)
            killed_by = -done.returncode if done.returncode < 0 else None
            code = done.returncode if done.returncode >= 0 else None
        data: dict[str, Any] = {}
        if os.path.exists(job["out"]):
            with open(job["out"], "rb") as fh:
                data = pickle.load(fh)
        return JobEnd(killed=killed_by == signal.SIGKILL, timed_out=killed_by == signal.SIGALRM, code=code,
                      data=data, log=self._tail(f"{name}.log"))


def _failure(end: JobEnd, what: str) -> str:
    if end.timed_out:
        return f"{what} did not finish within the timeout"
    if end.data.get("error"):
        return f"{what} raised {end.data['error']}"
    return f"{what} ended with exit code {end.code}: {end.log[-1500:]}"


def _kinds(points: str | Iterable[str]) -> tuple[str, ...]:
    names = [points] if isinstance(points, str) else list(points)
    kinds: list[str] = []
    for name in names:
        if name in POINT_GROUPS:
            kinds += POINT_GROUPS[name]
        elif name in KINDS:
            kinds.append(name)
        else:
            raise ConfigError(f"unknown kill point kind {name!r}: use {', '.join([*POINT_GROUPS, *KINDS])}")
    return tuple(dict.fromkeys(kinds))


def _setup(inputs: Any, config: Any, store: str | None) -> dict[str, Any]:
    if store is not None and ("://" not in store or store.startswith("memory")):
        raise ConfigError(f"store must be a backend URL that other processes can open (e.g. sqlite:///x.db), got {store!r}")
    return {"inputs": inputs, "config": config}


# -- the matrix -----------------------------------------------------------------------------------------
def crash_matrix(
    factory: Any, inputs: Any = None, *, config: Any = None, store: str | None = None,
    points: str | Iterable[str] = "all", graph_id: str = "crash-matrix", isolation: str = "fork",
    timeout_s: float = 120.0, check: bool = True,
) -> CrashMatrixReport:
    """Kill the graph ``factory`` builds at every kill point of ``points`` in turn and check each recovery
    (see the module docstring). Returns the ``CrashMatrixReport``; with ``check`` (default) raises
    ``CrashMatrixFailure`` (an ``AssertionError``) listing every point that did not recover exactly.

    ``inputs``: the run's input (picklable). ``config``: the ``CheckpointConfig`` to run with (strategy,
    durability, codec...); its store is replaced: by a new SQLite file per run in a temporary directory,
    or by ``store`` (a URL every child can open; each run then gets its own graph id). ``points``:
    "all" (default), "boundaries", "visits", "writes", "calls", a kind (``crash_child.KINDS``) or a list.
    ``timeout_s``: per child process.
    """
    path = factory_path(factory)
    kinds = _kinds(points)
    setup = _setup(inputs, config, store)
    with Children(path, setup, isolation=isolation, timeout_s=timeout_s) as children:
        def where(label: str) -> dict[str, str]:
            if store is None:
                return {"store": children.store(label), "graph_id": graph_id}
            return {"store": store, "graph_id": f"{graph_id}.{label}.{os.getpid()}"}

        reference = children.run(kind="run", **where("reference"))
        if reference.code != 0:
            raise ConfigError(f"the uninterrupted run of {path} failed, so there is nothing to compare with: "
                              + _failure(reference, "it"))
        expected = reference.data
        outcomes = []
        for kind in kinds:
            for ordinal, description in enumerate(expected["trail"][kind]):
                point = CrashPoint(kind, ordinal, description)
                outcomes.append(_try_point(children, point, expected, where(point.label.replace("#", "-"))))
    report = CrashMatrixReport(path, expected["result"], expected["state"], outcomes)
    if check and not report.ok:
        raise CrashMatrixFailure(report)
    return report


def _try_point(children: Children, point: CrashPoint, expected: dict[str, Any], place: dict[str, str]) -> PointOutcome:
    crash = children.run(kind="run", kill_at=[point.kind, point.ordinal], **place)
    if not crash.killed:
        if crash.code == 0:
            return PointOutcome(point, "not_reached", "the run finished without reaching this point: it took "
                                                      "another path than the uninterrupted run")
        return PointOutcome(point, "crash_failed", _failure(crash, "the run to be killed"))
    end = children.run(kind="recover", **place)
    if end.code != 0:
        return PointOutcome(point, "recovery_failed", _failure(end, "recover_and_continue()"))
    got = end.data
    if got.get("nothing_stored"):
        if point == CrashPoint("before_write", 0, point.description):
            return PointOutcome(point, "nothing_stored", "killed before the first checkpoint: the run starts again")
        return PointOutcome(point, "recovery_failed", "nothing was stored for the run, though it was killed after "
                                                      "its first checkpoint write")
    for field in ("result", "state"):
        found = first_difference(expected[field], got[field], field)
        if found:
            return PointOutcome(point, "diverged", found, got.get("replayed", 0), got.get("live", 0))
    status = "already_completed" if got.get("already_completed") else "recovered"
    return PointOutcome(point, status, "", got.get("replayed", 0), got.get("live", 0))


# -- chaos with real kills --------------------------------------------------------------------------------
def run_with_kills(
    factory: Any, inputs: Any = None, *, failure_rate: Any = 0.1, agent_call_failure_rate: Any = 0.0,
    seed: Any = 0, max_attempts: int = 10, config: Any = None, store: str | None = None,
    graph_id: str = "chaos", isolation: str = "fork", timeout_s: float = 120.0,
) -> Any:
    """See ``spark_ckpt.testing.chaos.run_with_kills``."""
    from .chaos import ChaosError, ChaosPlugin, ChaosRun, InjectedFault

    ChaosPlugin(failure_rate=failure_rate, agent_call_failure_rate=agent_call_failure_rate)  # checks the rates
    if not isinstance(max_attempts, int) or max_attempts < 1:
        raise ConfigError(f"run_with_kills max_attempts must be an int >= 1, got {max_attempts!r}")
    path = factory_path(factory)
    setup = _setup(inputs, config, store)
    kills: list[Any] = []
    with Children(path, setup, isolation=isolation, timeout_s=timeout_s) as children:
        place = {"store": store or children.store("chaos"),
                 "graph_id": graph_id if store is None else f"{graph_id}.{os.getpid()}"}
        for attempt in range(max_attempts):
            options = {"seed": [repr(seed), attempt], "failure_rate": failure_rate,
                       "agent_call_failure_rate": agent_call_failure_rate}
            end = children.run(kind="chaos", first=attempt == 0, chaos=options, **place)
            if end.killed:
                where = next((line.split(" at ", 1)[1] for line in reversed(end.log.splitlines())
                              if line.startswith("chaos: killing this process at ")), "an unknown point")
                kills.append(InjectedFault("sigkill", place["graph_id"], where, attempt, attempt))
                continue
            if end.code != 0:
                what = "the run" if attempt == 0 else f"recovery #{attempt}"
                raise AssertionError(_failure(end, f"{what} (after {len(kills)} kills)"))
            data = end.data
            return ChaosRun(result=data["result"], injected=kills, attempts=attempt + 1, state=data["state"])
    raise ChaosError(f"run_with_kills gave up: all {max_attempts} processes were killed (seed {seed!r}); lower "
                     "the failure rate or raise max_attempts")

