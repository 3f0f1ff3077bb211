"""The plugin manager: hook specs + built-in plugins + plugins installed through entry points.

Environment:
  ``SPARK_CKPT_DISABLE_PLUGINS=1``     load no entry-point plugins (built-ins still load)
  ``SPARK_CKPT_PLUGINS=name1,name2``   load only these entry-point plugins (by entry-point name)
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
from importlib.metadata import entry_points
from typing import Any, Callable

import pluggy

from . import hookspecs
from .errors import PluginError, RunStopped

ENTRY_POINT_GROUP = "spark_ckpt"
log = logging.getLogger("spark_ckpt.plugins")

#: Built-in behaviour, registered as plugins by module path (datasette/llm style).
BUILTIN_PLUGINS = (
    "spark_ckpt.backends.builtin",
    "spark_ckpt.policies",
    "spark_ckpt.retention",
)


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    if os.environ.get("SPARK_CKPT_DISABLE_PLUGINS", "").strip() not in ("", "0", "false"):
        return
    allowed = {n.strip() for n in os.environ.get("SPARK_CKPT_PLUGINS", "").split(",") if n.strip()}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if allowed and ep.name not in allowed:
            continue
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(
                f"plugin {ep.name!r} ({ep.value}) failed to import: {exc!r}; uninstall it or set "
                f"SPARK_CKPT_PLUGINS to the plugins you want"
            ) from exc
        pm.register(plugin, name=ep.name)


def build_plugin_manager(*, load_entry_points: bool = True) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    for module_path in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(module_path), name=module_path)
    if load_entry_points:
        _load_entry_points(pm)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"a plugin implements an unknown hook: {exc}") from exc
    return pm


_pm: pluggy.PluginManager | None = None


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built on first use."""
    global _pm
    if _pm is None:
        _pm = build_plugin_manager()
    return _pm


def reset_plugin_manager() -> None:
    """Forget the process-wide manager (tests; after installing a plugin at runtime)."""
    global _pm
    _pm = None
    _registry_cache.clear()


def register(plugin: Any, name: str | None = None) -> None:
    """Register a plugin object or module at runtime (its ``register_*`` hooks are asked again)."""
    get_plugin_manager().register(plugin, name=name)
    _registry_cache.clear()


def unregister(plugin: Any) -> None:
    get_plugin_manager().unregister(plugin)
    _registry_cache.clear()


# -- registries filled through the register_* hooks ---------------------------------------------
_registry_cache: dict[str, Any] = {}


def _collect(hook_name: str, pm: pluggy.PluginManager, two_args: bool) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def register(name_or_obj: Any, factory: Any = None) -> None:
        if two_args:
            found[name_or_obj] = factory
        else:
            found[getattr(name_or_obj, "name")] = name_or_obj

    getattr(pm.hook, hook_name)(register=register)
    return found


def _registry(kind: str, hook_name: str, two_args: bool) -> dict[str, Any]:
    pm = get_plugin_manager()
    key = f"{kind}:{id(pm)}"
    if key not in _registry_cache:
        _registry_cache[key] = _collect(hook_name, pm, two_args)
    return _registry_cache[key]


def allowed_types() -> list[Any]:
    """Types plugins allow in checkpoints (``spark_ckpt_register_types``), in registration order."""
    pm = get_plugin_manager()
    key = f"types:{id(pm)}"
    if key not in _registry_cache:
        found: list[Any] = []
        pm.hook.spark_ckpt_register_types(register=found.append)
        _registry_cache[key] = found
    return _registry_cache[key]


def backends() -> dict[str, type]:
    """name -> Backend class, from every plugin."""
    return _registry("backends", "spark_ckpt_register_backends", False)


def serializers() -> dict[str, Any]:
    return _registry("serializers", "spark_ckpt_register_serializers", False)


def policies() -> dict[str, Callable[..., Any]]:
    return _registry("policies", "spark_ckpt_register_policies", True)


def retention_rules() -> dict[str, Callable[..., Any]]:
    return _registry("retention", "spark_ckpt_register_retention", True)


