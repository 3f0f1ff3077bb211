"""``spark-ckpt approvals list|approve|reject``: the approval requests of waiting executions, resolved
in the store without the graph's code (``spark_ckpt.approvals`` does the work and states its rules).

Invariants: ``list`` only reads; ``approve``/``reject`` write one record under the execution's lease or
nothing (an unknown id, a resolved request, an execution not waiting, a live worker holding it: one
error line, exit 2). The store is closed however they end.
"""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from ..masking import mask_url
from .output import local_time, print_json, table
from .stores import make_codec, open_for, read_only, store_url


def _when(timestamp: Any) -> str:
    return local_time(timestamp) if isinstance(timestamp, (int, float)) else "-"


@read_only
def cmd_approvals_list(args: argparse.Namespace, out: TextIO) -> int:
    from .. import approvals

    url = store_url(args)
    backend = open_for(args, inspect=True)
    try:
        statuses = None if args.all else [approvals.PENDING]
        rows = approvals.list_approvals(backend, make_codec(args), graph_id=args.graph, statuses=statuses)
    finally:
        backend.close()
    if args.json:
        print_json(rows, out)
        return 0
    if not rows:
        print(f"no {'approval requests' if args.all else 'pending approval requests'} in {mask_url(url)}", file=out)
        return 0
    headings = ["approval", "status", "graph", "execution", "action", "node", "created_at", "decided_by"]
    table([[r["approval_id"], r["status"], r["graph"], r["execution"], r["action"],
            f"{r['node']}#{r['visit']}" if r["node"] else "-", _when(r["created_at"]), r["decided_by"] or "-"]
           for r in rows], headings, out)
    return 0


def _resolve(args: argparse.Namespace, out: TextIO, *, approved: bool) -> int:
    from .. import approvals
    from ..config import CheckpointConfig

    backend = open_for(args, inspect=False)
    try:
        done = approvals.resolve_approval(
            backend, make_codec(args), args.approval_id, approved=approved, reviewer=args.by, notes=args.notes,
            graph_id=args.graph, ttl_s=CheckpointConfig().lease_ttl_s,
        )
    finally:
        backend.close()
    if args.json:
        print_json(done, out)
        return 0
    print(f"{done['status']} {done['approval_id']} (execution {done['execution']}, graph {done['graph']}); "
          "continue it with recover_and_continue()", file=out)
    return 0


def cmd_approve(args: argparse.Namespace, out: TextIO) -> int:
    return _resolve(args, out, approved=True)


def cmd_reject(args: argparse.Namespace, out: TextIO) -> int:
    return _resolve(args, out, approved=False)


def add_commands(sub: Any) -> None:
    """The ``approvals`` command and its three subcommands."""
    p = sub.add_parser("approvals", help="list, approve or reject the approval requests of waiting executions")
    actions = p.add_subparsers(dest="approvals_command", metavar="ACTION", required=True)
    q = actions.add_parser("list", help="pending requests (--all: also resolved ones) of waiting executions")
    q.add_argument("--graph", metavar="ID", help="only this graph id")
    q.add_argument("--all", action="store_true", help="also approved and rejected requests")
    q.set_defaults(func=cmd_approvals_list)
    for name, func, verb in (("approve", cmd_approve, "approve"), ("reject", cmd_reject, "reject")):
        q = actions.add_parser(name, help=f"{verb} a pending request; recover_and_continue() then goes on")
        q.add_argument("approval_id", metavar="APPROVAL_ID")
        q.add_argument("--by", metavar="NAME", help="who decided (stored as decided_by)")
        q.add_argument("--notes", metavar="TEXT", help="notes stored with the decision")
        q.add_argument("--graph", metavar="ID", help="only look in this graph id")
        q.set_defaults(func=func)
