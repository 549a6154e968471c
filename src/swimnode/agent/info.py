"""`python -m swimnode info`: what a running agent is and how it is set up.

The agent builds the report (`agent_info`) from its settings, its node's config and
view, and its keyring; the client command renders it (`render_info`). Nothing here
imports Trio, so the client side stays light. Keys appear only as fingerprints.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from .. import __version__
from ..net.transport import Address, format_address
from ..protocol.codec import PROTOCOL_VERSION
from ..protocol.config import Config
from ..protocol.member import Member, MemberState

TIMER_FIELDS = (
    "probe_interval",
    "probe_timeout",
    "indirect_checks",
    "suspicion_mult",
    "suspicion_max_timeout_mult",
    "awareness_max_multiplier",
    "retransmit_mult",
    "gossip_interval",
    "gossip_nodes",
    "state_gossip_interval",
    "push_pull_interval",
    "gossip_to_the_dead_time",
    "dead_reclaim_time",
    "join_timeout",
    "leave_timeout",
)
"""The `Config` fields `info` always reports as the agent's timers and fan-outs;
a field set over the profile (`--set`, `[protocol]`) is reported too."""


def agent_info(
    *,
    config: Config,
    profile: str,
    bind: Address,
    rpc: Address,
    metrics: Address | None,
    fingerprints: Sequence[str],
    members: Iterable[Member],
    uptime: float,
    overridden: Collection[str] = (),
) -> dict[str, Any]:
    """The `info` report: plain values only (it travels as msgpack and prints as
    JSON). `fingerprints` are the installed keys' fingerprints, primary first;
    `overridden` names the `Config` fields set over the profile's values."""
    by_state = Counter(m.state.label for m in members)
    shown = TIMER_FIELDS + tuple(sorted(set(overridden) - set(TIMER_FIELDS)))
    return {
        "name": config.name,
        "address": format_address(config.advertise_address),
        "bind": format_address(bind),
        "rpc": format_address(rpc),
        "metrics": None if metrics is None else format_address(metrics),
        "version": __version__,
        "protocol_version": PROTOCOL_VERSION,
        "profile": profile,
        "label": config.label,
        "encrypted": bool(fingerprints),
        "keys": list(fingerprints),
        "timers": {name: getattr(config, name) for name in shown},
        "overridden": sorted(overridden),
        "members": {state.label: by_state.get(state.label, 0) for state in MemberState},
        "uptime": round(uptime, 3),
    }


def format_duration(seconds: float) -> str:
    """`3d 4h 05m 06s`, dropping the leading units that are zero."""
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes:02d}m {secs:02d}s"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _describe_keys(info: Mapping[str, Any]) -> str:
    keys: list[str] = info["keys"]
    if not keys:
        return "none (plaintext)"
    others = f", others {', '.join(keys[1:])}" if keys[1:] else ""
    return f"{len(keys)} key(s), primary {keys[0]}{others}"


def _timer(name: str, value: float, overridden: bool) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif name.endswith(("_interval", "_timeout", "_time", "_window")):
        text = f"{value:g} s"
    else:
        text = f"{value:g}"
    return f"{text} (set)" if overridden else text


def render_info(info: Mapping[str, Any], as_json: bool) -> str:
    """The `info` output: `field  value` lines, then the timers; or one JSON object."""
    if as_json:
        return json.dumps(info, indent=2)
    members = ", ".join(f"{count} {state}" for state, count in info["members"].items())
    rows = [
        ("name", info["name"]),
        ("address", f"{info['address']} (bound {info['bind']})"),
        ("rpc", info["rpc"]),
        ("metrics", info["metrics"] or "off"),
        ("version", f"swimnode {info['version']}, protocol {info['protocol_version']}"),
        ("profile", info["profile"]),
        ("label", info["label"] or "-"),
        ("keys", _describe_keys(info)),
        ("members", members),
        ("uptime", format_duration(info["uptime"])),
    ]
    overridden = set(info.get("overridden", ()))
    rows += [
        (name, _timer(name, value, name in overridden)) for name, value in info["timers"].items()
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)
