"""A hostile S3 store: header metadata, head objects, pointers and lease objects changed behind
spark-ckpt's back reach the caller only as ``SparkCkptError`` (backend reads, a checkpointed graph's
reads and recovery, the CLI), and a header or head that does not parse, or holds a value out of type
or range, is reported as ``CorruptIndexError`` naming its object.

A small Spark graph writes real checkpoints once (a completed execution and a failed one, so there
is something to recover); each case copies that prefix, overwrites one object's metadata or body
(seeded random), and calls every reading API. The graph's nodes never read what they are given, so
nothing a damaged object restores can make *user* code raise.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import attrs
import boto3
import pytest

from spark_ckpt.config import open_backend
from spark_ckpt.errors import CorruptCheckpointError, CorruptIndexError
from spark_ckpt.testing.hostile_stores import Escapes, exercise, write_pristine

SEED = 20_240_613
CASES = int(os.environ.get("HX_S3_ROWS", 30))  # ~1.5 s each (a copy of the store, three CLI commands)
BUCKET = "spark-ckpt-tests"
HEADER_META = "spark-ckpt-header"


@attrs.define
class Pristine:
    endpoint: str
    prefix: str
    ids: list[str]  # checkpoint ids, as written
    executions: list[str]


def url_of(endpoint: str, prefix: str) -> str:
    return f"s3://{BUCKET}/{prefix}?endpoint_url={endpoint}&region=us-east-1&create_bucket=true"


@pytest.fixture(scope="module")
def s3(s3_endpoint):
    client = boto3.session.Session().client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    yield client
    client.close()


def keys_under(s3: Any, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/")
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def remove(s3: Any, prefix: str) -> None:
    keys = keys_under(s3, prefix)
    for start in range(0, len(keys), 1000):
        s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]]})


@pytest.fixture(scope="module")
def pristine(s3_endpoint, s3):
    """One completed and one failed execution of the graph, under their own prefix."""
    prefix = f"hx-{uuid.uuid4().hex[:12]}"
    yield Pristine(s3_endpoint, prefix, *write_pristine(url_of(s3_endpoint, prefix)))
    remove(s3, prefix)


@contextlib.contextmanager
def copied(s3: Any, pristine: Pristine):
    """A copy of every object under the pristine prefix (metadata included); removed afterwards."""
    prefix = f"hx-{uuid.uuid4().hex[:12]}"

    def copy(key: str) -> None:
        new = prefix + key[len(pristine.prefix):]
        if new.split("/")[1] == "ids":  # a pointer holds the whole key of its checkpoint
            body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
            s3.put_object(Bucket=BUCKET, Key=new, Body=(prefix + body[len(pristine.prefix):]).encode())
        else:
            s3.copy_object(Bucket=BUCKET, Key=new, CopySource={"Bucket": BUCKET, "Key": key}, MetadataDirective="COPY")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(copy, keys_under(s3, pristine.prefix)))
    try:
        yield prefix
    finally:
        remove(s3, prefix)


# -- changing an object ---------------------------------------------------------------------------------
HEADER_FIELDS = ("checkpoint_id", "graph_id", "execution_id", "seq", "created_at", "status", "kind", "size")
MALFORMED = ["", "[", "{", "[1,2", "null", "true", "7", '"text"', "{}", '{"seq": 1}', "[]", "[1,2,3]",
             '["a","b","c",0,0.5,"running","graph",0,null,"extra"]', "[" * 40 + "]" * 40, "NaN", "[NaN]"]
#: values no sound header field holds, per field
OUT_OF_RANGE: dict[str, list[Any]] = {
    "checkpoint_id": [None, 5, [], {}, True],
    "graph_id": [None, 1.5, ["hostile"]],
    "execution_id": [None, 0, {"id": "x"}],
    "seq": [-1, "3", 1.5, None, True, [], 2.0, -(2**63)],
    "created_at": ["soon", None, True, [], float("nan"), float("inf"), float("-inf"), 10**400],
    "status": ["paused", "", None, 3, "RUNNING"],
    "kind": ["task", "", None, 0],
    "size": [-1, "10", 1.5, None, False],
}
#: values a sound header could hold but this one did not: wrong, yet only SparkCkptError may come of them
PLAUSIBLE: dict[str, list[Any]] = {
    "checkpoint_id": ["", "x", "ck-nowhere-0"],
    "graph_id": ["", "other"],
    "execution_id": ["", "elsewhere"],
    "seq": [0, 1, 4, 2**31, 10**19],
    "created_at": [0.0, -1.0, 1e308, 4e9, 3],
    "status": ["running", "completed", "failed", "interrupted"],
    "kind": ["agent", "graph"],
    "size": [0, 1, 2**63],
}


@attrs.define
class Change:
    key: str
    what: str
    out_of_range: bool  # a header or head that must be reported as CorruptIndexError

    def __str__(self) -> str:
        return f"{self.key.split('/', 1)[1]}: {self.what:.60}"


def changed_fields(fields: list[Any], rng: random.Random, ids: list[str]) -> tuple[str, str, bool]:
    """The JSON text of ``fields`` (a header, or a head with its tag last) after one random change."""
    if rng.random() < 0.25:
        text = rng.choice(MALFORMED)
        return text, f"malformed {text!r}", True
    fields = list(fields)
    if len(fields) == 9 and rng.random() < 0.15:
        fields[8] = rng.choice(["zz", 5, ["00"], "0"])
        return json.dumps(fields), f"tag = {fields[8]!r}", True
    if rng.random() < 0.1:
        del fields[rng.randrange(len(fields))]
        return json.dumps(fields), "a field missing", True
    index = rng.randrange(8)
    name = HEADER_FIELDS[index]
    if rng.random() < 0.6:
        fields[index], out_of_range = rng.choice(OUT_OF_RANGE[name]), True
    else:
        fields[index] = rng.choice([*PLAUSIBLE[name], *(ids if name == "checkpoint_id" else [])])
        out_of_range = False
    return json.dumps(fields), f"{name} = {fields[index]!r}", out_of_range


def damage(s3: Any, prefix: str, rng: random.Random, ids: list[str]) -> Change:
    """One object rewritten: a checkpoint's header metadata, a head object, a pointer or a lease."""
    keys = keys_under(s3, prefix)
    present = {k.split("/")[1] for k in keys}
    kinds = [(kind, weight) for kind, weight in {"ckpt": 55, "heads": 25, "ids": 8, "execs": 4, "leases": 8}.items()
             if kind in present]
    kind = rng.choices([k for k, _ in kinds], weights=[w for _, w in kinds])[0]
    key = rng.choice([k for k in keys if k.split("/")[1] == kind])
    found = s3.get_object(Bucket=BUCKET, Key=key)
    body, metadata = found["Body"].read(), dict(found["Metadata"])
    if kind == "ckpt":
        if rng.random() < 0.1:
            metadata.pop(HEADER_META)
            what, out_of_range = "header metadata missing", True
        else:
            metadata[HEADER_META], what, out_of_range = changed_fields(json.loads(metadata[HEADER_META]), rng, ids)
        if not metadata.get(HEADER_META, "x"):  # (an empty value is not kept by every server)
            metadata[HEADER_META] = " "
    elif kind == "heads":
        text, what, out_of_range = changed_fields(json.loads(body), rng, ids)
        body = text.encode()
        if rng.random() < 0.05:
            body, what, out_of_range = b"\xff\xfe[", "not UTF-8", True
    elif kind == "leases":
        lease = json.loads(body)
        choice = rng.random()
        if choice < 0.3:
            body, what = rng.choice([b"", b"{", b"[]", b"null", b"\xff\xfe"]), "malformed"
        elif choice < 0.5:
            lease.pop(rng.choice(sorted(lease)))
            body, what = json.dumps(lease).encode(), "a field missing"
        else:
            field = rng.choice(sorted(lease))
            lease[field] = rng.choice([None, "x", -1, 1.5, [], float("nan"), 10**400, True])
            body, what = json.dumps(lease).encode(), f"{field} = {lease[field]!r}"
        out_of_range = False  # (leases are not index rows: a damaged one refuses recovery, listing ignores it)
    else:  # a pointer: an id's key, or an execution's graph
        body = rng.choice([b"", b"\xff\xfe", b"nowhere", *(k.encode() for k in keys if "/ckpt/" in k)])
        what, out_of_range = f"pointer = {body!r}", False
    s3.put_object(Bucket=BUCKET, Key=key, Body=body, Metadata=metadata)
    return Change(key, what, out_of_range)




