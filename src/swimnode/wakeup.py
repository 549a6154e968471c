"""Waking whoever waits for a buffer the node fills on its own thread
(`swimnode.eventhub.EventStream`, `swimnode.driver.QueryReplies`): a Trio task in
`async for`, or another loop or thread through a callback."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import trio


class Wakeup:
    """Wakes a buffer's reader when something arrives or the buffer ends."""

    __slots__ = ("_event", "notify")

    def __init__(self) -> None:
        # Made only when a Trio task waits, so that asyncio and threaded programs,
        # which wait through `notify`, never import Trio.
        self._event: trio.Event | None = None
        self.notify: Callable[[], None] | None = None
        """Called on every `wake` (on the node's thread; quick, never raising)."""

    def wake(self) -> None:
        """Wake the waiting Trio task, if any, and call `notify`."""
        if self._event is not None:
            self._event.set()
        if self.notify is not None:
            self.notify()

    async def wait(self) -> None:
        """Wait in Trio for the next `wake` (one that came before does not count:
        check the buffer first)."""
        import trio

        self._event = trio.Event()
        await self._event.wait()
