"""The security layer without I/O: framing, encryption, authentication, replay
protection and cluster labels, as pure functions of bytes, keys and a clock.

`SecurityLayer` holds every rule; the transports that apply it only move bytes:
`swimnode.net.security.SecureTransport` wraps a Trio `Transport`, and
`swimnode.net.aiotransport.AioSecureTransport` an asyncio one. So both drivers
accept and refuse exactly the same packets, counted under the same names.
docs/security.md has the threat model; this docstring has the wire format.

Every datagram and every reliable message is framed. The first byte is a header:
the high nibble is the framing version (1), the low nibble holds flags, of which
only bit 0 ("encrypted") is defined. So a frame starts with ``0x10`` (plaintext) or
``0x11`` (encrypted); anything else is refused. (A bare, unframed swimnode packet
starts with ``0x01``, so a node that forgot to enable the layer is told apart.)

Encrypted (``0x11``), when the transport has a `Keyring`::

    0x11 | nonce (12 random bytes) | AES-256-GCM( timestamp (8 bytes) | payload ) | tag (16)

The associated data is the header byte followed by the cluster label (UTF-8), so a
frame from a cluster with another label fails authentication exactly as one under
another key does; the label itself is not sent. The timestamp is the sender's wall
clock in milliseconds (signed, big-endian). No key id is sent: the receiver tries
every installed key, primary first, which is what makes rotation work. Overhead:
``ENCRYPTED_OVERHEAD`` = 1 + 12 + 8 + 16 = 37 bytes per packet.

Plaintext (``0x10``), when the transport has no keyring::

    0x10 | label length (1 byte) | label (UTF-8, up to 255 bytes) | payload

Frames with another label are dropped. Overhead: 2 + label length.

Replay: an encrypted frame is accepted only if its timestamp is within
``replay_window`` seconds of the local clock (either way), and only once: the nonces
of accepted frames are remembered until their timestamp leaves the window. A copy
that arrives inside the window is therefore a duplicate (dropped), and one that
arrives later is stale (dropped). The nonce cache has a hard size cap; when full, the
oldest entry is evicted and frames stamped at or before it are refused as stale from
then on, so a full cache narrows the window rather than letting a replay through.
"""

from __future__ import annotations

import collections
import errno
import heapq
import math
import os
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .. import counters
from ..protocol.codec import MAX_PACKET_BYTES
from ..protocol.limits import MAX_LABEL_BYTES
from . import transport
from .keyring import NONCE_SIZE, TAG_SIZE, Keyring
from .transport import Packet

if TYPE_CHECKING:
    from ..protocol.config import Config

__all__ = [
    "DROP_REASONS",
    "ENCRYPTED_OVERHEAD",
    "FORMAT_VERSION",
    "MAX_LABEL_BYTES",
    "SecurityLayer",
    "check_secure_bind",
    "secure_with",
]

T = TypeVar("T")

FORMAT_VERSION = 1
"""Version of the framing, in the high nibble of the header byte."""

_FLAG_ENCRYPTED = 0x01
HEADER_PLAINTEXT = FORMAT_VERSION << 4
"""First byte of a plaintext frame (0x10)."""
HEADER_ENCRYPTED = HEADER_PLAINTEXT | _FLAG_ENCRYPTED
"""First byte of an encrypted frame (0x11)."""

TIMESTAMP_SIZE = 8
"""Bytes of the sender's timestamp inside the ciphertext."""

ENCRYPTED_OVERHEAD = 1 + NONCE_SIZE + TIMESTAMP_SIZE + TAG_SIZE
"""Bytes an encrypted frame adds to its payload: header, nonce, timestamp, tag (37)."""

_MAX_PLAINTEXT_OVERHEAD = 2 + MAX_LABEL_BYTES

DEFAULT_MAX_PACKET = MAX_PACKET_BYTES
"""Default largest payload carried: whatever the codec accepts (64 MiB)."""

