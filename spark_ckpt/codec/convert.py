"""The one cattrs converter: attrs records <-> JSON-able data <-> bytes (orjson).

Values are kept exactly: plain JSON as it is, the other supported types tagged (``values``); what
cannot be stored faithfully is refused with an ``EncodeError`` that names the key path, never
stringified or silently turned into something else.
"""

from __future__ import annotations

from typing import Any, TypeVar

import attrs
import cattrs
import orjson
from cattrs.preconf.orjson import make_converter

from ..errors import CorruptCheckpointError, EncodeError
from .values import TAG_BYTES, from_tree, is_plain, to_tree

T = TypeVar("T")

# not detailed: a damaged record with a 20,000-item list would otherwise collect 20,000 errors (seconds)
# before it is refused; the first error says enough
converter = make_converter(detailed_validation=False)


def _user_value(cls: Any) -> bool:
    """Runtime classes met in ``Any``-typed fields: the user's values. They are stored as they are
    (``dumps_data`` keeps them exactly), never unstructured into something else: cattrs would turn a
    tuple into a list, a dataclass into a dict, an Enum into its value. Only our own records are."""
    return isinstance(cls, type) and not (attrs.has(cls) and cls.__module__.startswith("spark_ckpt."))


converter.register_unstructure_hook_func(_user_value, lambda value: value)


def to_data(obj: Any) -> Any:
    """attrs record (or plain data) -> JSON-able data."""
    return converter.unstructure(obj)


# orjson would turn datetimes, dataclasses and str/int subclasses into plain strings, dicts and
# numbers, which come back as a different type on restore: they reach ``_refuse`` instead, and the
# value takes the tagged path (``values``), which stores them faithfully or refuses them.
_STRICT = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS


def _refuse(value: Any) -> Any:
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def dumps_data(data: Any, *, what: str = "checkpoint", option: int = 0) -> bytes:
    """JSON-able data -> bytes, every value kept exactly: plain JSON as it is, other values tagged
    (``values``); a value that cannot be stored faithfully raises ``EncodeError`` naming its path."""
    if is_plain(data):
        try:
            return orjson.dumps(data, default=_refuse, option=_STRICT | option)
        except (TypeError, orjson.JSONEncodeError):
            pass  # a lone surrogate, a 65-bit int, nesting orjson refuses: the tagged path decides
    try:
        tree = to_tree(data)
    except EncodeError as exc:
        raise EncodeError(f"cannot encode {what}: {exc}") from None
    try:
        return orjson.dumps(tree, option=option)
    except (TypeError, orjson.JSONEncodeError) as exc:  # (an embedded Fragment that is not JSON)
        raise EncodeError(f"cannot encode {what}: {exc}") from None


def loads_data(blob: bytes) -> Any:
    """Bytes written by ``dumps_data`` -> the data, tagged values rebuilt."""
    try:
        data = orjson.loads(blob)
    except orjson.JSONDecodeError as exc:
        raise CorruptCheckpointError(f"checkpoint payload is not valid JSON: {exc}") from None
    return from_tree(data) if TAG_BYTES in blob else data


def faithful_copy(value: Any, *, what: str = "value") -> Any:
    """A deep copy of ``value`` through its stored form: exactly what a restore gets back."""
    return loads_data(dumps_data(value, what=what))


def from_data(data: Any, cls: type[T]) -> T:
    """JSON-able data -> attrs record; a shape mismatch is reported as a corrupt checkpoint."""
    try:
        return converter.structure(data, cls)
    except (cattrs.BaseValidationError, TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        raise CorruptCheckpointError(
            f"checkpoint content does not match the {cls.__name__} layout: {exc!r}"
        ) from None
