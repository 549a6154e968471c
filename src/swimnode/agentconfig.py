"""Agent settings from flags, environment and a TOML file (pure: no I/O here).

Precedence, highest first: command-line flags, `SWIMNODE_*` environment variables, the
TOML file (`--config` or `SWIMNODE_CONFIG`), built-in defaults. Every source uses the
same keys; docs/agent.md lists them. Problems raise `UsageError` with a one-line
message that the command line prints as is.
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, cast

from .config import Config, Profile
from .transport import Address
from .udp import format_address

DEFAULT_BIND: Address = ("127.0.0.1", 7946)
DEFAULT_RPC: Address = ("127.0.0.1", 7373)
PROFILES: tuple[Profile, ...] = ("lan", "wan", "local")
LOG_LEVELS = ("debug", "info", "warning", "error")
ENV_PREFIX = "SWIMNODE_"


class UsageError(Exception):
    """Bad flags, environment or configuration file; `str()` is one line."""


def parse_address(text: str, *, what: str = "address") -> Address:
    """`host:port` (IPv6 as `[::1]:7946`) to `(host, port)`; raises `UsageError`."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":") or not host:
            raise UsageError(f"bad {what} {text!r}: expected [IPv6]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise UsageError(f"bad {what} {text!r}: expected HOST:PORT")
        if ":" in host:
            raise UsageError(f"bad {what} {text!r}: put IPv6 hosts in brackets, "
                             "as in [::1]:7946")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"bad {what} {text!r}: port must be 0..65535")
    return host, int(port_text)


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

    def node_config(self) -> Config:
        """The node configuration these settings describe."""
        try:
            return Config.profile(self.profile, self.name, bind=self.bind,
                                  advertise=self.advertise, seeds=self.seeds)
        except ValueError as exc:
            raise UsageError(str(exc)) from None


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so errors stay
    one line and parsing stays testable."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def agent_parser() -> argparse.ArgumentParser:
    """The `agent` subcommand's flags. Every default is `None` so that a flag the
    user did not give falls through to the environment, the file and the defaults."""
    p = _Parser(prog="swimnode agent", description="Run a swimnode cluster member with a "
                "local RPC endpoint.")
    p.add_argument("--name", help="member name (default: this host's name)")
    p.add_argument("--bind", metavar="HOST:PORT",
                   help=f"UDP+TCP address to listen on (default {format_address(DEFAULT_BIND)})")
    p.add_argument("--advertise", metavar="HOST:PORT",
                   help="address peers should use (default: the bound address)")
    p.add_argument("--seed", dest="seeds", metavar="HOST:PORT", action="append",
                   help="member to join through; repeat for several")
    p.add_argument("--profile", choices=PROFILES, help="timer profile (default lan)")
    p.add_argument("--rpc", metavar="HOST:PORT",
                   help=f"RPC endpoint to listen on (default {format_address(DEFAULT_RPC)})")
    p.add_argument("--config", metavar="FILE.toml", help="read settings from a TOML file")
    p.add_argument("--log-level", choices=LOG_LEVELS, help="log threshold (default info)")
    p.add_argument("--log-json", action="store_const", const=True,
                   help="log one JSON object per line")
    return p


_KEYS = ("name", "bind", "advertise", "seeds", "profile", "rpc", "log_level", "log_json")


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in _KEYS:
        value = env.get(ENV_PREFIX + key.upper())
        if value is None or value == "":
            continue
        if key == "seeds":
            out[key] = [s for s in (part.strip() for part in value.split(",")) if s]
        elif key == "log_json":
            out[key] = _env_bool(ENV_PREFIX + "LOG_JSON", value)
        else:
            out[key] = value
    return out


def _env_bool(var: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"{var}={value!r}: expected true or false")


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """Settings from a TOML document; unknown keys and wrong types are errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{source}: {exc}") from None
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise UsageError(f"{source}: unknown key {unknown[0]!r} "
                         f"(expected one of: {', '.join(_KEYS)})")
    for key, value in data.items():
        if key == "seeds":
            if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
                raise UsageError(f"{source}: seeds must be a list of \"HOST:PORT\" strings")
        elif key == "log_json":
            if not isinstance(value, bool):
                raise UsageError(f"{source}: log_json must be true or false")
        elif not isinstance(value, str):
            raise UsageError(f"{source}: {key} must be a string")
    return data


def merge(flags: Mapping[str, Any], env: Mapping[str, Any], file: Mapping[str, Any],
          default_name: str) -> AgentSettings:
    """Combine raw values (flags > env > file > defaults) and validate them."""
    raw: dict[str, Any] = {}
    for source in (file, env, flags):
        raw.update({k: v for k, v in source.items() if k in _KEYS and v is not None})
    profile = raw.get("profile", "lan")
    if profile not in PROFILES:
        raise UsageError(f"unknown profile {profile!r} (expected lan, wan or local)")
    level = str(raw.get("log_level", "info")).lower()
    if level not in LOG_LEVELS:
        raise UsageError(f"unknown log level {level!r} (expected {', '.join(LOG_LEVELS)})")
    bind = parse_address(raw["bind"], what="bind address") if "bind" in raw else DEFAULT_BIND
    rpc = parse_address(raw["rpc"], what="rpc address") if "rpc" in raw else DEFAULT_RPC
    advertise = (parse_address(raw["advertise"], what="advertise address")
                 if "advertise" in raw else None)
    if advertise is not None and advertise[1] == 0:
        raise UsageError("advertise address needs a real port, not 0")
    seeds = tuple(parse_address(s, what="seed address") for s in raw.get("seeds", ()))
    if any(port == 0 for _, port in seeds):
        raise UsageError("seed addresses need a real port, not 0")
    settings = AgentSettings(
        name=str(raw.get("name") or default_name), bind=bind, advertise=advertise,
        seeds=seeds, profile=cast(Profile, profile), rpc=rpc, log_level=level,
        log_json=bool(raw.get("log_json", False)),
    )
    settings.node_config()  # validates the name and the profile's knobs
    return settings


def load_settings(argv: Sequence[str], env: Mapping[str, str],
                  read_text: Callable[[str], str], default_name: str) -> AgentSettings:
    """Parse `agent` flags, the environment and the config file they point to.

    `read_text(path)` reads the config file (`OSError` becomes a `UsageError`); it is a
    parameter so tests need no files.
    """
    ns = agent_parser().parse_args(list(argv))
    flags = {k: v for k, v in vars(ns).items() if k != "config"}
    env_values = _from_env(env)
    path = ns.config if ns.config is not None else env.get(ENV_PREFIX + "CONFIG") or None
    file_values: dict[str, Any] = {}
    if path is not None:
        try:
            text = read_text(path)
        except OSError as exc:
            raise UsageError(f"cannot read config file {path}: "
                             f"{exc.strerror or exc}".rstrip()) from None
        file_values = parse_toml(text, path)
    return merge(flags, env_values, file_values, default_name)
