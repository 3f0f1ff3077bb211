"""pytest fixtures for testing checkpointed graphs and agents. Enable them in a ``conftest.py``:

    pytest_plugins = ["spark_ckpt.testing.fixtures"]

(or ``pytest -p spark_ckpt.testing.fixtures``). They are not loaded by default: nothing here runs in a
pytest session that does not ask for it. Every store lives in the test's ``tmp_path``.

* ``ckpt_config``: a ``CheckpointConfig`` on a new SQLite file;
* ``ckpt_config_factory(backend="sqlite", **fields)``: more configs ("sqlite", "file" or "memory"), each
  on its own store;
* ``sqlite_backend`` / ``file_backend`` / ``memory_backend``: opened backends, closed afterwards;
* ``scripted_model(replies)``: a ``ScriptedModel`` for agents (``spark_ckpt.testing.scripted_model``);
* ``chaos(**options)``: a ``ChaosPlugin`` registered until the test ends (``spark_ckpt.testing.chaos``).

Without pytest-asyncio, a coroutine test marked ``@pytest.mark.asyncio`` (as the guide writes them) runs
in a new event loop (``asyncio.run``); with pytest-asyncio installed, that plugin runs it.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from typing import Any, Callable

import pytest


def _asyncio_plugin(config: Any) -> bool:
    return config.pluginmanager.has_plugin("asyncio")


def pytest_configure(config: Any) -> None:
    if not _asyncio_plugin(config):
        config.addinivalue_line("markers", "asyncio: run this coroutine test with asyncio.run (spark_ckpt.testing.fixtures)")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: Any) -> bool | None:
    if _asyncio_plugin(pyfuncitem.config) or pyfuncitem.get_closest_marker("asyncio") is None:
        return None
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(pyfuncitem.obj(**arguments))
    return True


@pytest.fixture
def ckpt_config_factory(tmp_path: Any) -> Callable[..., Any]:
    """``make(backend="sqlite", **fields)``: a ``CheckpointConfig`` on a store of its own in ``tmp_path``."""
    from spark_ckpt import CheckpointConfig
    from spark_ckpt.errors import ConfigError

    numbers = itertools.count()

    def make(backend: str = "sqlite", **fields: Any) -> Any:
        n = next(numbers)
        if backend == "sqlite":
            return CheckpointConfig(backend="sqlite", path=str(tmp_path / f"checkpoints-{n}.db"), **fields)
        if backend == "file":
            return CheckpointConfig(backend="file", path=str(tmp_path / f"checkpoints-{n}"), **fields)
        if backend == "memory":
            return CheckpointConfig(backend="memory", **fields)
        raise ConfigError(f"ckpt_config_factory makes 'sqlite', 'file' or 'memory' configs, got {backend!r}; "
                          "build a CheckpointConfig yourself for another store")

    return make


@pytest.fixture
def ckpt_config(ckpt_config_factory: Callable[..., Any]) -> Any:
    """A ``CheckpointConfig`` on a new SQLite file in ``tmp_path``."""
    return ckpt_config_factory("sqlite")


def _opened(config: Any) -> Any:
    backend = config.open_backend()
    yield backend
    backend.close()


@pytest.fixture
def sqlite_backend(ckpt_config_factory: Callable[..., Any]) -> Any:
    yield from _opened(ckpt_config_factory("sqlite"))


@pytest.fixture
def file_backend(ckpt_config_factory: Callable[..., Any]) -> Any:
    yield from _opened(ckpt_config_factory("file"))


@pytest.fixture
def memory_backend(ckpt_config_factory: Callable[..., Any]) -> Any:
    yield from _opened(ckpt_config_factory("memory"))


@pytest.fixture
def scripted_model() -> Callable[..., Any]:
    """``scripted_model(replies, model_id="scripted")``: a ``ScriptedModel``."""
    from spark_ckpt.testing.scripted_model import ScriptedModel

    return ScriptedModel


@pytest.fixture
def chaos() -> Any:
    """``chaos(seed=..., failure_rate=..., ...)``: a ``ChaosPlugin``, registered until the test ends."""
    from spark_ckpt.testing.chaos import ChaosPlugin

    made: list[Any] = []

    def install(**options: Any) -> Any:
        plugin = ChaosPlugin(**options).install()
        made.append(plugin)
        return plugin

    yield install
    for plugin in made:
        plugin.uninstall()
