"""The aio and blocking flavours reach the same membership outcome as the Trio node
for the same seed on the simulated network.

All three share the core; blocking also shares the Trio driver, while aio has its
own (`swimnode.aionode`), so a difference is a bug in a driver or in how a flavour
hosts the node. Each flavour runs the same scenario on simulated time: five nodes
join through n0, n4 stops without leaving (a crash), n3 leaves gracefully; then
every survivor's view is compared. Trio and blocking run on
`swimnode.testing.Network` under `trio.testing.MockClock`; aio on its asyncio
counterpart over the same network model (`swimnode.testing.aionetwork.AioNetwork`,
the same `LinkModel` and per-sender random streams) on a virtual-time loop. The
Trio run is bit-for-bit repeatable from the seed. The other two are not quite:
blocking's program runs outside Trio, so its clock jumps only inside its calls
(`with_time`) and timers due at once may fire in another order; asyncio does not
order timers due at the same instant either. The outcome must not depend on that,
so it is what the property compares.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, ExitStack
from typing import Any, Protocol

import pytest
import trio
import trio.testing

from swimnode import Config, open_node
from swimnode.aio import open_node as aio_open_node
from swimnode.blocking import NodeThread
from swimnode.net.transport import Address
from swimnode.protocol.member import Member
from swimnode.testing import Network, seed_trio_scheduler
from swimnode.testing.aionetwork import AioNetwork
from swimnode.testing.aionetwork import run as aio_run

NAMES = [f"n{i}" for i in range(5)]
View = dict[str, dict[str, str]]
# Simulated seconds: joining, then detecting n4, then spreading n3's leave, all
# within dead_reclaim_time (60 s) so n4 is still listed. The detection wait covers
# the worst case for five lan nodes (two probe passes, the longest suspicion).
SETTLE, DETECT, SPREAD = 20.0, 40.0, 5.0


class Reader(Protocol):
    def members(self) -> list[Member]: ...


def address(name: str) -> Address:
    return (name, 7946)


def config(name: str, seed: int) -> Config:
    seeds = () if name == "n0" else (address("n0"),)
    return Config.lan(name, bind=address(name), seeds=seeds, seed=seed * 1000 + int(name[1:]))


def outcome(nodes: Mapping[str, Reader]) -> View:
    return {
        name: {m.name: m.state.label for m in nodes[name].members()} for name in ("n0", "n1", "n2")
    }


EXPECTED: View = {
    observer: {"n0": "alive", "n1": "alive", "n2": "alive", "n3": "left", "n4": "dead"}
    for observer in ("n0", "n1", "n2")
}


def run_trio(seed: int) -> View:
    async def scenario() -> View:
        seed_trio_scheduler(seed)
        net = Network(seed=seed)
        async with trio.open_nursery() as nursery:
            nodes: dict[str, Any] = {}
            scopes: dict[str, trio.CancelScope] = {}

            async def run(name: str, *, task_status: trio.TaskStatus[None]) -> None:
                with trio.CancelScope() as scopes[name]:
                    async with open_node(
                        config(name, seed), transport=net.attach(address(name))
                    ) as n:
                        nodes[name] = n
                        task_status.started()
                        await n.wait_stopped()

            for name in NAMES:
                await nursery.start(run, name)
                await trio.sleep(0.01)
            await trio.sleep(SETTLE)
            scopes["n4"].cancel()
            await trio.sleep(DETECT)
            await nodes["n3"].leave()
            await trio.sleep(SPREAD)
            result = outcome(nodes)
            nursery.cancel_scope.cancel()
        return result

    return trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


def run_aio(seed: int) -> View:
    async def scenario() -> View:
        net = AioNetwork(seed=seed)
        async with AsyncExitStack() as stack:
            nodes: dict[str, Any] = {}
            closers: dict[str, Callable[[], Awaitable[Any]]] = {}
            for name in NAMES:
                inner = AsyncExitStack()
                nodes[name] = await inner.enter_async_context(
                    aio_open_node(config(name, seed), transport=net.attach(address(name)))
                )
                closers[name] = inner.aclose
                stack.push_async_callback(inner.aclose)
                await asyncio.sleep(0.01)
            await asyncio.sleep(SETTLE)
            await closers["n4"]()
            await asyncio.sleep(DETECT)
            await nodes["n3"].leave()
            await asyncio.sleep(SPREAD)
            return outcome(nodes)

    return aio_run(scenario())


async def with_time(
    clock: trio.testing.MockClock, fn: Callable[..., Awaitable[Any]], *args: Any
) -> Any:
    """`await fn(*args)` with the mock clock jumping whenever the node's thread is
    idle. Between such calls the clock stands still: were it left to jump, it would
    race ahead while this thread works (by an amount the OS scheduler decides),
    past dead_reclaim_time on a loaded machine."""
    clock.autojump_threshold = 0
    try:
        return await fn(*args)
    finally:
        clock.autojump_threshold = math.inf


def run_blocking(seed: int) -> View:
    seed_trio_scheduler(seed)
    net = Network(seed=seed)
    clock = trio.testing.MockClock()
    with NodeThread(clock=clock) as thread, ExitStack() as stack:
        nodes = {}
        for name in NAMES:
            nodes[name] = stack.enter_context(
                thread.start_node(config(name, seed), transport=net.attach(address(name)))
            )
            thread.run(with_time, clock, trio.sleep, 0.01)
        thread.run(with_time, clock, trio.sleep, SETTLE)
        nodes["n4"].close()
        thread.run(with_time, clock, trio.sleep, DETECT)
        # BlockingNode.leave's own call, made with the clock running.
        leaving = nodes["n3"]
        thread.run(with_time, clock, leaving._runner.leave, leaving._node)
        thread.run(with_time, clock, trio.sleep, SPREAD)
        return outcome(nodes)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_same_membership_outcome_in_every_flavour(seed: int) -> None:
    reference = run_trio(seed)
    assert reference == EXPECTED
    assert run_aio(seed) == reference
    assert run_blocking(seed) == reference
