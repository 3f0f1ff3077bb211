"""A hostile PostgreSQL store: index rows changed behind spark-ckpt's back reach the caller only as
``SparkCkptError`` (backend reads, a checkpointed graph's reads and recovery, the CLI), and a value out
of type or range is reported as ``CorruptIndexError`` naming its row.

A small Spark graph writes real checkpoints once (a completed execution and a failed one, so there
is something to recover); each case copies that schema, changes a column of a checkpoint row or of
an executions index row (seeded random), and calls every reading API. The graph's nodes never read
what they are given, so nothing a damaged row restores can make *user* code raise.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import uuid
from typing import Any

import attrs
import psycopg
import pytest

from spark_ckpt.config import open_backend
from spark_ckpt.errors import CorruptCheckpointError, CorruptIndexError
from spark_ckpt.testing.hostile_stores import Escapes, exercise, write_pristine

SEED = 20_240_612
CASES = int(os.environ.get("HX_PG_ROWS", 40))
TABLES = ("spark_ckpt_checkpoints", "spark_ckpt_executions", "spark_ckpt_leases")


def url_of(dsn: str, schema: str) -> str:
    return f"{dsn}?schema={schema}"


@attrs.define
class Pristine:
    dsn: str
    schema: str
    ids: list[str]  # checkpoint ids, as written
    executions: list[str]


@pytest.fixture(scope="module")
def pristine(pg_dsn):
    """One completed and one failed execution of the graph, in their own schema."""
    schema = f"hx_{uuid.uuid4().hex[:12]}"
    yield Pristine(pg_dsn, schema, *write_pristine(url_of(pg_dsn, schema)))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextlib.contextmanager
def copied(pristine: Pristine):
    """A copy of the pristine schema (migrated by the backend, rows copied); dropped afterwards."""
    schema = f"hx_{uuid.uuid4().hex[:12]}"
    open_backend(url_of(pristine.dsn, schema)).close()  # creates and migrates it
    with psycopg.connect(pristine.dsn, autocommit=True) as conn:
        for table in TABLES:
            conn.execute(f'INSERT INTO "{schema}".{table} SELECT * FROM "{pristine.schema}".{table}')
    try:
        yield schema
    finally:
        with psycopg.connect(pristine.dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# -- changing a row -------------------------------------------------------------------------------------
# Per column: values no sound row holds (``checked`` must refuse them) and values a sound row could
# hold but this one did not (wrong, yet plausible: only SparkCkptError may come of them).
OUT_OF_RANGE: dict[str, list[Any]] = {
    "seq": [-1, -7, -(2**63)],
    "size": [-1, -(2**63)],
    "created_at": [math.nan, math.inf, -math.inf],
    "status": ["", "paused", "RUNNING", "completed ", "done"],
    "kind": ["", "task", "GRAPH", "agents"],
}
PLAUSIBLE: dict[str, list[Any]] = {
    "seq": [0, 1, 3, 2**31, 2**63 - 1],
    "size": [0, 1, 2**63 - 1],
    "created_at": [0.0, -1.0, 1e308, -1e308, 4e9],
    "status": ["running", "completed", "failed", "interrupted"],
    "kind": ["agent", "graph"],
    "checkpoint_id": ["", "x", "ck-nowhere-0"],
    "graph_id": ["", "other", "hostile"],
    "execution_id": ["", "elsewhere"],
    "blob": [b"", b"\x00\xff", b"SPCK" + bytes(40)],
    "tag": [None, b"", b"\x00" * 32],
}
HEADER_COLUMNS = ("checkpoint_id", "graph_id", "execution_id", "seq", "created_at", "status", "kind", "size")


@attrs.define
class Change:
    table: str
    column: str
    value: Any
    out_of_range: bool

    def __str__(self) -> str:
        return f"{self.table}.{self.column} = {self.value!r:.40}"


def damage(dsn: str, schema: str, rng: random.Random, ids: list[str]) -> Change:
    """One column of one row of the checkpoints table or the executions index, set to a random value."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(20):
            table = "spark_ckpt_checkpoints" if rng.random() < 0.65 else "spark_ckpt_executions"
            key = "checkpoint_id" if table == "spark_ckpt_checkpoints" else "execution_id"
            rows = [r for (r,) in conn.execute(f'SELECT {key} FROM "{schema}".{table} ORDER BY {key}')]
            row = rng.choice(rows)
            if rng.random() < 0.6:
                column = rng.choice(sorted(OUT_OF_RANGE))
                value, out_of_range = rng.choice(OUT_OF_RANGE[column]), True
            else:
                extra = "blob" if table == "spark_ckpt_checkpoints" else "tag"
                column = rng.choice([*HEADER_COLUMNS, extra])
                value = rng.choice([*PLAUSIBLE[column], *(ids if column == "checkpoint_id" else [])])
                out_of_range = False
            try:
                conn.execute(f'UPDATE "{schema}".{table} SET {column} = %s WHERE {key} = %s', [value, row])
            except psycopg.errors.UniqueViolation:
                continue
            return Change(table, column, value, out_of_range)
    raise AssertionError("no change could be made")




