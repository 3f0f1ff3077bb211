"""The guide's codec arguments of a backend object (``FileBackend(format="json", compression=True)``).

They are choices of how checkpoints are encoded, not of where they are stored: the object only keeps
them (``Backend.serializer_choice`` / ``compression_choice``), and a ``CheckpointConfig`` given the
object applies each one its own setting leaves at the default (``serializer="json"``,
``compression=None``); a setting made on the config wins. ``format="pickle"`` still needs the config's
``pickle_signing_key`` (pickles are only written and read signed).
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

FORMATS = ("json", "pickle")
COMPRESSIONS = ("gzip", "zstd")


def _layer_names(kind: str) -> set[str]:
    from .. import plugins

    layers = plugins.serializers()
    if kind == "format":
        return {name for name, layer in layers.items() if hasattr(layer, "loads")}
    return {name for name, layer in layers.items() if not hasattr(layer, "loads")}


def serializer_choice(value: Any, owner: str) -> str | None:
    """``format=``: "json", "pickle" or a plugin's serializer; None: no choice."""
    if value is None:
        return None
    if isinstance(value, str) and (value in FORMATS or value in _layer_names("format")):
        return value
    raise ConfigError(
        f"{owner}(format={value!r}) is not a checkpoint format; use 'json' (default, recommended) or "
        "'pickle' (needs CheckpointConfig(pickle_signing_key=...))"
    )


def compression_choice(value: Any, owner: str) -> str | None:
    """``compression=``: True ("gzip"), False/None (no choice), "gzip", "zstd" or a plugin's transform."""
    if value is None or value is False:
        return None
    if value is True:
        return "gzip"
    if isinstance(value, str) and (value in COMPRESSIONS or value in _layer_names("compression")):
        if value == "zstd":
            from ..codec import zstandard_available

            if not zstandard_available():
                raise ConfigError(f"{owner}(compression='zstd') needs the zstandard package: pip install zstandard")
        return value
    raise ConfigError(
        f"{owner}(compression={value!r}) is not a compression; use True (gzip), False, 'gzip' or 'zstd'"
    )
