"""Types the faithful-value tests store in graph state, and a strict comparison of values.

Defined at module level (values are stored by import path) and allowed in checkpoints by
``ALLOWED``; ``Unlisted`` is a dataclass left off the allowed types on purpose.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import math
from typing import Any

import attrs
import pydantic


class Color(enum.Enum):
    RED = "red"
    GREEN = 2


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass(frozen=True)
class Point:
    x: Any
    y: Any = 0


@attrs.define(slots=True)
class Box:
    content: Any
    label: str = "box"


@attrs.frozen
class Pair:
    left: Any
    right: Any


class Note(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")

    text: str
    tags: Any = None
    when: dt.datetime | None = None


@dataclasses.dataclass
class Unlisted:
    value: int = 1


ALLOWED = [Color, Level, Point, Box, Pair, Note]


def same(a: Any, b: Any) -> bool:
    """Equal and of exactly the same types all the way down (NaN equals NaN, -0.0 is not 0.0,
    Decimal by its text, datetimes with the same tzinfo and fold)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, decimal.Decimal):
        return str(a) == str(b)
    if isinstance(a, (dt.datetime, dt.time)):
        return (a.replace(tzinfo=None) == b.replace(tzinfo=None) and a.fold == b.fold
                and _same_tz(a.tzinfo, b.tzinfo))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (set, frozenset)):
        return a == b
    if dataclasses.is_dataclass(a):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if attrs.has(type(a)):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in attrs.fields(type(a)))
    if isinstance(a, pydantic.BaseModel):
        return (all(same(getattr(a, name), getattr(b, name)) for name in type(a).model_fields)
                and same(a.__pydantic_extra__, b.__pydantic_extra__) and a.model_fields_set == b.model_fields_set)
    return a == b


def _same_tz(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    return type(a) is type(b) and a.tzname(None) == b.tzname(None) and a.utcoffset(None) == b.utcoffset(None) \
        and getattr(a, "key", None) == getattr(b, "key", None)
