"""Every counter swimnode keeps, declared once with what it counts.

The protocol core, the transports, the security layer, the agent's `stats` and any
metrics exporter read their names from here; nothing else spells a counter name.
Four families exist: the core's (`node.stats()`), the UDP/TCP transport's
(`UdpTransport.stats`, reported by the agent with the prefix `transport_`), the
security layer's (`SecureTransport.stats`, prefix `security_`) and the agent's own
(no prefix). Counters are created on first use; the ones marked `always` are reported
by the agent even at zero, so scripts find the same keys on a quiet agent as on a
busy one. `node.stats()` also reports the gauges declared in `GAUGES` (values that go
up and down, read when asked), and `swimnode.metrics` derives every Prometheus name
from these declarations.

This module imports nothing, so every layer can use it.
"""

from __future__ import annotations

CORE: dict[str, str] = {}
"""Core counter name -> what it counts."""
TRANSPORT: dict[str, str] = {}
"""Transport counter name (without its `transport_` prefix) -> what it counts."""
SECURITY: dict[str, str] = {}
"""Security counter name (without its `security_` prefix) -> what it counts."""
AGENT: dict[str, str] = {}
"""The agent's own counter name -> what it counts."""
GAUGES: dict[str, str] = {}
"""Gauge name (a key of `node.stats()`) -> what it measures."""
TRANSPORT_PREFIX = "transport_"
SECURITY_PREFIX = "security_"
_ALWAYS: list[str] = []


def _declare(family: dict[str, str], prefix: str, name: str, help: str, always: bool) -> str:
    if name in family:
        raise ValueError(f"counter {name!r} declared twice")
    family[name] = help
    if always:
        _ALWAYS.append(prefix + name)
    return name


def _core(name: str, help: str, *, always: bool = False) -> str:
    return _declare(CORE, "", name, help, always)


def _transport(name: str, help: str, *, always: bool = True) -> str:
    return _declare(TRANSPORT, TRANSPORT_PREFIX, name, help, always)


def _security(name: str, help: str) -> str:
    return _declare(SECURITY, SECURITY_PREFIX, name, help, True)


def _agent(name: str, help: str) -> str:
    return _declare(AGENT, "", name, help, True)


def _gauge(name: str, help: str) -> str:
    return _declare(GAUGES, "", name, help, False)


# ----- the protocol core ------------------------------------------------------------

