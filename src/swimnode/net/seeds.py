"""Where seed addresses (the peers a node first contacts to join) come from.

A `SeedSource` produces a list of `(host, port)` addresses on demand. Sources are
asked again on every (re)join attempt, so a file edited by an operator or a DNS
record updated by an orchestrator takes effect without a restart.

Sources are Trio code; each imports Trio only when it resolves, so a program that
uses none (an asyncio one, say) never loads it.
"""

from __future__ import annotations

import abc
import os
import socket
from collections.abc import Iterable

from .transport import DEFAULT_PORT, Address, parse_address

__all__ = [
    "CombinedSeeds",
    "DnsSeeds",
    "FileSeeds",
    "SeedSource",
    "SeedSourceError",
    "StaticSeeds",
]


class SeedSourceError(Exception):
    """A seed source could not produce addresses. The message is one line."""


def _dedup(addresses: Iterable[Address]) -> list[Address]:
    # dict keeps first-insertion order, so this is an order-preserving unique.
    return list(dict.fromkeys(addresses))


class SeedSource(abc.ABC):
    """Something that yields seed addresses when asked."""

    @abc.abstractmethod
    async def resolve(self) -> list[Address]:
        """The current seed addresses, without duplicates.

        Raises SeedSourceError when the source cannot produce them.
        """


class StaticSeeds(SeedSource):
    """A fixed list of addresses, given as tuples or as strings for
    `swimnode.net.transport.parse_address`."""

    def __init__(
        self, addresses: Iterable[Address | str], *, default_port: int = DEFAULT_PORT
    ) -> None:
        """Raises ValueError at once if a string address does not parse."""
        self.addresses: list[Address] = _dedup(
            parse_address(a, default_port) if isinstance(a, str) else (a[0], a[1])
            for a in addresses
        )

    async def resolve(self) -> list[Address]:
        """The configured addresses (a fresh list each time)."""
        return list(self.addresses)

    def __repr__(self) -> str:
        return f"StaticSeeds({self.addresses!r})"


class FileSeeds(SeedSource):
    """Addresses read from a text file, one per line, re-read on every `resolve`.

    Blank lines are ignored, and ``#`` starts a comment running to the end of the line.
    """

    def __init__(self, path: str | os.PathLike[str], *, default_port: int = DEFAULT_PORT) -> None:
        """`path` is only opened when `resolve` is called."""
        self.path = os.fspath(path)
        self.default_port = default_port

    async def resolve(self) -> list[Address]:
        """Read and parse the file now.

        Raises SeedSourceError naming the file if it is missing or unreadable, or
        naming ``file:line`` for the first line that does not parse.
        """
        import trio

        try:
            # trio.Path reads in a worker thread so a slow disk does not stall the loop.
            text = await trio.Path(self.path).read_text(encoding="utf-8")
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise SeedSourceError(f"{self.path}: cannot read seed file: {reason}") from exc
        except UnicodeDecodeError as exc:
            raise SeedSourceError(f"{self.path}: seed file is not UTF-8: {exc.reason}") from exc
        addresses: list[Address] = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            content = line.split("#", 1)[0].strip()
            if not content:
                continue
            try:
                addresses.append(parse_address(content, self.default_port))
            except ValueError as exc:
                raise SeedSourceError(f"{self.path}:{lineno}: {exc}") from exc
        return _dedup(addresses)

    def __repr__(self) -> str:
        return f"FileSeeds({self.path!r})"


class DnsSeeds(SeedSource):
    """Every address a DNS name resolves to (IPv4 and IPv6), all with one port."""

    def __init__(self, name: str, port: int = DEFAULT_PORT, *, timeout: float = 5.0) -> None:
        """Raises ValueError if `port` is outside 1-65535 or `timeout` is not positive."""
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} out of range 1-65535")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.name = name
        self.port = port
        self.timeout = timeout

    async def resolve(self) -> list[Address]:
        """Look the name up now, in the order the resolver returns addresses.

        Raises SeedSourceError if the lookup fails, finds nothing, or takes longer
        than `timeout` seconds.
        """
        import trio

        try:
            with trio.fail_after(self.timeout):
                infos = await trio.socket.getaddrinfo(
                    self.name, self.port, type=trio.socket.SOCK_DGRAM
                )
        except trio.TooSlowError:
            raise SeedSourceError(
                f"DNS lookup of {self.name!r} timed out after {self.timeout:g}s"
            ) from None
        except (OSError, UnicodeError) as exc:
            # socket.gaierror is an OSError; UnicodeError comes from IDNA-encoding bad names.
            raise SeedSourceError(f"DNS lookup of {self.name!r} failed: {exc}") from exc
        addresses = _dedup(
            (str(sockaddr[0]), self.port)
            for family, _type, _proto, _canon, sockaddr in infos
            if family in (socket.AF_INET, socket.AF_INET6)
        )
        if not addresses:
            raise SeedSourceError(f"DNS lookup of {self.name!r} returned no IP addresses")
        return addresses

    def __repr__(self) -> str:
        return f"DnsSeeds({self.name!r}, {self.port})"


class CombinedSeeds(SeedSource):
    """The union of several sources, deduplicated, in source order.

    A source that raises SeedSourceError is skipped; its error is kept in
    `last_errors` (reset on every `resolve`) so the caller can log it. Only when every
    source fails does `resolve` raise. Sources are queried concurrently, so one slow
    DNS lookup does not delay the others; an exception other than SeedSourceError is a
    bug and propagates (wrapped in an ExceptionGroup by the nursery).
    """

    def __init__(self, sources: Iterable[SeedSource]) -> None:
        """Combine `sources`; their order decides the order of the result."""
        self.sources: list[SeedSource] = list(sources)
        self.last_errors: list[tuple[SeedSource, SeedSourceError]] = []

    async def resolve(self) -> list[Address]:
        """Query every source; see the class docstring for how failures are handled."""
        import trio

        results: list[list[Address] | SeedSourceError] = [[] for _ in self.sources]

        async def run(index: int, source: SeedSource) -> None:
            try:
                results[index] = await source.resolve()
            except SeedSourceError as exc:
                results[index] = exc

        async with trio.open_nursery() as nursery:
            for index, source in enumerate(self.sources):
                nursery.start_soon(run, index, source)

        errors = [
            (source, result)
            for source, result in zip(self.sources, results, strict=True)
            if isinstance(result, SeedSourceError)
        ]
        self.last_errors = errors
        if self.sources and len(errors) == len(self.sources):
            raise SeedSourceError(f"all {len(errors)} seed sources failed; first: {errors[0][1]}")
        return _dedup(a for r in results if not isinstance(r, SeedSourceError) for a in r)

    def __repr__(self) -> str:
        return f"CombinedSeeds({self.sources!r})"
