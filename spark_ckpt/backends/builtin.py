"""Registers the built-in backends as a plugin (memory, file, SQLite)."""

from __future__ import annotations

from collections.abc import Callable

from ..markers import hookimpl


@hookimpl
def spark_ckpt_register_backends(register: Callable[[type], None]) -> None:
    from .file import FileBackend
    from .memory import MemoryBackend
    from .sqlite import SqliteBackend

    register(MemoryBackend)
    register(FileBackend)
    register(SqliteBackend)
