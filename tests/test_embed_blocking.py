"""swimnode.blocking on real loopback UDP: a blocking node in a plain program, in a
mixed cluster with a Trio node, an aio node and an agent process; events, stop,
Ctrl-C and interpreter exit.

Every wait is bounded; every thread started here is joined, and every process is
killed by its PID in a `finally`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio

import swimnode
import swimnode.aio
from swimnode import Config, EventsLost, MemberEvent, MemberUpdated, NodeNotRunning
from swimnode.blocking import BlockingNode, start_node
from swimnode.protocol.events import Event, UserEvent
from swimnode.testing.processes import LocalCluster, detection_bound, free_ports, wait_for

LOOPBACK = "127.0.0.1"
STEP = 15.0  # bound for anything that should happen within a few protocol periods

# A plain program whose blocking node leaves on exit; `mode` says how it ends:
# "interrupt" waits in its `with` block for Ctrl-C, "exit" returns from the script
# with the node still running and never closed.
PROGRAM = """
import sys, time
from swimnode import Config
from swimnode.blocking import start_node

mode, port, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
config = Config.local("prog", bind=("127.0.0.1", port), seeds=(("127.0.0.1", seed),))
if mode == "interrupt":
    with start_node(config, leave_on_exit=True) as node:
        print("ready", flush=True)
        time.sleep(60)
else:
    node = start_node(config, leave_on_exit=True)
    print("ready", flush=True)
    sys.stdin.readline()
"""


def local(name: str, port: int, seed_port: int | None = None, **overrides: Any) -> Config:
    seeds = () if seed_port is None else ((LOOPBACK, seed_port),)
    return Config.local(name, bind=(LOOPBACK, port), seeds=seeds, **overrides)


def view(node: BlockingNode) -> dict[str, str]:
    return {m.name: m.state.label for m in node.members()}


def until(check: Callable[[], object], timeout: float = STEP) -> None:
    assert wait_for(lambda: bool(check()), timeout), "timed out"


@contextmanager
def trio_node(config: Config) -> Iterator[tuple[swimnode.Node, trio.lowlevel.TrioToken]]:
    """A Trio program's node, in a thread of its own (the plain Trio API)."""
    started: list[tuple[swimnode.Node, trio.lowlevel.TrioToken]] = []
    ready, stop = threading.Event(), trio.Event()

    async def main() -> None:
        async with swimnode.open_node(config) as node:
            started.append((node, trio.lowlevel.current_trio_token()))
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=trio.run, args=(main,))
    thread.start()
    try:
        assert ready.wait(STEP)
        yield started[0]
    finally:
        if started:
            trio.from_thread.run_sync(stop.set, trio_token=started[0][1])
        thread.join(STEP)
        assert not thread.is_alive()


@contextmanager
def aio_node(config: Config) -> Iterator[tuple[swimnode.aio.AioNode, asyncio.AbstractEventLoop]]:
    """An asyncio program's node, in a thread of its own."""
    started: list[tuple[swimnode.aio.AioNode, asyncio.AbstractEventLoop]] = []
    ready = threading.Event()
    stop: list[asyncio.Event] = []

    async def main() -> None:
        stop.append(asyncio.Event())
        async with swimnode.aio.open_node(config) as node:
            started.append((node, asyncio.get_running_loop()))
            ready.set()
            await stop[0].wait()

    thread = threading.Thread(target=asyncio.run, args=(main(),))
    thread.start()
    try:
        assert ready.wait(STEP)
        yield started[0]
    finally:
        if started:
            started[0][1].call_soon_threadsafe(stop[0].set)
        thread.join(STEP)
        assert not thread.is_alive()


def test_mixed_cluster_seen_from_a_blocking_node() -> None:
    ports = free_ports(3)
    with LocalCluster(profile="local") as agents:
        agent = agents.start("agent")
        assert agent.wait_ready(STEP)
        names = {"agent", "trio", "aio", "blocking"}
        with (
            trio_node(local("trio", ports[0], agent.port)) as (tnode, token),
            aio_node(local("aio", ports[1], agent.port)) as (anode, loop),
            start_node(local("blocking", ports[2], agent.port)) as bnode,
        ):
            seen: list[Event] = []
            bnode.on_event(seen.append)

            def trio_view() -> dict[str, str]:
                members = trio.from_thread.run_sync(tnode.members, trio_token=token)
                return {m.name: m.state.label for m in members}

            async def read_aio() -> dict[str, str]:
                return {m.name: m.state.label for m in anode.members()}

            def aio_view() -> dict[str, str]:
                return asyncio.run_coroutine_threadsafe(read_aio(), loop).result(STEP)

            def everyone_alive() -> bool:
                views = [trio_view(), aio_view(), view(bnode), agent.view() or {}]
                return all({n for n, s in v.items() if s == "alive"} == names for v in views)

            until(everyone_alive)
            with pytest.raises(RuntimeError, match="another event loop or thread"):
                anode.members()  # from the wrong thread

            bnode.set_state("role", "worker")
            until(lambda: {m.name: m.app_state for m in tnode.members()}["blocking"].get("role"))

            async def set_aio_state() -> None:
                anode.set_state("role", "web")

            asyncio.run_coroutine_threadsafe(set_aio_state(), loop).result(STEP)
            until(lambda: {m.name: m.app_state for m in bnode.members()}["aio"].get("role"))
            trio.from_thread.run(tnode.leave, trio_token=token)
            until(lambda: view(bnode)["trio"] == "left")
            agent.kill()
            until(lambda: view(bnode)["agent"] == "dead", detection_bound(bnode.config, 4))
            kinds = {(e.kind, e.member.name) for e in seen if isinstance(e, MemberEvent)}
            assert {("left", "trio"), ("failed", "agent")} <= kinds
        with pytest.raises(NodeNotRunning):
            bnode.members()