PACKETS_SENT = _core("packets_sent", "Packets sent, datagrams and streams.", always=True)
BYTES_SENT = _core("bytes_sent", "Bytes of the packets sent.", always=True)
PACKETS_RECEIVED = _core("packets_received", "Packets received.", always=True)
BYTES_RECEIVED = _core("bytes_received", "Bytes of the packets received.", always=True)
RECEIVED_KNOWN_NEWS = _core(
    "received_known_news", "News identical to the latest about its member, not decoded."
)
PROBES = _core("probes", "Probes started.", always=True)
INDIRECT_PROBES = _core("indirect_probes", "Ping-reqs sent.", always=True)
PROBE_FAILURES = _core("probe_failures", "Probes that got no ack.", always=True)
STALE_ACKS = _core("stale_acks", "Acks that matched no running probe or relay.")
PROBE_RTT_BOUNDS_MS: tuple[int, ...] = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
"""Upper bounds (ms) of the probe round-trip-time buckets: loopback answers in well
under a millisecond, a LAN in a few, a WAN in tens to hundreds."""
PROBE_RTT_BUCKETS: tuple[str, ...] = (
    *[
        _core(f"probe_rtt_bucket_{ms}ms", f"Direct probes acked within ({lower}, {ms}] ms.")
        for lower, ms in zip((0, *PROBE_RTT_BOUNDS_MS), PROBE_RTT_BOUNDS_MS, strict=False)
    ],
    _core("probe_rtt_bucket_inf", "Direct probes acked after the largest bound."),
)
"""Non-cumulative bucket counters, one per bound and one beyond them, in order."""
PROBE_RTT_SUM_US = _core("probe_rtt_sum_us", "Round-trip times of the acked probes, summed (µs).")
SUSPICIONS_RAISED = _core(
    "suspicions_raised", "Failed probes that turned an alive member suspect.", always=True
)
SUSPICION_CONFIRMATIONS = _core("suspicion_confirmations", "Suspicion confirmations counted.")
DEATHS_DECLARED = _core("deaths_declared", "Suspicion timers that expired.", always=True)
SUSPICIONS_REFUTED = _core(
    "suspicions_refuted", "Suspicions of this node that it refuted.", always=True
)
DEATHS_REFUTED = _core("deaths_refuted", "Deaths of this node that it refuted.")
REFUTATIONS = _core("refutations", "Other refutations (old alive or left records about us).")
DROPPED_MALFORMED = _core("dropped_malformed", "Packets that did not decode.", always=True)
DROPPED_OVERSIZE = _core("dropped_oversize", "Datagrams over the largest UDP payload.", always=True)
DROPPED_MISDIRECTED = _core(
    "dropped_misdirected", "Pings for another member at our address.", always=True
)
DROPPED_UNRELIABLE_SYNC = _core(
    "dropped_unreliable_sync", "Full syncs that arrived as datagrams.", always=True
)
DROPPED_RATE_LIMITED = _core(
    "dropped_rate_limited", "Requests over a source host's rate limit.", always=True
)
SYNC_FAILURES = _core("sync_failures", "Push-pulls (joins included) that could not be sent.")
RELIABLE_SEND_FAILURES = _core("reliable_send_failures", "Other stream sends that failed.")
STATE_ROUNDS = _core("state_rounds", "Anti-entropy rounds started.")
STATE_ANSWERS_MISSED = _core(
    "state_answers_missed", "Requests for state whose answer did not come in time."
)
SYNCS_TO_DEAD = _core("syncs_to_dead", "Full syncs pushed to dead members.")
SYNCS_TO_SEEDS = _core("syncs_to_seeds", "Seed contacts carrying our membership fingerprint.")
MEMBERSHIP_MISMATCHES = _core(
    "membership_mismatches", "Fingerprints that differed from ours, answered by a push-pull."
)
JOIN_ANNOUNCEMENTS = _core(
    "join_announcements", "Alive datagrams about us sent straight to members after a join."
)
STATE_DELTAS_UNKNOWN_MEMBER = _core(
    "state_deltas_unknown_member", "State deltas dropped because their member is unknown."
)
TOMBSTONES_COLLECTED = _core("tombstones_collected", "Application-state tombstones expired.")
USER_EVENTS_SENT = _core("user_events_sent", "User events this node sent.")
USER_EVENTS_RECEIVED = _core("user_events_received", "User events delivered here (each once).")
USER_EVENTS_DUPLICATE = _core("user_events_duplicate", "Copies of user events already delivered.")
USER_EVENTS_TOO_OLD = _core(
    "user_events_too_old", "User events older than the Lamport window, dropped."
)
QUERIES_STARTED = _core("queries_started", "Queries this node asked.")
QUERIES_RECEIVED = _core("queries_received", "Queries received (each once).")
QUERIES_DUPLICATE = _core("queries_duplicate", "Copies of queries already received.")
QUERIES_RESENT = _core("queries_resent", "Queries resent to members still silent.")
QUERIES_NOT_SELECTED = _core(
    "queries_not_selected", "Queries whose filters did not select this node (passed on only)."
)
QUERIES_UNHANDLED = _core("queries_unhandled", "Queries of a kind with no handler here.")
QUERY_HANDLER_ERRORS = _core("query_handler_errors", "Query handlers that raised.")
QUERY_RESPONSES_SENT = _core("query_responses_sent", "Query responses sent.")
QUERY_RESPONSES_LATE = _core(
    "query_responses_late", "Responses to no query in flight (late, forged or duplicated)."
)


# ----- gauges the core reports beside its counters -------------------------------------