@pytest.fixture
def own_config(monkeypatch):
    """No SPARK_CKPT_* settings of the environment (but the test servers') reach the store or the CLI."""
    for name in list(os.environ):
        if name.startswith("SPARK_CKPT_") and not name.startswith("SPARK_CKPT_TEST_"):
            monkeypatch.delenv(name)


def test_only_spark_errors_reach_the_caller(s3, pristine, own_config) -> None:
    """Seeded random changes to the objects of a store: every API and CLI command works or raises
    (prints) a SparkCkptError; a header or head that does not parse or is out of type or range is
    found (CorruptIndexError), and the CLI says so."""
    rng = random.Random(SEED)
    escapes = Escapes()
    missed: list[str] = []
    for n in range(CASES):
        with copied(s3, pristine) as prefix:
            change = damage(s3, prefix, rng, pristine.ids)
            case = f"case {n} ({change})"
            escapes.corrupt_index = False
            codes = exercise(pristine, url_of(pristine.endpoint, prefix), case, escapes)
        if change.out_of_range:
            listing = "list" if "/ckpt/" in change.key else "list --executions"
            if not escapes.corrupt_index or codes[listing] != 2 or codes["verify"] not in (1, 2):
                missed.append(f"{case}: corrupt index raised: {escapes.corrupt_index}, exit codes {codes}")
    assert not escapes.found, f"{len(escapes.found)} escaped:\n\n" + "\n\n".join(escapes.found[:5])
    assert not missed, f"{len(missed)} damaged headers not reported:\n" + "\n".join(missed[:10])


