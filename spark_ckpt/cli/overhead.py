"""``spark-ckpt stats``: what checkpointing cost each execution (the guide's "Monitor Overhead").

One row per execution, read from its newest record alone (its ``extras["writes"]`` totals, see
``spark_ckpt.engine.write_stats``): checkpoints and bytes stored, the total, mean and longest write
time (encoding and the store's put) of the writes that were timed, the run time from the execution's
first checkpoint to its newest, and the overhead: write time / run time.

Invariants: read only; an execution whose newest record holds no totals (an agent's records, or
records written by an older spark-ckpt) or cannot be read here is listed with its figures left empty
and a note saying why, never with made-up figures.
"""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from ..errors import CheckpointNotFoundError, CodecError
from ..masking import mask_url
from .output import print_json, table
from .stores import decode, make_codec, open_for, read_only, store_url

FIGURES = ("checkpoints", "bytes", "writes_timed", "write_s", "mean_write_s", "max_write_s", "run_s", "overhead")


@read_only
def cmd_stats(args: argparse.Namespace, out: TextIO) -> int:
    url = store_url(args)
    backend = open_for(args, inspect=True)
    codec = make_codec(args)
    rows = []
    try:
        heads = backend.executions(graph_id=args.graph, limit=None if args.execution else args.limit)
        for head in heads:
            if args.execution and head.execution_id != args.execution:
                continue
            rows.append(_row(head, *_totals(backend, codec, head)))
    finally:
        backend.close()
    if args.json:
        print_json(rows, out)
        return 0
    if not rows:
        print(f"no executions in {mask_url(url)}", file=out)
        return 0
    table([[r["graph"], r["execution"], r["status"], _shown(r["checkpoints"]), _shown(r["bytes"]),
            _seconds(r["write_s"]), _seconds(r["mean_write_s"]), _seconds(r["max_write_s"]), _seconds(r["run_s"]),
            "-" if r["overhead"] is None else f"{r['overhead'] * 100:.2f}%", r["note"]] for r in rows],
          ["graph", "execution", "status", "checkpoints", "bytes", "write time", "mean write", "max write",
           "run time", "overhead", "note"], out)
    return 0


def _totals(backend: Any, codec: Any, head: Any) -> tuple[dict[str, Any] | None, str]:
    """The newest record's write totals, or None and why there are none."""
    from ..engine.write_stats import EXTRAS_KEY
    from ..model import GRAPH

    if head.kind != GRAPH:
        return None, f"{head.kind} records carry no write times"
    try:
        record = decode(codec, backend.get(head.checkpoint_id))
    except CheckpointNotFoundError:
        return None, "its newest checkpoint was deleted"
    except CodecError as exc:
        return None, f"not readable here: {exc}"
    totals = record.extras.get(EXTRAS_KEY) if isinstance(record.extras, dict) else None
    if not isinstance(totals, dict):
        return None, "written without write times (an older spark-ckpt, or recovered from such a record)"
    return totals, ""


def _row(head: Any, totals: dict[str, Any] | None, note: str) -> dict[str, Any]:
    row: dict[str, Any] = {"graph": head.graph_id, "execution": head.execution_id, "status": head.status}
    row.update(dict.fromkeys(FIGURES))
    row["note"] = note
    if totals is None:
        return row
    number = lambda name: totals.get(name) if isinstance(totals.get(name), (int, float)) else 0  # noqa: E731
    timed, seconds, started = number("timed"), float(number("seconds")), totals.get("started_at")
    row.update(checkpoints=int(number("records")) + 1, bytes=int(number("bytes")) + head.size, writes_timed=timed,
               write_s=seconds, mean_write_s=seconds / timed if timed else None, max_write_s=float(number("max_s")))
    if isinstance(started, (int, float)) and head.created_at >= started:
        run_s = head.created_at - started
        row["run_s"] = run_s
        row["overhead"] = seconds / run_s if run_s > 0 else None
    return row


def _shown(value: Any) -> str:
    return "-" if value is None else str(value)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.2f} ms" if value < 1 else f"{value:.2f} s"
