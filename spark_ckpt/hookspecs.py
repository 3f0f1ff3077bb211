"""Every hook a spark-ckpt plugin can implement.

Implement them with ``@spark_ckpt.hookimpl`` on a module or class, and expose it through the
``spark_ckpt`` entry-point group (``[project.entry-points.spark_ckpt] myplugin = "pkg.module"``).
Any hook implementation may be ``async def``: spark-ckpt awaits what it returns.

Errors: an exception raised by a plugin is logged and swallowed (it never masks the user's own
exception and never aborts a checkpoint write), except ``spark_ckpt.errors.RunStopped`` and its
subclasses, which a plugin raises on purpose to stop the run (e.g. a budget limit). A plugin object
whose ``spark_ckpt_raises`` attribute is true (a fault injector such as
``spark_ckpt.testing.chaos.ChaosPlugin``) has every exception it raises reach the run instead: from
``spark_ckpt_pre_node`` as a failure of that node visit, from ``spark_ckpt_pre_agent_call`` as a
failure of the agent's run that Spark's agent cannot turn into an error result.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("spark_ckpt")


# -- registration: called once when the plugin manager is built ---------------------------------
@hookspec
def spark_ckpt_register_backends(register: Callable[[type], None]) -> None:
    """Register storage backends: call ``register(BackendSubclass)`` for each.

    The class's ``name`` and ``url_schemes`` make it selectable with ``backend=`` / URLs.
    """


@hookspec
def spark_ckpt_register_serializers(register: Callable[[Any], None]) -> None:
    """Register codec layers: ``register(layer)`` with a ``Serializer`` or ``Transform`` instance.

    Registered layers become readable by every codec and selectable by name in the config.
    """


@hookspec
def spark_ckpt_register_policies(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register checkpoint strategies: ``register(name, factory)``; ``factory(config)`` returns an
    object with ``should_checkpoint(decision) -> bool``. Selected by ``CheckpointConfig(strategy=name)``.
    The object may also offer ``due(supersteps_since_last, seconds_since_last) -> bool``, its answer at a
    superstep boundary, asked there instead when no ``spark_ckpt_should_checkpoint`` hook is registered,
    and ``bind(nodes)``, ``observe_visit(event)``, ``observe_checkpoint(event)``, ``reset()`` to see the
    graph, its live visits, the measured checkpoint writes and each checkpoint taken (see
    ``spark_ckpt.policies``). The built-in strategies are registered through this same hook.
    """


@hookspec
def spark_ckpt_register_retention(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register retention rules: ``register(name, factory)``; ``factory(config)`` returns an object
    with ``select_for_deletion(headers, protected) -> list[header]``. Selected by
    ``CheckpointConfig(retention=name)``.
    """


@hookspec
def spark_ckpt_register_types(register: Callable[[Any], None]) -> None:
    """Allow types in checkpoints: ``register(cls)``, ``register("pkg.mod.Class")`` or
    ``register("pkg.mod.*")``. Enum members, dataclasses, attrs classes and pydantic models of allowed
    types are stored by import path and rebuilt exactly; others are refused (see ``codec.values``).
    """


# -- graph execution -----------------------------------------------------------------------------
@hookspec
def spark_ckpt_pre_node(event) -> None:  # event: spark_ckpt.events.NodeEvent
    """Before a node visit runs (or is replayed from the journal: ``event.replayed``)."""


@hookspec
def spark_ckpt_post_node(event) -> None:  # event: spark_ckpt.events.NodeEvent
    """After a node visit completed, with ``event.output``."""


@hookspec
def spark_ckpt_on_failure(event) -> None:  # event: spark_ckpt.events.FailureEvent
    """A node visit or agent failed. Fired before the error reaches the caller."""


@hookspec(firstresult=True)
def spark_ckpt_should_checkpoint(decision) -> bool | None:  # decision: CheckpointDecision
    """Decide whether to checkpoint now. The first non-None answer wins; None defers to the next
    plugin and finally to the configured strategy."""


@hookspec
def spark_ckpt_post_checkpoint(event) -> None:  # event: spark_ckpt.events.CheckpointSaved
    """A checkpoint was committed to the backend; ``event.duration_s`` is how long its write (encode and
    put) took, ``event.size`` its bytes."""


@hookspec
def spark_ckpt_run_started(event) -> None:  # event: spark_ckpt.events.RunEvent
    """A run of an execution starts (under its lease, before its first record is written)."""


@hookspec
def spark_ckpt_run_ended(event) -> None:  # event: spark_ckpt.events.RunEvent
    """A run of an execution ended (``event.status``, ``event.error``), after its last record was
    written and before its lease is released. Fired only to plugins implementing it."""


# -- agents --------------------------------------------------------------------------------------
@hookspec
def spark_ckpt_pre_agent_call(event) -> None:  # event: spark_ckpt.events.AgentCallEvent
    """Before an agent's LLM call (``method`` get_text/get_json) or tool call (``method`` "tool")."""


@hookspec
def spark_ckpt_post_agent_call(event) -> None:  # event: spark_ckpt.events.AgentCallEvent
    """After an agent's LLM or tool call, with the response, tool calls and token usage.
    Raise ``BudgetExceededError`` to stop the run."""
