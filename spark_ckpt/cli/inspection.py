"""The read-only commands: ``list``, ``show`` and ``verify``.

Invariants: none of them writes to the store (``verify`` reads every record, including the earlier
ones a changes-only record needs, but repairs nothing), and the store is closed however they end.
``verify`` exits 1 when anything is corrupt, incomplete, missing or unreadable here,
and tells those apart: *corrupt* (fails its integrity or identity check, or its index row is
damaged: a listing stopped at one is reported and ends the check), *unreadable here* (needs a
key, codec layer or limit this process lacks), *incomplete* (decodes, but an earlier record it is
built on is gone or damaged), *missing* (the executions index names a newer record than is stored).
"""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from ..errors import CheckpointNotFoundError, CodecError, CorruptCheckpointError, CorruptIndexError, GraphMismatchError
from ..masking import mask_url
from .output import local_time, preview, print_json, table
from .stores import UNREADABLE_HERE, decode, make_codec, open_for, read_only, store_url


def _header_data(h: Any) -> dict[str, Any]:
    return {
        "id": h.checkpoint_id, "graph": h.graph_id, "execution": h.execution_id, "seq": h.seq,
        "status": h.status, "kind": h.kind, "size": h.size, "created_at": local_time(h.created_at),
    }


# -- list ------------------------------------------------------------------------------------------
@read_only
def cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    if args.executions or getattr(args, "status", None):
        from .executions import cmd_list_executions

        return cmd_list_executions(args, out)
    url = store_url(args)
    backend = open_for(args, inspect=True)
    try:
        headers = backend.list(graph_id=args.graph, execution_id=args.execution, limit=args.limit)
        rows = [_header_data(h) for h in headers]
    finally:
        backend.close()
    if args.json:
        print_json(rows, out)
        return 0
    if not rows:
        print(f"no checkpoints in {mask_url(url)}", file=out)
        return 0
    keys = list(rows[0])
    keys.remove("kind")
    table([[r[k] for k in keys] for r in rows], keys, out)
    return 0


# -- show ------------------------------------------------------------------------------------------
@read_only
def cmd_show(args: argparse.Namespace, out: TextIO) -> int:
    from ..codec import to_data
    from ..model import GraphCheckpoint

    if getattr(args, "whole", False):
        from .history import show_whole

        return show_whole(args, out)
    if names_a_file(args.checkpoint_id):
        header, content = _read_checkpoint_file(args, args.checkpoint_id)
    else:
        backend = open_for(args, inspect=True)
        try:
            stored = backend.get(args.checkpoint_id)
        finally:
            backend.close()
        header, content = stored.header, decode(make_codec(args), stored)
    if args.json:
        data = to_data(content) if isinstance(content, GraphCheckpoint) else content
        print_json({"header": _header_data(header), "checkpoint": data}, out)
        return 0
    if isinstance(content, GraphCheckpoint):
        _show_graph_checkpoint(header, content, out)
    else:
        _show_other(header, content, out)
    return 0


def names_a_file(argument: str) -> bool:
    """``show``'s argument is a checkpoint file (``save_checkpoint(path)``) rather than a stored id
    when it ends in ``.ckpt`` or names an existing file."""
    import os

    return argument.endswith(".ckpt") or os.path.isfile(argument)


def _read_checkpoint_file(args: argparse.Namespace, path: str) -> tuple[Any, Any]:
    """The header and record of a file ``save_checkpoint`` wrote (one encoded record, whole), decoded
    with the keys of the options as a stored one is; no store is opened."""
    from ..engine.records import decode_record

    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as exc:
        raise CheckpointNotFoundError(f"cannot read checkpoint file {path!r}: {exc.strerror or exc}") from None
    record = decode_record(make_codec(args), blob)
    return record.header(size=len(blob)), record


