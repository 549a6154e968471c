"""Event handlers: parsing `[FILTER=]COMMAND`, the runner (queue, order, coalescing,
timeout, failure) on real subprocesses, and agents running a handler script."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from swimnode.agent import client as rpcclient
from swimnode.agent.handlerrunner import HandlerRunner, Job, member_line
from swimnode.agent.handlers import FILTER_KINDS, HandlerError, HandlerSpec, parse_handler
from swimnode.agent.settings import UsageError, load_settings
from swimnode.protocol.events import (
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberSuspected,
    UserEvent,
)
from swimnode.protocol.member import Member, MemberState
from swimnode.testing.processes import LocalCluster, free_ports, wait_for

WAIT = 20.0
STEP = 15.0
CLI = [sys.executable, "-m", "swimnode"]


def member(name: str, state: MemberState = MemberState.ALIVE, **app: object) -> Member:
    return Member(name, ("127.0.0.1", 7000 + int(name[1:])), 0, state, 0.0, app_state=app)


def test_parse_handler() -> None:
    assert parse_handler("./notify.sh") == HandlerSpec("./notify.sh")
    assert parse_handler("member-failed=./page.sh --now") == HandlerSpec(
        "./page.sh --now", (("member-failed", None),)
    )
    spec = parse_handler("member-join,member-leave,user:deploy,query=handle")
    assert spec.filters == (
        ("member-join", None),
        ("member-leave", None),
        ("user", "deploy"),
        ("query", None),
    )
    assert spec.accepts("member-join") and spec.accepts("user", "deploy")
    assert not spec.accepts("user", "other") and not spec.accepts("member-failed")
    assert spec.accepts("query", "anything")
    # An environment assignment is part of the command, not a filter.
    assert parse_handler("X=1 ./run.sh") == HandlerSpec("X=1 ./run.sh")
    assert parse_handler("./run.sh a=b") == HandlerSpec("./run.sh a=b")
    assert set(FILTER_KINDS) >= {"member-suspect", "member-alive", "member-update", "user"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("member-died=./x", "unknown event filter 'member-died'"),
        ("member-join:x=./x", "bad event filter 'member-join:x'"),
        ("user:=./x", "bad event filter 'user:'"),
        ("member-join=", "has no command"),
        ("  ", "has no command"),
    ],
)
def test_parse_handler_errors(text: str, message: str) -> None:
    with pytest.raises(HandlerError, match=message):
        parse_handler(text)


def test_member_line() -> None:
    line = member_line(member("n3", MemberState.DEAD, role="db", cert=b"\xde\xad"))
    assert line == 'n3\t127.0.0.1:7003\tdead\t{"role":"db","cert":{"$base64":"3q0="}}\n'


async def test_runner_runs_in_order_coalesces_and_survives_failures(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    record = HandlerSpec(
        f'{{ echo "$SWIMNODE_EVENT $SWIMNODE_SELF_NAME $SWIMNODE_SELF_ADDRESS"; cat; }} >> {out}'
    )
    failing = HandlerSpec("echo broken >&2; exit 3", (("member-failed", None),))
    hanging = HandlerSpec(f"sleep 30; echo late >> {out}", (("member-leave", None),))
    lost: list[int] = []
    runner = HandlerRunner(
        [record, failing, hanging],
        "me",
        "127.0.0.1:7946",
        on_lost=lost.append,
        timeout=1.0,
        queue_size=8,
    )
    caplog.set_level(logging.INFO, "swimnode.agent.handlers")
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            # Queued before the runner starts: the two joins coalesce into one run.
            runner.submit_event(MemberJoined(member("n1")))
            runner.submit_event(MemberJoined(member("n2")))
            runner.submit_event(MemberFailed(member("n1", MemberState.DEAD)))
            runner.submit_event(MemberLeft(member("n2", MemberState.LEFT)))
            runner.submit_event(MemberSuspected(member("n3", MemberState.SUSPECT)))
            for _ in range(8):  # the queue holds 8 and 7 runs wait already: 7 are lost
                runner.submit(Job(record, "member-update", [member("n4")]))
            nursery.start_soon(runner.run)
            while not (out.exists() and "member-update" in out.read_text()):  # noqa: ASYNC110
                await trio.sleep(0.05)  # (a subprocess writes the file: no event to wait on)
            nursery.cancel_scope.cancel()
    text = out.read_text()
    assert text.splitlines()[:3] == [
        "member-join me 127.0.0.1:7946",
        "n1\t127.0.0.1:7001\talive\t{}",
        "n2\t127.0.0.1:7002\talive\t{}",
    ]
    events = [line.split()[0] for line in text.splitlines() if not line.startswith("n")]
    assert events == [
        "member-join",
        "member-failed",
        "member-leave",
        "member-suspect",
        "member-update",
    ]
    assert "late" not in text
    assert sum(lost) == 7
    messages = [r.getMessage() for r in caplog.records]
    assert any("exited with 3: broken" in m for m in messages), messages
    assert any("ran over 1 s and was killed" in m for m in messages), messages
    assert any("fell behind: dropped 1 member-update" in m for m in messages), messages


# ----- agents ---------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(profile="local", log_dir=tmp_path) as c:
        yield c


RECORD = """#!/bin/sh
{{
  echo "EVENT $SWIMNODE_EVENT${{SWIMNODE_USER_EVENT:+:$SWIMNODE_USER_EVENT}} $SWIMNODE_SELF_NAME"
  cat
  [ "$SWIMNODE_EVENT" = user ] && echo " from $SWIMNODE_USER_SENDER"
}} >> {out}
"""


def test_five_agents_handler_sees_a_failure_a_leave_and_a_user_event(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    out = tmp_path / "events.txt"
    script = tmp_path / "record.sh"
    script.write_text(RECORD.format(out=out))
    script.chmod(0o755)
    names = [f"n{i}" for i in range(5)]
    handler = f"member-failed,member-leave,user:deploy={script}"
    seed = cluster.start("n0", args=["--event-handler", handler])
    assert seed.wait_ready(STEP)
    for name in names[1:]:
        cluster.start(name, seeds=[seed], args=["--state", f"role={name}"])
    assert wait_for(lambda: cluster.converged(names), STEP)

    def states_reached_n0() -> bool:
        listing = rpcclient.members(seed.rpc)
        return all(m["app_state"].get("role") == m["name"] for m in listing if m["name"] != "n0")

    assert wait_for(states_reached_n0, STEP, step=0.2)
    victim, leaver = cluster.agents["n1"], cluster.agents["n2"]

    victim.kill()
    assert wait_for(lambda: cluster.all_see("n1", "dead", [seed]), STEP)
    left = run_cli("leave", "--rpc", f"127.0.0.1:{leaver.rpc_port}")
    assert left.returncode == 0, left.stderr
    assert wait_for(lambda: out.exists() and "member-leave" in out.read_text(), STEP)
    # A user event sent through another agent; one of a name the handler ignores.
    sender = cluster.agents["n3"]
    for args in (["deploy", "v1.2"], ["other", "x"]):
        sent = run_cli("event", *args, "--rpc", f"127.0.0.1:{sender.rpc_port}")
        assert sent.returncode == 0 and sent.stdout.startswith(f"event {args[0]} sent"), sent
    # Too large: refused in one line, the agent unaffected.
    refused = run_cli("event", "big", "x" * 600, "--rpc", f"127.0.0.1:{sender.rpc_port}")
    assert refused.returncode == 1 and refused.stderr.splitlines() == [
        "swimnode event: the agent refused: user event payload is 600 bytes; the limit is 512"
    ]
    assert wait_for(lambda: "user:deploy" in out.read_text(), STEP)
    time.sleep(1.0)  # room for a duplicate to show up, if there were one
    assert out.read_text().splitlines() == [
        "EVENT member-failed n0",
        f'n1\t{victim.address}\tdead\t{{"role":"n1"}}',
        "EVENT member-leave n0",
        f'n2\t{leaver.address}\tleft\t{{"role":"n2"}}',
        "EVENT user:deploy n0",
        "v1.2 from n3",
    ]
    assert seed.running and sender.running


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        ("member-died=./x.sh", "swimnode agent: unknown event filter 'member-died' (expected "),
        (
            "/nonexistent/handler.sh",
            "swimnode agent: event handler '/nonexistent/handler.sh': "
            "no such file '/nonexistent/handler.sh'",
        ),
    ],
)
def test_bad_handlers_are_one_line_usage_errors(handler: str, message: str) -> None:
    rpc, port = free_ports(2)
    done = subprocess.run(
        [
            *CLI,
            "agent",
            "--rpc",
            f"127.0.0.1:{rpc}",
            "--bind",
            f"127.0.0.1:{port}",
            "--event-handler",
            handler,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith(message), done.stderr


def test_handlers_from_flags_and_file() -> None:
    toml = 'event_handlers = ["member-failed=./page.sh", "./log.sh"]\n'

    def load(*argv: str) -> tuple[HandlerSpec, ...]:
        settings = load_settings(
            ["--config", "f.toml", *argv],
            {"SWIMNODE_EVENT_HANDLERS": "ignored"},
            lambda _: toml,
            "host",
        )
        return settings.event_handlers

    assert load() == (HandlerSpec("./page.sh", (("member-failed", None),)), HandlerSpec("./log.sh"))
    assert load("--event-handler", "user:deploy=./deploy.sh") == (
        HandlerSpec("./deploy.sh", (("user", "deploy"),)),
    )
    with pytest.raises(UsageError, match="unknown event filter 'member-gone'"):
        load("--event-handler", "member-gone=./x.sh")
    toml = "event_handlers = './one.sh'\n"
    with pytest.raises(UsageError, match="event_handlers must be a list of strings"):
        load()


async def test_user_events_run_with_their_payload_and_coalesce(tmp_path: Path) -> None:
    out = tmp_path / "out"
    record = HandlerSpec(
        f'{{ echo "$SWIMNODE_USER_EVENT $SWIMNODE_USER_LTIME"; cat; echo; }} >> {out}',
        (("user", None),),
    )
    runner = HandlerRunner([record], "me", "127.0.0.1:7946", on_lost=lambda n: None)
    sender = member("n1")
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            # Waiting together: the three coalescing "deploy" events run once, with
            # the latest; the non-coalescing ones each run.
            for ltime, payload in enumerate((b"a", b"b", b"c")):
                runner.submit_event(UserEvent(sender, "deploy", payload, ltime))
            runner.submit_event(UserEvent(sender, "ping", b"1", 3, coalesce=False))
            runner.submit_event(UserEvent(sender, "ping", b"2", 4, coalesce=False))
            nursery.start_soon(runner.run)
            while not (out.exists() and out.read_text().count("\n") >= 6):  # noqa: ASYNC110
                await trio.sleep(0.05)  # (a subprocess writes the file: no event to wait on)
            nursery.cancel_scope.cancel()
    assert out.read_text().splitlines() == ["deploy 2", "c", "ping 3", "1", "ping 4", "2"]
