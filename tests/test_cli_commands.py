"""Client command parsing and rendering (pure, no processes)."""

from __future__ import annotations

import json

import pytest

import swimnode
from swimnode.agent.cli import (
    COMMANDS,
    ClientArgs,
    compact_state,
    from_json_value,
    main,
    parse_client_args,
    render_members,
    render_monitor_frame,
    render_ring,
    render_state_list,
    render_state_value,
    render_stats,
    to_json_value,
)
from swimnode.agent.settings import DEFAULT_RPC, UsageError
from swimnode.ring import TOKEN_SPACE

MEMBERS = [
    {"name": "a", "address": "127.0.0.1:7946", "state": "alive", "incarnation": 0},
    {"name": "bee", "address": "[::1]:7947", "state": "dead", "incarnation": 12},
]
WITH_STATE = [
    {**MEMBERS[0], "app_state": {"role": "db", "raw": b"hi", "tokens": [1, 2]}},
    {**MEMBERS[1], "app_state": {}},
]
# What the agent's `ring` RPC returns for two members with 2 and 1 tokens.
RING = {
    "vnodes": 2,
    "tokens_key": "tokens",
    "members": [
        {
            "name": "a",
            "fraction": 0.75,
            "tokens": 2,
            "source": "derived",
            "ranges": [[TOKEN_SPACE - 16, 1 << 62], [1 << 63, TOKEN_SPACE - 16]],
        },
        {
            "name": "b",
            "fraction": 0.25,
            "tokens": 1,
            "source": "advertised",
            "ranges": [[1 << 62, 1 << 63]],
        },
    ],
}


def test_parse_client_args() -> None:
    assert parse_client_args("members", [], {}) == ClientArgs("members", DEFAULT_RPC)
    assert parse_client_args("members", ["--json", "--status", "dead"], {}) == ClientArgs(
        "members", DEFAULT_RPC, json=True, status="dead"
    )
    assert parse_client_args("stats", [], {"SWIMNODE_RPC": "[::1]:9"}).rpc == ("::1", 9)
    assert parse_client_args(
        "monitor", ["--rpc", "127.0.0.1:1"], {"SWIMNODE_RPC": "[::1]:9"}
    ).rpc == ("127.0.0.1", 1)


def test_parse_state_and_ring_args() -> None:
    get = parse_client_args("state", ["get", "role", "--member", "b", "--json"], {})
    assert (get.action, get.key, get.member, get.json) == ("get", "role", "b", True)
    put = parse_client_args("state", ["set", "load", "3"], {"SWIMNODE_RPC": "127.0.0.1:9"})
    assert (put.action, put.key, put.value, put.rpc) == ("set", "load", "3", ("127.0.0.1", 9))
    typed = parse_client_args("state", ["set", "load", '[1, 2.5, {"a": null}]', "--json-value"], {})
    assert typed.value == [1, 2.5, {"a": None}]
    raw = parse_client_args("state", ["set", "k", '{"$base64": "aGk="}', "--json-value"], {})
    assert raw.value == b"hi"
    assert parse_client_args("state", ["set", "t", "-5"], {}).value == "-5"
    assert parse_client_args("state", ["delete", "k", "--rpc", "[::1]:1"], {}).rpc == ("::1", 1)
    listing = parse_client_args("state", ["list"], {})
    assert (listing.action, listing.member, listing.json) == ("list", None, False)
    ring = parse_client_args("ring", ["--json", "--vnodes", "8", "--tokens-key", "slots"], {})
    assert (ring.json, ring.vnodes, ring.tokens_key, ring.summary) == (True, 8, "slots", False)
    assert parse_client_args("ring", [], {}).vnodes == 100
    assert parse_client_args("members", ["--state"], {}).show_state is True


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("members", ["--status", "zombie"]),
        ("members", ["--rpc", "nope"]),
        ("leave", ["--json"]),
        ("stats", ["extra"]),
        ("state", []),
        ("state", ["frob"]),
        ("state", ["get"]),
        ("state", ["set", "k"]),
        ("state", ["set", "k", "{nope", "--json-value"]),
        ("state", ["set", "k", '{"$base64": "!!"}', "--json-value"]),
        ("state", ["delete", "k", "--json"]),
        ("state", ["list", "--rpc", "nope"]),
        ("ring", ["--vnodes", "0"]),
        ("ring", ["--vnodes", "many"]),
        ("ring", ["--vnodes", "5000"]),
    ],
)
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
    no_state = [{**m, "app_state": {}} for m in MEMBERS]
    assert json.loads(render_members(MEMBERS, None, True)) == no_state
    assert json.loads(render_members(MEMBERS, "dead", True)) == [no_state[1]]
    assert render_members(MEMBERS, "left", False) == "NAME  ADDRESS  STATE  INCARNATION"


def test_render_members_with_state() -> None:
    listing = json.loads(render_members(WITH_STATE, None, True))
    assert listing[0]["app_state"] == {"role": "db", "raw": {"$base64": "aGk="}, "tokens": [1, 2]}
    assert render_members(WITH_STATE, None, False, show_state=True).splitlines() == [
        "NAME  ADDRESS         STATE  INCARNATION  APP_STATE",
        'a     127.0.0.1:7946  alive  0            raw={"$base64":"aGk="} role=db tokens...',
        "bee   [::1]:7947      dead   12           -",
    ]
    # Without --state the table is as before.
    assert render_members(WITH_STATE, None, False) == render_members(MEMBERS, None, False)


