"""Plugin discovery through a real entry point, the env switches, and the hook specification itself."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spark_ckpt import hookspecs
from spark_ckpt.errors import PluginError
from spark_ckpt.plugins import build_plugin_manager

TESTS = Path(__file__).parent
FIXTURE = TESTS / "fixtures" / "spark-ckpt-testplugin"

PROBE = r"""
import asyncio, json, sys
sys.path.insert(0, sys.argv[1])
import graphs
from spark_ckpt import CheckpointConfig, checkpointed
from spark_ckpt import plugins
out = {"backends": sorted(plugins.backends()), "policies": sorted(plugins.policies())}
if "tally" in out["backends"]:
    g = checkpointed(graphs.chain(7), config=CheckpointConfig(backend="tally://", strategy="every-third"), graph_id="p")
    asyncio.run(g.run({}))
    import spark_ckpt_testplugin as tp
    out["puts"] = tp.TallyBackend.puts
    out["events"] = tp.EVENTS
    from spark_ckpt.codec.envelope import unpack
    g2 = checkpointed(graphs.chain(2), config=CheckpointConfig(backend="memory://", compression="reverse",
                                                               retention="keep-newest-only"), graph_id="q")
    asyncio.run(g2.run({}))
    asyncio.run(g2.run({}))
    headers = g2.list_checkpoints()
    out["layers"] = [l["name"] for l in unpack(g2.backend.get(headers[0].checkpoint_id).blob).layers]
    out["kept"] = len(headers)
    out["final_count"] = g2.get_last_checkpoint().graph_state["count"]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory) -> Path:
    """pip-install the test distribution into its own folder (a real dist-info with entry points)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(FIXTURE)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    return target


def probe(site: Path, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_CKPT_")}
    environ["PYTHONPATH"] = os.pathsep.join([str(site), environ.get("PYTHONPATH", "")])
    environ.update(env)
    done = subprocess.run([sys.executable, "-c", PROBE, str(TESTS)], env=environ, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_entry_point_plugin_is_discovered_and_used(installed_plugin) -> None:
    """An installed distribution's backend, policy and hook are found through the spark_ckpt group."""
    out = probe(installed_plugin)
    assert "tally" in out["backends"] and "every-third" in out["policies"]
    # 7 supersteps, every third checkpointed (2, 5) + start + final(6)
    assert out["puts"] == 4
    assert out["events"][:7] == [f"s{i}" for i in range(7)]
    # a codec layer and a retention rule contributed by the plugin are used
    assert out["layers"] == ["json", "reverse"] and out["final_count"] == 4
    assert out["kept"] == 1


def test_disable_and_restrict_plugins(installed_plugin) -> None:
    assert "tally" not in probe(installed_plugin, SPARK_CKPT_DISABLE_PLUGINS="1")["backends"]
    assert "tally" not in probe(installed_plugin, SPARK_CKPT_PLUGINS="someother")["backends"]
    assert "tally" in probe(installed_plugin, SPARK_CKPT_PLUGINS="testplugin")["backends"]
    # built-ins are always there
    assert {"memory", "file", "sqlite"} <= set(probe(installed_plugin, SPARK_CKPT_DISABLE_PLUGINS="1")["backends"])


def test_unknown_hook_fails_loudly() -> None:
    """A plugin implementing a hook that does not exist is refused (typos do not silently do nothing)."""
    import pluggy

    class Typo:
        @pluggy.HookimplMarker("spark_ckpt")
        def spark_ckpt_post_nodes(self, event):  # note the extra "s"
            pass

    pm = build_plugin_manager(load_entry_points=False)
    pm.register(Typo())
    with pytest.raises(pluggy.PluginValidationError):
        pm.check_pending()
    assert issubclass(PluginError, Exception)


def test_every_hook_is_documented_and_tested() -> None:
    """Meta-test: each hook spec has a docstring and is exercised somewhere in the test suite."""
    specs = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("spark_ckpt_")]
    assert len(specs) >= 11
    sources = "".join(p.read_text() for p in TESTS.rglob("*.py")) + "".join(
        p.read_text() for p in TESTS.parent.glob("plugins/*/tests/*.py"))
    for name in specs:
        assert (getattr(hookspecs, name).__doc__ or "").strip(), f"{name} has no docstring"
        assert sources.count(name) >= 1 and f"def {name}" in sources, f"{name} has no test implementing it"