def rewrite_header(s3: Any, key: str, text: str | None) -> None:
    found = s3.get_object(Bucket=BUCKET, Key=key)
    metadata = {k: v for k, v in found["Metadata"].items() if k != HEADER_META}
    if text is not None:
        metadata[HEADER_META] = text
    s3.put_object(Bucket=BUCKET, Key=key, Body=found["Body"].read(), Metadata=metadata)


@pytest.mark.parametrize("change, problem", [
    (lambda f: [*f[:3], -1, *f[4:]], "seq is -1"),
    (lambda f: [*f[:3], "3", *f[4:]], "seq is '3'"),
    (lambda f: [*f[:4], None, *f[5:]], "created_at is None"),
    (lambda f: [*f[:5], "paused", *f[6:]], "status is 'paused'"),
    (lambda f: [*f[:6], "task", f[7]], "kind is 'task'"),
    (lambda f: [*f[:7], -5], "size is -5"),
    (lambda f: f[:7], "not a list of 8 fields"),
    (lambda f: "[1,", "not JSON"),
    (lambda f: None, "it is missing"),
])
def test_a_damaged_header_names_its_object(s3, pristine, change, problem) -> None:
    """A checkpoint object whose header metadata is damaged: ``get`` and ``list`` raise CorruptIndexError
    (a CorruptCheckpointError) naming the object, the problem and what to do."""
    with copied(s3, pristine) as prefix:
        key = [k for k in keys_under(s3, prefix) if k.split("/")[1] == "ckpt"][1]
        original = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Metadata"][HEADER_META])
        victim, fields = original[0], change(original)
        rewrite_header(s3, key, fields if fields is None or isinstance(fields, str) else json.dumps(fields))
        backend = open_backend(url_of(pristine.endpoint, prefix))
        try:
            backend.get(next(i for i in pristine.ids if i != victim))  # (another checkpoint still reads)
            for read in (lambda: backend.get(victim), backend.list):
                with pytest.raises(CorruptCheckpointError) as raised:
                    read()
                assert isinstance(raised.value, CorruptIndexError)
                message = str(raised.value)
                assert key in message and problem in message and "backup" in message
        finally:
            backend.close()


def test_a_damaged_head_object_names_itself(s3, pristine) -> None:
    """A head object that is not a head: ``execution_head`` and ``executions`` raise CorruptIndexError
    naming it."""
    with copied(s3, pristine) as prefix:
        backend = open_backend(url_of(pristine.endpoint, prefix))
        try:
            execution_id = pristine.executions[0]
            key = backend._head_key(execution_id)
            fields = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
            for body, problem in ((json.dumps([*fields[:5], "paused", *fields[6:]]), "status is 'paused'"),
                                  (json.dumps([*fields[:8], "not hex"]), "not hex digits"),
                                  ("{}", "not a list of 9 fields")):
                s3.put_object(Bucket=BUCKET, Key=key, Body=body.encode())
                for read in (lambda: backend.execution_head(execution_id), backend.executions):
                    with pytest.raises(CorruptIndexError) as raised:
                        read()
                    assert key in str(raised.value) and problem in str(raised.value)
        finally:
            backend.close()


def test_a_header_no_store_could_read_back_is_refused(s3_url) -> None:
    """``put`` refuses a header out of type or range (BackendError), before anything is written."""
    import math

    from spark_ckpt.errors import BackendError
    from spark_ckpt.testing.conformance import make_header

    backend = open_backend(s3_url)
    try:
        for change in ({"seq": -1}, {"created_at": math.nan}, {"status": "paused"}, {"seq": 10**20}):
            header = attrs.evolve(make_header(0, execution_id="e-new"), **change)
            with pytest.raises(BackendError, match="nothing was written"):
                backend.put(header, b"x")
        assert keys_under(backend._s3, backend.prefix) == []
    finally:
        backend.close()
