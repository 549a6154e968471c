"""swimnode.aio on real loopback UDP: nodes in one asyncio program, with a blocking
node in another process joining, crashing and leaving; errors and cancellation
the asyncio way; uvloop.

Every wait is bounded; the peer process is killed by its PID in a `finally`.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager

import pytest

import swimnode.aio
import swimnode.blocking
from swimnode import Config, EventsLost, JoinError, MemberEvent, MemberUpdated, NodeNotRunning
from swimnode.aio import AioNode
from swimnode.net.seeds import FileSeeds
from swimnode.protocol.events import Event, UserEvent
from swimnode.testing.processes import detection_bound, free_ports, wait_for

LOOPBACK = "127.0.0.1"
STEP = 15.0  # bound for anything that should happen within a few protocol periods

# A plain threaded program with one blocking node: prints "ready" once it runs,
# leaves when told to on stdin.
PEER = """
import sys
from swimnode import Config
from swimnode.blocking import start_node

name, port, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
config = Config.local(name, bind=("127.0.0.1", port), seeds=(("127.0.0.1", seed),))
with start_node(config) as node:
    node.set_state("flavour", "blocking")
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "leave":
            node.leave()
            break
"""


# An asyncio program whose aio node leaves on exit, waiting for Ctrl-C.
INTERRUPTED = """
import asyncio, sys
import swimnode.aio
import swimnode.blocking
from swimnode import Config

async def main():
    port, seed = int(sys.argv[1]), int(sys.argv[2])
    config = Config.local("prog", bind=("127.0.0.1", port), seeds=(("127.0.0.1", seed),))
    async with swimnode.aio.open_node(config, leave_on_exit=True):
        print("ready", flush=True)
        await asyncio.sleep(60)

