"""Crash cues shared by the worker scripts: a worker kills itself with SIGKILL at a chosen point.

``die()`` flushes what the worker printed, then SIGKILLs the process (no cleanup, no atexit: a real
crash). ``arm_crash_after_checkpoint()`` registers a plugin that dies right after checkpoint ``seq``
was stored, when ``SPARK_CKPT_TEST_CRASH_AFTER_CKPT=seq`` is set.
"""

from __future__ import annotations

import os
import signal
import sys

from spark_ckpt import hookimpl
from spark_ckpt.plugins import get_plugin_manager


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class CrashAfterCheckpoint:
    def __init__(self, seq: int) -> None:
        self.seq = seq

    @hookimpl
    def spark_ckpt_post_checkpoint(self, event):
        if event.header.seq == self.seq:
            die()


def arm_crash_after_checkpoint() -> None:
    seq = os.environ.get("SPARK_CKPT_TEST_CRASH_AFTER_CKPT")
    if seq:
        get_plugin_manager().register(CrashAfterCheckpoint(int(seq)))
