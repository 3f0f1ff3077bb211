"""The commands that change stores: ``prune``, ``export`` and ``rekey``.

Invariants:

* ``prune`` never deletes a checkpoint an unfinished execution needs for recovery, and a kept
  checkpoint that holds only changes is first made whole (rebased), so the ones before it can go;
  ``--dry-run`` changes nothing, not even the temporary files of interrupted writes;
* ``export`` copies into the destination (which it may create), checking each checkpoint before it
  writes it and skipping identical ones already there;
* ``rekey`` re-encrypts under the active key and leaves checkpoints already under it as they are;
* every store opened is closed however the command ends, and a progress bar is finished with a
  newline before the summary is printed.
"""

from __future__ import annotations

import argparse
from typing import TextIO

from ..errors import ConfigError
from ..masking import mask_url
from .output import ProgressBar, local_time
from .stores import make_codec, open_store, store_url


def cmd_prune(args: argparse.Namespace, out: TextIO) -> int:
    from ..config import CheckpointConfig
    from ..retention import protected_ids, prune

    if args.keep is None and args.max_age is None:
        raise ConfigError("prune needs --keep N and/or --max-age SECONDS (nothing would be deleted)")
    from ..engine.records import rebase

    rules = CheckpointConfig(retention_count=args.keep, retention_max_age_s=args.max_age).make_retention_rules()
    backend = open_store(store_url(args))
    codec = make_codec(args)
    try:
        protected = protected_ids(backend, args.graph)
        # a kept checkpoint that holds only changes is first made whole, so the ones before it can go
        doomed = prune(backend, rules, graph_id=args.graph, dry_run=args.dry_run,
                       rebase=lambda header: rebase(backend, codec, header))
        # stores that can leave debris behind (the file backend's temp files of killed writers)
        tidy = getattr(backend, "cleanup", None)
        swept = tidy() if tidy is not None and not args.dry_run else 0
        if doomed and not args.dry_run:
            backend.scrub()  # no copy of the deleted checkpoints left in the store's own log
    finally:
        backend.close()
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {len(doomed)} checkpoint(s)", file=out)
    if swept:
        print(f"removed {swept} temporary file(s) left by interrupted writes", file=out)
    for h in doomed:
        print(f"  {h.checkpoint_id}  graph {h.graph_id}  execution {h.execution_id}  seq {h.seq}  "
              f"{h.status}  {local_time(h.created_at)}", file=out)
    if protected:
        print(f"kept {len(protected)} checkpoint(s) that unfinished executions need for recovery", file=out)
    return 0


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    from ..transfer import export_checkpoints

    src = open_store(args.source)
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
    already = f" ({bar.total - copied} already there)" if bar.total and bar.total > copied else ""
    print(f"exported {copied} checkpoint(s) from {mask_url(args.source)} to {mask_url(args.target)}{already}",
          file=out)
    return 0


def cmd_rekey(args: argparse.Namespace, out: TextIO) -> int:
    from ..codec.rekey import rekey_backend

    backend = open_store(store_url(args))
    bar = ProgressBar("re-encrypting")
    try:
        result: int = rekey_backend(backend, make_codec(args), graph_id=args.graph, progress=bar)
    finally:
        bar.finish()
        backend.close()
    unchanged = f" ({bar.total - result} already under the active key)" if bar.total and bar.total > result else ""
    print(f"rekeyed: {result} checkpoint(s){unchanged}", file=out)
    return 0