@pytest.fixture
def own_config(monkeypatch):
    """No SPARK_CKPT_* settings of the environment (but the test servers') reach the store or the CLI."""
    for name in list(os.environ):
        if name.startswith("SPARK_CKPT_") and not name.startswith("SPARK_CKPT_TEST_"):
            monkeypatch.delenv(name)


def test_only_spark_errors_reach_the_caller(pristine, own_config) -> None:
    """Seeded random changes to index rows: every API and CLI command works or raises (prints) a
    SparkCkptError; a value out of type or range is found (CorruptIndexError), and the CLI says so."""
    rng = random.Random(SEED)
    escapes = Escapes()
    missed: list[str] = []
    for n in range(CASES):
        with copied(pristine) as schema:
            change = damage(pristine.dsn, schema, rng, pristine.ids)
            case = f"case {n} ({change})"
            escapes.corrupt_index = False
            codes = exercise(pristine, url_of(pristine.dsn, schema), case, escapes)
        if change.out_of_range:
            listing = "list" if change.table == "spark_ckpt_checkpoints" else "list --executions"
            if not escapes.corrupt_index or codes[listing] != 2 or codes["verify"] not in (1, 2):
                missed.append(f"{case}: corrupt index raised: {escapes.corrupt_index}, exit codes {codes}")
    assert not escapes.found, f"{len(escapes.found)} escaped:\n\n" + "\n\n".join(escapes.found[:5])
    assert not missed, f"{len(missed)} out-of-range values not reported:\n" + "\n".join(missed[:10])


@pytest.mark.parametrize("table, column, value, problem", [
    ("spark_ckpt_checkpoints", "seq", -1, "seq is -1"),
    ("spark_ckpt_checkpoints", "created_at", math.nan, "created_at is nan"),
    ("spark_ckpt_checkpoints", "status", "paused", "status is 'paused'"),
    ("spark_ckpt_checkpoints", "kind", "task", "kind is 'task'"),
    ("spark_ckpt_checkpoints", "size", -5, "size is -5"),
    ("spark_ckpt_executions", "seq", -3, "seq is -3"),
    ("spark_ckpt_executions", "status", "paused", "status is 'paused'"),
    ("spark_ckpt_executions", "created_at", math.inf, "created_at is inf"),
])
def test_a_damaged_row_names_itself(pristine, table, column, value, problem) -> None:
    """One row out of range: reading it raises CorruptIndexError (a CorruptCheckpointError) naming the
    row, the table, the problem and what to do; no other row is affected."""
    victim = pristine.ids[1] if table == "spark_ckpt_checkpoints" else pristine.executions[0]
    key = "checkpoint_id" if table == "spark_ckpt_checkpoints" else "execution_id"
    with copied(pristine) as schema:
        with psycopg.connect(pristine.dsn, autocommit=True) as conn:
            conn.execute(f'UPDATE "{schema}".{table} SET {column} = %s WHERE {key} = %s', [value, victim])
        backend = open_backend(url_of(pristine.dsn, schema))
        try:
            if table == "spark_ckpt_checkpoints":
                reads = [lambda: backend.get(victim), backend.list]
                backend.get(pristine.ids[0])  # (another row still reads)
            else:
                reads = [lambda: backend.execution_head(victim), backend.executions]
                backend.execution_head(pristine.executions[1])
            for read in reads:
                with pytest.raises(CorruptCheckpointError) as raised:
                    read()
                assert isinstance(raised.value, CorruptIndexError)
                message = str(raised.value)
                assert victim in message and problem in message and table in message and "backup" in message
        finally:
            backend.close()


def test_a_header_no_store_could_read_back_is_refused(pristine) -> None:
    """``put`` refuses a header out of type or range (BackendError), before anything is written."""
    from spark_ckpt.errors import BackendError
    from spark_ckpt.testing.conformance import make_header

    with copied(pristine) as schema:
        backend = open_backend(url_of(pristine.dsn, schema))
        try:
            before = len(backend.list())
            for change in ({"seq": -1}, {"created_at": math.nan}, {"status": "paused"}, {"size": 2**63}):
                header = attrs.evolve(make_header(0, execution_id="e-new"), **change)
                with pytest.raises(BackendError, match="nothing was written"):
                    backend.put(header, b"x")
            assert len(backend.list()) == before and backend.execution_head("e-new") is None
        finally:
            backend.close()
