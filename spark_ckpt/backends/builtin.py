"""Registers the built-in backends as a plugin (memory, file, SQLite)."""

from __future__ import annotations

from typing import Callable

from ..markers import hookimpl


@hookimpl
def spark_ckpt_register_backends(register: Callable[[type], None]) -> None:
    from .memory import MemoryBackend

    register(MemoryBackend)
    try:
        from .file import FileBackend
        from .sqlite import SqliteBackend
    except ImportError:  # pragma: no cover - while file/sqlite are being written
        return
    register(FileBackend)
    register(SqliteBackend)
