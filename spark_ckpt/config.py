"""``CheckpointConfig``: what to checkpoint, when, where, and how it is encoded."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

import attrs

from .errors import ConfigError, UnknownBackendError

if TYPE_CHECKING:
    from .backends.base import Backend
from .keys import KEY_SIZE, Secret, parse_key, parse_keys, refuse_shared_signing_key
from .masking import MASK, is_secret_name, mask_url

STRATEGIES_BUILTIN = ("iteration", "time", "event", "adaptive", "cost_aware", "after_nodes")
DURABILITY_MODES = ("sync", "async", "exit")
#: more allowed types, comma-separated import paths ("myapp.models.*,other.Thing"): for the CLI and workers
ALLOWED_TYPES_ENV = "SPARK_CKPT_ALLOWED_TYPES"

_BARE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9+._-]*")

#: default location per built-in backend when neither ``path`` nor a URL is given
DEFAULT_PATHS = {"sqlite": "./checkpoints.db", "file": "./checkpoints", "database": "./checkpoints.db"}
#: the guide's name of the SQL backends: SQLite at ``path``, or PostgreSQL when ``path`` is its URL
DATABASE = "database"


def _positive(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"CheckpointConfig.{attribute.name} must be > 0, got {value!r}")


def _durability(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value not in DURABILITY_MODES:
        raise ConfigError(
            f"CheckpointConfig.durability must be one of {', '.join(DURABILITY_MODES)}, got {value!r}"
        )


def _policy_options(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    # what each option means is the strategy's to check (when the policy is made); its shape is checked here
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise ConfigError(f"CheckpointConfig.policy_options must be a dict with str keys, got {value!r}")


def _allowed_types(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    from .codec.values import AllowedTypes

    AllowedTypes().extend(value)  # raises ConfigError naming a malformed entry


def _is_backend(value: Any) -> bool:
    """A backend object (``backends.base`` is imported only once one could be one: keeps import fast)."""
    if isinstance(value, str):
        return False
    from .backends.base import Backend

    return isinstance(value, Backend)


def _backend(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if _is_backend(value):
        return
    if not isinstance(value, str) or not value:
        raise ConfigError(
            f"CheckpointConfig.backend must be a backend name ('memory', 'file', 'sqlite', 'database'), a URL "
            f"(sqlite:///x.db, postgresql://...) or a backend object (e.g. SQLiteBackend(db_path=...)), got "
            f"{type(value).__name__ if not isinstance(value, str) else 'an empty string'}"
        )


def _node_keys(value: Any) -> frozenset[str]:
    keys = [value] if isinstance(value, str) else value
    try:
        keys = frozenset(keys)
    except TypeError:
        raise ConfigError(f"CheckpointConfig.unsafe_nodes must be a set of node keys, got {value!r}") from None
    if not all(isinstance(key, str) for key in keys):
        raise ConfigError(f"CheckpointConfig.unsafe_nodes must hold node keys (str), got {sorted(map(repr, keys))}")
    return keys


def _masked_repr(value: Any) -> str:
    if _is_backend(value):
        return repr(value)  # (its describe(), masked)
    # a URL (or a path that goes after scheme://) may hold a password: repr(config) never shows it
    if isinstance(value, str) and "://" not in value:
        return repr(mask_url(f"x://{value}")[len("x://"):])
    return repr(mask_url(value))


def _masked_options_repr(options: dict[str, Any]) -> str:
    return repr({key: MASK if is_secret_name(str(key)) else (mask_url(v) if isinstance(v, str) else v)
                 for key, v in options.items()})


def _encryption_keys(value: Any) -> dict[str, Secret] | None:
    # parsed once here, held as Secret: repr(config) and attrs.asdict(config) show '***', never a key
    return None if value is None else parse_keys(value, origin="encryption_keys")


def _signing_key(value: Any) -> Secret | None:
    if value is None:
        return None
    return Secret(parse_key(value, name="pickle signing key", size=KEY_SIZE, exact=False))


def _keys(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None:
        from .codec.crypto import Keyring

        Keyring(value, instance.active_key)  # raises InvalidKeyError, never echoing key material


def _separate_signing_key(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and instance.encryption_keys:
        refuse_shared_signing_key(value.reveal(), {kid: key.reveal() for kid, key in instance.encryption_keys.items()})


@attrs.define
class CheckpointConfig:
    """How a wrapped graph or agent is checkpointed.

    ``strategy``: "iteration" (every ``interval`` supersteps), "time" (every ``interval`` seconds,
    checked at superstep boundaries), "event" (only on ``checkpoint_now()``), "adaptive" (time,
    ``interval`` operations adapted to expensive/cheap work, milestones), "cost_aware" (redo cost x
    failure probability vs the measured checkpoint cost), "after_nodes" (after chosen nodes ran), or
    a plugin's name. ``policy_options`` holds the strategy's own options (``spark_ckpt.policies``).

    ``backend``: a name ("memory", "file", "sqlite", or a plugin's) used with ``path``, or a URL:
    ``memory://``, ``file://./dir``, ``sqlite:///abs/x.db`` / ``sqlite://rel.db``, ``postgresql://...``.
    "database" (the guide's name) is SQLite at ``path`` (default ./checkpoints.db), or PostgreSQL when
    ``path`` is a ``postgresql://`` URL. Or a backend object (``SQLiteBackend(db_path=...,
    table_name=...)``, ``FileBackend(path=...)``, a plugin's): used as it is, shared by everything given
    it, and closed by whoever created it, never by a wrapped graph or agent. Its codec choices
    (``FileBackend(format=..., compression=...)``) apply where this config leaves ``serializer`` /
    ``compression`` at their defaults.

    ``durability``:
      * "sync" (default): a checkpoint is committed before the next superstep starts. A crash loses
        at most the superstep that was running.
      * "async": the write runs while the next superstep runs; a crash can also lose the checkpoint
        that was being written (recovery resumes from the one before it). Faster on slow stores.
      * "exit": checkpoints are kept in memory and written when the run ends or fails; a hard crash
        (kill -9, power loss) loses the whole run's progress.
      For a standalone agent the unit is one LLM or tool call's journal record instead of a superstep
      (an agent node inside a graph follows the graph). ``await wrapped.flush()`` writes what is held.
    """

    enabled: bool = True
    strategy: str = "iteration"
    interval: float = attrs.field(default=1, validator=_positive)
    backend: str | Backend = attrs.field(default="sqlite", repr=_masked_repr, validator=_backend)
    path: str | None = attrs.field(default=None, repr=_masked_repr)
    #: keep the newest N checkpoints per graph (plus all that unfinished executions need); None keeps all
    retention_count: int | None = attrs.field(default=100, validator=_positive)
    retention_max_age_s: float | None = attrs.field(default=None, validator=_positive)
    #: names of extra retention rules registered by plugins (``spark_ckpt_register_retention``)
    retention: tuple[str, ...] = attrs.field(default=(), converter=lambda v: (v,) if isinstance(v, str) else tuple(v))
    durability: str = attrs.field(default="sync", validator=_durability)
    #: compress payloads with this transform ("gzip", or a plugin's) when >= compression_threshold bytes
    compression: str | None = None
    compression_threshold: int = 4096
    #: refuse to recover into a graph whose structure changed since the checkpoint, unless True
    allow_graph_change: bool = False
    #: keys of graph nodes not safe to re-run, as if marked ``@not_safe_to_rerun`` (checked against the
    #: graph's node keys when it is wrapped)
    unsafe_nodes: frozenset[str] = attrs.field(default=frozenset(), converter=_node_keys)
    #: seconds a worker's lease on an execution lasts without renewal
    lease_ttl_s: float = attrs.field(default=60.0, validator=_positive)
    #: extra keyword options passed to the backend factory
    backend_options: dict[str, Any] = attrs.field(factory=dict, repr=_masked_options_repr)
    #: encryption keys by key id (32 raw bytes or base64/hex text, or that env form as one string);
    #: None reads SPARK_CKPT_KEYS ("k1:<base64>,k2:<base64>"). With keys, unencrypted checkpoints are
    #: refused on read. Held as ``spark_ckpt.keys.Secret`` values (shown as '***').
    encryption_keys: dict[str, Secret] | None = attrs.field(
        default=None, converter=_encryption_keys, validator=_keys
    )
    #: key id new checkpoints are encrypted with (default: the only key, or SPARK_CKPT_ACTIVE_KEY)
    active_key: str | None = None
    #: with encryption configured, still read unencrypted checkpoints (migration only)
    allow_plaintext: bool = False
    #: "json" (default, recommended), "pickle" (needs pickle_signing_key) or a plugin's serializer
    serializer: str = "json"
    #: HMAC-SHA256 key (>= 32 bytes, raw or base64/hex; not one of the encryption keys) that signs
    #: pickles and verifies them before loading. Held as a ``Secret`` (shown as '***').
    pickle_signing_key: Secret | None = attrs.field(
        default=None, converter=_signing_key, validator=_separate_signing_key
    )
    #: Enum, dataclass, attrs and pydantic types stored by import path and rebuilt on restore: classes,
    #: "pkg.mod.Class" or "pkg.mod.*" (process-wide, with the plugins' ``spark_ckpt_register_types``;
    #: Spark's own types and those in $SPARK_CKPT_ALLOWED_TYPES are allowed). Values of other such
    #: types are refused when stored.
    allowed_types: tuple[Any, ...] = attrs.field(
        default=(), converter=lambda v: (v,) if isinstance(v, (str, type)) else tuple(v), validator=_allowed_types)
    #: a compressed payload that would expand past this many bytes is refused before expanding further
    #: (64 MiB: ``codec.layers.DEFAULT_MAX_DECOMPRESSED``); raise it for checkpoints larger than that
    max_decompressed_size: int = attrs.field(default=64 * 1024 * 1024, validator=_positive)
    #: the strategy's own options, e.g. ``{"max_seconds": 60, "expensive": ["train"]}`` for "adaptive";
    #: a built-in strategy refuses options it does not take
    policy_options: dict[str, Any] = attrs.field(factory=dict, validator=_policy_options)

    def __attrs_post_init__(self) -> None:
        if _is_backend(self.backend) and (self.path is not None or self.backend_options):
            raise ConfigError(
                "CheckpointConfig(backend=<backend object>) takes no path= or backend_options=: the object "
                f"already says where and how it stores ({self.backend!r}); pass those to its constructor"
            )
        if self.retention_count is not None and int(self.retention_count) != self.retention_count:
            raise ConfigError(f"CheckpointConfig.retention_count must be an integer, got {self.retention_count!r}")

    @classmethod
    def from_env(cls, prefix: str = "SPARK_CKPT_", **overrides: Any) -> "CheckpointConfig":
        """Build from ``SPARK_CKPT_BACKEND``, ``SPARK_CKPT_PATH``, ``SPARK_CKPT_STRATEGY``,
        ``SPARK_CKPT_INTERVAL``, ``SPARK_CKPT_RETENTION_COUNT``, ``SPARK_CKPT_DURABILITY``."""
        values: dict[str, Any] = {}
        for field, conv in (
            ("backend", str), ("path", str), ("strategy", str), ("interval", float),
            ("retention_count", int), ("durability", str),
        ):
            raw = os.environ.get(prefix + field.upper())
            if raw:
                try:
                    values[field] = conv(raw)
                except ValueError:
                    raise ConfigError(f"{prefix + field.upper()}={raw!r} is not a valid {conv.__name__}") from None
        if _is_backend(overrides.get("backend")):
            values.pop("path", None)  # (the object says where it stores)
        values.update(overrides)
        return cls(**values)

    # -- building the parts ----------------------------------------------------------------------
    def backend_url(self) -> str:
        """The backend as one URL, credentials included: show ``mask_url(config.backend_url())``.
        For a backend object, its ``describe()`` (which never holds a password)."""
        if _is_backend(self.backend):
            return self.backend.describe()
        if "://" in self.backend:
            return self.backend
        if self.backend == DATABASE:
            return database_url(self.path)
        path = self.path or DEFAULT_PATHS.get(self.backend, "")
        return f"{self.backend}://{path}"

    @property
    def owns_backend(self) -> bool:
        """Whether what ``open_backend()`` returns is the caller's to close (opened from a name or URL);
        a backend object given to the config belongs to whoever created it."""
        return not _is_backend(self.backend)

    def open_backend(self):
        """Instantiate the configured backend (through the plugin registry), or return the object given."""
        if _is_backend(self.backend):
            return self.backend
        return open_backend(self.backend_url(), **self.backend_options)

    def make_policy(self):
        from . import plugins

        available = plugins.policies()
        try:
            factory = available[self.strategy]
        except KeyError:
            raise ConfigError(
                f"unknown checkpoint strategy {self.strategy!r}; available: {', '.join(sorted(available))}"
            ) from None
        return factory(self)

    def make_retention_rules(self) -> list[Any]:
        from . import plugins

        rules = plugins.retention_rules()
        chosen = []
        if self.retention_count is not None:
            chosen.append(rules["count"](self))
        if self.retention_max_age_s is not None:
            chosen.append(rules["age"](self))
        for name in self.retention:
            if name not in rules:
                raise ConfigError(f"unknown retention rule {name!r}; available: {', '.join(sorted(rules))}")
            chosen.append(rules[name](self))
        return chosen

    def make_codec(self):
        """The codec of this config; with a backend object, its codec choices fill in the settings this
        config leaves at their defaults (``serializer="json"``, ``compression=None``)."""
        chosen = self._backend_codec_choices()
        if chosen:
            return attrs.evolve(self, **chosen).make_codec()
        from . import plugins
        from .codec import Codec, GzipTransform, Keyring, SignedPickleSerializer, ZstdTransform, zstandard_available
        from .codec.values import allow_types

        from_env = [entry for entry in os.environ.get(ALLOWED_TYPES_ENV, "").split(",") if entry.strip()]
        allow_types(*self.allowed_types, *plugins.allowed_types(), *from_env)

        # "pickle" is reserved: it exists only when a signing key is configured (never unpickle by surprise)
        layers = {name: layer for name, layer in plugins.serializers().items() if name != "pickle"}
        limit = self.max_decompressed_size
        pipeline = []
        if self.compression:
            if self.compression == "gzip":
                pipeline.append(GzipTransform(threshold=self.compression_threshold, max_size=limit))
            elif self.compression == "zstd":
                if not zstandard_available():
                    raise ConfigError("compression='zstd' needs the zstandard package: pip install zstandard")
                pipeline.append(ZstdTransform(threshold=self.compression_threshold, max_size=limit))
            elif self.compression in layers:
                pipeline.append(layers[self.compression])
            else:
                raise ConfigError(
                    f"unknown compression {self.compression!r}; available: gzip, zstd, "
                    + ", ".join(sorted(set(layers) - {"json"}))
                )
        readable = list(layers.values())
        signed_pickle = None
        if self.pickle_signing_key is not None:
            signed_pickle = SignedPickleSerializer(self.pickle_signing_key)
            readable.append(signed_pickle)
        serializer = None
        if self.serializer == "pickle":
            if signed_pickle is None:
                raise ConfigError(
                    "serializer='pickle' needs pickle_signing_key= (>= 32 bytes): pickles are only written "
                    "and read signed. Prefer the default serializer='json'"
                )
            serializer = signed_pickle
        elif self.serializer != "json":
            if self.serializer not in layers or not hasattr(layers[self.serializer], "loads"):
                raise ConfigError(
                    f"unknown serializer {self.serializer!r}; available: json, pickle, "
                    + ", ".join(sorted(n for n, layer in layers.items() if hasattr(layer, "loads")))
                )
            serializer = layers[self.serializer]
        if self.encryption_keys is not None:
            keyring = Keyring(self.encryption_keys, self.active_key)
        else:  # keys from SPARK_CKPT_KEYS; an explicit active_key still wins over SPARK_CKPT_ACTIVE_KEY
            override = {"SPARK_CKPT_ACTIVE_KEY": self.active_key} if self.active_key else {}
            keyring = Keyring.from_env({**os.environ, **override})
        return Codec(
            serializer, pipeline, readable=readable, keyring=keyring,
            allow_plaintext=self.allow_plaintext, max_decompressed_size=limit,
        )


    def _backend_codec_choices(self) -> dict[str, str]:
        # the backend's format / compression: an object's, or given as backend_options with a name or URL
        if _is_backend(self.backend):
            serializer, compression = self.backend.serializer_choice, self.backend.compression_choice
        else:
            from .backends.codec_choices import compression_choice, serializer_choice

            owner = f"backend_options of {self.backend.split('://')[0]!r}"
            serializer = serializer_choice(self.backend_options.get("format"), owner)
            compression = compression_choice(self.backend_options.get("compression"), owner)
        chosen: dict[str, str] = {}
        if serializer is not None and serializer != self.serializer and self.serializer == "json":
            chosen["serializer"] = serializer
        if compression is not None and self.compression is None:
            chosen["compression"] = compression
        return chosen


def with_backend(config: "CheckpointConfig | None", backend: Any = None) -> "CheckpointConfig":
    """``config`` (default ``CheckpointConfig()``) with ``backend`` (an object, name or URL) in place of its
    own, when given: what ``checkpointed(..., backend=...)`` does. A name or URL keeps the config's
    ``path`` and ``backend_options`` only for the same name; an object takes neither."""
    config = config if config is not None else CheckpointConfig()
    if not isinstance(config, CheckpointConfig):
        raise ConfigError(f"config must be a CheckpointConfig, got {type(config).__name__}")
    if backend is None:
        return config
    if _is_backend(backend) or (isinstance(backend, str) and backend != config.backend):
        return attrs.evolve(config, backend=backend, path=None, backend_options={})
    return attrs.evolve(config, backend=backend)


def database_url(location: str | None) -> str:
    """The guide's ``backend="database"``: SQLite at ``location`` (a path or ``sqlite://`` URL, default
    ./checkpoints.db), or PostgreSQL when it is a ``postgresql://`` URL (the plugin spark-ckpt[postgres])."""
    location = location or DEFAULT_PATHS[DATABASE]
    if "://" not in location:
        return f"sqlite://{location}"
    scheme = location.split("://", 1)[0].lower()
    if scheme in ("sqlite", "postgresql", "postgres"):
        return location
    raise ConfigError(
        f"backend='database' stores in SQLite (path='./checkpoints.db') or PostgreSQL "
        f"(path='postgresql://...'), not {mask_url(location)!r}; for other stores name them: backend='{scheme}'"
    )


