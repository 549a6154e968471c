"""Failure-detection benchmark on the in-memory network under MockClock.

Builds an N-node cluster (lan profile), waits for convergence, measures steady-state
traffic, crashes K nodes at once, and times how long the survivors take to suspect and
to declare them dead. Repeats for T trials with seeds S, S+1, ...

    python tools/bench_detection.py --nodes 100 --crash 1 --loss 0 --seed 1 --trials 5

Prints a table, then one JSON line (simulated seconds since the crash):
first_suspect_s / first_dead_s / all_dead_s as {"median", "p99"}, false_dead,
msgs_per_node_s, bytes_per_node_s, wall_s, sim_s, and the SWIM expectation. Times are
observed by polling every member's view each 0.1 simulated seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass, field

import trio
import trio.testing

from swimnode import MemberState
from swimnode.protocol.suspicion import suspicion_bounds
from swimnode.testing import Network, open_sim_cluster

DEAD, SUSPECT = MemberState.DEAD, MemberState.SUSPECT
STEP = 0.1


@dataclass
class Trial:
    first_suspect: list[float] = field(default_factory=list)
    first_dead: list[float] = field(default_factory=list)
    all_dead: list[float] = field(default_factory=list)
    undetected: int = 0
    false_dead: int = 0
    msgs_per_node_s: float = 0.0
    bytes_per_node_s: float = 0.0
    converge_s: float = 0.0
    sim_s: float = 0.0


async def run_trial(
    nodes: int, crash: int, loss: float, seed: int, window: float, limit: float
) -> Trial:
    trial = Trial()
    start = trio.current_time()
    net = Network(seed=seed, loss=loss)
    # No event log: at a thousand nodes it would hold a million join events. Detection
    # is observed by polling every member's view every `STEP` simulated seconds.
    async with open_sim_cluster(nodes, seed=seed, network=net, record=False) as cluster:
        took = await cluster.wait_for(cluster.converged, timeout=60 + nodes * 0.2, step=0.5)
        if took is None:
            raise SystemExit(f"cluster of {nodes} did not converge (seed {seed})")
        trial.converge_s = trio.current_time() - start
        # Let the join rumours die down, then measure the steady state.
        await trio.sleep(10)
        before = {a: net.sent_by(a) for a in net.addresses}
        await trio.sleep(window)
        sent = [
            (net.sent_by(a)[0] - before[a][0], net.sent_by(a)[1] - before[a][1]) for a in before
        ]
        trial.msgs_per_node_s = sum(m for m, _ in sent) / len(sent) / window
        trial.bytes_per_node_s = sum(b for _, b in sent) / len(sent) / window

        rng = random.Random(seed)
        victims = rng.sample([n for n in cluster.names if n != "n0"], crash)
        crash_at = trio.current_time()
        for name in victims:
            cluster.crash(name)
        survivors = [cluster.nodes[n] for n in cluster.names]
        first_suspect: dict[str, float] = {}
        first_dead: dict[str, float] = {}
        all_dead: dict[str, float] = {}
        deadline = crash_at + limit
        while len(all_dead) < len(victims) and trio.current_time() < deadline:
            now = trio.current_time() - crash_at
            for v in victims:
                if v in all_dead:
                    continue
                states = [s.core.member(v) for s in survivors]
                dead = [m is not None and m.state is DEAD for m in states]
                if any(dead):
                    first_dead.setdefault(v, now)
                    first_suspect.setdefault(v, now)
                elif any(m is not None and m.state is SUSPECT for m in states):
                    first_suspect.setdefault(v, now)
                if all(dead):
                    all_dead[v] = now
            await trio.sleep(STEP)
        trial.first_suspect = list(first_suspect.values())
        trial.first_dead = list(first_dead.values())
        trial.all_dead = list(all_dead.values())
        trial.undetected = len(victims) - len(all_dead)
        # A live member declared dead refutes it when it hears; count those members.
        trial.false_dead = sum(1 for s in survivors if s.stats().get("deaths_refuted", 0))
        trial.sim_s = trio.current_time() - start
    return trial


def summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "p99": None}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return {"median": round(statistics.median(ordered), 3), "p99": round(p99, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--crash", type=int, default=1)
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument(
        "--window",
        type=float,
        default=20.0,
        help="simulated seconds of steady state to measure traffic over",
    )
    args = parser.parse_args()
    if args.nodes < 3 or not 1 <= args.crash < args.nodes - 1:
        parser.error("need --nodes >= 3 and 1 <= --crash < nodes - 1")

    lo, hi = suspicion_bounds(4, 6, args.nodes, 1.0)
    expected = math.e / (math.e - 1) + lo
    timeout = 3 * math.e / (math.e - 1) + hi + 30
    trials: list[Trial] = []
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for t in range(args.trials):
        seed = args.seed + t
        clock = trio.testing.MockClock(autojump_threshold=0)
        w = time.perf_counter()
        trial = trio.run(
            run_trial, args.nodes, args.crash, args.loss, seed, args.window, timeout, clock=clock
        )
        trials.append(trial)
        print(
            f"trial {t} seed {seed}: converged at {trial.converge_s:.1f} s sim, "
            f"all_dead {[round(x, 2) for x in trial.all_dead]}, "
            f"false_dead {trial.false_dead}, wall {time.perf_counter() - w:.1f} s",
            file=sys.stderr,
        )
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    sim = sum(t.sim_s for t in trials)

    def gather(attr: str) -> list[float]:
        return [x for t in trials for x in getattr(t, attr)]

    result = {
        "nodes": args.nodes,
        "crash": args.crash,
        "loss": args.loss,
        "seed": args.seed,
        "trials": args.trials,
        "first_suspect_s": summary(gather("first_suspect")),
        "first_dead_s": summary(gather("first_dead")),
        "all_dead_s": summary(gather("all_dead")),
        "undetected": sum(t.undetected for t in trials),
        "false_dead": sum(t.false_dead for t in trials),
        "msgs_per_node_s": round(statistics.mean(t.msgs_per_node_s for t in trials), 3),
        "bytes_per_node_s": round(statistics.mean(t.bytes_per_node_s for t in trials), 1),
        "expected_s": round(expected, 3),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "sim_s": round(sim, 2),
        "realtime_factor": round(sim / wall, 3),
        "realtime_factor_cpu": round(sim / cpu, 3),
    }
    rows = [
        ("first suspicion (s)", result["first_suspect_s"]),
        ("first death (s)", result["first_dead_s"]),
        ("dead everywhere (s)", result["all_dead_s"]),
    ]
    print(
        f"{'N=' + str(args.nodes) + ' K=' + str(args.crash) + ' loss=' + str(args.loss):<24}"
        f"{'median':>10}{'p99':>10}"
    )
    for label, s in rows:
        print(f"{label:<24}{s['median']!s:>10}{s['p99']!s:>10}")
    print(f"SWIM expectation e/(e-1) periods + min suspicion timeout: {expected:.2f} s")
    print(f"false dead: {result['false_dead']}, undetected: {result['undetected']}")
    print(
        f"steady state per node: {result['msgs_per_node_s']} msgs/s, "
        f"{result['bytes_per_node_s']} bytes/s"
    )
    print(
        f"simulated {sim:.0f} s in {wall:.1f} s wall ({cpu:.1f} s CPU on one core): "
        f"real-time factor {sim / wall:.2f} by wall clock, {sim / cpu:.2f} by CPU time"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
