"""Size limits that the wire format, the configuration and the security layer share.

Each is declared here once, so the check that a value fits (`Config.validate`) and
the code that relies on it fitting (the codec, the framing) cannot drift apart.
"""

from __future__ import annotations

MAX_NAME_BYTES = 255
"""Longest member name, in UTF-8 bytes."""
MAX_HOST_CHARS = 255
"""Longest host in an address on the wire (a DNS name is at most 253 characters)."""
MAX_LABEL_BYTES = 255
"""Longest cluster label, in UTF-8 bytes: its length travels in one byte."""
MAX_DATAGRAM_BYTES = 65507
"""Largest UDP payload over IPv4 (65535 less the IP and UDP headers)."""
MIN_DATAGRAM_BYTES = 512
"""Smallest datagram budget a node accepts: room for a probe and some news."""
