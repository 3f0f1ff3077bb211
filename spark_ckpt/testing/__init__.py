"""Helpers for testing spark-ckpt, its plugins, and your own checkpointed graphs and agents.

* ``spark_ckpt.testing.chaos``: ``ChaosPlugin`` (seeded failures of live node visits and agent calls,
  raised or as a real SIGKILL), ``run_with_chaos`` / ``run_with_kills`` (recover until done) and
  ``crash_matrix`` (kill a graph at every boundary, visit and checkpoint write; check every recovery);
* ``spark_ckpt.testing.fixtures``: pytest fixtures (temporary stores, ``scripted_model``, ``chaos``),
  enabled with ``pytest_plugins = ["spark_ckpt.testing.fixtures"]`` in a conftest.py;
* ``spark_ckpt.testing.scripted_model``: ``ScriptedModel``, a Spark model answering from a script;
* ``spark_ckpt.testing.conformance``: the backend conformance suite (``BackendConformance``) and
  ``make_header``. It imports pytest, so it is not imported from here: import it from your tests.
"""

import sys

if "pytest" in sys.modules:
    # Detailed assertion messages in the suite's tests (pytest only rewrites test modules by itself).
    sys.modules["pytest"].register_assert_rewrite("spark_ckpt.testing.conformance")
