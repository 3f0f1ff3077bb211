"""Backend latency and throughput: put/get p50/p99, stored bytes per checkpoint, 8 concurrent writers.

    python benchmarks/bench_backends.py                   # memory, file, sqlite (+ pg/s3 if configured)
    python benchmarks/bench_backends.py --start-servers   # also start a throwaway PostgreSQL / moto S3
    python benchmarks/bench_backends.py --quick           # fewer samples

PostgreSQL and S3 are used when ``SPARK_CKPT_TEST_PG_DSN`` / ``SPARK_CKPT_TEST_S3_ENDPOINT`` name a
server (or with ``--start-servers``); otherwise they are skipped. Each blob is a real encoded
checkpoint (codec envelope, JSON, incompressible content) of about 1 KB, 100 KB or 1 MB. "Stored
bytes" is how much the store grew per checkpoint (files on disk, database size, object sizes),
so it includes each backend's own overhead. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from spark_ckpt.backends.file import FileBackend
from spark_ckpt.backends.memory import MemoryBackend
from spark_ckpt.backends.sqlite import SqliteBackend
from spark_ckpt.codec import Codec, Identity
from spark_ckpt.model import CheckpointHeader

SIZES = {"1 KB": 1024, "100 KB": 100 * 1024, "1 MB": 1024 * 1024}
WRITERS = 8


def make_blob(size: int, identity: Identity) -> bytes:
    text = base64.b64encode(os.urandom(size * 3 // 4)).decode()[: max(0, size - 150)]
    return Codec().encode_data({"state": text}, identity)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def dir_size(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


class Target:
    """One backend to measure: how to open a fresh store and how to measure its size."""

    def __init__(self, name: str, open_store: Callable[[], Any], size_of: Callable[[Any], int] | None) -> None:
        self.name, self.open_store, self.size_of = name, open_store, size_of


def local_targets(tmp: Path) -> list[Target]:
    def file_store() -> FileBackend:
        return FileBackend(tmp / f"file-{uuid.uuid4().hex[:8]}")

    def sqlite_store() -> SqliteBackend:
        return SqliteBackend(tmp / f"sqlite-{uuid.uuid4().hex[:8]}.db")

    def sqlite_size(store: SqliteBackend) -> int:
        path = Path(store.path)
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))

    return [
        Target("memory", MemoryBackend, None),
        Target("file", file_store, lambda s: dir_size(Path(s.root))),
        Target("sqlite", sqlite_store, sqlite_size),
    ]


def postgres_target(dsn: str) -> Target:
    from spark_ckpt_postgres import PostgresBackend

    def open_store() -> Any:
        return PostgresBackend.from_url(f"{dsn}?schema=bench_{uuid.uuid4().hex[:8]}&pool_max_size={WRITERS + 2}")

    def size_of(store: Any) -> int:
        query = f"SELECT pg_total_relation_size('\"{store.schema}\".spark_ckpt_checkpoints')"
        return store._run(lambda conn, _: conn.execute(query).fetchone()[0])

    return Target("postgres", open_store, size_of)


def s3_target(endpoint: str) -> Target:
    from spark_ckpt_s3 import S3Backend
    from spark_ckpt_s3.testing import set_test_credentials

    set_test_credentials()

    def open_store() -> Any:
        return S3Backend.from_url(
            f"s3://spark-ckpt-bench/{uuid.uuid4().hex[:8]}?endpoint_url={endpoint}&region=us-east-1&create_bucket=true"
        )

    def size_of(store: Any) -> int:
        return sum(o["Size"] for o in store._objects(store.prefix + "/"))

    return Target("s3 (moto)" if "127.0.0.1" in endpoint else "s3", open_store, size_of)


def measure_latency(target: Target, size: int, count: int) -> dict[str, float]:
    store = target.open_store()
    try:
        execution = f"lat-{uuid.uuid4().hex[:8]}"
        blobs = [make_blob(size, Identity("bench", execution, seq)) for seq in range(count)]
        before = target.size_of(store) if target.size_of else 0
        puts, gets = [], []
        for seq, blob in enumerate(blobs):
            header = CheckpointHeader(f"{execution}-{seq}", "bench", execution, seq, time.time(), size=len(blob))
            start = time.perf_counter()
            store.put(header, blob)
            puts.append(time.perf_counter() - start)
        for seq in range(count):
            start = time.perf_counter()
            store.get(f"{execution}-{seq}")
            gets.append(time.perf_counter() - start)
        grown = (target.size_of(store) - before) if target.size_of else sum(map(len, blobs))
        return {
            "put_p50": percentile(puts, 0.5) * 1e3, "put_p99": percentile(puts, 0.99) * 1e3,
            "get_p50": percentile(gets, 0.5) * 1e3, "get_p99": percentile(gets, 0.99) * 1e3,
            "blob": statistics.mean(map(len, blobs)), "stored": grown / count,
        }
    finally:
        store.close()


def measure_throughput(target: Target, writers: int, per_writer: int) -> float:
    """Checkpoints per second with ``writers`` threads, each writing its own execution (1 KB)."""
    store = target.open_store()
    try:
        blobs = {
            w: [make_blob(1024, Identity("bench", f"w{w}", seq)) for seq in range(per_writer)] for w in range(writers)
        }
        barrier = threading.Barrier(writers + 1)
        errors: list[BaseException] = []

        def write(w: int) -> None:
            barrier.wait()
            try:
                for seq, blob in enumerate(blobs[w]):
                    store.put(CheckpointHeader(f"w{w}-{seq}", "bench", f"w{w}", seq, time.time(), size=len(blob)), blob)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        for thread in threads:
            thread.start()
        barrier.wait()
        start = time.perf_counter()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
        if errors:
            raise errors[0]
        return writers * per_writer / elapsed
    finally:
        store.close()


def human(n: float) -> str:
    return f"{n / 1024:.1f} KB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--start-servers", action="store_true", help="start a throwaway PostgreSQL / moto S3")
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    args = parser.parse_args(argv)
    scale = 0.25 if args.quick else 1.0
    counts = {"1 KB": int(200 * scale), "100 KB": int(100 * scale), "1 MB": int(40 * scale)}
    tmp = Path(tempfile.mkdtemp(prefix="spark-ckpt-bench-"))
    cleanups: list[Callable[[], None]] = [lambda: shutil.rmtree(tmp, ignore_errors=True)]
    targets = local_targets(tmp)
    skipped = []
    try:
        dsn = os.environ.get("SPARK_CKPT_TEST_PG_DSN")
        if not dsn and args.start_servers:
            from spark_ckpt_postgres.testing import ThrowawayPostgres

            cluster = ThrowawayPostgres().start()
            cleanups.append(cluster.destroy)
            dsn = cluster.dsn
        if dsn:
            targets.append(postgres_target(dsn))
        else:
            skipped.append("postgres (set SPARK_CKPT_TEST_PG_DSN or pass --start-servers)")
        endpoint = os.environ.get("SPARK_CKPT_TEST_S3_ENDPOINT")
        if not endpoint and args.start_servers:
            from spark_ckpt_s3.testing import MotoS3Server

            server = MotoS3Server().start()
            cleanups.append(server.stop)
            endpoint = server.endpoint
        if endpoint:
            targets.append(s3_target(endpoint))
        else:
            skipped.append("s3 (set SPARK_CKPT_TEST_S3_ENDPOINT or pass --start-servers)")

        print("| backend | state | put p50 | put p99 | get p50 | get p99 | blob | stored per checkpoint |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for target in targets:
            for label, size in SIZES.items():
                r = measure_latency(target, size, counts[label])
                print(
                    f"| {target.name} | {label} | {r['put_p50']:.2f} ms | {r['put_p99']:.2f} ms | "
                    f"{r['get_p50']:.2f} ms | {r['get_p99']:.2f} ms | {human(r['blob'])} | {human(r['stored'])} |",
                    flush=True,
                )
        print()
        print(f"| backend | 1 writer | {WRITERS} writers (threads) | speed-up |")
        print("|---|---:|---:|---:|")
        per_writer = int(60 * scale)
        for target in targets:
            one = measure_throughput(target, 1, per_writer * 2)
            many = measure_throughput(target, WRITERS, per_writer)
            print(f"| {target.name} | {one:,.0f} ckpt/s | {many:,.0f} ckpt/s | {many / one:.1f}x |", flush=True)
        if skipped:
            print("\nskipped: " + "; ".join(skipped))
        print(f"\n1 KB checkpoints for throughput; Python {sys.version.split()[0]}, {os.cpu_count()} CPUs.")
    finally:
        for cleanup in reversed(cleanups):
            cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
