"""The one cattrs converter: attrs records <-> JSON-able data <-> bytes (orjson).

Values that JSON cannot hold faithfully are refused with an ``EncodeError`` that names the key path,
instead of being stringified or silently turned into something else.
"""

from __future__ import annotations

from typing import Any, TypeVar

import cattrs
import orjson
from cattrs.preconf.orjson import make_converter

from ..errors import CorruptCheckpointError, EncodeError

T = TypeVar("T")

converter = make_converter()

_JSON_SCALARS = (str, bool, int, float, type(None))


def find_unencodable(value: Any, path: str = "") -> tuple[str, Any] | None:
    """Return ``(key path, value)`` of the first value orjson cannot encode faithfully, else None."""
    if type(value) in _JSON_SCALARS or type(value) is orjson.Fragment:  # (a Fragment is encoded JSON)
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
            return path or "<root>", value
        return None
    if type(value) is dict:
        for key, item in value.items():
            if type(key) is not str:
                return f"{path}[{key!r}] (non-string key)", key
            found = find_unencodable(item, f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            found = find_unencodable(item, f"{path}[{i}]")
            if found:
                return found
        return None
    return path or "<root>", value


def to_data(obj: Any) -> Any:
    """attrs record (or plain data) -> JSON-able data."""
    return converter.unstructure(obj)


# orjson would turn datetimes, dataclasses and str/int subclasses into plain strings, dicts and
# numbers, which come back as a different type on restore. Refuse them instead (they reach
# ``_refuse`` and fail with the key path), so a restore never silently changes a value's type.
_STRICT = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS


def _refuse(value: Any) -> Any:
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def dumps_data(data: Any, *, what: str = "checkpoint") -> bytes:
    """JSON-able data -> bytes; a value that cannot be encoded raises ``EncodeError`` naming its path."""
    try:
        return orjson.dumps(data, default=_refuse, option=_STRICT)
    except (TypeError, orjson.JSONEncodeError) as exc:
        found = find_unencodable(data)
        where, bad = found if found else ("<unknown>", None)
        raise EncodeError(
            f"cannot encode {what}: value at {where!r} is of type {type(bad).__name__}, which is not "
            f"JSON-serializable. Store plain data (dict/list/str/int/float/bool/None) in graph state, "
            f"or convert it before storing (e.g. model.model_dump(mode='json')). ({exc})"
        ) from None


def loads_data(blob: bytes) -> Any:
    try:
        return orjson.loads(blob)
    except orjson.JSONDecodeError as exc:
        raise CorruptCheckpointError(f"checkpoint payload is not valid JSON: {exc}") from None


def from_data(data: Any, cls: type[T]) -> T:
    """JSON-able data -> attrs record; a shape mismatch is reported as a corrupt checkpoint."""
    try:
        return converter.structure(data, cls)
    except (cattrs.BaseValidationError, TypeError, ValueError, KeyError) as exc:
        raise CorruptCheckpointError(
            f"checkpoint content does not match the {cls.__name__} layout: {exc!r}"
        ) from None
