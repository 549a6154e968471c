"""The discrete-event simulator at scale, and its agreement with the Trio simulation.

Scale (default): for each N, one `python -m swimnode simulate --json` run in a fresh
process (so each N's memory is its own), with one crash and the update's spread:

    python tools/bench_fastsim.py --nodes 10,100,1000 --duration 60 --seed 1

prints simulated/wall seconds, the real-time factor, peak RSS and memory per
simulated node (and per member each node holds), traffic per node, detection and
dissemination figures per N. Other flags go to `simulate` as they are; for sizes
whose join is too slow to simulate:

    python tools/bench_fastsim.py --nodes 1000,5000,10000 --start converged --newcomers 10

Agreement (`--agree`): the same scenarios on both simulations, over several seeds,
using the benchmarks' own trials for the Trio side (tools/bench_detection.py,
tools/bench_dissemination.py) and `swimnode.testing.scenarios`' copies of them for
the simulator:

    python tools/bench_fastsim.py --agree --nodes 100 --seeds 20

prints the medians side by side and their relative difference. With
`--false-failures` it compares bench_false_positives.py's scenario instead (the
lifeguard configuration, slow members, crashes and restarts, `--loss`, `--hours`):

    python tools/bench_fastsim.py --agree --false-failures --nodes 100 --loss 0.1 --seeds 5

Both modes end with one JSON line (with the load average at the start).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Any, cast

import trio
import trio.testing

import bench_detection
import bench_dissemination
import bench_false_positives
from swimnode.protocol.config import Config
from swimnode.protocol.suspicion import suspicion_bounds
from swimnode.testing.fastcluster import FastCluster
from swimnode.testing.fastsim import FastSim
from swimnode.testing.scenarios import detection_trial, dissemination_trial

KEEP = [
    *("sim_s", "wall_s", "cpu_s", "join_wall_s", "realtime_factor", "steady_realtime_factor"),
    *("peak_rss_mib", "rss_per_node_kib"),
    *("msgs_per_node_s", "bytes_per_node_s", "converge_s", "false_failures"),
    *("first_failed_s", "all_failed_s", "expected_detection_s"),
    *("rounds_50", "rounds_99", "rounds_100", "newcomers_known_s"),
]
"""The figures of each `simulate --json` report that the scale table keeps."""


def scale(sizes: list[int], duration: float, seed: int, extra: list[str]) -> list[dict[str, Any]]:
    results = []
    for n in sizes:
        cmd = [sys.executable, "-m", "swimnode", "simulate", "--nodes", str(n), "--json"]
        cmd += ["--duration", str(duration), "--seed", str(seed), *extra]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"N={n}: {done.stderr.strip()}")
        report = json.loads(done.stdout.splitlines()[-1])
        row = {"nodes": n, **{k: report[k] for k in KEEP}}
        # What one node's view costs per member it holds.
        row["bytes_per_member_view"] = round(report["rss_per_node_kib"] * 1024 / n, 1)
        results.append(row)
        print(f"N={n}: {row['wall_s']} s wall", file=sys.stderr, flush=True)
    heads = [
        ("nodes", "N"),
        ("sim_s", "sim s"),
        ("wall_s", "wall s"),
        ("join_wall_s", "join wall"),
        ("realtime_factor", "RT factor"),
        ("steady_realtime_factor", "RT steady"),
        ("peak_rss_mib", "peak MiB"),
        ("rss_per_node_kib", "KiB/node"),
        ("bytes_per_member_view", "B/view"),
        ("msgs_per_node_s", "msg/node/s"),
        ("bytes_per_node_s", "B/node/s"),
        ("first_failed_s", "1st failed"),
        ("all_failed_s", "all failed"),
        ("expected_detection_s", "SWIM exp"),
        ("rounds_100", "r100"),
        ("newcomers_known_s", "newcomers"),
    ]
    print("".join(f"{h:>12}" for _, h in heads))
    for r in results:
        print("".join(f"{r[k]!s:>12}" for k, _ in heads))
    return results


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def agree(nodes: int, seeds: int, first: int, loss: float) -> dict[str, Any]:
    _, hi = suspicion_bounds(4, 6, nodes, Config.lan("x").probe_interval)
    limit = 3 * math.e / (math.e - 1) + hi + 30
    trio_d: dict[str, list[float]] = {"first_suspect": [], "first_dead": [], "all_dead": []}
    fast_d: dict[str, list[float]] = {k: [] for k in trio_d}
    trio_r: dict[str, list[float]] = {"rounds_50": [], "rounds_99": [], "rounds_100": []}
    fast_r: dict[str, list[float]] = {k: [] for k in trio_r}
    walls = {"trio": 0.0, "fast": 0.0}
    for seed in range(first, first + seeds):
        w = time.perf_counter()
        clock = trio.testing.MockClock(autojump_threshold=0)
        t = trio.run(bench_detection.run_trial, nodes, 1, loss, seed, 5.0, limit, clock=clock)
        clock = trio.testing.MockClock(autojump_threshold=0)
        d = trio.run(bench_dissemination.measure, nodes, loss, seed, 1, clock=clock)
        walls["trio"] += time.perf_counter() - w
        w = time.perf_counter()
        f = detection_trial(nodes, 1, loss, seed, 5.0, limit)
        g = dissemination_trial(nodes, loss, seed)
        walls["fast"] += time.perf_counter() - w
        for key in trio_d:
            trio_d[key] += getattr(t, key)
            fast_d[key] += getattr(f, key)
        for key in trio_r:
            if isinstance(d[key], float):
                trio_r[key].append(float(d[key]))  # type: ignore[arg-type]
            if g[key] is not None:
                fast_r[key].append(float(g[key]))  # type: ignore[arg-type]
        print(f"seed {seed} done", file=sys.stderr, flush=True)
    rows = []
    for key in [*trio_d, *trio_r]:
        a = _median(trio_d.get(key) or trio_r.get(key, []))
        b = _median(fast_d.get(key) or fast_r.get(key, []))
        diff = None if not a or b is None else round((b - a) / a, 3)
        rows.append({"figure": key, "trio": a, "fast": b, "rel_diff": diff})
    print(f"N={nodes}, loss {loss}, seeds {first}..{first + seeds - 1}: medians")
    print(f"{'figure':<16}{'trio':>10}{'fast':>10}{'diff':>10}")
    for r in rows:
        print(f"{r['figure']:<16}{r['trio']!s:>10}{r['fast']!s:>10}{r['rel_diff']!s:>10}")
    print(f"wall: trio {walls['trio']:.1f} s, fast {walls['fast']:.1f} s")
    return {"nodes": nodes, "seeds": seeds, "loss": loss, "rows": rows, "wall_s": walls}


FF_FIGURES = ("false_failures", "false_failures_slow", "false_suspicions", "detect_median_s")


def fast_false_positives(label: str, args: argparse.Namespace) -> dict[str, Any]:
    """`bench_false_positives.run_config` on the discrete-event simulator: the same
    scripted slow spells and crash/restarts, played with `call_at` in the order its
    `play` sorts them, and judged by its own `analyse`."""
    fp = bench_false_positives
    sc = fp.make_scenario(args)
    sim = FastSim(args.seed, loss=args.loss)
    cluster = FastCluster(args.nodes, seed=args.seed, sim=sim, **fp.CONFIGS[label])
    cluster.wait_for(cluster.converged, timeout=120, step=1.0)
    sim.run_for(fp.WARMUP)
    t0 = sim.now
    crash_inc: dict[int, int] = {}

    def act(what: str, member: str, arg: Any) -> None:
        address = cluster.address_of(member)
        if what in ("slow", "fast"):
            sim.set_slow(address, arg)
        elif what == "crash":
            crash_inc[arg] = cluster.cores[member].incarnation
            cluster.crash(member)
        else:
            cluster.start(member)

    actions: list[tuple[float, int, tuple[str, str, Any]]] = []
    for start, end, member, delay in sc.slow:
        actions += [(start, 1, ("slow", member, delay)), (end, 0, ("fast", member, 0.0))]
    for i, c in enumerate(sc.crashes):
        actions += [(c.at, 2, ("crash", c.member, i)), (c.restart_at, 3, ("restart", c.member, i))]
    actions.sort(key=lambda a: (a[0], a[1]))
    for at, _, step in actions:
        sim.call_at(t0 + at, lambda step=step: act(*step))  # type: ignore[misc]
    sim.run_until(t0 + sc.duration)
    # analyse reads only the event log and the names, which both clusters share.
    return fp.analyse(cast(Any, cluster), sc, t0, crash_inc, args)


def agree_false_failures(nodes: int, seeds: int, first: int, loss: float, hours: float) -> Any:
    trio_f: dict[str, list[float]] = {k: [] for k in FF_FIGURES}
    fast_f: dict[str, list[float]] = {k: [] for k in FF_FIGURES}
    for seed in range(first, first + seeds):
        argv = ["--nodes", str(nodes), "--hours", str(hours), "--seed", str(seed)]
        args = bench_false_positives.parse_args([*argv, "--loss", str(loss), "--jobs", "1"])
        t = bench_false_positives.run_config("lifeguard", args)
        f = fast_false_positives("lifeguard", args)
        for key in FF_FIGURES:
            for into, result in ((trio_f, t), (fast_f, f)):
                if result[key] is not None:
                    into[key].append(float(result[key]))
        print(f"false failures, seed {seed} done", file=sys.stderr, flush=True)
    rows = []
    for key in FF_FIGURES:
        a, b = _median(trio_f[key]), _median(fast_f[key])
        diff = None if not a or b is None else round((b - a) / a, 3)
        rows.append({"figure": key, "trio": a, "fast": b, "rel_diff": diff})
    print(f"lifeguard, N={nodes}, loss {loss}, {hours:g} h, slow members: medians")
    print(f"{'figure':<22}{'trio':>10}{'fast':>10}{'diff':>10}")
    for r in rows:
        print(f"{r['figure']:<22}{r['trio']!s:>10}{r['fast']!s:>10}{r['rel_diff']!s:>10}")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", default="10,100,1000", help="comma-separated sizes")
    parser.add_argument("--duration", type=float, default=60.0, help="simulated s after t0")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--agree", action="store_true", help="compare with the Trio simulation")
    parser.add_argument("--seeds", type=int, default=20, help="--agree: seeds per figure")
    parser.add_argument("--loss", type=float, default=0.0, help="--agree: datagram loss")
    parser.add_argument(
        "--false-failures",
        action="store_true",
        help="--agree: bench_false_positives' scenario instead (lifeguard; try --loss 0.1)",
    )
    parser.add_argument("--hours", type=float, default=0.1, help="--false-failures: length")
    args, extra = parser.parse_known_args()
    try:
        sizes = [int(x) for x in args.nodes.split(",")]
    except ValueError:
        parser.error("--nodes takes comma-separated integers")
    load = os.getloadavg()[0]
    print(f"load average at start: {load:.2f}", file=sys.stderr)
    if args.agree and args.false_failures:
        result: Any = agree_false_failures(sizes[0], args.seeds, args.seed, args.loss, args.hours)
    elif args.agree:
        result = agree(sizes[0], args.seeds, args.seed, args.loss)
    else:
        result = scale(sizes, args.duration, args.seed, extra)
    print(json.dumps({"load_at_start": round(load, 2), "results": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