def _refuse_unknown_fields(init: Any) -> Any:
    """``CheckpointConfig(checkpoint_interval=5)``: a ``ConfigError`` naming the close field, not attrs's TypeError."""
    import difflib
    import functools

    @functools.wraps(init)
    def checked_init(self: CheckpointConfig, *args: Any, **kwargs: Any) -> None:
        fields = attrs.fields_dict(CheckpointConfig)
        unknown = [name for name in kwargs if name not in fields]
        if unknown:
            hints = [f"{name!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(
                name.replace("checkpoint_", ""), fields, n=1)) else repr(name) for name in unknown]
            raise ConfigError(f"CheckpointConfig has no field {', '.join(hints)}; its fields: {', '.join(fields)}")
        if len(args) > len(fields):
            raise ConfigError(f"CheckpointConfig takes at most {len(fields)} positional arguments, got {len(args)}")
        init(self, *args, **kwargs)

    return checked_init


CheckpointConfig.__init__ = _refuse_unknown_fields(CheckpointConfig.__init__)  # type: ignore[method-assign]


def split_url(url: str) -> tuple[str, str]:
    """``"sqlite:///x.db"`` -> ``("sqlite", "/x.db")``; ``"sqlite://x.db"`` -> ``("sqlite", "x.db")``."""
    if "://" not in url:
        raise ConfigError(f"not a backend URL: {mask_url(url)!r} (expected scheme://location, e.g. sqlite:///x.db)")
    scheme, rest = url.split("://", 1)
    return scheme.lower(), rest


