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
from swimnode.protocol.events import MemberFailed, MemberJoined, MemberLeft, MemberSuspected
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
            runner.submit_member_event(MemberJoined(member("n1")))
            runner.submit_member_event(MemberJoined(member("n2")))
            runner.submit_member_event(MemberFailed(member("n1", MemberState.DEAD)))
            runner.submit_member_event(MemberLeft(member("n2", MemberState.LEFT)))
            runner.submit_member_event(MemberSuspected(member("n3", MemberState.SUSPECT)))
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


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(profile="local", log_dir=tmp_path) as c:
        yield c


def test_five_agents_handler_sees_one_failure_and_one_leave(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    out = tmp_path / "events.txt"
    script = tmp_path / "record.sh"
    script.write_text(
        f'#!/bin/sh\n{{ echo "EVENT $SWIMNODE_EVENT $SWIMNODE_SELF_NAME"; cat; }} >> {out}\n'
    )
    script.chmod(0o755)
    names = [f"n{i}" for i in range(5)]
    seed = cluster.start("n0", args=["--event-handler", f"member-failed,member-leave={script}"])
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
    left = subprocess.run(
        [*CLI, "leave", "--rpc", f"127.0.0.1:{leaver.rpc_port}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert left.returncode == 0, left.stderr
    assert wait_for(lambda: out.exists() and "member-leave" in out.read_text(), STEP)
    time.sleep(1.0)  # room for a duplicate to show up, if there were one
    assert out.read_text().splitlines() == [
        "EVENT member-failed n0",
        f'n1\t{victim.address}\tdead\t{{"role":"n1"}}',
        "EVENT member-leave n0",
        f'n2\t{leaver.address}\tleft\t{{"role":"n2"}}',
    ]
    assert seed.running


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
