"""Values JSON cannot hold, stored faithfully: a tagged JSON tree, and the value rebuilt from it.

JSON (through orjson) keeps str, int (64-bit), finite float, bool, None, list and dict with str keys
exactly. Everything else is written as a tagged object ``{"$sc": tag, "v": ...}`` and rebuilt as the
same type on read:

* datetime, date, time (with their ``tzinfo``: ``datetime.timezone`` or ``zoneinfo.ZoneInfo``, and
  ``fold``), timedelta, Decimal, UUID, bytes, bytearray, tuple, set, frozenset, NaN and +/-inf, ints
  beyond 64 bits, strings holding lone surrogates, dicts whose keys are not all strings (or that hold
  the tag key itself);
* Enum members, dataclasses, attrs classes and pydantic models, by import path, but only types on
  the allow-list (``CheckpointConfig(allowed_types=...)`` or a plugin's ``spark_ckpt_register_types``
  hook): a type is named in the record, so a record must never make the reader import or build one
  it did not choose. An instance is rebuilt without calling ``__init__`` or validators (its fields
  as they were stored, as pickle would).

Anything else (other classes, subclasses of the built-in types, tzinfo of other libraries, values
nested deeper than ``MAX_DEPTH``) is refused with an ``EncodeError`` naming its key path: a value is
stored faithfully or not at all. Plain JSON data is never walked on read (the tag key does not occur
in its bytes) and costs one check on write.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import dataclasses
import datetime as dt
import decimal
import enum
import importlib
import sys
import uuid
from typing import Any, Callable, Iterable, Iterator

import orjson

from ..errors import ConfigError, CorruptCheckpointError, EncodeError, UntrustedTypeError

TAG = "$sc"
#: the tag key as it appears in JSON bytes: a payload without it holds no tagged value
TAG_BYTES = b'"$sc"'
#: deeper values are refused (orjson itself stops at 255 levels, and the tags add levels)
MAX_DEPTH = 200
#: larger integers are refused (written as hex, read back with the same bound)
MAX_INT_BITS = 1 << 20

_Fragment = orjson.Fragment
_NoneType = type(None)


# -- the allow-list of types stored by import path ---------------------------------------------------------
class AllowedTypes:
    """Types (or whole modules, ``"pkg.mod.*"``) that may be stored and rebuilt by import path.

    Process-wide: the union of every ``CheckpointConfig(allowed_types=...)`` made into a codec and
    every plugin's ``spark_ckpt_register_types``.
    """

    def __init__(self) -> None:
        self._exact: set[str] = set()
        self._modules: set[str] = set()

    def add(self, entry: type | str) -> None:
        if isinstance(entry, type):
            self._exact.add(type_path(entry))
            return
        if not isinstance(entry, str) or not entry.strip():
            raise ConfigError(f"an allowed type is a class or an import path string, got {entry!r}")
        text = entry.strip()
        if text.endswith(".*") or text.endswith(":*"):
            self._modules.add(text[:-2])
        elif ":" in text:
            self._exact.add(text)
        else:  # "pkg.mod.Class" -> "pkg.mod:Class"
            module, dot, name = text.rpartition(".")
            if not dot:
                raise ConfigError(
                    f"allowed type {text!r} is not an import path: use 'package.module.Class' or 'package.module.*'"
                )
            self._exact.add(f"{module}:{name}")

    def extend(self, entries: Iterable[type | str]) -> None:
        for entry in entries:
            self.add(entry)

    def __contains__(self, path: str) -> bool:
        if path in self._exact:
            return True
        module = path.partition(":")[0]
        return any(module == allowed or module.startswith(allowed + ".") for allowed in self._modules)


allowed_types = AllowedTypes()
# Spark's own types (its enums and pydantic models in graph state, approval requests, agent configs):
# the framework the wrapped graph runs on is trusted code already
allowed_types.add("spark.*")


def allow_types(*entries: type | str) -> None:
    """Let these types (classes, ``"pkg.mod.Class"`` or ``"pkg.mod.*"``) be stored by import path."""
    allowed_types.extend(entries)


def type_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


# -- writing ---------------------------------------------------------------------------------------------------
def is_plain(value: Any, depth: int = 0) -> bool:
    """Whether orjson writes ``value`` exactly as it is (no tags needed). False also for what orjson
    refuses; the tagged path then decides."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None or kind is _Fragment:
        return True
    if kind is float:
        return value - value == 0.0  # False for NaN and +/-inf
    if depth > MAX_DEPTH:
        return False
    # the dict and list loops repeat the scalar test inline on purpose: this runs on every record, and
    # a shared helper for the items (keys checked in a loop of their own) measured ~1.7x slower
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or key == TAG:
                return False
            kind = type(item)
            if kind is str or kind is int or kind is bool or item is None:
                continue
            if not is_plain(item, depth + 1):
                return False
        return True
    if kind is list:
        for item in value:
            kind = type(item)
            if kind is str or kind is int or kind is bool or item is None:
                continue
            if not is_plain(item, depth + 1):
                return False
        return True
    return False


