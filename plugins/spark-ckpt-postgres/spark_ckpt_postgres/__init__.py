"""PostgreSQL checkpoint backend for spark-ckpt.

Installed, it registers the ``postgres`` backend (URL schemes ``postgresql://`` and ``postgres://``)
through the ``spark_ckpt`` entry-point group. psycopg is imported only when a backend is opened.
As an object: ``PostgreSQLBackend(connection_string="postgresql://...", table_name="graph_checkpoints")``.
"""

from __future__ import annotations

from typing import Callable

from spark_ckpt.markers import hookimpl

from .backend import PostgreSQLBackend, PostgresBackend

__all__ = ["PostgreSQLBackend", "PostgresBackend"]


@hookimpl
def spark_ckpt_register_backends(register: Callable[[type], None]) -> None:
    register(PostgreSQLBackend)
