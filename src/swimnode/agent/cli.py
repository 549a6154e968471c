"""Command line: `python -m swimnode COMMAND ...`.

Commands: `agent` runs a member; `members`, `stats`, `info`, `monitor`, `leave`,
`state`, `ring`, `keys`, `event` and `query` talk to a running agent over its RPC
endpoint; `keygen` prints a new encryption key; `demo` tells the SWIM story on a
small cluster. `--version` prints the package's version. The commands form one
argparse tree (`build_parser`); the modules that load Trio are imported only by the
commands that run on it.

Exit codes: 0 success, 1 runtime failure (agent unreachable, port busy, refused
request, missing key, ...), 2 usage error (bad flags, environment or configuration
file), 130 interrupted.

JSON output carries application-state values as JSON, except bytes, which JSON lacks:
a bytes value is written as ``{"$base64": "<standard base64>"}`` (see
`to_json_value`); `state set --json-value` reads the same form back as bytes.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import gc
import json
import os
import re
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .. import __version__
from ..net.keyring import KEY_ACTIONS, generate_key, parse_key
from ..net.transport import Address, TransportError, format_address
from ..ring import TOKEN_SPACE, range_size
from . import client as rpcclient
from .settings import (
    AGENT_ABOUT,
    DEFAULT_RPC,
    ENV_PREFIX,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    UsageParser,
    add_agent_arguments,
    parse_address,
    settings_from_flags,
)

STATUSES = ("alive", "suspect", "dead", "left")
STATE_ACTIONS = ("get", "set", "delete", "list")
BYTES_TAG = "$base64"
"""The one key of the JSON object that stands for a bytes value."""
STATE_CELL_WIDTH = 40
"""Widest `APP_STATE` cell of the `members --state` table before it is cut short."""

CLIENT_ABOUT = {
    "members": "List the members the agent knows.",
    "stats": "Show the agent's protocol and transport counters.",
    "info": "Show the agent's name, addresses, versions, timers, keys and members.",
    "monitor": "Print the membership, then stream changes until interrupted.",
    "leave": "Make the agent leave the cluster gracefully and exit.",
    "state": "Read and write application state through the agent.",
    "ring": "Show the hash ring the agent's live members form.",
}
KEYS_ABOUT = (
    "Manage the encryption keys of the whole cluster through the agent: list them, "
    "install a new key, make it primary (use), remove an old one. Every live member is "
    "asked and reported on."
)
EVENT_ABOUT = (
    "Send a user event to every member through the agent: each member delivers it "
    "once (monitor, event handlers, node.events())."
)
QUERY_ABOUT = (
    "Ask the members (all, or those --node and --state select) through the agent and "
    "print their acks and answers as they arrive: a member answers with the responder "
    "registered for NAME (a library handler, or an agent's event handler for query "
    "or query:NAME)."
)
KEYGEN_ABOUT = (
    "Print a new random encryption key (32 bytes, base64) for a key file or "
    "`swimnode keys install`."
)
DEMO_ABOUT = (
    "Watch a small cluster find itself, lose a member, take it back and see another "
    "leave, on the in-memory network (or, with --udp, a few real agents on 127.0.0.1)."
)


@dataclass(frozen=True, slots=True)
class ClientArgs:
    """Parsed flags of a client command (`members`, `stats`, `monitor`, `leave`,
    `state ACTION`, `ring`)."""

    command: str
    rpc: Address
    json: bool = False
    status: str | None = None
    show_state: bool = False
    action: str | None = None
    key: str | None = None
    value: Any = None
    member: str | None = None
    vnodes: int = 100
    tokens_key: str = "tokens"
    summary: bool = False


# ----- the parser tree (pure) ---------------------------------------------------------


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line: `swimnode COMMAND ...`, one subparser per command, each
    knowing the function that runs it (`run`). Building it imports no Trio: the
    commands that need it import it when they run.

    With `command`, only that command's branch is built: an agent keeps what it
    allocated at start for its whole life, and the other commands' parsers and
    modules would cost it memory for nothing."""
    root = UsageParser(
        prog="swimnode",
        description="SWIM cluster membership: run an agent, talk to one, manage keys.",
    )
    root.add_argument("--version", action="version", version=f"swimnode {__version__}")
    sub = root.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=UsageParser
    )
    for name, branch in _BRANCHES.items():
        if command in (None, name):
            help_text, description = branch.about()
            p = sub.add_parser(name, help=help_text, description=description)
            branch.add_arguments(p)
            p.set_defaults(run=branch.run)
    return root