def to_tree(value: Any) -> Any:
    """``value`` as a JSON-able tree orjson writes exactly (tagged where needed); ``EncodeError``
    naming the key path of the first value that cannot be stored faithfully."""
    return _Tagger().tree(value, 0)


class _Tagger:
    def __init__(self) -> None:
        self.path: list[str] = []

    def where(self) -> str:
        return "".join(self.path).lstrip(".") or "<root>"

    def refuse(self, value: Any, why: str) -> EncodeError:
        return EncodeError(f"value at {self.where()!r} {why}")

    def tree(self, value: Any, depth: int) -> Any:
        kind = type(value)
        if kind is str:
            return value if _utf8(value) else _tag("str", base64.b64encode(value.encode("utf-8", "surrogatepass")).decode())
        if kind is bool or value is None or kind is _Fragment:
            return value
        if kind is int:
            if -(2**63) <= value < 2**64:
                return value
            if value.bit_length() > MAX_INT_BITS:
                raise self.refuse(value, f"is an integer of {value.bit_length()} bits, over the {MAX_INT_BITS}-bit limit")
            return _tag("int", format(value, "x"))  # hex: no digit limit, unlike str()
        if kind is float:
            return value if value - value == 0.0 else _tag("float", repr(value))
        if depth >= MAX_DEPTH:
            raise self.refuse(value, f"is nested more than {MAX_DEPTH} levels deep; store flatter data")
        if kind is dict:
            if all(type(key) is str and key != TAG for key in value):
                return {key: self.child(f".{key}", item, depth) for key, item in value.items()}
            return _tag("dict", [[self.child(f"[key {key!r}]", key, depth), self.child(f"[{key!r}]", item, depth)]
                                 for key, item in value.items()])
        if kind is list:
            return [self.child(f"[{i}]", item, depth) for i, item in enumerate(value)]
        if kind is tuple:
            return _tag("tuple", [self.child(f"[{i}]", item, depth) for i, item in enumerate(value)])
        if kind is set or kind is frozenset:
            items = [self.child(f"[{i}]", item, depth) for i, item in enumerate(value)]
            return _tag(kind.__name__, _stable_order(items))
        encode = _SCALARS.get(kind)
        if encode is not None:
            return encode(self, value)
        return self.by_import_path(value, depth)

    def child(self, step: str, value: Any, depth: int) -> Any:
        self.path.append(step)
        try:
            return self.tree(value, depth + 1)
        finally:
            self.path.pop()

    def by_import_path(self, value: Any, depth: int) -> Any:
        cls = type(value)
        kind = _kind_of_class(cls)
        if kind is None:
            raise self.refuse(value, (
                f"is of type {cls.__module__}.{cls.__qualname__}, which cannot be stored faithfully. Store plain "
                "data (dict/list/str/int/float/bool/None), the supported types (datetime, Decimal, UUID, tuple, "
                "set, bytes ...), or an Enum, dataclass, attrs class or pydantic model on the allowed types"
            ))
        path = type_path(cls)
        if "<locals>" in path:
            raise self.refuse(value, f"is a {kind} defined inside a function ({path}); define it at module level")
        if path not in allowed_types:
            raise self.refuse(value, (
                f"is a {kind} of type {path.replace(':', '.')}, which is not on the allowed types: allow it "
                f"with CheckpointConfig(allowed_types=[{cls.__qualname__}]) or a plugin's "
                "spark_ckpt_register_types hook (types are stored by import path, and only allowed ones are rebuilt)"
            ))
        if kind == "enum":
            return {TAG: "enum", "type": path, "v": self.child(".value", value.value, depth)}
        fields, extra = _fields_of(kind, value)
        if extra is _UNFAITHFUL:
            raise self.refuse(value, f"is a {kind} {path} with attributes that are not fields; they would be lost")
        out = {TAG: kind, "type": path, "v": {name: self.child(f".{name}", item, depth) for name, item in fields.items()}}
        if kind == "pydantic":
            if extra:
                out["extra"] = {name: self.child(f".{name}", item, depth) for name, item in extra["extra"].items()}
            if extra.get("private"):
                out["private"] = {name: self.child(f".{name}", item, depth) for name, item in extra["private"].items()}
            out["set"] = sorted(extra["set"])
        return out


