"""`python -m swimnode demo`: watch a small cluster find itself, lose a member,
take it back, and see another leave, on the in-memory network.

Time is real by default (the lan profile's 1 s protocol period); `--speed 10` runs
Trio's clock ten times faster so the whole story takes a few seconds.

`--udp` tells a shorter story with real processes instead: 3 to 5 agents on 127.0.0.1
(`local` profile, free ports) find each other, one is SIGKILLed, and the survivors
detect it; every agent is then stopped by its PID.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio
import trio.testing

from ..protocol.config import Config
from ..protocol.member import MemberState
from ..testing.cluster import Observed, SimCluster, open_sim_cluster
from ..testing.network import Network
from ..testing.processes import LocalCluster, detection_bound, wait_for


def _line(start: float, text: str) -> None:
    print(f"[{trio.current_time() - start:7.2f} s] {text}", flush=True)


async def _demo(nodes: int, seed: int, loss: float) -> None:
    start = trio.current_time()
    net = Network(seed=seed, loss=loss)
    async with open_sim_cluster(nodes, seed=seed, network=net) as cluster:
        printed = 0

        def show_new() -> None:
            nonlocal printed
            for obs in cluster.log[printed:]:
                _describe(start, obs)
            printed = len(cluster.log)

        async def phase(title: str, done: Callable[[], bool], limit: float) -> None:
            def check() -> bool:
                show_new()
                return done()

            _line(start, f"--- {title}")
            took = await cluster.wait_for(check, timeout=limit, step=0.05)
            show_new()
            if took is None:
                _line(start, f"(not finished after {limit:g} s)")

        await phase(f"{nodes} nodes join through n0", cluster.converged, 15)
        victim = f"n{nodes - 1}"
        _line(start, f"--- crashing {victim} (no goodbye: like kill -9)")
        cluster.crash(victim)
        await phase(
            f"waiting for the others to declare {victim} dead",
            lambda: cluster.all_see(victim, {MemberState.DEAD}),
            60,
        )
        await cluster.start(victim)
        await phase(f"{victim} restarts with the same name and rejoins", cluster.converged, 30)
        leaver = "n1"
        await phase(f"{leaver} leaves gracefully", lambda: True, 0)
        await cluster.leave(leaver)
        await phase(
            f"waiting for everyone to see {leaver} as left",
            lambda: cluster.all_see(leaver, {MemberState.LEFT}),
            15,
        )
        _print_table(start, cluster)


def _describe(start: float, obs: Observed) -> None:
    event = obs.event
    if hasattr(event, "member"):
        m = event.member
        _line(start, f"{obs.observer:>4} sees {m.name} {event.kind} (incarnation {m.incarnation})")
    else:
        _line(start, f"{obs.observer:>4} missed events: {event}")


def _print_table(start: float, cluster: SimCluster) -> None:
    _line(start, "--- final membership, as each running node sees it")
    names = sorted({m.name for n in cluster.nodes.values() for m in n.members()})
    print("       " + " ".join(f"{n:>7}" for n in names))
    for observer in sorted(cluster.nodes):
        view = cluster.view(observer)
        cells = " ".join(f"{view[n].label if n in view else '-':>7}" for n in names)
        print(f"{observer:>6} {cells}")


def _udp_demo(nodes: int) -> int:
    start = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - start:7.2f} s] {text}", flush=True)

    names = [f"n{i}" for i in range(nodes)]
    with LocalCluster(profile="local") as cluster:
        seed = cluster.start(names[0])
        if not seed.wait_ready():
            say(f"{seed.name} did not start; giving up")
            return 1
        for name in names[1:]:
            cluster.start(name, seeds=[seed])
        say(
            f"--- started {nodes} agents on 127.0.0.1, joining through {seed.name} ({seed.address})"
        )
        for agent in cluster.agents.values():
            say(
                f"{agent.name}: pid {agent.proc.pid}, gossip {agent.address}, "
                f"rpc 127.0.0.1:{agent.rpc_port}"
            )
        if not wait_for(lambda: cluster.converged(names), 20.0, step=0.1):
            say("the agents did not all see each other within 20 s; giving up")
            return 1
        say("--- every agent lists all members alive (RPC `members --json`):")
        view = seed.view() or {}
        say("    " + ", ".join(f"{n}={view.get(n, '-')}" for n in names))
        victim = cluster.agents[names[-1]]
        survivors = [a for a in cluster.agents.values() if a is not victim]
        bound = detection_bound(Config.local(victim.name), nodes)
        say(
            f"--- SIGKILL {victim.name} (pid {victim.proc.pid}); the local profile bounds "
            f"detection by {bound:.0f} s"
        )
        victim.kill()
        seen: dict[str, str] = {}
        deadline = time.monotonic() + bound
        while len([s for s in seen.values() if s == "dead"]) < len(survivors):
            if time.monotonic() > deadline:
                say("not every survivor declared it dead within the bound")
                return 1
            for agent in survivors:
                state = (agent.view() or {}).get(victim.name, "?")
                if seen.get(agent.name) != state:
                    seen[agent.name] = state
                    say(f"{agent.name:>4} lists {victim.name} as {state}")
            time.sleep(0.05)
        say("--- every survivor lists it dead; stopping the agents by PID")
    say("done")
    return 0


def run(nodes: int, seed: int, loss: float, speed: float, udp: bool) -> int:
    """Run `python -m swimnode demo` (its flags checked by the command line)."""
    if udp:
        return _udp_demo(nodes)
    trio.run(_demo, nodes, seed, loss, clock=trio.testing.MockClock(rate=speed))
    return 0