def open_backend(url_or_name: str, **options: Any):
    """Open a backend from a URL (``sqlite:///x.db``) or a bare name (``memory``)."""
    from . import plugins

    classes = plugins.backends()
    if url_or_name.split("://", 1)[0] == DATABASE:
        url_or_name = database_url(url_or_name.split("://", 1)[1] if "://" in url_or_name else None)
    if "://" not in url_or_name:
        if not _BARE_NAME.fullmatch(url_or_name):
            split_url(url_or_name)  # not a name either (a keyword DSN?): "not a backend URL", masked
        url_or_name = f"{url_or_name}://{DEFAULT_PATHS.get(url_or_name, '')}"
    scheme, _ = split_url(url_or_name)
    shown = mask_url(url_or_name)
    for cls in classes.values():
        if scheme == cls.name or scheme in cls.url_schemes:
            return cls.from_url(url_or_name, **options)
    listing = ", ".join(
        f"{name} ({'/'.join(cls.url_schemes) or name}://)" for name, cls in sorted(classes.items())
    )
    if scheme in ("postgresql", "postgres", "s3"):
        extra = "postgres" if scheme != "s3" else "s3"
        raise UnknownBackendError(
            f"{shown!r} needs the {extra} backend plugin, which is not installed (or plugins are disabled): "
            f"pip install spark-ckpt[{extra}]. Available here: {listing}"
        )
    raise UnknownBackendError(
        f"unknown checkpoint backend {scheme!r} in {shown!r}; available: {listing}. "
        "Other backends are separate packages, e.g. pip install spark-ckpt[postgres]"
    )
