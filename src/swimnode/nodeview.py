"""The calls every flavour hosted outside a Trio program offers on a node
(`swimnode.blocking` and `swimnode.aio`), whatever runs it.

`NodeView` is the user's side of a node; each flavour's subclass says only how a
call reaches the node's thread: `swimnode.blocking` through `trio.from_thread` to a
`swimnode.hosted.NodeRunner`, `swimnode.aio` directly, on the loop its driver
(`swimnode.aionode.AioDriver`) runs on. It imports no Trio, so an asyncio program
loads none.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from .driver import DriverBase, NodeNotRunning
from .net.transport import Address
from .protocol.config import Config
from .protocol.member import Member
from .protocol.queries import QueryHandler

__all__ = ["NodeView", "Stoppable"]

T = TypeVar("T")


class Stoppable(Protocol):
    """What `NodeView` asks of whatever runs the node: whether it has stopped."""

    @property
    def stopped(self) -> bool: ...


R = TypeVar("R", bound=Stoppable)
N = TypeVar("N", bound=DriverBase)


class NodeView(Generic[R, N]):
    """The calls every flavour offers, each carried out where the node runs.

    `runner` runs the node `node` (for `swimnode.blocking`, a `NodeRunner` and the
    Trio `Node`; for `swimnode.aio`, the asyncio driver is both). A subclass says
    how a call reaches the node with `_read` (run a function of the node's state on
    its thread and return the result) and `_write` (the same for a call that
    changes the node, which may have to wake the node's event loop).
    """

    def __init__(self, runner: R, node: N) -> None:
        self._runner = runner
        self._node = node

    def _read(self, fn: Callable[..., T], *args: Any) -> T:
        raise NotImplementedError

    def _write(self, fn: Callable[..., T], *args: Any) -> T:
        return self._read(fn, *args)

    def _checked(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the node's thread, unless the node has stopped."""
        if self._runner.stopped:
            raise NodeNotRunning("the node has stopped")
        return fn(*args)

    @property
    def running(self) -> bool:
        """False once the node has stopped (closed, left, or failed)."""
        return not self._runner.stopped

    @property
    def name(self) -> str:
        """This member's name (also after the node stopped)."""
        return self._node.name

    @property
    def config(self) -> Config:
        """The config in use, `advertise` filled in (also after the node stopped)."""
        return self._node.config

    @property
    def address(self) -> Address:
        """The address peers reach this node at."""
        return self._read(lambda: self._node.address)

    @property
    def local_member(self) -> Member:
        """This node's own record."""
        return self._read(lambda: self._node.local_member)

    def members(self) -> list[Member]:
        """Every known member (us included), dead and left ones until reclaimed."""
        return self._read(self._node.members)

    def live_members(self) -> list[Member]:
        """Alive and suspect members, us included."""
        return self._read(self._node.live_members)

    def stats(self) -> dict[str, int]:
        """Protocol counters, the awareness score and member counts."""
        return self._read(self._node.stats)

    def set_state(self, key: str, value: Any) -> None:
        """Set one key of this node's application state (see `Node.set_state`);
        `ValueError` on a bad key or value, raised here."""
        self._write(self._node.set_state, key, value)

    def delete_state(self, key: str) -> bool:
        """Delete one key of this node's application state; false if it was not set."""
        return self._write(self._node.delete_state, key)

    def send_event(self, name: str, payload: bytes = b"", *, coalesce: bool = True) -> int:
        """Send a user event to every member (see `Node.send_event`); returns its
        Lamport time, `ValueError` over the size or rate limits, raised here."""
        return self._write(lambda: self._node.send_event(name, payload, coalesce=coalesce))

    def on_query(self, name: str, handler: QueryHandler | None) -> None:
        """Answer queries named `name` with `handler(query)` (see
        `swimnode.Node.on_query`; None removes it). The handler runs on the node's
        thread, in its receive path: it must be quick."""
        self._write(self._node.on_query, name, handler)
