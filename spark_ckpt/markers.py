"""The hook implementation marker (kept apart so built-ins can import it without cycles)."""

import pluggy

hookimpl = pluggy.HookimplMarker("spark_ckpt")
