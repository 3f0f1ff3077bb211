"""Checkpoint storage backends: the contract (``base``) and the built-ins.

The built-ins as objects, with the guide's constructor arguments (``MemoryBackend()``,
``FileBackend(path=..., format=..., compression=...)``, ``SQLiteBackend(db_path=..., table_name=...)``),
for ``CheckpointConfig(backend=<object>)``; they are imported on first use.
"""

from typing import Any

from .base import Backend, LocalBackend

__all__ = ["Backend", "FileBackend", "LocalBackend", "MemoryBackend", "SQLiteBackend", "SqliteBackend"]

_LAZY = {
    "MemoryBackend": ("memory", "MemoryBackend"),
    "FileBackend": ("file", "FileBackend"),
    "SQLiteBackend": ("sqlite", "SQLiteBackend"),
    "SqliteBackend": ("sqlite", "SqliteBackend"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