# -- calling hooks safely ------------------------------------------------------------------------
class Hooks:
    """Typed facade over ``pm.hook`` that awaits async implementations and contains plugin errors."""

    def __init__(self, pm: pluggy.PluginManager | None = None) -> None:
        self.pm = pm or get_plugin_manager()

    @property
    def wants_node_events(self) -> bool:
        return self._has_impls("spark_ckpt_pre_node") or self._has_impls("spark_ckpt_post_node")

    @property
    def wants_post_checkpoint(self) -> bool:
        return self._has_impls("spark_ckpt_post_checkpoint")

    @property
    def wants_should_checkpoint(self) -> bool:
        return self._has_impls("spark_ckpt_should_checkpoint")

    @property
    def wants_run_events(self) -> bool:
        return self._has_impls("spark_ckpt_run_started") or self._has_impls("spark_ckpt_run_ended")

    def _has_impls(self, name: str) -> bool:
        return bool(getattr(self.pm.hook, name).get_hookimpls())

    async def _fire(self, name: str, *, first_result: bool = False, **kwargs: Any) -> list[Any]:
        """Call each implementation (newest first), awaiting async ones; a plugin's exception is logged
        and skipped, except ``RunStopped`` and the exceptions of a plugin that sets ``spark_ckpt_raises``
        (a fault injector). ``first_result``: stop at the first non-None answer."""
        caller = getattr(self.pm.hook, name)
        results: list[Any] = []
        # Call implementations one by one so one failing plugin cannot stop the others.
        for impl in reversed(caller.get_hookimpls()):
            try:
                args = {k: kwargs[k] for k in impl.argnames if k in kwargs}
                value = impl.function(**args)
                if inspect.isawaitable(value):
                    value = await value
            except RunStopped:
                raise
            except Exception:
                if getattr(impl.plugin, "spark_ckpt_raises", False):
                    raise  # injected on purpose (spark_ckpt.testing.chaos): it must reach the run
                log.exception("spark-ckpt plugin %r failed in %s; ignored", impl.plugin_name, name)
                continue
            if first_result:
                if value is not None:
                    return [value]
            else:
                results.append(value)
        return results

    async def pre_node(self, event: Any) -> None:
        if self._has_impls("spark_ckpt_pre_node"):
            await self._fire("spark_ckpt_pre_node", event=event)

    async def post_node(self, event: Any) -> None:
        if self._has_impls("spark_ckpt_post_node"):
            await self._fire("spark_ckpt_post_node", event=event)

    async def on_failure(self, event: Any) -> None:
        if self._has_impls("spark_ckpt_on_failure"):
            try:
                await self._fire("spark_ckpt_on_failure", event=event)
            except RunStopped:
                log.warning("RunStopped raised from on_failure ignored: the run is already failing")

    async def pre_agent_call(self, event: Any) -> None:
        if self._has_impls("spark_ckpt_pre_agent_call"):
            await self._fire("spark_ckpt_pre_agent_call", event=event)

    async def post_agent_call(self, event: Any) -> None:
        if self._has_impls("spark_ckpt_post_agent_call"):
            await self._fire("spark_ckpt_post_agent_call", event=event)

    async def post_checkpoint(self, event: Any) -> None:
        if self._has_impls("spark_ckpt_post_checkpoint"):
            await self._fire("spark_ckpt_post_checkpoint", event=event)

    async def run_started(self, event: Any) -> None:
        if self._has_impls("spark_ckpt_run_started"):
            await self._fire("spark_ckpt_run_started", event=event)

    async def run_ended(self, event: Any) -> None:
        if self._has_impls("spark_ckpt_run_ended"):
            try:
                await self._fire("spark_ckpt_run_ended", event=event)
            except RunStopped:
                log.warning("RunStopped raised from run_ended ignored: the run is already over")

    async def should_checkpoint(self, decision: Any) -> bool | None:
        """First non-None answer of the plugins, or None when all defer."""
        if not self._has_impls("spark_ckpt_should_checkpoint"):
            return None
        answers = await self._fire("spark_ckpt_should_checkpoint", first_result=True, decision=decision)
        return bool(answers[0]) if answers else None
