"""The tables of one checkpoint store inside a database, named after its ``table_name``.

A SQL backend keeps several tables (checkpoints, the executions index, leases, and their indexes).
``table_name`` names the checkpoints table; every other name is derived from it (``<table_name>_executions``,
``<table_name>_leases``, ...), so stores with different table names in one database are independent.
The backend's default table name maps to the names it has always used, so existing stores read as before.

A table name is a plain identifier (letters, digits, underscores; compared in lower case, as SQL does)
short enough that every derived name fits PostgreSQL's 63 bytes. Names that would share a table with
another store's are refused: a name ending in one of the derived suffixes, and one whose derived names
meet the default store's.
"""

from __future__ import annotations

import re
from typing import Mapping

from ..errors import ConfigError

#: the longest table name: the longest derived name ("<t>_executions_by_graph") stays within 63 bytes
MAX_TABLE_NAME = 40
_IDENTIFIER = re.compile(r"[a-z][a-z0-9_]*")

#: role -> suffix added to a table name (SQLite and PostgreSQL use some each); the roles
#: ``checkpoints_*`` / ``executions_*`` are named after those tables
SUFFIXES = {
    "checkpoints": "",
    "executions": "_executions",
    "leases": "_leases",
    "migrations": "_migrations",
}
_OBJECT_SUFFIXES = ("_new", "_by_named_id", "_by_graph", "_by_time")


def derived(table_name: str) -> dict[str, str]:
    """Every table's name for ``table_name`` (not the default's: see ``table_names``)."""
    return {role: table_name + suffix for role, suffix in SUFFIXES.items()}


def _objects(tables: Mapping[str, str]) -> set[str]:
    """Every name the tables of one store occupy: tables, and the indexes and scratch tables of migrations."""
    names = set(tables.values())
    for table in (tables["checkpoints"], tables["executions"]):
        names.update(table + suffix for suffix in _OBJECT_SUFFIXES)
    return names


def table_names(table_name: object, *, default: str, legacy: Mapping[str, str], backend: str) -> dict[str, str]:
    """The names of the tables of the store called ``table_name``; ``ConfigError`` for a name that is not
    a plain identifier, is too long, or would share a table with another store."""
    if not isinstance(table_name, str):
        raise ConfigError(f"{backend} table_name must be a string, got {type(table_name).__name__}")
    name = table_name.lower()
    if name == default:
        return dict(legacy)
    if not _IDENTIFIER.fullmatch(name) or len(name) > MAX_TABLE_NAME:
        raise ConfigError(
            f"{backend} table_name {table_name!r} is not a plain identifier of at most {MAX_TABLE_NAME} "
            "characters; use letters, digits and underscores, starting with a letter (e.g. 'graph_checkpoints')"
        )
    clash = next((s for s in (*SUFFIXES.values(), *_OBJECT_SUFFIXES) if s and name.endswith(s)), None)
    tables = derived(name)
    if clash is not None or name.startswith("sqlite_") or _objects(tables) & _objects(legacy):
        raise ConfigError(
            f"{backend} table_name {table_name!r} would share tables with another store "
            f"({'it ends in ' + repr(clash) if clash else 'the default store uses such names'}); choose "
            "another name, e.g. 'graph_checkpoints'"
        )
    if _is_keyword(name):
        raise ConfigError(f"{backend} table_name {table_name!r} is an SQL keyword; choose another name, "
                          "e.g. 'graph_checkpoints'")
    return tables


def _is_keyword(name: str) -> bool:
    """Whether SQL reads ``name`` as a keyword rather than a table name (tables are named unquoted):
    asked of an in-memory SQLite database, whose keywords cover the ones PostgreSQL reserves."""
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(":memory:")) as probe:
        try:
            probe.execute(f"CREATE TABLE {name} (x)")
        except sqlite3.DatabaseError:
            return True
    return name in _POSTGRES_ONLY_RESERVED


#: words PostgreSQL reserves that SQLite takes as plain names
_POSTGRES_ONLY_RESERVED = frozenset({
    "analyse", "array", "asymmetric", "both", "current_catalog", "current_role", "current_user", "fetch", "grant",
    "leading", "localtime", "localtimestamp", "offset", "only", "placing", "session_user", "some", "symmetric",
    "trailing", "user", "variadic", "window", "authorization", "binary", "collation", "concurrently", "freeze",
    "ilike", "lateral", "overlaps", "similar", "tablesample", "verbose",
})
