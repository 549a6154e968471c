"""Agent settings from flags, environment and a TOML file (pure: no I/O here).

Precedence, highest first: command-line flags, `SWIMNODE_*` environment variables, the
TOML file (`--config` or `SWIMNODE_CONFIG`), built-in defaults. Every source uses the
same keys; docs/agent.md lists them. Problems raise `UsageError` with a one-line
message that the command line prints as is.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, cast

from ..net import transport
from ..net.keyring import Keyring, parse_key
from ..net.transport import Address, format_address
from ..protocol.appstate import StateLimits, StateStore
from ..protocol.config import Config, Profile
from .handlers import HandlerError, HandlerSpec, parse_handler

DEFAULT_BIND: Address = ("127.0.0.1", 7946)
DEFAULT_RPC: Address = ("127.0.0.1", 7373)
PROFILES: tuple[Profile, ...] = ("lan", "wan", "local")
LOG_LEVELS = ("debug", "info", "warning", "error")
ENV_PREFIX = "SWIMNODE_"

EXIT_OK = 0
"""Success; for the agent, its graceful leave finished (or timed out)."""
EXIT_FAILURE = 1
"""A runtime failure: agent unreachable, port busy, request refused, ..."""
EXIT_USAGE = 2
"""Bad flags, environment or configuration file (`UsageError`)."""
EXIT_INTERRUPTED = 130
"""Interrupted (Ctrl-C), as shells report SIGINT."""


class UsageError(Exception):
    """Bad flags, environment or configuration file; `str()` is one line."""


def parse_address(text: str, *, what: str = "address") -> Address:
    """`host:port` (IPv6 as `[::1]:7946`) to `(host, port)`, the port required (0
    allowed, for binding); raises `UsageError`. Same rules as seed addresses."""
    try:
        return transport.parse_address(text, None, allow_port_zero=True)
    except ValueError as exc:
        raise UsageError(f"bad {what}: {exc}") from None


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """Everything `python -m swimnode agent` needs, after merging every source."""

    name: str
    bind: Address = DEFAULT_BIND
    advertise: Address | None = None
    seeds: tuple[Address, ...] = ()
    profile: Profile = "lan"
    rpc: Address = DEFAULT_RPC
    log_level: str = "info"
    log_json: bool = False
    seed_files: tuple[str, ...] = ()
    """Files of seed addresses (`FileSeeds`), re-read every seed refresh."""
    seed_dns: tuple[Address, ...] = ()
    """DNS names (with the port to use) whose addresses are seeds (`DnsSeeds`)."""
    state: tuple[tuple[str, Any], ...] = ()
    """Application state to set when the agent starts, as `(key, value)` pairs."""
    label: str = ""
    """Cluster label (`Config.label`)."""
    key_file: str | None = None
    """File of base64 keys, first primary (`keyring.load_key_file`); read at start."""
    keyring: Keyring | None = field(default=None, compare=False)
    """Keys given in `SWIMNODE_KEYS` (the key file is read later, by the agent).
    A `Keyring` shows fingerprints only, so printing settings reveals no key."""
    insecure_plaintext: bool = False
    """Allow binding a non-loopback address without keys."""
    metrics: Address | None = None
    """Where to serve Prometheus metrics (`/metrics`), or None for no metrics."""
    event_handlers: tuple[HandlerSpec, ...] = ()
    """Commands to run on events (`--event-handler [FILTER=]COMMAND`), in order."""
    udp_payload: int | None = None
    """Largest datagram to send (`Config.udp_payload`), or None for the default."""
    protocol: tuple[tuple[str, Any], ...] = ()
    """`Config` fields set over the profile's (`--set`, `[protocol]`), as `(field,
    value)` pairs."""

    def node_config(self) -> Config:
        """The node configuration these settings describe."""
        try:
            return Config.profile(
                self.profile,
                self.name,
                bind=self.bind,
                advertise=self.advertise,
                seeds=self.seeds,
                label=self.label,
                **({} if self.udp_payload is None else {"udp_payload": self.udp_payload}),
                **dict(self.protocol),
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None


class UsageParser(argparse.ArgumentParser):
    """argparse that raises `UsageError` instead of printing usage and exiting, so
    errors stay one line and parsing stays testable. Every command's parser is one."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


AGENT_ABOUT = "Run a swimnode cluster member with a local RPC endpoint."


def agent_parser() -> argparse.ArgumentParser:
    """The `agent` command's flags, as a parser of their own."""
    p = UsageParser(prog="swimnode agent", description=AGENT_ABOUT)
    add_agent_arguments(p)
    return p


def add_agent_arguments(p: argparse.ArgumentParser) -> None:
    """Add the `agent` command's flags to `p`. Every default is `None` so that a flag
    the user did not give falls through to the environment, the file and the defaults."""
    p.add_argument("--name", help="member name (default: this host's name)")
    p.add_argument(
        "--bind",
        metavar="HOST:PORT",
        help=f"UDP+TCP address to listen on (default {format_address(DEFAULT_BIND)})",
    )
    p.add_argument(
        "--advertise",
        metavar="HOST:PORT",
        help="address peers should use (default: the bound address)",
    )
    p.add_argument(
        "--seed",
        dest="seeds",
        metavar="HOST:PORT",
        action="append",
        help="member to join through; repeat for several",
    )
    p.add_argument(
        "--seed-file",
        dest="seed_files",
        metavar="PATH",
        action="append",
        help="file of seed addresses, one per line, re-read every 30 s; repeatable",
    )
    p.add_argument(
        "--seed-dns",
        metavar="NAME[:PORT]",
        action="append",
        help="DNS name whose addresses are seeds (port default 7946), "
        "resolved again every 30 s; repeatable",
    )
    p.add_argument(
        "--state",
        dest="state",
        metavar="KEY=VALUE",
        action="append",
        type=_string_state,
        help="application state to set at start (VALUE is a string); repeatable",
    )
    p.add_argument(
        "--state-json",
        dest="state",
        metavar="KEY=JSON",
        action="append",
        type=_json_state,
        help="like --state, with VALUE parsed as JSON",
    )
    p.add_argument("--profile", choices=PROFILES, help="timer profile (default lan)")
    p.add_argument(
        "--set",
        dest="protocol",
        metavar="FIELD=VALUE",
        action="append",
        help="override a protocol setting of the profile, e.g. --set "
        "dead_reclaim_time=300 (fields: docs/protocol.md); repeatable",
    )
    p.add_argument(
        "--rpc",
        metavar="HOST:PORT",
        help=f"RPC endpoint to listen on (default {format_address(DEFAULT_RPC)})",
    )
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (needs the "
        "[metrics] extra; default off)",
    )
    p.add_argument(
        "--event-handler",
        dest="event_handlers",
        metavar="[FILTER=]COMMAND",
        action="append",
        help="shell command to run on events FILTER accepts (member-join, member-failed, "
        "member-leave, member-update, member-suspect, member-alive, user[:NAME], "
        "query[:NAME], comma-separated; default all); repeatable",
    )
    p.add_argument("--config", metavar="FILE.toml", help="read settings from a TOML file")
    p.add_argument("--log-level", choices=LOG_LEVELS, help="log threshold (default info)")
    p.add_argument(
        "--log-json", action="store_const", const=True, help="log one JSON object per line"
    )
    # Keys themselves are never flags: command lines are visible to every user.
    p.add_argument(
        "--key-file",
        metavar="PATH",
        help="file of base64 encryption keys, one per line, the first is "
        "primary (or $SWIMNODE_KEYS: comma-separated keys)",
    )
    p.add_argument(
        "--label", metavar="TEXT", help="cluster label: members with another label are ignored"
    )
    p.add_argument(
        "--udp-payload",
        metavar="BYTES",
        help="largest datagram to send (default 1400); below the path MTU minus 28 "
        "(IPv4) or 48 (IPv6) bytes, so datagrams are never fragmented",
    )
    p.add_argument(
        "--insecure-plaintext",
        action="store_const",
        const=True,
        help="allow binding a non-loopback address without encryption keys",
    )


_KEYS = (
    "name",
    "bind",
    "advertise",
    "seeds",
    "seed_files",
    "seed_dns",
    "state",
    "profile",
    "rpc",
    "log_level",
    "log_json",
    "key_file",
    "label",
    "insecure_plaintext",
    "metrics",
    "event_handlers",
    "udp_payload",
    "protocol",
)
_BOOL_KEYS = ("log_json", "insecure_plaintext")
_INT_KEYS = ("udp_payload",)
KEYS_ENV = ENV_PREFIX + "KEYS"
"""Comma-separated base64 keys, first primary: an alternative to a key file."""
_LIST_KEYS = ("seeds", "seed_files", "seed_dns", "event_handlers")
_NOT_IN_ENV = ("event_handlers",)  # a command may hold commas, the list separator


def _split_assignment(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _string_state(text: str) -> tuple[str, Any]:
    return _split_assignment(text)


def _json_state(text: str) -> tuple[str, Any]:
    key, value = _split_assignment(text)
    try:
        return key, json.loads(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"value of {key!r} is not JSON: {exc}") from None


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in _KEYS:
        if key in _NOT_IN_ENV:
            continue
        var = ENV_PREFIX + key.upper()
        value = env.get(var)
        if value is None or value == "":
            continue
        if key in _LIST_KEYS:
            out[key] = [s for s in (part.strip() for part in value.split(",")) if s]
        elif key == "state":
            try:
                state = json.loads(value)
            except ValueError as exc:
                raise UsageError(f"{var}: not a JSON object: {exc}") from None
            if not isinstance(state, dict):
                raise UsageError(f"{var}: expected a JSON object of key/values")
            out[key] = state
        elif key == "protocol":
            items = [part for part in value.split(",") if part.strip()]
            out[key] = config_overrides(split_assignments(items, var), AGENT_FIXED, var)
        elif key in _BOOL_KEYS:
            out[key] = _env_bool(var, value)
        else:
            out[key] = value
    keys = env.get(KEYS_ENV)
    if keys:
        out["keyring"] = parse_key_list(keys, KEYS_ENV)
    return out


def parse_key_list(text: str, source: str) -> Keyring:
    """A keyring from comma-separated base64 keys, the first primary. Errors name
    the key's position, never its text."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise UsageError(f"{source}: no keys given")
    keys = []
    for number, part in enumerate(parts, start=1):
        try:
            keys.append(parse_key(part))
        except ValueError as exc:
            raise UsageError(f"{source}: key {number}: {exc}") from None
    return Keyring(keys[0], keys[1:])


def _env_bool(var: str, value: str) -> bool:
    parsed = _text_bool(value)
    if parsed is None:
        raise UsageError(f"{var}={value!r}: expected true or false")
    return parsed


def _text_bool(text: str) -> bool | None:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    return None


AGENT_FIXED: Mapping[str, str] = {
    "name": "use --name",
    "bind": "use --bind",
    "advertise": "use --advertise",
    "seeds": "use --seed, --seed-file or --seed-dns",
    "label": "use --label",
    "udp_payload": "use --udp-payload",
    "seed": "the agent draws its random seed from the OS",
}
"""`Config` fields the agent's `--set` refuses, and why: settings of their own."""


def split_assignments(items: Sequence[str], source: str) -> dict[str, str]:
    """`FIELD=VALUE` texts as `{field: value}` (a later one wins); raises `UsageError`."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{source} {item!r}: expected FIELD=VALUE")
        out[key.strip()] = text.strip()
    return out


def config_overrides(
    values: Mapping[str, object], fixed: Mapping[str, str], source: str, *, typed: bool = False
) -> dict[str, Any]:
    """`Config` field values, typed and checked one by one; raises `UsageError`
    naming `source` and the field. Values are text (a flag, a variable: `true`,
    `2.5`), or with `typed` already values (a TOML table, where a string is as wrong
    as for any other key). `fixed` maps the fields that may not be set here to the
    reason; whether the values make a valid `Config` together is for `Config` to say."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        kind = _FIELD_TYPES.get(key)
        if key in fixed:
            raise UsageError(f"{source} {key}: not settable here ({fixed[key]})")
        if kind is None:
            raise UsageError(f"{source} {key}: unknown config field (docs/protocol.md lists them)")
        converted = None if typed and isinstance(value, str) else _typed(value, kind)
        if converted is None:
            expected = {bool: "true or false", int: "an integer"}.get(kind, "a finite number")
            raise UsageError(f"{source} {key}: expected {expected}, got {value!r}")
        out[key] = converted
    return out


_FIELD_TYPES: dict[str, type] = {
    f.name: type(f.default)
    for f in dataclasses.fields(Config)
    if type(f.default) in (bool, int, float)
}
"""The scalar `Config` fields (the others are identity: name, addresses, label)."""


def _typed(value: object, kind: type) -> bool | int | float | None:
    """`value` as a `kind` field's value, or None if it is not one."""
    if kind is bool:
        if isinstance(value, str):
            return _text_bool(value)
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = int(value) if kind is int else float(value)
        except ValueError:
            return None
    if kind is int:
        return value if isinstance(value, int) else None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """Settings from a TOML document; unknown keys and wrong types are errors."""
    # Imported here: most agents run without a file, and the parser costs an idle
    # agent about 0.15 MiB of RSS for nothing.
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{source}: {exc}") from None
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise UsageError(
            f"{source}: unknown key {unknown[0]!r} (expected one of: {', '.join(_KEYS)})"
        )
    for key, value in data.items():
        expected = _toml_type_error(key, value)
        if expected is not None:
            raise UsageError(f"{source}: {key} must be {expected}")
    if "protocol" in data:
        table = data["protocol"]
        data["protocol"] = config_overrides(table, AGENT_FIXED, f"{source}: [protocol]", typed=True)
    return data


def _toml_type_error(key: str, value: object) -> str | None:
    """What a file's `key` must be, if `value` is not that; None if it is."""
    if key in _LIST_KEYS:
        ok = isinstance(value, list) and all(isinstance(s, str) for s in value)
        return None if ok else "a list of strings"
    if key in ("state", "protocol"):
        return None if isinstance(value, dict) else "a table of key/values"
    if key in _BOOL_KEYS:
        return None if isinstance(value, bool) else "true or false"
    if key in _INT_KEYS:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    return None if isinstance(value, str) else "a string"


def merge(
    flags: Mapping[str, Any], env: Mapping[str, Any], file: Mapping[str, Any], default_name: str
) -> AgentSettings:
    """Combine raw values (flags > env > file > defaults) and validate them."""
    raw: dict[str, Any] = {}
    state: dict[str, Any] = {}
    protocol: dict[str, Any] = {}
    for source in (file, env, flags):
        raw.update({k: v for k, v in source.items() if k in _KEYS and v is not None})
        # Application state and protocol fields merge key by key, so a flag overrides
        # one key of the file.
        state.update(source.get("state") or {})
        protocol.update(source.get("protocol") or {})
    profile = raw.get("profile", "lan")
    if profile not in PROFILES:
        raise UsageError(f"unknown profile {profile!r} (expected lan, wan or local)")
    level = str(raw.get("log_level", "info")).lower()
    if level not in LOG_LEVELS:
        raise UsageError(f"unknown log level {level!r} (expected {', '.join(LOG_LEVELS)})")
    bind = parse_address(raw["bind"], what="bind address") if "bind" in raw else DEFAULT_BIND
    rpc = parse_address(raw["rpc"], what="rpc address") if "rpc" in raw else DEFAULT_RPC
    metrics = parse_address(raw["metrics"], what="metrics address") if "metrics" in raw else None
    advertise = (
        parse_address(raw["advertise"], what="advertise address") if "advertise" in raw else None
    )
    if advertise is not None and advertise[1] == 0:
        raise UsageError("advertise address needs a real port, not 0")
    seeds = tuple(parse_address(s, what="seed address") for s in raw.get("seeds", ()))
    if any(port == 0 for _, port in seeds):
        raise UsageError("seed addresses need a real port, not 0")
    seed_dns = tuple(_parse_dns_seed(s) for s in raw.get("seed_dns", ()))
    seed_files = tuple(str(f) for f in raw.get("seed_files", ()))
    if any(not f.strip() for f in seed_files):
        raise UsageError("seed file paths must not be empty")
    key_file = raw.get("key_file")
    if key_file is not None and not str(key_file).strip():
        raise UsageError("key file path must not be empty")
    keyring = env.get("keyring")
    if key_file is not None and keyring is not None:
        raise UsageError(f"both a key file and {KEYS_ENV} are set; use one")
    insecure = bool(raw.get("insecure_plaintext", False))
    try:
        transport.check_secure_bind(
            bind,
            keyed=key_file is not None or keyring is not None,
            insecure_plaintext=insecure,
            remedy=f"give --key-file or {KEYS_ENV}, or --insecure-plaintext to allow "
            "unencrypted traffic",
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    settings = AgentSettings(
        name=str(raw.get("name") or default_name),
        bind=bind,
        advertise=advertise,
        seeds=seeds,
        profile=cast(Profile, profile),
        rpc=rpc,
        log_level=level,
        log_json=bool(raw.get("log_json", False)),
        seed_files=seed_files,
        seed_dns=seed_dns,
        state=tuple(state.items()),
        label=str(raw.get("label", "")),
        key_file=None if key_file is None else str(key_file),
        keyring=keyring,
        insecure_plaintext=insecure,
        metrics=metrics,
        event_handlers=_handlers(raw.get("event_handlers", ())),
        udp_payload=_integer(raw["udp_payload"], "udp_payload") if "udp_payload" in raw else None,
        protocol=tuple(protocol.items()),
    )
    config = settings.node_config()  # validates the name and the profile's knobs
    check_state(settings.state, config)
    return settings


def _integer(value: object, key: str) -> int:
    """An integer setting given as a flag or variable (text) or in the file (int)."""
    try:
        return int(str(value))
    except ValueError:
        raise UsageError(f"{key} must be an integer, got {value!r}") from None


def _handlers(texts: Sequence[str]) -> tuple[HandlerSpec, ...]:
    try:
        return tuple(parse_handler(t) for t in texts)
    except HandlerError as exc:
        raise UsageError(str(exc)) from None


def _parse_dns_seed(text: str) -> Address:
    try:
        return transport.parse_address(text)
    except ValueError as exc:
        raise UsageError(f"bad DNS seed: {exc}") from None


def check_state(state: Sequence[tuple[str, Any]], config: Config) -> None:
    """Raise `UsageError` if the initial application state breaks a key, value or size
    rule (the node would refuse it at start)."""
    store = StateStore(config.name, 0, StateLimits.from_config(config))
    for key, value in state:
        try:
            store.set(key, value, 0.0)
        except ValueError as exc:
            raise UsageError(f"initial state: {exc}") from None


def load_settings(
    argv: Sequence[str], env: Mapping[str, str], read_text: Callable[[str], str], default_name: str
) -> AgentSettings:
    """Parse `agent` flags, the environment and the config file they point to.

    `read_text(path)` reads the config file (`OSError` becomes a `UsageError`); it is a
    parameter so tests need no files.
    """
    return settings_from_flags(agent_parser().parse_args(list(argv)), env, read_text, default_name)


def settings_from_flags(
    ns: argparse.Namespace,
    env: Mapping[str, str],
    read_text: Callable[[str], str],
    default_name: str,
) -> AgentSettings:
    """`load_settings` for flags already parsed (by `add_agent_arguments`' flags)."""
    flags = {k: v for k, v in vars(ns).items() if k in _KEYS and k not in ("state", "protocol")}
    # --state and --state-json fill one list, in order; a later flag wins for a key.
    if ns.state:
        flags["state"] = dict(ns.state)
    if ns.protocol:
        flags["protocol"] = config_overrides(
            split_assignments(ns.protocol, "--set"), AGENT_FIXED, "--set"
        )
    env_values = _from_env(env)
    path = ns.config if ns.config is not None else env.get(ENV_PREFIX + "CONFIG") or None
    file_values: dict[str, Any] = {}
    if path is not None:
        try:
            text = read_text(path)
        except OSError as exc:
            raise UsageError(
                f"cannot read config file {path}: {exc.strerror or exc}".rstrip()
            ) from None
        file_values = parse_toml(text, path)
    return merge(flags, env_values, file_values, default_name)
