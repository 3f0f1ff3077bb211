"""The backend conformance suite: every rule of ``spark_ckpt.backends.base``, as pytest tests.

A backend is done when it passes this suite. Subclass ``BackendConformance`` in a test module
(its name must start with ``Test`` so pytest collects it) and say how to build your backend::

    from spark_ckpt.testing.conformance import BackendConformance

    class TestMyBackend(BackendConformance):
        def make_backend(self, tmp_path):
            return MyBackend.from_url(f"mine://{tmp_path}/store")

        # Durable backends: open a second backend on the same storage; the suite checks that
        # checkpoints and leases survive. Without this hook that test is skipped.
        def reopen_backend(self, backend, tmp_path):
            return MyBackend.from_url(f"mine://{tmp_path}/store")

``make_backend`` must return an empty store each time (use ``tmp_path``, a fresh schema, a fresh
bucket prefix ...). The suite closes every backend it gets. Capabilities are read from the class:
``durable = False`` skips the reopen test. Override ``lease_expiry_s`` if your store's clock needs a
longer pause before a short lease counts as expired, ``thread_count`` for the concurrency tests.

Test bodies only use the public ``Backend`` API, so they run unchanged against local and remote
stores. pytest is imported here, so import this package only from tests.

Modules, one topic each (``BackendConformance`` is all of them): ``harness`` (the hooks above and
the ``backend`` fixture), ``headers`` (``make_header``, ``T0``), ``put_get``, ``listing``,
``delete_replace``, ``executions_index``, ``leases``, ``async_twins``, ``concurrency``,
``durability``.
"""

from .async_twins import AsyncTwinsConformance
from .concurrency import ConcurrencyConformance
from .delete_replace import DeleteReplaceConformance
from .durability import DurabilityConformance
from .executions_index import ExecutionsIndexConformance
from .harness import ConformanceHarness
from .headers import T0, make_header
from .leases import LeaseConformance
from .listing import ListingConformance
from .put_get import PutGetConformance

__all__ = ["BackendConformance", "T0", "make_header"]


# pytest collects a base class's tests before a subclass's, so the topics are listed last first:
# the suite runs in reading order, put/get first.
class BackendConformance(
    DurabilityConformance,
    ConcurrencyConformance,
    AsyncTwinsConformance,
    LeaseConformance,
    ExecutionsIndexConformance,
    DeleteReplaceConformance,
    ListingConformance,
    PutGetConformance,
    ConformanceHarness,
):
    """Base class of the suite; subclass it as ``Test<YourBackend>`` and implement ``make_backend``."""
