"""``spark-ckpt``: inspect, verify and prune stored checkpoints, and run the crash-recovery demo.

    spark-ckpt [--store URL] list [--graph ID] [--execution ID] [--limit N] [--executions] [--json]
    spark-ckpt [--store URL] show CHECKPOINT_ID [--json]
    spark-ckpt [--store URL] verify [--graph ID]
    spark-ckpt [--store URL] prune [--graph ID] [--keep N] [--max-age SECONDS] [--dry-run]
    spark-ckpt demo [--store URL] [--crash-after N] [--work-dir DIR]
    spark-ckpt [--store URL] rekey [--graph ID]                  (re-encrypt under the active key)
    spark-ckpt export --from URL --to URL [--graph ID]          (when spark_ckpt.transfer is installed)

Encrypted stores: keys come from ``SPARK_CKPT_KEYS`` / ``SPARK_CKPT_ACTIVE_KEY`` as for the library, or
from ``--keys-env NAME`` and ``--active-key ID``; ``--allow-plaintext`` also reads unencrypted ones.

The store defaults to ``$SPARK_CKPT_STORE``, else ``sqlite://./checkpoints.db``. Spark is only
imported by ``demo``: the other commands start in well under a second.

Exit codes: 0 success, 1 ``verify`` found unreadable checkpoints (or the demo failed), 2 usage or
user error (one ``spark-ckpt: error: ...`` line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from datetime import datetime
from typing import Any, Callable, Sequence, TextIO

from .errors import (
    CheckpointNotFoundError, CodecError, ConfigError, DecompressionLimitError, EncryptionKeyError,
    GraphMismatchError, PickleRefusedError, PlaintextRefusedError, SparkCkptError, UnsupportedFormatError,
)

# Decode failures that say "this process cannot read it" (a missing key, plugin or limit), not "it is damaged".
_UNREADABLE_HERE = (
    UnsupportedFormatError, EncryptionKeyError, PlaintextRefusedError, PickleRefusedError, DecompressionLimitError,
)

PROG = "spark-ckpt"
STORE_ENV = "SPARK_CKPT_STORE"
DEFAULT_STORE = "sqlite://./checkpoints.db"
DEMO_STORE = "sqlite://./demo-checkpoints.db"
PREVIEW_WIDTH = 70

# Backends whose URL location is a local path; reading commands refuse a path that does not exist
# instead of silently creating an empty store there.
_PATH_SCHEMES = ("sqlite", "file")


# -- helpers ---------------------------------------------------------------------------------------
def _local_time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


def _preview(value: Any, width: int = PREVIEW_WIDTH) -> str:
    """One-line JSON-ish rendering of ``value``, cut to ``width`` characters."""
    import orjson

    try:
        text = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _table(rows: list[Sequence[Any]], headings: Sequence[str], out: TextIO, indent: str = "") -> None:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headings)]
    for row in [list(headings), *cells]:
        print(indent + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip(), file=out)


def _print_json(data: Any, out: TextIO) -> None:
    import orjson

    out.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode() + "\n")


def _store_url(args: argparse.Namespace) -> str:
    return args.store or os.environ.get(STORE_ENV) or DEFAULT_STORE


def _open_store(url: str, *, must_exist: bool = True) -> Any:
    from .config import open_backend, split_url

    scheme, location = split_url(url)
    path = os.path.expanduser(location.split("?", 1)[0])
    if must_exist and scheme in _PATH_SCHEMES and path and not os.path.exists(path):
        raise ConfigError(
            f"no checkpoint store at {path!r} ({url}); pass --store URL or set {STORE_ENV}"
        )
    return open_backend(url)


def _codec(args: argparse.Namespace) -> Any:
    from .config import CheckpointConfig

    return CheckpointConfig(**_codec_options(args)).make_codec()


def _codec_options(args: argparse.Namespace) -> dict[str, Any]:
    """CheckpointConfig options for decoding: keys from ``--keys-env`` (default: the config's own
    ``SPARK_CKPT_KEYS`` lookup), ``--active-key``, ``--allow-plaintext``."""
    options: dict[str, Any] = {"allow_plaintext": args.allow_plaintext}
    if args.active_key:
        options["active_key"] = args.active_key
    if args.keys_env:
        spec = os.environ.get(args.keys_env, "").strip()
        if not spec:
            raise ConfigError(f"--keys-env {args.keys_env}: that environment variable is not set or empty")
        keys: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            kid, sep, value = item.partition(":")
            if not sep:
                raise ConfigError(f"{args.keys_env} entries must look like 'keyid:base64key', separated by commas")
            keys[kid.strip()] = value
        options["encryption_keys"] = keys
    return options


def _identity(header: Any) -> Any:
    from .codec import Identity

    return Identity(header.graph_id, header.execution_id, header.seq)


def _decode(codec: Any, stored: Any) -> Any:
    """Decode one stored checkpoint, checking it belongs where it is stored."""
    from .model import GRAPH, GraphCheckpoint

    expected = _identity(stored.header)
    if stored.header.kind == GRAPH:
        return codec.decode(stored.blob, GraphCheckpoint, expected=expected)
    data, _ = codec.decode_data(stored.blob, expected=expected)
    return data


def _header_data(h: Any) -> dict[str, Any]:
    return {
        "id": h.checkpoint_id, "graph": h.graph_id, "execution": h.execution_id, "seq": h.seq,
        "status": h.status, "kind": h.kind, "size": h.size, "created_at": _local_time(h.created_at),
    }


# -- commands --------------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    url = _store_url(args)
    backend = _open_store(url)
    try:
        if args.executions:
            if args.execution:
                headers = [h for h in backend.executions(graph_id=args.graph) if h.execution_id == args.execution]
            else:
                headers = backend.executions(graph_id=args.graph, limit=args.limit)
            rows = [
                {"execution": h.execution_id, "graph": h.graph_id, "status": h.status,
                 "last_seq": h.seq, "last_checkpoint": h.checkpoint_id,
                 "updated_at": _local_time(h.created_at)}
                for h in headers
            ]
        else:
            headers = backend.list(graph_id=args.graph, execution_id=args.execution, limit=args.limit)
            rows = [_header_data(h) for h in headers]
    finally:
        backend.close()
    if args.json:
        _print_json(rows, out)
        return 0
    if not rows:
        what = "executions" if args.executions else "checkpoints"
        print(f"no {what} in {url}", file=out)
        return 0
    keys = list(rows[0])
    if not args.executions:
        keys.remove("kind")
    _table([[r[k] for k in keys] for r in rows], keys, out)
    return 0


def cmd_show(args: argparse.Namespace, out: TextIO) -> int:
    from .codec import to_data
    from .model import GraphCheckpoint

    backend = _open_store(_store_url(args))
    try:
        stored = backend.get(args.checkpoint_id)
    finally:
        backend.close()
    content = _decode(_codec(args), stored)
    if args.json:
        data = to_data(content) if isinstance(content, GraphCheckpoint) else content
        _print_json({"header": _header_data(stored.header), "checkpoint": data}, out)
        return 0
    if isinstance(content, GraphCheckpoint):
        _show_graph_checkpoint(stored.header, content, out)
    else:
        _show_other(stored.header, content, out)
    return 0


def _show_graph_checkpoint(header: Any, ckpt: Any, out: TextIO) -> None:
    p = lambda *a: print(*a, file=out)  # noqa: E731
    meta = ckpt.graph_metadata
    p(f"checkpoint   {ckpt.checkpoint_id}")
    p(f"graph        {meta.graph_id} (version {meta.graph_version})")
    p(f"execution    {meta.execution_id}")
    p(f"seq          {ckpt.seq}   superstep {ckpt.superstep}   status {ckpt.status}")
    p(f"created      {_local_time(ckpt.timestamp)}   {header.size} bytes stored")
    p(f"current node {ckpt.current_node or '-'}")
    if ckpt.run_input is not None:
        p(f"run input    {_preview(ckpt.run_input)}")
    if ckpt.result is not None:
        p(f"result       {_preview(ckpt.result)}")

    changed = " changed since the previous checkpoint" if ckpt.partial_state else ""
    p(f"\ngraph state ({len(ckpt.graph_state)} keys{changed})")
    if ckpt.partial_state:
        p("  (only what changed is stored here; the rest is in this execution's earlier checkpoints)")
    for key, value in ckpt.graph_state.items():
        p(f"  {key}: {_preview(value)}")
    for key, items in ckpt.appended_state.items():
        p(f"  {key}: (+{len(items)} items at the end) {_preview(items)}")
    for key in ckpt.removed_state:
        p(f"  {key}: (removed)")

    p(f"\nnode states ({len(ckpt.node_states)} nodes{changed})")
    if ckpt.node_states:
        _table(
            [[key, s.process_count, len(s.pending_inputs), "yes" if s.processing else "no", _preview(s.outputs, 40)]
             for key, s in ckpt.node_states.items()],
            ["node", "processed", "pending", "running", "last output"],
            out, indent="  ",
        )

    p(f"\nexecution history ({len(ckpt.execution_history)} visits; completed visits are replayed on recovery)")
    if ckpt.history_start:
        p(f"  (visits before #{ckpt.history_start} are stored in this execution's earlier checkpoints)")
    if ckpt.execution_history:
        _table(
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
            p(f"  input      {_preview(f.input)}")
    else:
        p("\nfailure      none")


def _show_other(header: Any, data: Any, out: TextIO) -> None:
    print(f"checkpoint   {header.checkpoint_id} ({header.kind})", file=out)
    print(f"graph        {header.graph_id}", file=out)
    print(f"execution    {header.execution_id}", file=out)
    print(f"seq          {header.seq}   status {header.status}", file=out)
    print(f"created      {_local_time(header.created_at)}   {header.size} bytes stored", file=out)
    if isinstance(data, dict):
        print(f"\ncontent ({len(data)} keys)", file=out)
        for key, value in data.items():
            print(f"  {key}: {_preview(value)}", file=out)
    else:
        print(f"\ncontent      {_preview(data)}", file=out)


def cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    """Every checkpoint decodes and belongs where it is stored, every graph checkpoint can be made
    whole from the ones before it, and no execution misses checkpoints its index head says exist."""
    from .engine.records import RecordReader, readable_whole
    from .model import GRAPH

    url = _store_url(args)
    backend = _open_store(url)
    codec = _codec(args)
    reader = RecordReader(backend, codec)
    checked = corrupt = unreadable = incomplete = missing = 0
    try:
        readable: dict[str, list[Any]] = {}  # graph checkpoints that decode, per execution
        for header in backend.list(graph_id=args.graph):
            try:
                stored = backend.get(header.checkpoint_id)
            except CheckpointNotFoundError:
                continue  # deleted while we were verifying (e.g. pruned by a running graph)
            checked += 1
            try:
                _decode(codec, stored)
            except _UNREADABLE_HERE as exc:
                unreadable += 1
                print(f"UNREADABLE {_where(header)}: {exc}", file=out)
                continue
            except (CodecError, GraphMismatchError) as exc:
                corrupt += 1
                print(f"CORRUPT    {_where(header)}: {exc}", file=out)
                continue
            if header.kind == GRAPH:
                readable.setdefault(header.execution_id, []).append(header)
        for execution_id, headers in readable.items():
            listed = backend.list(execution_id=execution_id)
            for checkpoint_id, exc in readable_whole(reader, [h for h in listed if h in headers]).items():
                incomplete += 1
                where = _where(next(h for h in headers if h.checkpoint_id == checkpoint_id))
                print(f"INCOMPLETE {where}: {exc}", file=out)
        for latest in backend.executions(graph_id=args.graph):
            head = backend.execution_head(latest.execution_id)
            stored_seqs = [h.seq for h in backend.list(execution_id=latest.execution_id)]
            problem = None
            if head is not None:
                try:
                    codec.index_tags.check(head)
                except _UNREADABLE_HERE:
                    pass  # tagged under a key not configured here: its records say so already
                except CodecError as exc:
                    problem = str(exc)
                if problem is None and stored_seqs and max(stored_seqs) < head.seq:
                    problem = (f"the executions index says seq {head.seq} ({head.status}) was written, the newest "
                               f"stored is seq {max(stored_seqs)}")
            if problem is not None:
                missing += 1
                print(f"MISSING    execution {latest.execution_id} (graph {latest.graph_id}): {problem}", file=out)
    finally:
        backend.close()
    summary = f"{checked} checked, {corrupt} corrupt"
    if incomplete:
        summary += f", {incomplete} incomplete (an earlier checkpoint they need is gone or damaged)"
    if missing:
        summary += f", {missing} execution(s) missing their newest checkpoints"
    if unreadable:
        summary += f", {unreadable} unreadable here (missing key, codec layer or limit)"
    print(summary, file=out)
    return 1 if corrupt or unreadable or incomplete or missing else 0


def _where(h: Any) -> str:
    return f"{h.checkpoint_id} (graph {h.graph_id}, execution {h.execution_id}, seq {h.seq})"


def cmd_prune(args: argparse.Namespace, out: TextIO) -> int:
    from .config import CheckpointConfig
    from .retention import protected_ids, prune

    if args.keep is None and args.max_age is None:
        raise ConfigError("prune needs --keep N and/or --max-age SECONDS (nothing would be deleted)")
    from .engine.records import rebase

    rules = CheckpointConfig(retention_count=args.keep, retention_max_age_s=args.max_age).make_retention_rules()
    backend = _open_store(_store_url(args))
    codec = _codec(args)
    try:
        protected = protected_ids(backend, args.graph)
        # a kept checkpoint that holds only changes is first made whole, so the ones before it can go
        doomed = prune(backend, rules, graph_id=args.graph, dry_run=args.dry_run,
                       rebase=lambda header: rebase(backend, codec, header))
        # stores that can leave debris behind (the file backend's temp files of killed writers)
        tidy = getattr(backend, "cleanup", None)
        swept = tidy() if tidy is not None and not args.dry_run else 0
    finally:
        backend.close()
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {len(doomed)} checkpoint(s)", file=out)
    if swept:
        print(f"removed {swept} temporary file(s) left by interrupted writes", file=out)
    for h in doomed:
        print(f"  {h.checkpoint_id}  graph {h.graph_id}  execution {h.execution_id}  seq {h.seq}  "
              f"{h.status}  {_local_time(h.created_at)}", file=out)
    if protected:
        print(f"kept {len(protected)} checkpoint(s) that unfinished executions need for recovery", file=out)
    return 0


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from .demo import run_demo

    store = args.demo_store or args.store or DEMO_STORE
    return 0 if run_demo(store, crash_after=args.crash_after, out=out, work_dir=args.work_dir) else 1


class _ProgressBar:
    """A one-line progress bar on stderr: ``progress(done, total)``."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.shown = False
        self.total: int | None = None

    def __call__(self, done: int, total: int | None = None, *_: Any) -> None:
        self.total = total
        if total:
            filled = int(30 * done / total)
            text = f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}"
        else:
            text = f"\r{self.label} {done}"
        self.stream.write(text)
        self.stream.flush()
        self.shown = True

    def finish(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    from .transfer import export_checkpoints

    src = _open_store(args.source)
    try:
        dst = _open_store(args.target, must_exist=False)
    except BaseException:
        src.close()
        raise
    bar = _ProgressBar("exporting")
    try:
        copied = export_checkpoints(src, dst, graph_id=args.graph, verify=True, progress=bar)
    finally:
        bar.finish()
        src.close()
        dst.close()
    already = f" ({bar.total - copied} already there)" if bar.total and bar.total > copied else ""
    print(f"exported {copied} checkpoint(s) from {args.source} to {args.target}{already}", file=out)
    return 0


def cmd_rekey(args: argparse.Namespace, out: TextIO) -> int:
    from .codec.rekey import rekey_backend

    backend = _open_store(_store_url(args))
    bar = _ProgressBar("re-encrypting")
    try:
        result: int = rekey_backend(backend, _codec(args), graph_id=args.graph, progress=bar)
    finally:
        bar.finish()
        backend.close()
    unchanged = f" ({bar.total - result} already under the active key)" if bar.total and bar.total > result else ""
    print(f"rekeyed: {result} checkpoint(s){unchanged}", file=out)
    return 0


# -- parser ----------------------------------------------------------------------------------------
def _positive(convert, what: str):
    """An argparse type: ``convert`` the text, and require a value > 0."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
        return value

    return parse


_positive_int = _positive(int, "a whole number")
_positive_float = _positive(float, "a number of seconds")


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect, verify and prune spark-ckpt checkpoints; run the crash-recovery demo.",
    )
    parser.add_argument(
        "--store", metavar="URL", default=None,
        help=f"checkpoint store URL (default: ${STORE_ENV}, else {DEFAULT_STORE}); "
             "e.g. sqlite:///abs/path.db, sqlite://rel.db, file://./dir",
    )
    keys = parser.add_argument_group("encryption keys (for encrypted stores)")
    keys.add_argument("--keys-env", metavar="NAME", default=None,
                      help="environment variable holding 'keyid:base64key,...' (default: SPARK_CKPT_KEYS)")
    keys.add_argument("--active-key", metavar="ID", default=None,
                      help="key id to encrypt with (rekey; default: SPARK_CKPT_ACTIVE_KEY or the only key)")
    keys.add_argument("--allow-plaintext", action="store_true",
                      help="with keys configured, still read unencrypted checkpoints")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("list", help="list checkpoints (newest first) or executions")
    p.add_argument("--graph", metavar="ID", help="only this graph id")
    p.add_argument("--execution", metavar="ID", help="only this execution id")
    p.add_argument("--limit", metavar="N", type=_positive_int, help="at most N rows")
    p.add_argument("--executions", action="store_true", help="one line per execution with its status")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="print a readable summary of one checkpoint")
    p.add_argument("checkpoint_id", metavar="CHECKPOINT_ID")
    p.add_argument("--json", action="store_true", help="print the decoded checkpoint as JSON")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("verify", help="decode every stored checkpoint, check each can be made whole and none is "
                                      "missing; report the bad ones (exit 1 if any)")
    p.add_argument("--graph", metavar="ID", help="only this graph id")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "prune", help="delete old checkpoints (never those an unfinished execution needs to recover)"
    )
    p.add_argument("--graph", metavar="ID", help="only this graph id")
    p.add_argument("--keep", metavar="N", type=_positive_int, help="keep the newest N checkpoints per graph")
    p.add_argument("--max-age", metavar="SECONDS", type=_positive_float, help="delete checkpoints older than this")
    p.add_argument("--dry-run", action="store_true", help="only print what would be deleted")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser(
        "demo", help="run a Spark workflow, SIGKILL its worker mid-run, recover in a new process, compare"
    )
    p.add_argument("--store", dest="demo_store", metavar="URL", default=None,
                   help=f"where the demo keeps its checkpoints (default: {DEMO_STORE})")
    p.add_argument("--crash-after", metavar="N", type=_positive_int, default=3,
                   help="kill the worker inside the Nth pass of the transform loop (default: 3)")
    p.add_argument("--work-dir", metavar="DIR", default=None,
                   help="keep the demo's side files (per-visit execution logs) in DIR")
    p.set_defaults(func=cmd_demo)

    # Commands backed by optional modules appear only when those modules are installed.
    if _module_exists("spark_ckpt.transfer"):
        p = sub.add_parser("export", help="copy checkpoints from one store to another, verifying each")
        p.add_argument("--from", dest="source", metavar="URL", required=True, help="source store URL")
        p.add_argument("--to", dest="target", metavar="URL", required=True, help="destination store URL")
        p.add_argument("--graph", metavar="ID", help="only this graph id")
        p.set_defaults(func=cmd_export)
    if _module_exists("spark_ckpt.codec.rekey"):
        p = sub.add_parser("rekey", help="re-encrypt stored checkpoints with the current key")
        p.add_argument("--graph", metavar="ID", help="only this graph id")
        p.set_defaults(func=cmd_rekey)
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Entry point of the ``spark-ckpt`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace, TextIO], int] = args.func
    try:
        return handler(args, out or sys.stdout)
    except SparkCkptError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
