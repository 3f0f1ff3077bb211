"""Writing records the way ``CheckpointConfig.durability`` says; the graph and agent paths share it.

* "sync": a write is stored before ``write`` returns.
* "async": a write runs in a task; the next write (or ``flush``) awaits it first, so records land in
  order and a failed write surfaces at the next one.
* "exit": writes are held until ``flush`` or a ``wait=True`` write. With ``newest_only`` only the last
  one is kept, for records that each stand alone.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

Put = Callable[[], Awaitable[None]]


class DurableWriter:
    def __init__(self, mode: str, *, newest_only: bool = False) -> None:
        self.mode = mode
        self.newest_only = newest_only
        self._pending: asyncio.Task | None = None
        self._held: list[Put] = []

    async def write(self, put: Put, *, wait: bool = False) -> None:
        """Store by calling ``put()`` as the mode says; ``wait``: now, after everything before it."""
        if self.mode == "exit" and not wait:
            self._held = [put] if self.newest_only else [*self._held, put]
            return
        await self.flush()
        if self.mode == "async" and not wait:
            self._pending = asyncio.create_task(put())
            return
        await put()

    @property
    def idle(self) -> bool:
        """Nothing running or held: a ``wait=True`` write may call its put directly."""
        return self._pending is None and not self._held

    async def flush(self) -> None:
        """Store what is still running or held, in order."""
        if self._pending is not None:
            task, self._pending = self._pending, None
            await task
        while self._held:
            await self._held.pop(0)()
