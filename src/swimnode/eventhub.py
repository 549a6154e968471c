"""Per-subscriber bounded delivery of membership events.

Every subscriber owns a bounded buffer: a subscriber that falls behind never slows the
protocol; the events it missed are replaced by one `EventsLost(count)`.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable

from .protocol.events import Event, EventsLost, MemberEvent
from .wakeup import Wakeup


class _Gap:
    """Stands in a subscriber's buffer where events were dropped."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 1


class EventHub:
    """Fans events out to any number of subscribers without ever blocking."""

    def __init__(self, buffer_size: int) -> None:
        self._buffer_size = buffer_size
        # Weak, so a subscription that is dropped without closing costs nothing.
        self._subscribers: weakref.WeakSet[EventStream] = weakref.WeakSet()
        self.closed = False

    def publish(self, event: MemberEvent) -> None:
        """Hand `event` to every subscriber; a full subscriber records a gap instead,
        in order, so it learns where it missed events and how many."""
        if self._subscribers:  # iterating even an empty WeakSet is not free
            for sub in self._subscribers:
                sub._push(event)

    def close(self) -> None:
        """End every subscription once its buffer is drained."""
        self.closed = True
        for sub in self._subscribers:
            sub._wake()

    def subscribe(self) -> EventStream:
        """A new subscription that sees every event published from now on."""
        stream = EventStream(self, self._buffer_size)
        self._subscribers.add(stream)
        return stream

    def _unsubscribe(self, stream: EventStream) -> None:
        self._subscribers.discard(stream)


class EventStream:
    """One subscriber's view of the events: `async for event in stream`.

    Iteration ends when the node stops. `close()` unsubscribes early.
    """

    def __init__(self, hub: EventHub, limit: int) -> None:
        self._hub = hub
        self._limit = limit
        self._buffer: deque[MemberEvent | _Gap] = deque()
        self._wakeup = Wakeup()
        self._closed = False

    def _push(self, event: MemberEvent) -> None:
        buf = self._buffer
        if len(buf) < self._limit:
            buf.append(event)
        elif isinstance(buf[-1], _Gap):
            buf[-1].count += 1
        else:
            buf.append(_Gap())
        self._wake()

    def _wake(self) -> None:
        self._wakeup.wake()

    def set_notify(self, callback: Callable[[], None] | None) -> None:
        """Also call `callback()` whenever an event arrives or the stream ends.

        It runs on the node's Trio thread, inside the protocol's path, so it must be
        quick and must not raise. It lets another event loop or thread wait for
        events (`swimnode.aio`, `swimnode.blocking`) and take them with
        `receive_nowait`, with this stream's buffer and `EventsLost` rule.
        """
        self._wakeup.notify = callback

    def receive_nowait(self) -> Event | None:
        """The next event if one is buffered, else None; never waits."""
        if not self._buffer:
            return None
        item = self._buffer.popleft()
        return EventsLost(item.count) if isinstance(item, _Gap) else item

    @property
    def finished(self) -> bool:
        """True once the stream is closed or its node stopped, and nothing is left."""
        return not self._buffer and (self._closed or self._hub.closed)

    def close(self) -> None:
        """Stop receiving events."""
        self._closed = True
        self._hub._unsubscribe(self)
        self._wake()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        while True:
            event = self.receive_nowait()
            if event is not None:
                return event
            if self.finished:
                raise StopAsyncIteration
            await self._wakeup.wait()