def test_compact_state() -> None:
    assert compact_state({}) == "-"
    assert compact_state({"b": 1, "a": "x"}) == "a=x b=1"
    assert (
        compact_state({"a": "two words", "b": "", "c": "k=v", "d": None})
        == 'a="two words" b="" c="k=v" d=null'
    )
    assert compact_state({"k": "v" * 100}, width=10) == "k=vvvvv..."


def test_json_value_convention() -> None:
    value = {"raw": b"\x00\xff", "nested": [b"", {"x": 1}], "s": "text"}
    encoded = to_json_value(value)
    assert encoded == {
        "raw": {"$base64": "AP8="},
        "nested": [{"$base64": ""}, {"x": 1}],
        "s": "text",
    }
    assert from_json_value(json.loads(json.dumps(encoded))) == value
    # Only an object whose sole key is "$base64" stands for bytes.
    assert from_json_value({"$base64": "AP8=", "other": 1}) == {"$base64": "AP8=", "other": 1}
    with pytest.raises(ValueError, match="bad base64"):
        from_json_value({"$base64": "%%"})


def test_render_state() -> None:
    assert render_state_value("blue", False) == "blue"
    assert render_state_value("blue", True) == '"blue"'
    assert render_state_value([1, 2], False) == "[1,2]"
    assert render_state_value(b"hi", True) == '{"$base64": "aGk="}'
    state = {"role": "db", "load": 0.5, "raw": b"hi"}
    assert render_state_list(state, False).splitlines() == [
        "KEY   VALUE",
        "load  0.5",
        'raw   {"$base64":"aGk="}',
        "role  db",
    ]
    assert json.loads(render_state_list(state, True)) == {
        "load": 0.5,
        "raw": {"$base64": "aGk="},
        "role": "db",
    }
    assert render_state_list({}, False) == "KEY  VALUE"


def test_render_ring() -> None:
    shaped = json.loads(render_ring(RING, True))
    assert (shaped["vnodes"], shaped["tokens_key"]) == (2, "tokens")
    a, b = shaped["members"]
    assert a["ranges"][0] == {
        "start": "0xfffffffffffffff0",
        "end": "0x4000000000000000",
        "fraction": pytest.approx(0.25 + 16 / TOKEN_SPACE),
    }
    assert b["ranges"] == [
        {"start": "0x4000000000000000", "end": "0x8000000000000000", "fraction": 0.25}
    ]
    assert sum(m["fraction"] for m in shaped["members"]) == pytest.approx(1.0)
    assert render_ring(RING, False).splitlines() == [
        "MEMBER  RANGE (START, END]                        SHARE",
        "a       (0xfffffffffffffff0, 0x4000000000000000]  25.000%",
        "a       (0x8000000000000000, 0xfffffffffffffff0]  50.000%",
        "b       (0x4000000000000000, 0x8000000000000000]  25.000%",
        "",
        "MEMBER  TOKENS  SOURCE      RANGES  OWNS",
        "a       2       derived     2       75.00%",
        "b       1       advertised  1       25.00%",
    ]
    assert render_ring(RING, False, summary=True).splitlines()[0].startswith("MEMBER  TOKENS")


def test_render_stats() -> None:
    stats = {"probes": 3, "bytes_sent": 1200}
    assert render_stats(stats, False).splitlines() == ["bytes_sent  1200", "probes      3"]
    assert json.loads(render_stats(stats, True)) == stats


def test_render_monitor_frames() -> None:
    frame = {"event": "failed", "member": MEMBERS[1]}
    assert json.loads(render_monitor_frame(frame, True)) == {
        "event": "failed",
        **MEMBERS[1],
        "app_state": {},
    }
    assert render_monitor_frame(frame, False) == "failed    bee [::1]:7947 dead (incarnation 12)"
    updated = {"event": "updated", "member": WITH_STATE[0], "changed_keys": ["raw", "role"]}
    line = json.loads(render_monitor_frame(updated, True))
    assert line["changed_keys"] == ["raw", "role"]
    assert line["app_state"]["raw"] == {"$base64": "aGk="}
    assert render_monitor_frame(updated, False) == (
        "updated   a 127.0.0.1:7946 alive (incarnation 0) keys raw,role"
    )
    lost = {"event": "events_lost", "count": 4}
    assert json.loads(render_monitor_frame(lost, True)) == lost
    assert render_monitor_frame(lost, False) == "events_lost: 4"


def test_main_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["--help"]) == 0
    assert main(["nope"]) == 2
    assert main(["members", "--status", "zombie"]) == 2
    assert main(["state", "set", "k", "{", "--json-value"]) == 2
    assert main(["ring", "--vnodes", "0"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'nope'" in err
    assert "swimnode members: argument --status: invalid choice" in err
    assert "swimnode state: VALUE is not valid JSON" in err
    assert "swimnode ring: argument --vnodes: must be 1..4096, got 0" in err


def test_every_command_has_help_and_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for command in COMMANDS:
        assert main([command, "--help"]) == 0, command
        assert f"usage: swimnode {command}" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"swimnode {swimnode.__version__}\n"
    for argv, message in [
        (["demo", "--nodes", "2"], "swimnode demo: --nodes must be between 3 and 200"),
        (["demo", "--udp", "--nodes", "6"], "swimnode demo: --udp runs 3 to 5 agents"),
        (["keys", "use"], "swimnode keys: keys use needs a KEY"),
        (["keygen", "extra"], "swimnode keygen: unrecognized arguments: extra"),
        (["--frob"], "swimnode: the following arguments are required: COMMAND"),
    ]:
        assert main(argv) == 2, argv
        assert capsys.readouterr().err.splitlines() == [message]
