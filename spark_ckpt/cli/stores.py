"""Opening what a command works on: the store named by ``--store``, and a codec from the key options.

Invariants:

* the store is ``--store``, else ``$SPARK_CKPT_STORE``, else ``sqlite://./checkpoints.db``;
* a command that reads refuses a local store path that does not exist (a ``ConfigError`` saying how
  to name the store) instead of silently creating an empty store there; only a copy's destination
  may be created;
* keys come from ``--keys-env NAME`` (``keyid:base64key,...``, read by the library's one key parser)
  when given, else from the library's own ``SPARK_CKPT_KEYS`` lookup; ``--active-key`` and
  ``--allow-plaintext`` pass through;
* a store URL is shown only through ``mask_url`` (no password, no secret parameter);
* a stored checkpoint is decoded against the identity (graph, execution, seq) it is stored under, so
  a record copied under another name does not read as valid.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..errors import (
    ConfigError, DecompressionLimitError, EncryptionKeyError, PickleRefusedError, PlaintextRefusedError,
    UnsupportedFormatError,
)

STORE_ENV = "SPARK_CKPT_STORE"
DEFAULT_STORE = "sqlite://./checkpoints.db"

# Decode failures that say "this process cannot read it" (a missing key, plugin or limit), not "it is damaged".
UNREADABLE_HERE = (
    UnsupportedFormatError, EncryptionKeyError, PlaintextRefusedError, PickleRefusedError, DecompressionLimitError,
)

# Backends whose URL location is a local path; reading commands refuse a path that does not exist
# instead of silently creating an empty store there.
_PATH_SCHEMES = ("sqlite", "file")


def store_url(args: argparse.Namespace) -> str:
    return args.store or os.environ.get(STORE_ENV) or DEFAULT_STORE


def open_store(url: str, *, must_exist: bool = True, read_only: bool = False, inspect: bool = False) -> Any:
    """The store at ``url``. ``read_only``: opened so that nothing can be written (``--read-only``).
    ``inspect`` (a command that only reads): opened read-only when this process could not write it
    anyway (a read-only file, directory or file system), so inspecting such a store works instead of
    failing where an ordinary open would create, migrate or tidy. Read-only applies to the local
    backends (sqlite, file); the others are opened as they are."""
    from ..config import open_backend, split_url
    from ..masking import mask_url

    scheme, location = split_url(url)
    path = os.path.expanduser(location.split("?", 1)[0])
    if must_exist and scheme in _PATH_SCHEMES and path and not os.path.exists(path):
        raise ConfigError(
            f"no checkpoint store at {path!r} ({mask_url(url)}); pass --store URL or set {STORE_ENV}"
        )
    if scheme in _PATH_SCHEMES and path and (read_only or (inspect and not _writable(scheme, path))):
        return open_backend(url, read_only=True)
    return open_backend(url)


def open_for(args: argparse.Namespace, *, inspect: bool) -> Any:
    """The store of ``--store`` (read-only with ``--read-only``; see ``open_store`` for ``inspect``)."""
    return open_store(store_url(args), read_only=getattr(args, "read_only", False), inspect=inspect)


def _writable(scheme: str, path: str) -> bool:
    """Whether this process could write the store at ``path`` (SQLite also creates files beside it)."""
    if not os.path.exists(path):
        return True  # (creating it is the ordinary open's business, or its error)
    if scheme == "sqlite":
        return os.access(path, os.W_OK) and os.access(os.path.dirname(os.path.abspath(path)), os.W_OK)
    return os.access(path, os.W_OK) and os.access(os.path.join(path, "graphs"), os.W_OK)


def make_codec(args: argparse.Namespace) -> Any:
    from ..config import CheckpointConfig

    return CheckpointConfig(**codec_options(args)).make_codec()


def codec_options(args: argparse.Namespace) -> dict[str, Any]:
    """CheckpointConfig options for decoding: keys from ``--keys-env`` (default: the config's own
    ``SPARK_CKPT_KEYS`` lookup), ``--active-key``, ``--allow-plaintext``."""
    options: dict[str, Any] = {"allow_plaintext": args.allow_plaintext}
    if args.active_key:
        options["active_key"] = args.active_key
    if args.keys_env:
        from ..keys import parse_keys

        spec = os.environ.get(args.keys_env, "").strip()
        if not spec:
            raise ConfigError(f"--keys-env {args.keys_env}: that environment variable is not set or empty")
        # the parser SPARK_CKPT_KEYS goes through: same forms, same refusals (a key id twice, weak keys)
        options["encryption_keys"] = parse_keys(spec, origin=args.keys_env)
    return options


def _identity(header: Any) -> Any:
    from ..codec import Identity

    return Identity(header.graph_id, header.execution_id, header.seq)


def decode(codec: Any, stored: Any) -> Any:
    """Decode one stored checkpoint, checking it belongs where it is stored."""
    from ..model import GRAPH, GraphCheckpoint

    expected = _identity(stored.header)
    if stored.header.kind == GRAPH:
        return codec.decode(stored.blob, GraphCheckpoint, expected=expected)
    data, _ = codec.decode_data(stored.blob, expected=expected)
    return data


def read_only(command: Any) -> Any:
    """A command that only shows records: a value of a type this process does not allow (the user's
    dataclasses, enums ...) is shown as ``{"$type": ..., fields}`` instead of failing the command."""
    import functools

    from ..codec.values import describing_types

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        with describing_types():
            return command(*args, **kwargs)

    return run