def _add_rpc(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rpc",
        metavar="HOST:PORT",
        help=f"agent RPC address (default ${ENV_PREFIX}RPC or {format_address(DEFAULT_RPC)})",
    )


def _vnodes(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= rpcclient.MAX_VNODES:
        raise argparse.ArgumentTypeError(f"must be 1..{rpcclient.MAX_VNODES}, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= rpcclient.MAX_QUERY_TIMEOUT:
        raise argparse.ArgumentTypeError(f"must be in (0, {rpcclient.MAX_QUERY_TIMEOUT:g}]")
    return value


def _add_client_arguments(p: argparse.ArgumentParser, command: str) -> None:
    """The flags of one client command."""
    if command == "state":
        _state_parsers(p)
        return
    _add_rpc(p)
    if command != "leave":
        p.add_argument("--json", action="store_true", help="machine-readable output")
    if command == "members":
        p.add_argument("--status", choices=STATUSES, help="only members in this state")
        p.add_argument(
            "--state",
            dest="show_state",
            action="store_true",
            help="add an APP_STATE column (the table only; --json always has app_state)",
        )
    if command == "ring":
        p.add_argument(
            "--vnodes",
            type=_vnodes,
            default=100,
            help="tokens derived per member without advertised tokens (default 100)",
        )
        p.add_argument(
            "--tokens-key",
            default="tokens",
            metavar="KEY",
            help="application-state key holding advertised tokens (default tokens)",
        )
        p.add_argument(
            "--summary", action="store_true", help="only the per-member summary, not every range"
        )


def _state_parsers(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=UsageParser)
    get = sub.add_parser(
        "get",
        help="print one key's value",
        description="Print one key of a member's application state.",
    )
    get.add_argument("key", metavar="KEY")
    get.add_argument("--member", metavar="NAME", help="whose state (default: the agent's)")
    get.add_argument("--json", action="store_true", help="print the value as JSON")
    put = sub.add_parser(
        "set",
        help="set one of the agent's keys",
        description="Set one key of the agent's own application state.",
    )
    put.add_argument("key", metavar="KEY")
    put.add_argument("value", metavar="VALUE")
    put.add_argument(
        "--json-value",
        action="store_true",
        help="parse VALUE as JSON (numbers, lists, maps, true/false/null; "
        f'{{"{BYTES_TAG}": "..."}} for bytes); default: VALUE is a string',
    )
    delete = sub.add_parser(
        "delete",
        help="delete one of the agent's keys",
        description="Delete one key of the agent's own application state.",
    )
    delete.add_argument("key", metavar="KEY")
    listing = sub.add_parser(
        "list",
        help="print every key",
        description="Print every key of a member's application state.",
    )
    listing.add_argument("--member", metavar="NAME", help="whose state (default: the agent's)")
    listing.add_argument("--json", action="store_true", help="one JSON object")
    for q in (get, put, delete, listing):
        _add_rpc(q)


def parse_client_args(command: str, argv: Sequence[str], env: Mapping[str, str]) -> ClientArgs:
    """Parse a client command's flags (pure); raises `UsageError`."""
    return client_args(build_parser().parse_args([command, *argv]), env)


def rpc_address(ns: argparse.Namespace, env: Mapping[str, str]) -> Address:
    """The agent to talk to: `--rpc`, else `$SWIMNODE_RPC`, else the default."""
    rpc_text = ns.rpc or env.get(ENV_PREFIX + "RPC") or None
    return parse_address(rpc_text, what="rpc address") if rpc_text else DEFAULT_RPC


def client_args(ns: argparse.Namespace, env: Mapping[str, str]) -> ClientArgs:
    """A client command's parsed flags, checked and completed from `env`; raises
    `UsageError`."""
    value = getattr(ns, "value", None)
    if value is not None and getattr(ns, "json_value", False):
        try:
            value = from_json_value(json.loads(value))
        except ValueError as exc:
            raise UsageError(f"VALUE is not valid JSON: {exc}") from None
    return ClientArgs(
        command=ns.command,
        rpc=rpc_address(ns, env),
        json=getattr(ns, "json", False),
        status=getattr(ns, "status", None),
        show_state=getattr(ns, "show_state", False),
        action=getattr(ns, "action", None),
        key=getattr(ns, "key", None),
        value=value,
        member=getattr(ns, "member", None),
        vnodes=getattr(ns, "vnodes", 100),
        tokens_key=getattr(ns, "tokens_key", "tokens"),
        summary=getattr(ns, "summary", False),
    )


# ----- JSON convention for application-state values (pure) ----------------------------


def to_json_value(value: Any) -> Any:
    """An application-state value as JSON can hold it: bytes become
    ``{"$base64": "<standard base64>"}``, map keys become strings, tuples lists."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {BYTES_TAG: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, Mapping):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_value(v) for v in value]
    return value


def from_json_value(value: Any) -> Any:
    """The inverse of `to_json_value`: an object whose only key is ``"$base64"``
    becomes bytes. Raises `ValueError` on bad base64."""
    if isinstance(value, dict):
        if set(value) == {BYTES_TAG} and isinstance(value[BYTES_TAG], str):
            try:
                return base64.b64decode(value[BYTES_TAG], validate=True)
            except binascii.Error as exc:
                raise ValueError(f"bad base64 in {BYTES_TAG}: {exc}") from None
        return {k: from_json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json_value(v) for v in value]
    return value


def _compact_json(value: Any) -> str:
    return json.dumps(to_json_value(value), separators=(",", ":"), ensure_ascii=False)


def display_value(value: Any) -> str:
    """A value for people: a string as it is, anything else as compact JSON."""
    return value if isinstance(value, str) else _compact_json(value)


def compact_state(state: Mapping[str, Any], width: int = STATE_CELL_WIDTH) -> str:
    """`key=value` pairs in key order, cut to `width` characters (`-` when empty).
    Strings that would be ambiguous (empty, or with spaces, `=` or `"`) are quoted."""
    if not state:
        return "-"
    parts = []
    for key in sorted(state):
        value = state[key]
        if isinstance(value, str) and value and not any(c in value for c in ' ="\t\n'):
            text = value
        else:
            text = _compact_json(value)
        parts.append(f"{key}={text}")
    cell = " ".join(parts)
    return cell if len(cell) <= width else cell[: width - 3] + "..."


def member_json(member: Mapping[str, Any]) -> dict[str, Any]:
    """An RPC member as JSON can hold it (`app_state` through `to_json_value`)."""
    out = dict(member)
    out["app_state"] = to_json_value(member.get("app_state") or {})
    return out


# ----- rendering (pure) -------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    table = [tuple(header)] + [tuple(r) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    )


def render_members(
    members: list[dict[str, Any]], status: str | None, as_json: bool, show_state: bool = False
) -> str:
    """The `members` output: an aligned table (with an `APP_STATE` column if
    `show_state`), or a JSON list whose objects always carry `app_state`."""
    rows = [m for m in members if status is None or m["state"] == status]
    if as_json:
        return json.dumps([member_json(m) for m in rows], indent=2)
    header = ["NAME", "ADDRESS", "STATE", "INCARNATION"]
    cells = [[m["name"], m["address"], m["state"], str(m["incarnation"])] for m in rows]
    if show_state:
        header.append("APP_STATE")
        for row, m in zip(cells, rows, strict=True):
            row.append(compact_state(m.get("app_state") or {}))
    return _table(header, cells)


def render_stats(stats: dict[str, int], as_json: bool) -> str:
    """The `stats` output: `key  value` lines, or one JSON object."""
    if as_json:
        return json.dumps(stats, indent=2, sort_keys=True)
    width = max((len(k) for k in stats), default=0)
    return "\n".join(f"{key.ljust(width)}  {stats[key]}" for key in sorted(stats))


def render_monitor_frame(frame: dict[str, Any], as_json: bool) -> str:
    """One `monitor` line for a frame from `rpcclient.monitor`."""
    member = frame.get("member")
    if member is None:
        return json.dumps(frame) if as_json else f"{frame['event']}: {frame.get('count')}"
    if frame["event"] == "user":
        return _render_user_event(frame, member, as_json)
    flat = {"event": frame["event"], **member_json(member)}
    if "changed_keys" in frame:
        flat["changed_keys"] = list(frame["changed_keys"])
    if as_json:
        return json.dumps(flat)
    line = (
        f"{flat['event']:<9} {flat['name']} {flat['address']} {flat['state']} "
        f"(incarnation {flat['incarnation']})"
    )
    if flat.get("changed_keys"):
        line += f" keys {','.join(flat['changed_keys'])}"
    return line


def _render_user_event(frame: dict[str, Any], sender: Mapping[str, Any], as_json: bool) -> str:
    if as_json:
        fields = ("name", "ltime", "coalesce")
        out = {"event": "user", **{k: frame[k] for k in fields}, "sender": sender["name"]}
        out["payload"] = to_json_value(frame["payload"])
        return json.dumps(out)
    line = f"{'user':<9} {frame['name']} from {sender['name']} (Lamport time {frame['ltime']})"
    if frame["payload"]:
        line += " " + display_value(_text_or_bytes(frame["payload"]))
    return line


def _text_or_bytes(payload: bytes) -> str | bytes:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return payload


def render_state_value(value: Any, as_json: bool) -> str:
    """The `state get` output: a string as it is, else compact JSON (always JSON with
    `--json`)."""
    return json.dumps(to_json_value(value)) if as_json else display_value(value)


def render_state_list(state: Mapping[str, Any], as_json: bool) -> str:
    """The `state list` output: a `KEY  VALUE` table in key order, or one JSON object."""
    if as_json:
        return json.dumps(to_json_value(dict(sorted(state.items()))), indent=2)
    return _table(("KEY", "VALUE"), [(k, display_value(state[k])) for k in sorted(state)])


def hex_token(token: int) -> str:
    """A ring token as 16 hex digits, `0x`-prefixed."""
    return f"0x{token:016x}"


def ring_json(ring: Mapping[str, Any]) -> dict[str, Any]:
    """The `ring --json` shape of an RPC ring reply: tokens as hex strings (JSON
    numbers lose precision above 2**53 in many readers), a fraction per range."""
    members = []
    for m in ring["members"]:
        ranges = [
            {
                "start": hex_token(a),
                "end": hex_token(b),
                "fraction": range_size((a, b)) / TOKEN_SPACE,
            }
            for a, b in m["ranges"]
        ]
        members.append(
            {
                "name": m["name"],
                "fraction": m["fraction"],
                "tokens": m["tokens"],
                "source": m["source"],
                "ranges": ranges,
            }
        )
    return {"vnodes": ring["vnodes"], "tokens_key": ring["tokens_key"], "members": members}


def render_ring(ring: Mapping[str, Any], as_json: bool, summary: bool = False) -> str:
    """The `ring` output: every member's ranges `(start, end]` with their share, then a
    per-member summary (only the summary if `summary`); or one JSON object."""
    shaped = ring_json(ring)
    if as_json:
        return json.dumps(shaped, indent=2)
    parts = []
    if not summary:
        parts.append(
            _table(
                ("MEMBER", "RANGE (START, END]", "SHARE"),
                [
                    (m["name"], f"({r['start']}, {r['end']}]", f"{r['fraction'] * 100:.3f}%")
                    for m in shaped["members"]
                    for r in m["ranges"]
                ],
            )
        )
        parts.append("")
    parts.append(
        _table(
            ("MEMBER", "TOKENS", "SOURCE", "RANGES", "OWNS"),
            [
                (
                    m["name"],
                    str(m["tokens"]),
                    m["source"],
                    str(len(m["ranges"])),
                    f"{m['fraction'] * 100:.2f}%",
                )
                for m in shaped["members"]
            ],
        )
    )
    return "\n".join(parts)


# ----- commands ---------------------------------------------------------------------------


def _members(args: ClientArgs) -> int:
    print(render_members(rpcclient.members(args.rpc), args.status, args.json, args.show_state))
    return EXIT_OK


def _state(args: ClientArgs) -> int:
    name = f"swimnode state {args.action}"
    if args.action == "get":
        reply = rpcclient.call(args.rpc, "state_get", {"key": args.key, "member": args.member})
        if not reply["found"]:
            print(
                f"{name}: key {args.key!r} is not set on member {reply['member']!r}",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        print(render_state_value(reply["value"], args.json))
    elif args.action == "list":
        reply = rpcclient.call(args.rpc, "state_list", {"member": args.member})
        print(render_state_list(reply["state"], args.json))
    elif args.action == "set":
        rpcclient.call(args.rpc, "state_set", {"key": args.key, "value": args.value})
    else:
        reply = rpcclient.call(args.rpc, "state_delete", {"key": args.key})
        if not reply["deleted"]:
            print(
                f"{name}: key {args.key!r} is not set on member {reply['member']!r}",
                file=sys.stderr,
            )
            return EXIT_FAILURE
    return EXIT_OK


def _ring(args: ClientArgs) -> int:
    reply = rpcclient.call(args.rpc, "ring", {"vnodes": args.vnodes, "tokens_key": args.tokens_key})
    print(render_ring(reply, args.json, args.summary))
    return EXIT_OK


def _stats(args: ClientArgs) -> int:
    print(render_stats(rpcclient.call(args.rpc, "stats")["stats"], args.json))
    return EXIT_OK


def _info(args: ClientArgs) -> int:
    from .info import render_info  # its imports serve this command only

    print(render_info(rpcclient.call(args.rpc, "info")["info"], args.json))
    return EXIT_OK


def _leave(args: ClientArgs) -> int:
    # The agent answers once its leave has been disseminated (or timed out), which
    # takes up to its profile's leave timeout.
    rpcclient.call(args.rpc, "leave", timeout=60.0)
    print(f"agent at {format_address(args.rpc)} left the cluster")
    return EXIT_OK


def _monitor(args: ClientArgs) -> int:
    try:
        for frame in rpcclient.monitor(args.rpc):
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
    "info": _info,
    "monitor": _monitor,
    "leave": _leave,
    "state": _state,
    "ring": _ring,
}


def _run_client(ns: argparse.Namespace) -> int:
    args = client_args(ns, os.environ)
    return _CLIENT_COMMANDS[args.command](args)


# ----- keys and keygen ------------------------------------------------------------------


def _add_keys_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "action",
        choices=KEY_ACTIONS,
        metavar="ACTION",
        help="list, install KEY, use KEY or remove KEY",
    )
    p.add_argument(
        "key",
        nargs="?",
        metavar="KEY",
        help="base64 key (from `swimnode keygen`); - reads it from stdin",
    )
    _add_rpc(p)
    p.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="how long to wait for answers (default: a few dozen gossip "
        "rounds; it ends sooner once every member answered)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")


def render_keys(report: Mapping[str, Any], as_json: bool) -> str:
    """The `keys` output: what the members answered, then a line per failed member;
    or the whole report as JSON."""
    if as_json:
        return json.dumps(report, indent=2, sort_keys=True)
    nodes, answered = report["nodes"], report["answered"]
    failed: Mapping[str, str] = report["failed"]
    lines = []
    if report["action"] == "list":
        lines.append(f"{answered} of {nodes} members answered")
        primary: Mapping[str, int] = report["primary"]
        lines.append(
            _table(
                ("KEY", "MEMBERS", "PRIMARY ON"),
                [
                    (fp, f"{count}/{nodes}", str(primary.get(fp, 0)))
                    for fp, count in report["keys"].items()
                ],
            )
        )
    else:
        ok = sum(1 for m in report["members"].values() if m["ok"])
        lines.append(f"{report['action']} key {report['key']}: {ok} of {nodes} members ok")
    if failed:
        lines.append(_table(("FAILED", "REASON"), list(failed.items())))
    return "\n".join(lines)


def _keys(ns: argparse.Namespace) -> int:
    key = ns.key
    if ns.action == "list" and key is not None:
        raise UsageError("keys list takes no KEY")
    if ns.action != "list":
        if key is None:
            raise UsageError(f"keys {ns.action} needs a KEY")
        if key == "-":
            key = sys.stdin.readline()
        try:
            key = base64_key(key)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    address = rpc_address(ns, os.environ)
    # The agent waits up to its own default (or --timeout) for answers; allow that
    # plus a margin before giving up on it.
    wait = (ns.timeout or rpcclient.MAX_QUERY_TIMEOUT / 10) + 10.0
    report = rpcclient.call(
        address, "keys", {"action": ns.action, "key": key, "timeout": ns.timeout}, timeout=wait
    )
    report["ok"] = not report["failed"]  # was the RPC envelope's flag
    print(render_keys(report, ns.json))
    if report["failed"]:
        print(
            f"swimnode keys {ns.action}: {len(report['failed'])} of {report['nodes']} "
            "members failed",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_OK


def _add_event_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="event name (1 to 64 bytes)")
    p.add_argument(
        "payload", nargs="?", default="", metavar="PAYLOAD", help="text, at most 512 bytes"
    )
    p.add_argument(
        "--coalesce",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="handlers may run only the latest of several events of this name "
        "waiting together (default: --coalesce)",
    )
    _add_rpc(p)


def _event(ns: argparse.Namespace) -> int:
    payload = ns.payload.encode()
    reply = rpcclient.call(
        rpc_address(ns, os.environ),
        "event",
        {"name": ns.name, "payload": payload, "coalesce": ns.coalesce},
    )
    print(f"event {reply['name']} sent (Lamport time {reply['ltime']})")
    return EXIT_OK


def _state_filter(text: str) -> tuple[str, str]:
    key, sep, regex = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=REGEX, got {text!r}")
    try:
        re.compile(regex)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"bad regex {regex!r} for {key!r}: {exc}") from None
    # What the agent and every member would refuse is a usage error here too.
    from ..protocol.queries import regex_problem

    problem = regex_problem(regex)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"regex {regex!r} for {key!r} refused: {problem}")
    return key, regex


def _add_query_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="query name (1 to 64 bytes)")
    p.add_argument(
        "payload", nargs="?", default="", metavar="PAYLOAD", help="text, at most 512 bytes"
    )
    p.add_argument(
        "--node",
        dest="names",
        action="append",
        default=[],
        metavar="NAME",
        help="ask only this member; repeatable",
    )
    p.add_argument(
        "--state",
        dest="state",
        action="append",
        default=[],
        type=_state_filter,
        metavar="KEY=REGEX",
        help="ask only members whose application state KEY matches REGEX; repeatable "
        "(all must match)",
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="how long to wait for answers (default: a few dozen gossip rounds; it "
        "ends sooner once every selected member answered)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object once the query ends")
    _add_rpc(p)


def render_query_frame(frame: Mapping[str, Any]) -> str:
    """One line of the `query` text output, for an ack or an answer as it arrives."""
    if "ack" in frame:
        return f"ack from {frame['ack']}" + ("" if frame["answering"] else " (no responder)")
    payload = _text_or_bytes(frame["payload"])
    # A command's output ends with a newline; the line printed here has its own.
    text = payload.rstrip("\n") if isinstance(payload, str) else display_value(payload)
    return f"answer from {frame['response']}: {text}"


def render_query_summary(done: Mapping[str, Any], as_json: bool) -> str:
    """The end of a query: a count and who is missing; or the whole result as JSON."""
    if as_json:
        out = dict(done)
        del out["done"]
        out["responses"] = {
            k: to_json_value(_text_or_bytes(v)) for k, v in done["responses"].items()
        }
        return json.dumps(out, indent=2)
    line = f"{len(done['responses'])} of {len(done['expected'])} selected members answered"
    if done["missing"]:
        line += f"; no answer from {', '.join(done['missing'])}"
    return line


def _query(ns: argparse.Namespace) -> int:
    args = {
        "name": ns.name,
        "payload": ns.payload.encode(),
        "names": ns.names,
        "state": [list(f) for f in ns.state],
        "timeout": ns.timeout,
    }
    # The agent waits up to the query's timeout (default or --timeout) between frames.
    wait = (ns.timeout or rpcclient.MAX_QUERY_TIMEOUT / 10) + 10.0
    for frame in rpcclient.query(rpc_address(ns, os.environ), args, timeout=wait):
        if frame.get("done"):
            print(render_query_summary(frame, ns.json))
        elif not ns.json:
            print(render_query_frame(frame), flush=True)
    return EXIT_OK


def base64_key(text: str) -> str:
    """`text` checked as a key and normalised (surrounding whitespace removed);
    `ValueError` with a message that never repeats it."""
    parse_key(text)
    return text.strip()


def _keygen(ns: argparse.Namespace) -> int:
    print(generate_key())
    return EXIT_OK


# ----- agent and demo ---------------------------------------------------------------------
# Both import their modules when they run: those load Trio (the demo also
# trio.testing, which imports pytest), and the client commands above start in less
# than half the time without it (docs/agent.md, "Start-up cost").


def _agent(ns: argparse.Namespace) -> int:
    settings = settings_from_flags(
        ns, os.environ, lambda p: Path(p).read_text("utf-8"), default_name=socket.gethostname()
    )
    from . import daemon

    return daemon.run(settings)


def _add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=5, help="cluster size (default 5)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument(
        "--loss", type=float, default=0.0, help="packet loss probability, 0..1 (default 0)"
    )
    p.add_argument(
        "--speed",
        type=float,
        default=4.0,
        help="how much faster than real time the clock runs (default 4)",
    )
    p.add_argument(
        "--udp", action="store_true", help="run 3-5 real agent processes on 127.0.0.1 instead"
    )


def _demo(ns: argparse.Namespace) -> int:
    if ns.udp and not 3 <= ns.nodes <= 5:
        raise UsageError("--udp runs 3 to 5 agents")
    if not 3 <= ns.nodes <= 200:
        raise UsageError("--nodes must be between 3 and 200")
    if not 0.0 <= ns.loss < 1.0:
        raise UsageError("--loss must be in [0, 1)")
    if ns.speed <= 0:
        raise UsageError("--speed must be > 0")
    from . import demo

    return demo.run(ns.nodes, ns.seed, ns.loss, ns.speed, ns.udp)


# ----- the command table ------------------------------------------------------------------


class _Branch(NamedTuple):
    """One command: its help and description, its flags, and what runs it."""

    about: Callable[[], tuple[str, str]]
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _about(text: str, summary_end: str = ":") -> Callable[[], tuple[str, str]]:
    """A command's description and, as its one-line help, the text up to
    `summary_end`."""
    summary = text if summary_end not in text else text.split(summary_end)[0] + "."
    return lambda: (summary, text)


def _simulate_about() -> tuple[str, str]:
    from . import simulate

    return simulate.HELP, simulate.ABOUT


def _add_simulate_arguments(p: argparse.ArgumentParser) -> None:
    from . import simulate

    simulate.add_arguments(p)


def _simulate(ns: argparse.Namespace) -> int:
    from . import simulate  # the simulator, never Trio

    return simulate.run(ns)


def _client_branch(command: str) -> _Branch:
    return _Branch(
        _about(CLIENT_ABOUT[command]),
        lambda p: _add_client_arguments(p, command),
        _run_client,
    )


_BRANCHES: dict[str, _Branch] = {
    "agent": _Branch(_about(AGENT_ABOUT), add_agent_arguments, _agent),
    **{command: _client_branch(command) for command in CLIENT_ABOUT},
    "keys": _Branch(_about(KEYS_ABOUT), _add_keys_arguments, _keys),
    "event": _Branch(_about(EVENT_ABOUT), _add_event_arguments, _event),
    "query": _Branch(_about(QUERY_ABOUT), _add_query_arguments, _query),
    "keygen": _Branch(_about(KEYGEN_ABOUT), lambda p: None, _keygen),
    "demo": _Branch(_about(DEMO_ABOUT, ","), _add_demo_arguments, _demo),
    "simulate": _Branch(_simulate_about, _add_simulate_arguments, _simulate),
}
COMMANDS = tuple(_BRANCHES)
"""Every command, in the order `--help` lists them."""


# ----- the entry point --------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit code (see the module's docstring).

    Every command's errors are reported here, the same way: a usage error as
    `swimnode COMMAND: message` (exit 2), a failure at run time (agent unreachable,
    request refused, address busy) as `swimnode COMMAND [ACTION]: message` (exit 1),
    Ctrl-C as exit 130; never a traceback.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(build_parser().format_usage(), end="", file=sys.stderr)
        return EXIT_USAGE
    label = "swimnode"
    if not args[0].startswith("-"):
        if args[0] not in COMMANDS:
            print(
                f"swimnode: unknown command {args[0]!r} (expected one of: {', '.join(COMMANDS)})",
                file=sys.stderr,
            )
            return EXIT_USAGE
        label = f"swimnode {args[0]}"
    try:
        ns = build_parser(args[0] if args[0] in COMMANDS else None).parse_args(args)
    except SystemExit as exc:  # --help and --version, which print and exit
        return int(exc.code or 0)
    except UsageError as exc:
        print(f"{label}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    action = getattr(ns, "action", None)  # state and keys name theirs in run-time errors
    run: Callable[[argparse.Namespace], int] = ns.run
    # argparse's parsers refer to one another; collect them now rather than leave
    # them to an agent's whole life.
    gc.collect()
    try:
        return run(ns)
    except UsageError as exc:
        print(f"{label}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (rpcclient.RpcError, TransportError) as exc:
        print(f"{label} {action}: {exc}" if action else f"{label}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