def _tag(tag: str, payload: Any) -> dict[str, Any]:
    return {TAG: tag, "v": payload}


def _utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _stable_order(trees: list[Any]) -> list[Any]:
    """A set's items (as trees) in the order of their JSON: an equal set is always written the same
    way, whatever order its items were added in."""
    return sorted(trees, key=lambda tree: orjson.dumps(tree, option=orjson.OPT_SORT_KEYS))


def _timedelta(value: dt.timedelta) -> list[int]:
    return [value.days, value.seconds, value.microseconds]


def _tz(tagger: _Tagger, tz: Any) -> Any:
    if tz is None:
        return None
    if type(tz) is dt.timezone:
        offset = tz.utcoffset(None)
        name = tz.tzname(None)
        # a name given at construction is kept (the default one is derived from the offset)
        return {"offset": _timedelta(offset), **({"name": name} if name != dt.timezone(offset).tzname(None) else {})}
    zone_key = getattr(tz, "key", None)
    if type(tz).__module__ == "zoneinfo" and type(tz).__name__ == "ZoneInfo" and isinstance(zone_key, str):
        return {"zone": zone_key}
    raise tagger.refuse(tz, (
        f"has a tzinfo of type {type(tz).__module__}.{type(tz).__qualname__}, which cannot be stored faithfully; "
        "use datetime.timezone or zoneinfo.ZoneInfo"
    ))


def _datetime(tagger: _Tagger, value: dt.datetime) -> Any:
    out = {TAG: "datetime", "v": value.replace(tzinfo=None, fold=0).isoformat()}
    return _with_tz(tagger, out, value)


def _time(tagger: _Tagger, value: dt.time) -> Any:
    out = {TAG: "time", "v": value.replace(tzinfo=None, fold=0).isoformat()}
    return _with_tz(tagger, out, value)


def _with_tz(tagger: _Tagger, out: dict[str, Any], value: Any) -> dict[str, Any]:
    tz = _tz(tagger, value.tzinfo)
    if tz is not None:
        out["tz"] = tz
    if value.fold:
        out["fold"] = 1
    return out


_SCALARS: dict[type, Callable[[_Tagger, Any], Any]] = {
    dt.datetime: _datetime,
    dt.date: lambda tagger, value: _tag("date", value.isoformat()),
    dt.time: _time,
    dt.timedelta: lambda tagger, value: _tag("timedelta", _timedelta(value)),
    decimal.Decimal: lambda tagger, value: _tag("decimal", str(value)),
    uuid.UUID: lambda tagger, value: _tag("uuid", str(value)),
    bytes: lambda tagger, value: _tag("bytes", base64.b64encode(value).decode()),
    bytearray: lambda tagger, value: _tag("bytearray", base64.b64encode(value).decode()),
}

