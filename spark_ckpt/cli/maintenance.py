"""The commands that change stores: ``prune``, ``export`` and ``rekey``.

Invariants:

* ``prune`` never deletes a checkpoint an unfinished execution needs for recovery, and a kept
  checkpoint that holds only changes is first made whole (rebased), so the ones before it can go;
  ``--dry-run`` changes nothing, not even the temporary files of interrupted writes (it opens the
  store read-only when it cannot be written); it shows one row per execution, never every id;
  without ``--dry-run`` it deletes only after a yes on a terminal or with ``--yes``, and only
  checkpoints the plan it showed listed;
* ``export`` copies into the destination (which it may create), checking each checkpoint before it
  writes it and skipping identical ones already there;
* ``rekey`` re-encrypts under the active key and leaves checkpoints already under it as they are;
* every store opened is closed however the command ends, and a progress bar is finished with a
  newline before the summary is printed.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from ..errors import ConfigError
from ..masking import mask_url
from .output import ProgressBar, local_time, print_json, table
from .stores import make_codec, open_for, open_store, store_url
from .terminal import confirm, is_terminal


def cmd_prune(args: argparse.Namespace, out: TextIO) -> int:
    """Plan, show the plan (one row per execution), then delete: after a yes on a terminal, with
    ``--yes`` anywhere; without either off a terminal it refuses (exit 2). It never deletes a
    checkpoint the plan it showed did not list, even if the store changed in between."""
    from ..config import CheckpointConfig
    from ..engine.records import rebase
    from ..retention import carry_out, plan_with_rebase, protected_ids

    if args.keep is None and args.max_age is None:
        raise ConfigError("prune needs --keep N and/or --max-age SECONDS (nothing would be deleted)")
    rules = CheckpointConfig(retention_count=args.keep, retention_max_age_s=args.max_age).make_retention_rules()
    url = store_url(args)
    backend = open_for(args, inspect=args.dry_run)
    codec = make_codec(args)
    try:
        protected = protected_ids(backend, args.graph)
        # planned as the run goes: a kept checkpoint holding only changes is made to stand alone (rebased),
        # so the ones before it are listed; the run then carries out this very plan, whatever changed since
        planned, bases = plan_with_rebase(backend, rules, graph_id=args.graph)
        if args.dry_run:
            return _prune_report(args, out, planned, protected, deleted=False)
        if planned and not args.yes:
            if not is_terminal(sys.stdin):
                raise ConfigError(
                    f"prune would delete {len(planned)} checkpoint(s) from {mask_url(url)} and stdin is not a "
                    "terminal to confirm it; pass --yes to delete without asking (--dry-run shows them)"
                )
            _prune_table(planned, sys.stderr)
            if not confirm(f"delete these {len(planned)} checkpoint(s) ({_bytes(planned)})?"):
                print("nothing deleted", file=sys.stderr)
                return 1
        doomed = carry_out(backend, planned, bases, lambda header: rebase(backend, codec, header),
                           still_stored=True) if planned else []
        # stores that can leave debris behind (the file backend's temp files of killed writers)
        tidy = getattr(backend, "cleanup", None)
        swept = tidy() if tidy is not None else 0
        if doomed:
            backend.scrub()  # no copy of the deleted checkpoints left in the store's own log
    finally:
        backend.close()
    return _prune_report(args, out, doomed, protected, deleted=True, swept=swept)


def _by_execution(headers: list[Any]) -> list[dict[str, Any]]:
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for h in headers:
        row = rows.setdefault((h.graph_id, h.execution_id), {
            "graph": h.graph_id, "execution": h.execution_id, "checkpoints": 0, "bytes": 0,
            "oldest": h.created_at, "newest": h.created_at})
        row["checkpoints"] += 1
        row["bytes"] += h.size
        row["oldest"], row["newest"] = min(row["oldest"], h.created_at), max(row["newest"], h.created_at)
    return [{**r, "oldest": local_time(r["oldest"]), "newest": local_time(r["newest"])} for r in rows.values()]


def _bytes(headers: list[Any]) -> str:
    return f"{sum(h.size for h in headers)} bytes"


def _prune_table(headers: list[Any], out: TextIO) -> None:
    rows = _by_execution(headers)
    table([[r["graph"], r["execution"], r["checkpoints"], r["bytes"], r["oldest"], r["newest"]] for r in rows],
          ["graph", "execution", "checkpoints", "bytes", "oldest", "newest"], out)


def _prune_report(args: argparse.Namespace, out: TextIO, headers: list[Any], protected: Any, *, deleted: bool,
                  swept: int = 0) -> int:
    if args.json:
        print_json({"dry_run": not deleted, "checkpoints": len(headers), "bytes": sum(h.size for h in headers),
                    "executions": _by_execution(headers), "protected": len(protected),
                    "temporary_files_removed": swept}, out)
        return 0
    if headers and not deleted:
        _prune_table(headers, out)
    executions = len({h.execution_id for h in headers})
    verb = "deleted" if deleted else "would delete"
    print(f"{verb} {len(headers)} checkpoint(s), {_bytes(headers)}, from {executions} execution(s)", file=out)
    if swept:
        print(f"removed {swept} temporary file(s) left by interrupted writes", file=out)
    if protected:
        print(f"kept {len(protected)} checkpoint(s) that unfinished executions need for recovery", file=out)
    return 0


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    from ..transfer import export_checkpoints

    args.source = args.source or store_url(args)
    src = open_store(args.source, read_only=args.read_only, inspect=True)
    try:
        dst = open_store(args.target, must_exist=False)
    except BaseException:
        src.close()
        raise
    bar = ProgressBar("exporting")
    try:
        copied = export_checkpoints(src, dst, graph_id=args.graph, verify=True, progress=bar)
    finally:
        bar.finish()
        src.close()
        dst.close()
    if args.json:
        print_json({"source": mask_url(args.source), "target": mask_url(args.target), "copied": copied,
                    "already_there": (bar.total or 0) - copied if bar.total else 0}, out)
        return 0
    already = f" ({bar.total - copied} already there)" if bar.total and bar.total > copied else ""
    print(f"exported {copied} checkpoint(s) from {mask_url(args.source)} to {mask_url(args.target)}{already}",
          file=out)
    return 0


def cmd_rekey(args: argparse.Namespace, out: TextIO) -> int:
    from ..codec.rekey import rekey_backend

    backend = open_for(args, inspect=False)
    bar = ProgressBar("re-encrypting")
    try:
        result: int = rekey_backend(backend, make_codec(args), graph_id=args.graph, progress=bar)
    finally:
        bar.finish()
        backend.close()
    if args.json:
        print_json({"rekeyed": result, "unchanged": (bar.total or 0) - result if bar.total else 0}, out)
        return 0
    unchanged = f" ({bar.total - result} already under the active key)" if bar.total and bar.total > result else ""
    print(f"rekeyed: {result} checkpoint(s){unchanged}", file=out)
    return 0
