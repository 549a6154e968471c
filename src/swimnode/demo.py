"""`python -m swimnode demo`: watch a small cluster find itself, lose a member,
take it back, and see another leave, on the in-memory network.

Time is real by default (the lan profile's 1 s protocol period); `--speed 10` runs
Trio's clock ten times faster so the whole story takes a few seconds.
"""

from __future__ import annotations

import argparse

import trio
import trio.testing

from .member import MemberState
from .sim import Network
from .testing import Observed, SimCluster, open_sim_cluster


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

        async def phase(title: str, done: object, timeout: float) -> None:
            _line(start, f"--- {title}")
            took = await cluster.wait_for(lambda: (show_new(), done())[1],  # type: ignore[operator]
                                          timeout=timeout, step=0.05)
            show_new()
            if took is None:
                _line(start, f"(not finished after {timeout:g} s)")

        await phase(f"{nodes} nodes join through n0", cluster.converged, 15)
        victim = f"n{nodes - 1}"
        _line(start, f"--- crashing {victim} (no goodbye: like kill -9)")
        cluster.crash(victim)
        await phase(f"waiting for the others to declare {victim} dead",
                    lambda: cluster.all_see(victim, {MemberState.DEAD}), 60)
        await cluster.start(victim)
        await phase(f"{victim} restarts with the same name and rejoins", cluster.converged, 30)
        leaver = "n1"
        await phase(f"{leaver} leaves gracefully", lambda: True, 0)
        await cluster.leave(leaver)
        await phase(f"waiting for everyone to see {leaver} as left",
                    lambda: cluster.all_see(leaver, {MemberState.LEFT}), 15)
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m swimnode demo`."""
    parser = argparse.ArgumentParser(prog="swimnode demo", description=__doc__)
    parser.add_argument("--nodes", type=int, default=5, help="cluster size (default 5)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--loss", type=float, default=0.0,
                        help="packet loss probability, 0..1 (default 0)")
    parser.add_argument("--speed", type=float, default=4.0,
                        help="how much faster than real time the clock runs (default 4)")
    args = parser.parse_args(argv)
    if not 3 <= args.nodes <= 200:
        parser.error("--nodes must be between 3 and 200")
    if not 0.0 <= args.loss < 1.0:
        parser.error("--loss must be in [0, 1)")
    if args.speed <= 0:
        parser.error("--speed must be > 0")
    clock = trio.testing.MockClock(rate=args.speed)
    trio.run(_demo, args.nodes, args.seed, args.loss, clock=clock)
    return 0