_UNFAITHFUL = object()


def _kind_of_class(cls: type) -> str | None:
    if isinstance(cls, enum.EnumMeta):
        return "enum"
    if dataclasses.is_dataclass(cls):
        return "dataclass"
    if getattr(cls, "__attrs_attrs__", None) is not None:
        return "attrs"
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(cls, type) and issubclass(cls, pydantic.BaseModel):
        return "pydantic"
    return None


def _fields_of(kind: str, value: Any) -> tuple[dict[str, Any], Any]:
    """The fields that rebuild ``value`` (and, for pydantic, its extra/private fields and fields set);
    ``_UNFAITHFUL`` as the second item when the instance holds attributes that are not fields."""
    if kind == "pydantic":
        names = list(type(value).model_fields)
        fields = {name: getattr(value, name) for name in names}
        return fields, {"extra": dict(value.__pydantic_extra__ or {}),
                        "private": dict(getattr(value, "__pydantic_private__", None) or {}),
                        "set": set(value.model_fields_set)}
    names = [f.name for f in (dataclasses.fields(value) if kind == "dataclass" else type(value).__attrs_attrs__)]
    fields = {name: getattr(value, name) for name in names}
    own = getattr(value, "__dict__", None)
    if own is not None and not own.keys() <= set(names):
        return fields, _UNFAITHFUL
    return fields, None