def _show_graph_checkpoint(header: Any, ckpt: Any, out: TextIO) -> None:
    p = lambda *a: print(*a, file=out)  # noqa: E731
    meta = ckpt.graph_metadata
    p(f"checkpoint   {ckpt.checkpoint_id}")
    p(f"graph        {meta.graph_id} (version {meta.graph_version})")
    p(f"execution    {meta.execution_id}")
    p(f"seq          {ckpt.seq}   superstep {ckpt.superstep}   status {ckpt.status}")
    p(f"created      {local_time(ckpt.timestamp)}   {header.size} bytes stored")
    p(f"current node {ckpt.current_node or '-'}")
    if ckpt.run_input is not None:
        p(f"run input    {preview(ckpt.run_input)}")
    if ckpt.result is not None:
        p(f"result       {preview(ckpt.result)}")

    changed = " changed since the previous checkpoint" if ckpt.partial_state else ""
    p(f"\ngraph state ({len(ckpt.graph_state)} keys{changed})")
    if ckpt.partial_state:
        p("  (only what changed is stored here; the rest is in this execution's earlier checkpoints)")
    for key, value in ckpt.graph_state.items():
        p(f"  {key}: {preview(value)}")
    for key, items in ckpt.appended_state.items():
        p(f"  {key}: (+{len(items)} items at the end) {preview(items)}")
    for key in ckpt.removed_state:
        p(f"  {key}: (removed)")

    p(f"\nnode states ({len(ckpt.node_states)} nodes{changed})")
    if ckpt.node_states:
        table(
            [[key, s.process_count, len(s.pending_inputs), "yes" if s.processing else "no", preview(s.outputs, 40)]
             for key, s in ckpt.node_states.items()],
            ["node", "processed", "pending", "running", "last output"],
            out, indent="  ",
        )

    p(f"\nexecution history ({len(ckpt.execution_history)} visits; completed visits are replayed on recovery)")
    if ckpt.history_start:
        p(f"  (visits before #{ckpt.history_start} are stored in this execution's earlier checkpoints)")
    if ckpt.execution_history:
        table(
            [[v.node_key, v.index, v.superstep,
              "replayable" if v.status == "completed" else v.status, f"{v.duration_s * 1000:.1f} ms"]
             for v in ckpt.execution_history],
            ["node", "visit", "superstep", "on recovery", "took"],
            out, indent="  ",
        )
    if ckpt.skip_nodes:
        p(f"\nskipped nodes: {', '.join(ckpt.skip_nodes)}")
    if ckpt.inflight:
        p(f"\nin-flight visits: {', '.join(sorted(ckpt.inflight))}")
    if ckpt.failure is not None:
        f = ckpt.failure
        p(f"\nfailure      {f.node_key} visit {f.index}: {f.error_type}: {f.error}")
        if f.input is not None:
            p(f"  input      {preview(f.input)}")
    else:
        p("\nfailure      none")


def _show_other(header: Any, data: Any, out: TextIO) -> None:
    print(f"checkpoint   {header.checkpoint_id} ({header.kind})", file=out)
    print(f"graph        {header.graph_id}", file=out)
    print(f"execution    {header.execution_id}", file=out)
    print(f"seq          {header.seq}   status {header.status}", file=out)
    print(f"created      {local_time(header.created_at)}   {header.size} bytes stored", file=out)
    if isinstance(data, dict):
        print(f"\ncontent ({len(data)} keys)", file=out)
        for key, value in data.items():
            print(f"  {key}: {preview(value)}", file=out)
    else:
        print(f"\ncontent      {preview(data)}", file=out)