def test_events_end_when_the_node_stops_and_a_slow_reader_loses_events() -> None:
    (port,) = free_ports(1)
    node = start_node(local("solo", port, event_buffer=4))
    stream = node.events(timeout=STEP)
    for i in range(10):  # each publishes MemberUpdated about ourselves
        node.set_state("k", i)
    first = [next(stream) for _ in range(5)]
    node.close()
    assert all(isinstance(e, MemberUpdated) for e in first[:4])
    assert first[4] == EventsLost(6)
    assert list(stream) == []  # ended: the node has stopped
    with pytest.raises(NodeNotRunning):
        node.set_state("k", 0)


def test_join_and_leave_block_until_done() -> None:
    ports = free_ports(2)
    with start_node(local("a", ports[0])) as a, start_node(local("b", ports[1])) as b:
        assert b.join([a.address]) == 1
        assert {m.name for m in b.live_members()} == {"a", "b"}
        b.leave()
        assert not b.running
        until(lambda: view(a)["b"] == "left")


def test_filtered_queries_and_user_events() -> None:
    ports = free_ports(2)
    with start_node(local("a", ports[0])) as a, start_node(local("b", ports[1])) as b:
        assert b.join([a.address]) == 1
        a.on_query("ping", lambda query: b"pong from a")
        b.on_query("ping", lambda query: b"pong from b")
        progress: list[object] = []
        result = b.query("ping", timeout=5.0, names=["a"], on_progress=progress.append)
        assert result.responses == {"a": b"pong from a"} and progress
        # The same replies as a plain iterator, and the result after it.
        a.on_query("ping", None)  # a acks without answering from now on
        with b.query_stream("ping", timeout=5.0) as replies:
            got = list(replies)
        assert {r.sender: r.payload for r in got if r.payload is not None} == {"b": b"pong from b"}
        assert [r.sender for r in got if not r.answering] == ["a"]
        assert replies.result.responses == {"b": b"pong from b"} and replies.result.acks == {
            "a",
            "b",
        }
        events = a.events(timeout=STEP)
        ltime = b.send_event("deploy", b"v2")
        event = next(e for e in events if isinstance(e, UserEvent))
        assert (event.member.name, event.name, event.payload, event.ltime) == (
            "b",
            "deploy",
            b"v2",
            ltime,
        )
        events.close()


def test_bad_config_fails_before_any_thread_starts() -> None:
    before = threading.active_count()
    with pytest.raises(ValueError, match="refusing to bind"):
        start_node(Config.local("x", bind=("10.0.0.1", 7946)))
    assert threading.active_count() == before


def test_event_timeout_and_blocking_calls_from_a_callback() -> None:
    (port,) = free_ports(1)
    with start_node(local("solo", port)) as node:
        with pytest.raises(TimeoutError):
            next(node.events(timeout=0.1))
        errors: list[BaseException] = []
        names: list[list[str]] = []

        def callback(event: Event) -> None:
            names.append([m.name for m in node.members()])  # reads are fine here
            try:
                node.leave()
            except RuntimeError as exc:
                errors.append(exc)

        node.on_event(callback)
        node.set_state("k", 1)
        until(lambda: errors)
        assert names == [["solo"]] and "own thread" in str(errors[0])


@contextmanager
def program(mode: str, port: int, seed_port: int) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", PROGRAM, mode, str(port), str(seed_port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.mark.parametrize("mode", ["interrupt", "exit"])
def test_ctrl_c_and_interpreter_exit_leave_cleanly(mode: str) -> None:
    ports = free_ports(2)
    with (
        start_node(local("watcher", ports[0])) as watcher,
        program(mode, ports[1], ports[0]) as proc,
    ):
        until(lambda: view(watcher).get("prog") == "alive")
        if mode == "interrupt":
            os.kill(proc.pid, signal.SIGINT)
        else:
            assert proc.stdin is not None
            proc.stdin.write("\n")
            proc.stdin.flush()
        _, stderr = proc.communicate(timeout=STEP)
        until(lambda: view(watcher).get("prog") == "left")
    if mode == "interrupt":
        assert stderr.rstrip().endswith("KeyboardInterrupt")  # the program's own, from sleep
    else:
        assert proc.returncode == 0 and stderr == ""
    assert "thread" not in stderr.lower()
