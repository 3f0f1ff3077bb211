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
