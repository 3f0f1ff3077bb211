"""File backend: one file per checkpoint under a directory; no server, no database.

URLs: ``file://./relative/dir``, ``file:///absolute/dir`` (``CheckpointConfig(backend="file", path=...)``
builds the same). Option ``fsync`` (default True): fsync each file and its directory so a committed
checkpoint survives power loss; ``fsync=False`` only survives a crash of the process.

Modules:

- ``layout``: where everything lives (``<root>/graphs``, ``ids``, ``leases``, ``heads``), escaping
  ids into file names, the ``.ckpt`` file format, and walking the tree;
- ``writes``: atomic writes (temp file, then link or replace) and cleaning up stale temp files and
  empty directories;
- ``head_files``: the executions index, one head file per execution rewritten in place;
- ``lease_files``: leases, one JSON file and one ``flock`` lock file per execution;
- ``backend``: ``FileBackend``, which composes them and publishes checkpoints without ever
  replacing one.
"""

from ...errors import DuplicateCheckpointError as DuplicateCheckpointError  # (tests name it from here)
from .backend import FileBackend
from .head_files import HEAD_SIZE
from .layout import LAYOUT_VERSION, MAGIC, MARKER, MAX_NAME_BYTES, SUFFIX, escape_name
from .writes import _HOST_TAG as _HOST_TAG
from .writes import _TEMP_NAME as _TEMP_NAME
from .writes import STALE_TEMP_AGE_S

__all__ = [
    "HEAD_SIZE",
    "LAYOUT_VERSION",
    "MAGIC",
    "MARKER",
    "MAX_NAME_BYTES",
    "STALE_TEMP_AGE_S",
    "SUFFIX",
    "FileBackend",
    "escape_name",
]
