"""Command line: `python -m swimnode COMMAND ...`.

Commands: `agent` runs a member; `members`, `stats`, `monitor` and `leave` talk to a
running agent over its RPC endpoint; `demo` tells the SWIM story on a small cluster.

Exit codes: 0 success, 1 runtime failure (agent unreachable, port busy, ...), 2 usage
error (bad flags, environment or configuration file), 130 interrupted.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from . import agent, rpc
from .agentconfig import DEFAULT_RPC, ENV_PREFIX, UsageError, parse_address
from .transport import Address
from .udp import format_address

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = agent.EXIT_OK, agent.EXIT_FAILURE, agent.EXIT_USAGE
STATUSES = ("alive", "suspect", "dead", "left")


@dataclass(frozen=True, slots=True)
class ClientArgs:
    """Parsed flags of a client command (`members`, `stats`, `monitor`, `leave`)."""

    command: str
    rpc: Address
    json: bool = False
    status: str | None = None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def client_parser(command: str) -> argparse.ArgumentParser:
    """The flags of one client command."""
    about = {
        "members": "List the members the agent knows.",
        "stats": "Show the agent's protocol and transport counters.",
        "monitor": "Print the membership, then stream changes until interrupted.",
        "leave": "Make the agent leave the cluster gracefully and exit.",
    }[command]
    p = _Parser(prog=f"swimnode {command}", description=about)
    p.add_argument("--rpc", metavar="HOST:PORT",
                   help=f"agent RPC address (default ${ENV_PREFIX}RPC or "
                   f"{format_address(DEFAULT_RPC)})")
    if command != "leave":
        p.add_argument("--json", action="store_true", help="machine-readable output")
    if command == "members":
        p.add_argument("--status", choices=STATUSES, help="only members in this state")
    return p


def parse_client_args(command: str, argv: Sequence[str],
                      env: Mapping[str, str]) -> ClientArgs:
    """Parse a client command's flags (pure); raises `UsageError`."""
    ns = client_parser(command).parse_args(list(argv))
    rpc_text = ns.rpc or env.get(ENV_PREFIX + "RPC") or None
    address = parse_address(rpc_text, what="rpc address") if rpc_text else DEFAULT_RPC
    return ClientArgs(command=command, rpc=address, json=getattr(ns, "json", False),
                      status=getattr(ns, "status", None))


# ----- rendering (pure) -------------------------------------------------------------------

def render_members(members: list[dict[str, Any]], status: str | None, as_json: bool) -> str:
    """The `members` output: an aligned table, or a JSON list."""
    rows = [m for m in members if status is None or m["state"] == status]
    if as_json:
        return json.dumps(rows, indent=2)
    header = ("NAME", "ADDRESS", "STATE", "INCARNATION")
    table = [header] + [(m["name"], m["address"], m["state"], str(m["incarnation"]))
                        for m in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip() for row in table)


def render_stats(stats: dict[str, int], as_json: bool) -> str:
    """The `stats` output: `key  value` lines, or one JSON object."""
    if as_json:
        return json.dumps(stats, indent=2, sort_keys=True)
    width = max((len(k) for k in stats), default=0)
    return "\n".join(f"{key.ljust(width)}  {stats[key]}" for key in sorted(stats))


def render_monitor_frame(frame: dict[str, Any], as_json: bool) -> str:
    """One `monitor` line for a frame from `rpc.monitor`."""
    member = frame.get("member")
    if member is None:
        return json.dumps(frame) if as_json else f"{frame['event']}: {frame.get('count')}"
    flat = {"event": frame["event"], **member}
    if as_json:
        return json.dumps(flat)
    return (f"{flat['event']:<9} {flat['name']} {flat['address']} {flat['state']} "
            f"(incarnation {flat['incarnation']})")


# ----- commands ---------------------------------------------------------------------------

def _members(args: ClientArgs) -> int:
    print(render_members(rpc.members(args.rpc), args.status, args.json))
    return EXIT_OK


def _stats(args: ClientArgs) -> int:
    print(render_stats(rpc.call(args.rpc, "stats")["stats"], args.json))
    return EXIT_OK


def _leave(args: ClientArgs) -> int:
    # The agent answers once its leave has been disseminated (or timed out), which
    # takes up to its profile's leave timeout.
    rpc.call(args.rpc, "leave", timeout=60.0)
    print(f"agent at {format_address(args.rpc)} left the cluster")
    return EXIT_OK


def _monitor(args: ClientArgs) -> int:
    try:
        for frame in rpc.monitor(args.rpc):
            print(render_monitor_frame(frame, args.json), flush=True)
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        # The reader (e.g. `| head`) is gone; point stdout at /dev/null so the final
        # flush at exit does not complain about the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    print("swimnode monitor: the agent closed the connection", file=sys.stderr)
    return EXIT_OK


_CLIENT_COMMANDS: dict[str, Callable[[ClientArgs], int]] = {
    "members": _members,
    "stats": _stats,
    "monitor": _monitor,
    "leave": _leave,
}


def _client(command: str, argv: list[str]) -> int:
    try:
        args = parse_client_args(command, argv, os.environ)
    except UsageError as exc:
        print(f"swimnode {command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    try:
        return _CLIENT_COMMANDS[command](args)
    except rpc.RpcError as exc:
        print(f"swimnode {command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return agent.EXIT_INTERRUPTED


def _demo(argv: list[str]) -> int:
    # Imported on demand: the demo needs trio.testing, which imports pytest, and that
    # would add half a second to every agent and client start.
    from . import demo

    return demo.main(argv)


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "agent": agent.main,
    **{name: functools.partial(_client, name) for name in _CLIENT_COMMANDS},
    "demo": _demo,
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand; returns the process exit code."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        stream = sys.stdout if args else sys.stderr
        print("usage: python -m swimnode {" + ",".join(COMMANDS) + "} [options]", file=stream)
        return EXIT_OK if args else EXIT_USAGE
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"swimnode: unknown command {args[0]!r} (expected one of: {', '.join(COMMANDS)})",
              file=sys.stderr)
        return EXIT_USAGE
    return command(args[1:])