AWARENESS = _gauge("awareness", "Lifeguard local health score (0 is healthy).")
MEMBERS_LIVE = _gauge("members_live", "Live (alive or suspect) members, this node included.")
MEMBERS_KNOWN = _gauge("members_known", "Known members, dead and left ones included.")
SUSPICIONS_ACTIVE = _gauge("suspicions_active", "Suspicion timers running.")
INCARNATION = _gauge("incarnation", "This node's incarnation.")
BROADCAST_QUEUE_DEPTH = _gauge(
    "broadcast_queue_depth", "Broadcasts queued for gossip, waiting for retransmission."
)


def sent_key(message: str) -> str:
    """Messages of type `message` sent (e.g. `sent_ping`)."""
    return f"sent_{message}"


def sent_bytes_key(message: str) -> str:
    """Bytes of the encodings of messages of type `message` sent."""
    return f"sent_bytes_{message}"


def received_key(message: str) -> str:
    """Messages of type `message` received."""
    return f"received_{message}"


def received_bytes_key(message: str) -> str:
    """Bytes of the encodings of messages of type `message` received."""
    return f"received_bytes_{message}"


# ----- the UDP/TCP transport ---------------------------------------------------------

RECEIVE_OVERFLOW = _transport("receive_overflow", "Packets dropped: receive queue full.")
RECEIVE_ERRORS = _transport("receive_errors", "Errors reading the UDP socket.")
ACCEPT_ERRORS = _transport("accept_errors", "Errors accepting a stream.", always=False)
SEND_ERRORS = _transport("send_errors", "Datagrams the OS refused to send.")
SEND_BUFFER_FULL = _transport("send_buffer_full", "Datagrams dropped: send buffer full.")
OVERSIZE_DROPPED = _transport("oversize_dropped", "Datagrams over the UDP limit, not sent.")
STREAM_REJECTED = _transport("stream_rejected", "Streams refused: too many at once.")
STREAM_OVERSIZE = _transport("stream_oversize", "Stream messages over the size limit.")
STREAM_TIMEOUTS = _transport("stream_timeouts", "Streams that stalled and were closed.")
STREAM_ERRORS = _transport("stream_errors", "Streams that failed while reading.")
RELIABLE_ERRORS = _transport("reliable_errors", "Stream sends that failed.")

# ----- the security layer ------------------------------------------------------------

SECURITY_DROPPED_BAD_HEADER = _security(
    "dropped_bad_header", "Empty, unknown header byte or version, or truncated frame."
)
SECURITY_DROPPED_LABEL = _security("dropped_label", "Plaintext frame with another label.")
SECURITY_DROPPED_AUTH = _security("dropped_auth", "No installed key authenticates it.")
SECURITY_DROPPED_REPLAY = _security("dropped_replay", "Copy of a frame already accepted.")
SECURITY_DROPPED_STALE = _security("dropped_stale", "Timestamp outside the replay window.")
SECURITY_DROPPED_PLAINTEXT = _security("dropped_plaintext", "Plaintext while keys are on.")
SECURITY_DROPPED_ENCRYPTED = _security("dropped_encrypted", "Encrypted while keys are off.")
SECURITY_DROPPED_OVERSIZE = _security("dropped_oversize", "Frame larger than the limit.")
SECURITY_SEND_OVERSIZE = _security("send_oversize", "Outgoing frames over the limit, not sent.")
SECURITY_REPLAY_CACHE_EVICTIONS = _security(
    "replay_cache_evictions", "Replay-cache entries evicted early (cache full)."
)

# ----- the agent ---------------------------------------------------------------------

EVENTS_LOST = _agent(
    "events_lost", "Membership events the agent's log or event handlers missed (fell behind)."
)

SECURITY_DROP_REASONS: tuple[str, ...] = tuple(n for n in SECURITY if n.startswith("dropped_"))
"""Every security counter that counts a refused incoming packet."""

ALWAYS_REPORTED: tuple[str, ...] = tuple(_ALWAYS)
"""Counters the agent reports even at zero, with their family prefixes."""
