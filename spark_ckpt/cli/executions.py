"""``spark-ckpt list --executions [--status S]``: one row per execution, across graph ids (read only)."""

from __future__ import annotations

import argparse
from typing import TextIO

from ..executions import STATUS_FILTERS, list_executions
from ..masking import mask_url
from .output import local_time, print_json, table
from .stores import open_for, store_url

STATUS_HELP = f"only executions with this status ({', '.join(STATUS_FILTERS)}); implies --executions"


def cmd_list_executions(args: argparse.Namespace, out: TextIO) -> int:
    url = store_url(args)
    backend = open_for(args, inspect=True)
    try:
        summaries = list_executions(backend, graph_id=args.graph, status=args.status,
                                    limit=None if args.execution else args.limit)
    finally:
        backend.close()
    if args.execution:
        summaries = [s for s in summaries if s.execution_id == args.execution]
    rows = [
        {"execution": s.execution_id, "graph": s.graph_id, "kind": s.kind, "status": s.status,
         "checkpoints": s.checkpoints, "last_seq": s.last_seq, "last_checkpoint": s.last_checkpoint,
         "started_at": local_time(s.started_at) if s.started_at is not None else None,
         "updated_at": local_time(s.updated_at)}
        for s in summaries
    ]
    if args.json:
        print_json(rows, out)
        return 0
    if not rows:
        which = f"{args.status} " if args.status else ""
        print(f"no {which}executions in {mask_url(url)}", file=out)
        return 0
    keys = ["execution", "graph", "kind", "status", "checkpoints", "started_at", "updated_at"]
    table([[r[k] if r[k] is not None else "-" for k in keys] for r in rows], keys, out)
    return 0