asyncio.run(main())
"""


def local(name: str, port: int, seed_port: int | None = None, **overrides: object) -> Config:
    seeds = () if seed_port is None else ((LOOPBACK, seed_port),)
    return Config.local(name, bind=(LOOPBACK, port), seeds=seeds, **overrides)


async def until(check: Callable[[], bool], within: float = STEP) -> None:
    async with asyncio.timeout(within):
        while True:
            if check():
                return
            await asyncio.sleep(0.05)


def kinds(events: list[Event]) -> set[tuple[str, str]]:
    return {(e.kind, e.member.name) for e in events if isinstance(e, MemberEvent)}


def views(nodes: list[AioNode]) -> list[dict[str, str]]:
    return [{m.name: m.state.label for m in node.members()} for node in nodes]


def all_see(nodes: list[AioNode], name: str, state: str) -> bool:
    return all(view.get(name) == state for view in views(nodes))


@contextmanager
def python(program: str, *args: object) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", program, *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@asynccontextmanager
async def collect(node: AioNode) -> AsyncIterator[list[Event]]:
    """Every event `node` publishes while the block runs, read by a task."""
    seen: list[Event] = []
    stream = node.events()

    async def read() -> None:
        async for event in stream:
            seen.append(event)

    task = asyncio.create_task(read())
    try:
        yield seen
    finally:
        stream.close()
        await asyncio.wait_for(task, STEP)


def test_three_aio_nodes_and_a_blocking_peer_process() -> None:
    async def main() -> None:
        ports = free_ports(4)
        configs = [local(f"a{i}", ports[i], None if i == 0 else ports[0]) for i in range(3)]
        async with AsyncExitStack() as stack:
            nodes = [await stack.enter_async_context(swimnode.aio.open_node(c)) for c in configs]
            seen = await stack.enter_async_context(collect(nodes[0]))
            for i, node in enumerate(nodes):
                node.set_state("role", f"r{i}")
            names = {"a0", "a1", "a2"}

            def converged() -> bool:
                return all(
                    {m.name for m in node.live_members()} == names
                    and all(m.app_state.get("role") == f"r{m.name[1]}" for m in node.members())
                    for node in nodes
                )

            await until(converged)
            with python(PEER, "peer", ports[3], ports[0]) as proc:
                assert proc.stdout is not None
                ready = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), STEP)
                assert ready.strip() == "ready", proc.stderr.read() if proc.stderr else ""
                await until(
                    lambda: (
                        all_see(nodes, "peer", "alive")
                        and all(
                            {m.name: m.app_state.get("flavour") for m in n.members()}["peer"]
                            == "blocking"
                            for n in nodes
                        )
                    )
                )
                os.kill(proc.pid, signal.SIGKILL)
                await until(lambda: all_see(nodes, "peer", "dead"), detection_bound(configs[0], 4))
            assert ("failed", "peer") in kinds(seen)

            await nodes[2].leave()
            assert not nodes[2].running
            await until(lambda: all_see(nodes[:2], "a2", "left"))
            with pytest.raises(NodeNotRunning):
                nodes[2].members()
            with pytest.raises(NodeNotRunning):
                await nodes[2].join([configs[0].bind])
        assert ("left", "a2") in kinds(seen)

    asyncio.run(asyncio.wait_for(main(), 60))


def test_events_end_when_the_node_stops_and_a_slow_reader_loses_events() -> None:
    async def main() -> None:
        (port,) = free_ports(1)
        async with swimnode.aio.open_node(local("solo", port, event_buffer=4)) as node:
            stream = node.events()
            for i in range(10):  # each publishes MemberUpdated about ourselves
                node.set_state("k", i)
            first = [await stream.__anext__() for _ in range(5)]
        rest = [event async for event in stream]  # ends: the node has stopped
        assert all(isinstance(e, MemberUpdated) for e in first[:4])
        assert first[4] == EventsLost(6)
        assert rest == []
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):  # its sockets are closed
            with socket.socket(socket.AF_INET, kind) as sock:
                sock.bind((LOOPBACK, port))

    asyncio.run(asyncio.wait_for(main(), 30))


def test_errors_cancellation_and_timeouts_the_asyncio_way() -> None:
    async def main() -> None:
        tasks = asyncio.all_tasks()  # this one and asyncio.wait_for's
        with pytest.raises(ValueError, match="refusing to bind"):
            async with swimnode.aio.open_node(Config.local("x", bind=("10.0.0.1", 7946))):
                pass
        assert asyncio.all_tasks() == tasks  # nothing was started
        port, unused = free_ports(2)
        async with swimnode.aio.open_node(local("solo", port, join_timeout=1.0)) as node:
            with pytest.raises(JoinError):
                await node.join([(LOOPBACK, unused)])
            # A seed that accepts the connection and never answers holds a join for
            # join_timeout (1 s), longer than these waits.
            silent = socket.create_server((LOOPBACK, 0))
            mute = (LOOPBACK, silent.getsockname()[1])
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await node.join([mute])
            task = asyncio.create_task(node.join([mute]))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            silent.close()
            assert node.local_member.state.label == "alive"  # still serving

            errors: list[BaseException] = []

            def from_thread() -> None:
                try:
                    node.members()
                except RuntimeError as exc:
                    errors.append(exc)

            worker = threading.Thread(target=from_thread)
            worker.start()
            await asyncio.to_thread(worker.join, STEP)

            async def other_loop() -> None:
                node.set_state("k", 1)

            with pytest.raises(RuntimeError, match="another event loop"):
                await asyncio.to_thread(asyncio.run, other_loop())
            assert len(errors) == 1 and "another event loop or thread" in str(errors[0])
        assert asyncio.all_tasks() == tasks  # the node's tasks all ended

    asyncio.run(asyncio.wait_for(main(), 30))


def test_ctrl_c_leaves_and_closes() -> None:
    ports = free_ports(2)
    with (
        swimnode.blocking.start_node(local("watcher", ports[0])) as watcher,
        python(INTERRUPTED, ports[1], ports[0]) as proc,
    ):
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

        def watched(state: str) -> bool:
            return {m.name: m.state.label for m in watcher.members()}.get("prog") == state

        assert wait_for(lambda: watched("alive"), STEP)
        os.kill(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=STEP)
        assert wait_for(lambda: watched("left"), STEP)
    assert stderr.rstrip().endswith("KeyboardInterrupt"), stderr  # asyncio.run's own


def test_with_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed")

    async def main() -> None:
        ports = free_ports(2)
        async with (
            swimnode.aio.open_node(local("u0", ports[0])) as u0,
            swimnode.aio.open_node(local("u1", ports[1], ports[0])) as u1,
        ):
            async with collect(u0) as seen:
                u1.set_state("loop", "uvloop")
                await until(lambda: ("updated", "u1") in kinds(seen))
            assert {m.name for m in u0.live_members()} == {"u0", "u1"}

    uvloop.run(asyncio.wait_for(main(), 30))


def test_seed_source_and_queries(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        ports = free_ports(2)
        seeds = tmp_path / "seeds"
        seeds.write_text(f"# the first node\n{LOOPBACK}:{ports[0]}\n")
        async with (
            swimnode.aio.open_node(local("s0", ports[0])) as s0,
            swimnode.aio.open_node(local("s1", ports[1]), seed_source=FileSeeds(seeds)) as s1,
        ):
            s0.on_query("ping", lambda query: b"pong from s0")
            await until(lambda: {m.name for m in s1.live_members()} == {"s0", "s1"})
            result = await s1.query("ping", timeout=5.0)
            assert result.responses == {"s0": b"pong from s0"}
            assert s1.stats()["queries_started"] == 1
            # The Trio node's filters and progress reports, through the aio node.
            s1.on_query("ping", lambda query: b"pong from s1")
            progress: list[object] = []
            result = await s1.query("ping", timeout=5.0, names=["s1"], on_progress=progress.append)
            assert result.responses == {"s1": b"pong from s1"} and progress
            # The same replies as an async iterator, and the result after it.
            async with s1.query_stream("ping", timeout=5.0) as replies:
                answers = {r.sender: r.payload async for r in replies if r.payload is not None}
            assert answers == {"s0": b"pong from s0", "s1": b"pong from s1"}
            assert replies.result.responses == answers and replies.result.missing == []
            async with collect(s0) as seen:
                ltime = s1.send_event("deploy", b"v2")
                await until(lambda: any(getattr(e, "name", None) == "deploy" for e in seen))
            (event,) = [e for e in seen if isinstance(e, UserEvent)]
            assert (event.member.name, event.payload, event.ltime) == ("s1", b"v2", ltime)

    asyncio.run(asyncio.wait_for(main(), 30))