# -- comparing -------------------------------------------------------------------------------------------------
def identical(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are the same value as stored: equal, of the same types all the way down,
    dict keys in the same order. ``==`` is not enough to find what changed: ``1 == True == 1.0``,
    ``Decimal("1.0") == Decimal("1.00")``, ``{1} == frozenset({1})``, and NaN is not even equal to itself."""
    if a is b:
        return True
    kind = type(a)
    if kind is not type(b):
        return False
    if kind is float:
        return (a != a and b != b) or (a == b and str(a) == str(b))  # (NaN; -0.0 is not 0.0)
    if kind is str or kind is int or kind is bool or kind is bytes:
        return a == b
    if kind is dict:
        return len(a) == len(b) and all(
            identical(ka, kb) and identical(va, vb) for (ka, va), (kb, vb) in zip(a.items(), b.items())
        )
    if kind is list or kind is tuple:
        return len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b))
    if kind in _SCALARS or kind is set or kind is frozenset:
        try:  # their stored form says it all (a datetime's zone and fold, a Decimal's exponent)
            return to_tree(a) == to_tree(b)
        except EncodeError:
            return a == b
    class_kind = _kind_of_class(kind)
    if class_kind in ("dataclass", "attrs", "pydantic"):
        fields_a, extra_a = _fields_of(class_kind, a)
        fields_b, extra_b = _fields_of(class_kind, b)
        return identical(fields_a, fields_b) and (
            extra_a is extra_b or (type(extra_a) is dict and type(extra_b) is dict and identical(extra_a, extra_b))
        )
    return a == b


# -- reading ---------------------------------------------------------------------------------------------------
#: while set (``describing_types``), a value of a type that is not allowed here (or not importable) is
#: read as a description, ``{"$type": "pkg.mod.Class", ...fields}``, instead of refusing the record
_describing = contextvars.ContextVar("spark_ckpt_describing_types", default=False)


@contextlib.contextmanager
def describing_types() -> Iterator[None]:
    """Read records for showing them (the CLI's ``list``/``show``/``verify``): a value of a type this
    process does not allow is described, not rebuilt. Never for records that are written back."""
    token = _describing.set(True)
    try:
        yield
    finally:
        _describing.reset(token)


def _described(path: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"$type": path.replace(":", "."), **fields}


def from_tree(tree: Any) -> Any:
    """The values a tree written by ``to_tree`` holds (a tree without tags is returned as it is)."""
    return _rebuild(tree, 0)


def _rebuild(tree: Any, depth: int) -> Any:
    kind = type(tree)
    if kind is list:
        if depth > MAX_DEPTH + 60:
            raise _corrupt("it is nested too deeply")
        return [_rebuild(item, depth + 1) if type(item) in (list, dict) else item for item in tree]
    if kind is not dict:
        return tree
    if depth > MAX_DEPTH + 60:
        raise _corrupt("it is nested too deeply")
    tag = tree.get(TAG)
    if tag is None:
        return {key: _rebuild(item, depth + 1) if type(item) in (list, dict) else item for key, item in tree.items()}
    try:
        return _TAGS[tag](tree, depth + 1)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError, ArithmeticError) as exc:
        raise _corrupt(f"a value tagged {tag!r} is malformed ({exc!r})") from None


def _corrupt(why: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"checkpoint content cannot be read: {why}; it is damaged or altered, use an earlier one")


def _items(tree: dict[str, Any], depth: int) -> list[Any]:
    items = tree["v"]
    if type(items) is not list:
        raise TypeError(f"expected a list, got {type(items).__name__}")
    return [_rebuild(item, depth) for item in items]


def _load_tz(data: Any) -> Any:
    if data is None:
        return None
    if "zone" in data:
        from zoneinfo import ZoneInfo

        return ZoneInfo(data["zone"])
    offset = dt.timedelta(*data["offset"])
    return dt.timezone(offset, data["name"]) if "name" in data else dt.timezone(offset)


def _load_datetime(tree: dict[str, Any], depth: int) -> dt.datetime:
    value = dt.datetime.fromisoformat(tree["v"])
    return value.replace(tzinfo=_load_tz(tree.get("tz")), fold=tree.get("fold", 0))


def _load_time(tree: dict[str, Any], depth: int) -> dt.time:
    value = dt.time.fromisoformat(tree["v"])
    return value.replace(tzinfo=_load_tz(tree.get("tz")), fold=tree.get("fold", 0))


def _load_float(tree: dict[str, Any], depth: int) -> float:
    text = tree["v"]
    if text not in ("nan", "inf", "-inf"):
        raise ValueError(f"not a non-finite float: {text!r}")
    return float(text)


def _load_dict(tree: dict[str, Any], depth: int) -> dict[Any, Any]:
    return {key: item for key, item in (_pair(pair) for pair in _items(tree, depth))}


def _pair(pair: Any) -> tuple[Any, Any]:
    if type(pair) is not list or len(pair) != 2:
        raise ValueError("a dict entry is not a [key, value] pair")
    return pair[0], pair[1]


def resolve_type(path: Any, kind: str) -> type:
    """The class at ``path`` ("module:Qualname") if it is on the allowed types and of ``kind``."""
    if not isinstance(path, str) or ":" not in path:
        raise ValueError(f"malformed type path {path!r}")
    if path not in allowed_types:
        raise UntrustedTypeError(
            f"checkpoint holds a {kind} of type {path.replace(':', '.')}, which is not on the allowed types, so it "
            "was not rebuilt: allow it with CheckpointConfig(allowed_types=[...]) or a plugin's "
            "spark_ckpt_register_types hook if you trust this store"
        )
    try:
        obj = import_by_path(path)
    except (ImportError, AttributeError) as exc:
        raise CorruptCheckpointError(
            f"checkpoint holds a {kind} of type {path.replace(':', '.')}, which cannot be imported here ({exc}); "
            "install or restore the code that defines it"
        ) from None
    if not isinstance(obj, type) or _kind_of_class(obj) != kind:
        raise CorruptCheckpointError(f"checkpoint says {path.replace(':', '.')} is a {kind}, but it is not one here")
    if type_path(obj) != path:  # reached through another module's import: not the class the path allows
        raise UntrustedTypeError(
            f"checkpoint names {path.replace(':', '.')}, which is {type_path(obj).replace(':', '.')}; only "
            "a class under its own import path is rebuilt"
        )
    return obj


def _resolve_or_describe(tree: dict[str, Any], kind: str) -> type | None:
    """The class a tagged value names; None when it is only to be described (``describing_types``)."""
    try:
        return resolve_type(tree["type"], kind)
    except (UntrustedTypeError, CorruptCheckpointError):
        if _describing.get() and isinstance(tree["type"], str):
            return None
        raise


def _load_enum(tree: dict[str, Any], depth: int) -> Any:
    cls = _resolve_or_describe(tree, "enum")
    value = _rebuild(tree["v"], depth)
    return _described(tree["type"], {"value": value}) if cls is None else cls(value)


def _load_object(kind: str) -> Callable[[dict[str, Any], int], Any]:
    def load(tree: dict[str, Any], depth: int) -> Any:
        cls = _resolve_or_describe(tree, kind)
        stored = tree["v"]
        if type(stored) is not dict:
            raise TypeError("fields are not a dict")
        fields = {name: _rebuild(item, depth + 1) for name, item in stored.items()}
        if cls is None:
            return _described(tree["type"], fields)
        if kind == "pydantic":
            names = set(cls.model_fields)
            if names != fields.keys():
                raise _changed(cls, fields, names)
            extra = {name: _rebuild(item, depth + 1) for name, item in (tree.get("extra") or {}).items()}
            instance = cls.model_construct(_fields_set=set(tree.get("set", ())), **fields, **extra)
            private = tree.get("private")
            if private:
                instance.__pydantic_private__ = {k: _rebuild(v, depth + 1) for k, v in private.items()}
            return instance
        declared = [f.name for f in (dataclasses.fields(cls) if kind == "dataclass" else cls.__attrs_attrs__)]
        if set(declared) != fields.keys():
            raise _changed(cls, fields, declared)
        instance = object.__new__(cls)
        for name in declared:  # as pickle does: no __init__, frozen classes too
            object.__setattr__(instance, name, fields[name])
        return instance

    return load


def _changed(cls: type, stored: dict[str, Any], names: Iterable[str]) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"checkpoint holds a {cls.__qualname__} with fields {sorted(stored)}, but the class now has "
        f"{sorted(names)}: restore the class the run used, or migrate the stored state"
    )


def _load_str(tree: dict[str, Any], depth: int) -> str:
    return base64.b64decode(tree["v"], validate=True).decode("utf-8", "surrogatepass")


def _load_int(tree: dict[str, Any], depth: int) -> int:
    text = tree["v"]
    if type(text) is not str or len(text) > MAX_INT_BITS // 4 + 2:
        raise ValueError("malformed big integer")
    return int(text, 16)


_TAGS: dict[str, Callable[[dict[str, Any], int], Any]] = {
    "str": _load_str,
    "int": _load_int,
    "float": _load_float,
    "dict": _load_dict,
    "tuple": lambda tree, depth: tuple(_items(tree, depth)),
    "set": lambda tree, depth: set(_items(tree, depth)),
    "frozenset": lambda tree, depth: frozenset(_items(tree, depth)),
    "datetime": _load_datetime,
    "date": lambda tree, depth: dt.date.fromisoformat(tree["v"]),
    "time": _load_time,
    "timedelta": lambda tree, depth: dt.timedelta(*tree["v"]),
    "decimal": lambda tree, depth: decimal.Decimal(tree["v"]),
    "uuid": lambda tree, depth: uuid.UUID(tree["v"]),
    "bytes": lambda tree, depth: base64.b64decode(tree["v"], validate=True),
    "bytearray": lambda tree, depth: bytearray(base64.b64decode(tree["v"], validate=True)),
    "enum": _load_enum,
    "dataclass": _load_object("dataclass"),
    "attrs": _load_object("attrs"),
    "pydantic": _load_object("pydantic"),
}



def import_by_path(path: str) -> Any:
    """The object ``"pkg.module:Outer.Inner"`` names (``ImportError`` / ``AttributeError`` if none)."""
    module_name, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj
