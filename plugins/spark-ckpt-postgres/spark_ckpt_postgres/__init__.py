"""PostgreSQL checkpoint backend for spark-ckpt.

Installed, it registers the ``postgres`` backend (URL schemes ``postgresql://`` and ``postgres://``)
through the ``spark_ckpt`` entry-point group. psycopg is imported only when a backend is opened.
"""

from __future__ import annotations

from typing import Callable

from spark_ckpt.markers import hookimpl

from .backend import PostgresBackend

__all__ = ["PostgresBackend"]


@hookimpl
def spark_ckpt_register_backends(register: Callable[[type], None]) -> None:
    register(PostgresBackend)