DEFAULT_REPLAY_CACHE = 100_000
"""Default cap on remembered nonces. SWIM's load per node is constant (a few
packets per protocol period), so even a busy node receives far fewer than this
many packets per two replay windows; the cap only bounds memory (~20 MB)."""

DROP_REASONS = counters.SECURITY_DROP_REASONS
"""Every key of `SecurityLayer.stats` that counts a refused incoming packet."""

_TIMESTAMP = struct.Struct(">q")
_MIN_ENCRYPTED = ENCRYPTED_OVERHEAD


class SecurityLayer(Generic[T]):
    """The rules that frame, encrypt and authenticate what a transport carries.

    A transport that applies them subclasses this with its I/O and wraps `inner`,
    the transport that carries the frames (this class only holds it).

    With a `Keyring`, every packet is sealed with AES-256-GCM under the keyring's
    primary key, and incoming packets must open under one of its keys, carry this
    transport's `label`, be fresh (timestamp within `replay_window` seconds of
    `clock()`) and not be a copy of one already accepted. Without a keyring
    (``keyring=None``) packets carry the label in plaintext: that keeps clusters
    that share a network apart, but protects nothing against an attacker.

    The keyring is held by reference: `Keyring.install`, `use` and `remove` take
    effect on the next packet. Whether there is a keyring at all is fixed.

    `unwrap` passes only packets that pass every check; everything else is
    counted in `stats` by reason (see `DROP_REASONS`) and dropped, never raised.
    Two more counters concern this node's own sends: ``send_oversize`` (datagrams
    over `max_packet`, not sent) and ``replay_cache_evictions`` (see the module
    docstring).

    `max_packet` is the largest payload, before framing, that is sent or accepted;
    larger incoming frames are dropped before any decryption is attempted.
    `replay_cache_size` caps the remembered nonces. `clock` gives wall-clock
    seconds; the members' clocks must agree to well within `replay_window`.
    """

    stats: collections.Counter[str]

    def __init__(
        self,
        inner: T,
        *,
        keyring: Keyring | None,
        label: str = "",
        clock: Callable[[], float] = time.time,
        replay_window: float = 60.0,
        max_packet: int = DEFAULT_MAX_PACKET,
        replay_cache_size: int = DEFAULT_REPLAY_CACHE,
    ) -> None:
        label_bytes = label.encode("utf-8")
        if len(label_bytes) > MAX_LABEL_BYTES:
            raise ValueError(
                f"label must be at most {MAX_LABEL_BYTES} bytes of UTF-8, got {len(label_bytes)}"
            )
        if not (replay_window > 0 and math.isfinite(replay_window)):
            raise ValueError(
                f"replay_window must be a positive number of seconds, got {replay_window!r}"
            )
        if max_packet < 0:
            raise ValueError(f"max_packet must be >= 0, got {max_packet!r}")
        if replay_cache_size < 1:
            raise ValueError(f"replay_cache_size must be >= 1, got {replay_cache_size!r}")
        self._inner = inner
        self._keyring = keyring
        self._label = label
        self._label_bytes = label_bytes
        self._clock = clock
        self._window_ms = replay_window * 1000.0
        self._max_packet = max_packet
        self._cache_size = replay_cache_size
        self.stats = collections.Counter(dict.fromkeys(DROP_REASONS, 0))
        # Precomputed: they are the same for every packet.
        self._aad = bytes([HEADER_ENCRYPTED]) + label_bytes
        self._plain_prefix = bytes([HEADER_PLAINTEXT, len(label_bytes)]) + label_bytes
        # Replay cache: nonce -> sender timestamp (ms), plus a heap ordered by
        # timestamp so expired entries are found without scanning. An entry may go
        # once its timestamp is outside the window: the freshness check then
        # refuses a copy anyway.
        self._seen: dict[bytes, int] = {}
        self._by_age: list[tuple[int, bytes]] = []
        # Frames stamped at or before this were possibly evicted from a full
        # cache, so their replays could not be recognised: refuse them.
        self._floor_ms = -(1 << 63)

    def __repr__(self) -> str:
        mode = repr(self._keyring) if self._keyring is not None else "plaintext"
        return f"<{type(self).__name__} {mode} label={self._label!r} over {self._inner!r}>"

    # -- properties ------------------------------------------------------------

    @property
    def inner(self) -> T:
        """The wrapped transport (raw frames go through it)."""
        return self._inner

    @property
    def keyring(self) -> Keyring | None:
        """The keyring in use, or None in plaintext mode."""
        return self._keyring

    @property
    def label(self) -> str:
        """The cluster label; frames with another label are dropped."""
        return self._label

    @property
    def encrypted(self) -> bool:
        """Whether packets are encrypted (a keyring was given)."""
        return self._keyring is not None

    @property
    def overhead(self) -> int:
        """Bytes each frame adds to its payload: 37 when encrypted, 2 plus the
        label's length in plaintext. Shrink the datagram budget by this much."""
        return ENCRYPTED_OVERHEAD if self._keyring is not None else len(self._plain_prefix)

    @property
    def dropped(self) -> int:
        """Incoming packets refused so far, for any reason."""
        return sum(self.stats[reason] for reason in DROP_REASONS)

    @property
    def replay_cache_len(self) -> int:
        """Nonces currently remembered."""
        return len(self._seen)

    # -- sending checks ----------------------------------------------------------

    def datagram_fits(self, data: bytes) -> bool:
        """Whether a datagram payload may be sent; one over `max_packet` is counted
        as ``send_oversize`` and must be dropped, as the `Transport` contract asks
        of datagrams (rather than raised)."""
        if len(data) > self._max_packet:
            self.stats[counters.SECURITY_SEND_OVERSIZE] += 1
            return False
        return True

    def check_reliable(self, data: bytes) -> None:
        """Raise `OSError` (``EMSGSIZE``) for a reliable payload over `max_packet`."""
        if len(data) > self._max_packet:
            raise OSError(
                errno.EMSGSIZE,
                f"message of {len(data)} bytes exceeds the {self._max_packet} byte limit",
            )

    # -- framing ---------------------------------------------------------------

    def wrap(self, data: bytes) -> bytes:
        """`data` framed for the wire: sealed under the primary key with a fresh
        nonce and the current time, or labelled in plaintext."""
        keyring = self._keyring
        if keyring is None:
            return self._plain_prefix + data
        # A random nonce per packet: no counter state to persist across restarts
        # or to share between members that use the same key.
        nonce = os.urandom(NONCE_SIZE)
        stamp = _TIMESTAMP.pack(round(self._clock() * 1000.0))
        return self._aad[:1] + nonce + keyring.encrypt(nonce, stamp + data, self._aad)

    def unwrap(self, packet: Packet) -> Packet | None:
        """`packet` with its framing removed if it passes every check; otherwise
        None, with the reason counted in `stats`. Never raises for any input."""
        data = packet.data
        if len(data) > self._max_packet + _MAX_PLAINTEXT_OVERHEAD:
            self.stats[counters.SECURITY_DROPPED_OVERSIZE] += 1
            return None
        if not data:
            self.stats[counters.SECURITY_DROPPED_BAD_HEADER] += 1
            return None
        header = data[0]
        if header == HEADER_ENCRYPTED:
            return self._open_encrypted(packet)
        if header == HEADER_PLAINTEXT:
            return self._open_plaintext(packet)
        self.stats[counters.SECURITY_DROPPED_BAD_HEADER] += 1
        return None

    def _open_plaintext(self, packet: Packet) -> Packet | None:
        stats, data = self.stats, packet.data
        if self._keyring is not None:
            # Accepting plaintext beside encrypted traffic would let anyone
            # bypass the keys; a plaintext peer is a misconfiguration or an attack.
            stats[counters.SECURITY_DROPPED_PLAINTEXT] += 1
            return None
        if len(data) < 2 or len(data) < 2 + data[1]:
            stats[counters.SECURITY_DROPPED_BAD_HEADER] += 1
            return None
        end = 2 + data[1]
        if data[2:end] != self._label_bytes:
            stats[counters.SECURITY_DROPPED_LABEL] += 1
            return None
        if len(data) - end > self._max_packet:
            stats[counters.SECURITY_DROPPED_OVERSIZE] += 1
            return None
        return Packet(packet.source, data[end:], packet.reliable)

    def _open_encrypted(self, packet: Packet) -> Packet | None:
        stats, data = self.stats, packet.data
        keyring = self._keyring
        if keyring is None:
            stats[counters.SECURITY_DROPPED_ENCRYPTED] += 1
            return None
        if len(data) < _MIN_ENCRYPTED:
            stats[counters.SECURITY_DROPPED_BAD_HEADER] += 1
            return None
        if len(data) - ENCRYPTED_OVERHEAD > self._max_packet:
            stats[counters.SECURITY_DROPPED_OVERSIZE] += 1
            return None
        nonce = data[1 : 1 + NONCE_SIZE]
        plain = keyring.decrypt(nonce, data[1 + NONCE_SIZE :], self._aad)
        if plain is None:
            stats[counters.SECURITY_DROPPED_AUTH] += 1
            return None
        # Everything below runs only for authentic frames, so an attacker without
        # a key can neither fill the replay cache nor move its floor.
        (stamp,) = _TIMESTAMP.unpack_from(plain)
        now_ms = self._clock() * 1000.0
        if abs(stamp - now_ms) > self._window_ms or stamp <= self._floor_ms:
            stats[counters.SECURITY_DROPPED_STALE] += 1
            return None
        self._forget_expired(now_ms)
        if nonce in self._seen:
            stats[counters.SECURITY_DROPPED_REPLAY] += 1
            return None
        self._remember(nonce, stamp)
        return Packet(packet.source, plain[TIMESTAMP_SIZE:], packet.reliable)

    # -- replay cache ------------------------------------------------------------

    def _forget_expired(self, now_ms: float) -> None:
        oldest = now_ms - self._window_ms
        by_age, seen = self._by_age, self._seen
        while by_age and by_age[0][0] < oldest:
            _, nonce = heapq.heappop(by_age)
            del seen[nonce]

    def _remember(self, nonce: bytes, stamp: int) -> None:
        by_age, seen = self._by_age, self._seen
        while len(seen) >= self._cache_size:
            # Full (only legitimate traffic gets here): evict the oldest and refuse
            # anything that old from now on, so its replay stays impossible.
            evicted_stamp, evicted = heapq.heappop(by_age)
            del seen[evicted]
            self._floor_ms = max(self._floor_ms, evicted_stamp)
            self.stats[counters.SECURITY_REPLAY_CACHE_EVICTIONS] += 1
        seen[nonce] = stamp
        heapq.heappush(by_age, (stamp, nonce))


L = TypeVar("L", bound="SecurityLayer[Any]")


def secure_with(
    layer: type[L],
    transport: T,
    config: Config,
    keyring: Keyring | None,
    clock: Callable[[], float],
) -> T | L:
    """`transport` wrapped in `layer` (a `SecurityLayer` transport) when keys or a
    label are configured and it is not wrapped already; `clock` dates packets for
    replay checks. Both drivers' `secure` helpers are this, with their layer."""
    if isinstance(transport, layer) or (keyring is None and not config.label):
        return transport
    return layer(
        transport,
        keyring=keyring,
        label=config.label,
        replay_window=config.replay_window,
        clock=clock,
    )


def check_secure_bind(bind_host: str, keyring: Keyring | None, insecure_plaintext: bool) -> None:
    """Refuse to run in plaintext where other machines can reach the node: binding
    a non-loopback `bind_host` without a keyring raises `ValueError` (one line)
    unless `insecure_plaintext` says so explicitly (`transport.check_secure_bind`)."""
    transport.check_secure_bind(
        bind_host, keyed=keyring is not None, insecure_plaintext=insecure_plaintext
    )
