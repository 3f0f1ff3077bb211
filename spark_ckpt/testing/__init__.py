"""Helpers for testing spark-ckpt and its plugins.

``spark_ckpt.testing.conformance``: the backend conformance suite (``BackendConformance``) and
``make_header``. It imports pytest, so it is not imported from here: import it from your tests.
"""

import sys

if "pytest" in sys.modules:
    # Detailed assertion messages in the suite's tests (pytest only rewrites test modules by itself).
    sys.modules["pytest"].register_assert_rewrite("spark_ckpt.testing.conformance")
