"""Length-prefixed frames over byte streams: a 4-byte big-endian length, then the body.

The TCP side of the UDP transports (Trio and asyncio) and the agent's RPC endpoint
frame messages this way. This module holds the format and the read-exactly loop
once, for Trio streams, asyncio streams and blocking sockets. It imports neither
Trio nor asyncio: the blocking side serves the command line tools, which must start
without them (docs/agent.md, "Start-up cost").

The Trio, asyncio and blocking readers cannot share one loop body (each waits its
own way), so each is a few lines around the same parsing: `body_length` checks the
header, `check_complete` the body.
"""

from __future__ import annotations

import socket
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

    import trio

HEADER = struct.Struct(">I")
"""The length that precedes every frame's body."""
MAX_BODY = (1 << (8 * HEADER.size)) - 1
"""The largest body a header can announce."""
READ_CHUNK = 64 * 1024
"""Most bytes asked of the stream at once. Buffers grow as bytes arrive rather than
being preallocated from the header, so memory follows what a peer actually sends,
not what it claims it will."""


class FrameError(Exception):
    """A stream did not carry a whole, acceptable frame; `str()` is one line."""


class FrameTruncated(FrameError):
    """The stream ended inside a frame."""


class FrameTooLarge(FrameError):
    """A frame's announced body is over the reader's limit."""

    def __init__(self, size: int, limit: int, what: str = "frame") -> None:
        super().__init__(f"{what} of {size} bytes is over the {limit} byte limit")
        self.size = size
        self.limit = limit


def encode(body: bytes) -> bytes:
    """`body` framed: its length, then itself."""
    return HEADER.pack(len(body)) + body


def check_size(size: int, limit: int, what: str = "frame") -> None:
    """Raise `FrameTooLarge` if a `what` ("request", "reply", ...) body of `size`
    bytes is over `limit`."""
    if size > limit:
        raise FrameTooLarge(size, limit, what)


def body_length(header: bytes, limit: int, what: str = "frame") -> int | None:
    """The body length `header` announces; None if the stream ended before any of it.
    Raises `FrameTruncated` for part of a header, `FrameTooLarge` over `limit`."""
    if not header:
        return None
    if len(header) < HEADER.size:
        raise FrameTruncated("the stream ended inside a frame header")
    (size,) = HEADER.unpack(header)
    check_size(size, limit, what)
    return int(size)


def check_complete(body: bytes, size: int) -> bytes:
    """`body` if it has all `size` bytes, else `FrameTruncated`."""
    if len(body) < size:
        raise FrameTruncated(f"the stream ended {size - len(body)} bytes before the frame's end")
    return body


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    """`size` bytes from a Trio stream; fewer only if the stream ended first."""
    buffer = bytearray()
    while len(buffer) < size:
        chunk = await stream.receive_some(min(size - len(buffer), READ_CHUNK))
        if not chunk:
            break
        buffer += chunk
    return bytes(buffer)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """`size` bytes from a blocking socket; fewer only if the peer closed first."""
    buffer = bytearray()
    while len(buffer) < size:
        chunk = sock.recv(min(size - len(buffer), READ_CHUNK))
        if not chunk:
            break
        buffer += chunk
    return bytes(buffer)


async def receive_frame(
    stream: trio.abc.ReceiveStream, limit: int, what: str = "frame"
) -> bytes | None:
    """The next frame's body from a Trio stream, or None if the stream ended cleanly
    before it. Raises `FrameTruncated` or `FrameTooLarge` (naming `what`)."""
    size = body_length(await receive_exactly(stream, HEADER.size), limit, what)
    if size is None:
        return None
    return check_complete(await receive_exactly(stream, size), size)


def recv_frame(sock: socket.socket, limit: int, what: str = "frame") -> bytes | None:
    """`receive_frame` for a blocking socket."""
    size = body_length(recv_exactly(sock, HEADER.size), limit, what)
    if size is None:
        return None
    return check_complete(recv_exactly(sock, size), size)


async def read_frame(reader: asyncio.StreamReader, limit: int, what: str = "frame") -> bytes | None:
    """`receive_frame` for an asyncio stream."""
    size = body_length(await _read_exactly(reader, HEADER.size), limit, what)
    if size is None:
        return None
    return check_complete(await _read_exactly(reader, size), size)


async def _read_exactly(reader: asyncio.StreamReader, size: int) -> bytes:
    """`size` bytes from an asyncio stream; fewer only if it ended first. (Its
    buffer grows as bytes arrive, as `READ_CHUNK` asks of the other readers.)"""
    import asyncio  # here, so the command line tools do not load it

    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError as exc:
        return exc.partial