# -- verify ----------------------------------------------------------------------------------------
@read_only
def cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    """Every checkpoint decodes and belongs where it is stored, every graph checkpoint can be made
    whole from the ones before it, and no execution misses checkpoints its index head says exist."""
    from ..engine.records import RecordReader, readable_whole
    from ..model import GRAPH

    backend = open_for(args, inspect=True)
    codec = make_codec(args)
    reader = RecordReader(backend, codec)
    checked = corrupt = unreadable = incomplete = missing = 0
    problems: list[dict[str, Any]] = []

    def report(problem: str, where: Any, error: Any) -> None:
        """One bad checkpoint (``where``: its header) or execution (a dict), as a line or a JSON entry."""
        if isinstance(where, dict):
            entry, shown = where, f"execution {where['execution']} (graph {where['graph']})"
        elif where is not None:
            entry, shown = {"checkpoint": where.checkpoint_id, "graph": where.graph_id,
                            "execution": where.execution_id, "seq": where.seq}, _where(where)
        else:
            entry, shown = {}, ""
        problems.append({"problem": problem.lower(), **entry, "error": str(error)})
        if not args.json:
            print(f"{problem:<10} {shown + ': ' if shown else ''}{error}", file=out)
    try:
        stored_seqs: dict[str, list[int]] = {}  # per execution, the seqs listed
        readable: dict[str, list[Any]] = {}  # graph checkpoints that decode, per execution
        for header in backend.list(graph_id=args.graph):
            stored_seqs.setdefault(header.execution_id, []).append(header.seq)
            try:
                stored = backend.get(header.checkpoint_id)
            except CheckpointNotFoundError:
                continue  # deleted while we were verifying (e.g. pruned by a running graph)
            except CorruptCheckpointError as exc:  # its row or its bytes, as the store holds them
                checked += 1
                corrupt += 1
                report("CORRUPT", header, exc)
                continue
            checked += 1
            try:
                if header.kind == GRAPH:
                    reader.load(header, stored)  # (decoded once: making records whole reads them again)
                else:
                    decode(codec, stored)
            except UNREADABLE_HERE as exc:
                unreadable += 1
                report("UNREADABLE", header, exc)
                continue
            except (CodecError, GraphMismatchError) as exc:
                corrupt += 1
                report("CORRUPT", header, exc)
                continue
            if header.kind == GRAPH:
                readable.setdefault(header.execution_id, []).append(header)
        for headers in readable.values():
            for checkpoint_id, exc in readable_whole(reader, headers).items():
                incomplete += 1
                report("INCOMPLETE", next(h for h in headers if h.checkpoint_id == checkpoint_id), exc)
        for latest in backend.executions(graph_id=args.graph):
            head = backend.execution_head(latest.execution_id)
            seqs = stored_seqs.get(latest.execution_id, [])
            problem = None
            if head is not None:
                try:
                    codec.index_tags.check(head)
                except UNREADABLE_HERE:
                    pass  # tagged under a key not configured here: its records say so already
                except CodecError as exc:
                    problem = str(exc)
                if problem is None and seqs and max(seqs) < head.seq:
                    problem = (f"the executions index says seq {head.seq} ({head.status}) was written, the newest "
                               f"stored is seq {max(seqs)}")
            if problem is not None:
                missing += 1
                report("MISSING", {"execution": latest.execution_id, "graph": latest.graph_id}, problem)
    except CorruptIndexError as exc:  # a listing stopped at a damaged row: reported, nothing after it checked
        corrupt += 1
        report("CORRUPT", None, exc)
    finally:
        backend.close()
    summary = f"{checked} checked, {corrupt} corrupt"
    if incomplete:
        summary += f", {incomplete} incomplete (an earlier checkpoint they need is gone or damaged)"
    if missing:
        summary += f", {missing} execution(s) missing their newest checkpoints"
    if unreadable:
        summary += f", {unreadable} unreadable here (missing key, codec layer or limit)"
    if args.json:
        print_json({"checked": checked, "corrupt": corrupt, "incomplete": incomplete, "missing": missing,
                    "unreadable": unreadable, "problems": problems}, out)
    else:
        print(summary, file=out)
    return 1 if corrupt or unreadable or incomplete or missing else 0


def _where(h: Any) -> str:
    return f"{h.checkpoint_id} (graph {h.graph_id}, execution {h.execution_id}, seq {h.seq})"
