"""A process whose run fails with the backend still open exits promptly.

A run that ends in an error (a lost lease, a failing node) raises out of ``asyncio.run`` and
usually never closes the backend its graph opened. Two ways that used to hang the process:

* ``asyncio.run`` cancelled psycopg_pool's async workers while they were connecting; they swallow
  that cancellation and wait on their queue for ever, so ``asyncio.run`` never returned;
* the backend, kept alive by the traceback, was collected during interpreter finalization where
  the sync pool's threads cannot run: 5 s per thread (Python 3.13).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid

import pytest

FAILING_RUN = textwrap.dedent(
    """
    import asyncio, sys
    from spark_ckpt import open_backend

    backend = open_backend(sys.argv[1])

    async def main():
        await backend.alist(execution_id="nothing")
        # calls at once make the async pool grow: it is still connecting when the run fails
        for _ in range(int(sys.argv[2])):
            asyncio.create_task(backend.alist(execution_id="nothing"))
        await asyncio.sleep(float(sys.argv[3]))
        raise RuntimeError("the run failed")

    asyncio.run(main())
    """
)


@pytest.mark.parametrize(("concurrent_calls", "delay_s"), [(0, 0.0), (6, 0.0), (6, 0.002), (12, 0.02)])
def test_a_failed_run_with_the_backend_open_ends_its_process(
        pg_url: str, tmp_path, concurrent_calls: int, delay_s: float) -> None:
    script = tmp_path / "failing_run.py"
    script.write_text(FAILING_RUN)
    child = subprocess.Popen(
        [sys.executable, str(script), pg_url, str(concurrent_calls), str(delay_s)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # a hang, not a speed check: the fixed process exits in well under a second
        _, err = child.communicate(timeout=15)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 1 and "RuntimeError: the run failed" in err, err[-2000:]
    assert "couldn't stop" not in err, err[-2000:]
    assert "error connecting" not in err, err[-2000:]  # a cancelled connect is not reported as an error


CANCEL_ALL_THEN_USE = textwrap.dedent(
    """
    import asyncio, sys
    from spark_ckpt import open_backend

    async def main():
        backend = open_backend(sys.argv[1])
        await backend.alist(execution_id="nothing")
        # a shutdown handler's way: cancel every task, and the loop goes on
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()
        await asyncio.sleep(0.2)
        print(len(await backend.alist(execution_id="nothing")))  # a new pool, not the closed one
        await backend.aclose()

    asyncio.run(main())
    """
)


def test_cancelling_every_task_leaves_the_backend_usable_on_that_loop(pg_url: str, tmp_path) -> None:
    script = tmp_path / "cancel_all.py"
    script.write_text(CANCEL_ALL_THEN_USE)
    out = subprocess.run([sys.executable, str(script), pg_url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "0", out.stderr[-2000:]


RUN_LEFT_IN_THE_BACKGROUND = textwrap.dedent(
    """
    import asyncio, sys
    from spark.graphs import Graph
    from spark.nodes import Node
    from spark_ckpt import CheckpointConfig, checkpointed

    class Slow(Node):
        async def process(self, context):
            print("started", flush=True)
            await asyncio.sleep(60)
            return {}

    async def main():
        graph = checkpointed(Graph(start=Slow(id="slow")), config=CheckpointConfig(
            backend=sys.argv[1], lease_ttl_s=300), graph_id="background")
        asyncio.create_task(graph.run({"go": 1}))
        await asyncio.sleep(float(sys.argv[2]))
        # main returns: asyncio.run cancels the run, which stores its failure and releases its lease

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("delay_s", [0.5, 1.0])
def test_a_run_cancelled_when_the_loop_ends_stores_its_failure_and_releases_its_lease(
        pg_url: str, tmp_path, delay_s: float) -> None:
    from spark_ckpt import open_backend

    script = tmp_path / "background.py"
    script.write_text(RUN_LEFT_IN_THE_BACKGROUND)
    out = subprocess.run([sys.executable, str(script), pg_url, str(delay_s)], capture_output=True, text=True,
                         timeout=60)
    assert "started" in out.stdout, out.stderr[-2000:]
    backend = open_backend(pg_url)
    try:
        (head,) = backend.executions(graph_id="background")
        assert head.status == "failed", (head, out.stderr[-2000:])
        # released, not left to expire in 300 s: another worker takes it at once
        assert backend.acquire_lease(head.execution_id, "another-worker", 30).owner == "another-worker"
    finally:
        backend.close()


FORKING = textwrap.dedent(
    """
    import os, sys
    from spark_ckpt import open_backend

    backend = open_backend(sys.argv[1])
    backend.list(execution_id="nothing")
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # a normal exit: atexit runs in the child
    os.waitpid(pid, 0)
    print("forked", flush=True)
    sys.stdin.readline()  # the parent keeps its connections until told
    """
)


def test_a_forked_child_leaves_its_parents_connections_alone(pg_url: str, tmp_path) -> None:
    import psycopg

    name = f"fork-parent-{uuid.uuid4().hex[:8]}"
    dsn, _, query = pg_url.partition("?")
    script = tmp_path / "forking.py"
    script.write_text(FORKING)
    parent = subprocess.Popen([sys.executable, str(script), f"{dsn}?{query}&application_name={name}"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "forked", parent.stderr.read()[-2000:]
        with psycopg.connect(dsn, autocommit=True) as conn:
            deadline = time.monotonic() + 2
            while True:  # (a session the child ended goes away shortly after)
                (sessions,) = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)).fetchone()
                if sessions == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        assert sessions >= 1, "the child's exit closed the parent's connections"
    finally:
        parent.communicate("\n", timeout=30)
