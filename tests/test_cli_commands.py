"""Client command parsing and rendering (pure, no processes)."""

from __future__ import annotations

import json

import pytest

from swimnode.agentconfig import DEFAULT_RPC, UsageError
from swimnode.cli import (
    ClientArgs,
    main,
    parse_client_args,
    render_members,
    render_monitor_frame,
    render_stats,
)

MEMBERS = [
    {"name": "a", "address": "127.0.0.1:7946", "state": "alive", "incarnation": 0},
    {"name": "bee", "address": "[::1]:7947", "state": "dead", "incarnation": 12},
]


def test_parse_client_args() -> None:
    assert parse_client_args("members", [], {}) == ClientArgs("members", DEFAULT_RPC)
    assert parse_client_args("members", ["--json", "--status", "dead"], {}) == ClientArgs(
        "members", DEFAULT_RPC, json=True, status="dead")
    assert parse_client_args("stats", [], {"SWIMNODE_RPC": "[::1]:9"}).rpc == ("::1", 9)
    assert parse_client_args("monitor", ["--rpc", "127.0.0.1:1"],
                             {"SWIMNODE_RPC": "[::1]:9"}).rpc == ("127.0.0.1", 1)


@pytest.mark.parametrize(("command", "argv"), [
    ("members", ["--status", "zombie"]),
    ("members", ["--rpc", "nope"]),
    ("leave", ["--json"]),
    ("stats", ["extra"]),
])
def test_parse_client_args_errors(command: str, argv: list[str]) -> None:
    with pytest.raises(UsageError):
        parse_client_args(command, argv, {})


def test_render_members_table() -> None:
    assert render_members(MEMBERS, None, False).splitlines() == [
        "NAME  ADDRESS         STATE  INCARNATION",
        "a     127.0.0.1:7946  alive  0",
        "bee   [::1]:7947      dead   12",
    ]


def test_render_members_json_and_filter() -> None:
    assert json.loads(render_members(MEMBERS, None, True)) == MEMBERS
    assert json.loads(render_members(MEMBERS, "dead", True)) == [MEMBERS[1]]
    assert render_members(MEMBERS, "left", False) == "NAME  ADDRESS  STATE  INCARNATION"


def test_render_stats() -> None:
    stats = {"probes": 3, "bytes_sent": 1200}
    assert render_stats(stats, False).splitlines() == ["bytes_sent  1200", "probes      3"]
    assert json.loads(render_stats(stats, True)) == stats


def test_render_monitor_frames() -> None:
    frame = {"event": "failed", "member": MEMBERS[1]}
    assert json.loads(render_monitor_frame(frame, True)) == {"event": "failed", **MEMBERS[1]}
    assert render_monitor_frame(frame, False) == "failed    bee [::1]:7947 dead (incarnation 12)"
    lost = {"event": "events_lost", "count": 4}
    assert json.loads(render_monitor_frame(lost, True)) == lost
    assert render_monitor_frame(lost, False) == "events_lost: 4"


def test_main_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["--help"]) == 0
    assert main(["nope"]) == 2
    assert main(["members", "--status", "zombie"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'nope'" in err
    assert "swimnode members: argument --status: invalid choice" in err
