"""False-positive benchmark for the Lifeguard extensions (issue #5).

Runs a simulated cluster (in-memory network, `trio.testing.MockClock`) through the same
scripted hour for several protocol configurations and compares them:

* **slow members**: back-to-back episodes, each of bounded length, in which a random set
  of 1..`--max-slow` running members process everything they receive late (an extra
  delay drawn per member per episode, `Network.set_slow`), as a CPU-starved process
  would;
* **packet loss** on every datagram (`--loss`, 1 % by default);
* **crashes**: every `--crash-every` seconds a random member that is not slow is killed
  (`kill -9`: no leave) and restarted `--restart-after` seconds later, to measure how
  fast a real failure is detected.

The scenario (who is slow when, with which delay, who crashes when) is drawn from
`--seed` up front and is identical for every configuration; the network and the nodes
are seeded from it too, so a run is reproducible.

Definitions (all counted from the membership events every node emits):

* a death (`failed` event about member M at incarnation i, seen at time t) is **true**
  if M crashed before t and i is at most M's incarnation when it crashed (the record is
  about the life that ended); every other death is **false**;
* a false death is **about a slow member** if M was slow at any moment in the window
  `[t - W, t]`, with `W` = the longest suspicion timeout + the longest slow delay + 5 s
  (long enough to cover the probe and the whole suspicion that led to it); otherwise it
  is **about a healthy member**;
* `false_failures` = distinct `(member, incarnation)` pairs that some node declared
  dead falsely, about healthy members (the headline figure; the Lifeguard paper's
  "false positives at healthy members"); `false_failures_slow` the same about slow
  members; `false_failure_events` counts distinct `(observer, member, incarnation)`
  (how many nodes each false death reached), healthy members only;
* `false_suspicions` / `false_suspicions_slow`: the same as the first two for
  `suspected` events;
* detection time of a crash = time from the crash until the last node that was running
  throughout emitted `failed` for the crashed life; `undetected` counts crashes some
  node had not declared dead by the restart. Percentiles are nearest-rank.

Usage::

    python tools/bench_false_positives.py                  # 100 nodes, 1 simulated hour
    python tools/bench_false_positives.py --hours 0.25 --seed 7 --jobs 2

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypedDict

import trio
import trio.testing

from swimnode.protocol.config import Config
from swimnode.protocol.events import MemberFailed, MemberSuspected
from swimnode.protocol.member import Member
from swimnode.protocol.suspicion import suspicion_bounds
from swimnode.testing import Network, SimCluster, open_sim_cluster


class Switches(TypedDict):
    """The Lifeguard config fields one benchmarked configuration sets."""

    lifeguard_awareness: bool
    lifeguard_dynamic_suspicion: bool
    lifeguard_buddy: bool


CONFIGS: dict[str, Switches] = {
    "plain": Switches(
        lifeguard_awareness=False, lifeguard_dynamic_suspicion=False, lifeguard_buddy=False
    ),
    "awareness": Switches(
        lifeguard_awareness=True, lifeguard_dynamic_suspicion=False, lifeguard_buddy=False
    ),
    "dynamic_suspicion": Switches(
        lifeguard_awareness=False, lifeguard_dynamic_suspicion=True, lifeguard_buddy=False
    ),
    "buddy": Switches(
        lifeguard_awareness=False, lifeguard_dynamic_suspicion=False, lifeguard_buddy=True
    ),
    "lifeguard": Switches(
        lifeguard_awareness=True, lifeguard_dynamic_suspicion=True, lifeguard_buddy=True
    ),
}

WARMUP = 20.0
"""Simulated seconds after start-up before the scenario begins."""


# ----- scenario --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Crash:
    member: str
    at: float
    restart_at: float


@dataclass(slots=True)
class Scenario:
    """Everything that happens to the cluster, in seconds from the scenario's start."""

    duration: float
    slow: list[tuple[float, float, str, float]] = field(default_factory=list)
    """(start, end, member, delay)"""
    crashes: list[Crash] = field(default_factory=list)


def make_scenario(args: argparse.Namespace) -> Scenario:
    rng = random.Random(f"scenario/{args.seed}")
    duration = args.hours * 3600.0
    names = [f"n{i}" for i in range(args.nodes)]
    sc = Scenario(duration)
    # Crashes: never n0 (the seed everyone joins through), one at a time.
    t = args.crash_every / 2
    while t + args.restart_after < duration and args.crash_every > 0:
        sc.crashes.append(Crash(rng.choice(names[1:]), t, t + args.restart_after))
        t += args.crash_every
    # Slow episodes, back to back, avoiding members around their crash.
    t = 0.0
    while t < duration:
        length = rng.uniform(args.episode_min, args.episode_max)
        end = min(duration, t + length)
        busy = {c.member for c in sc.crashes if c.at - 10 < end and t < c.restart_at + 10}
        pool = [n for n in names if n not in busy]
        for member in rng.sample(pool, min(len(pool), rng.randint(1, args.max_slow))):
            sc.slow.append((t, end, member, rng.uniform(args.delay_min, args.delay_max)))
        t = end
    return sc


async def play(
    cluster: SimCluster, sc: Scenario, t0: float, crash_incarnations: dict[int, int]
) -> None:
    """Apply the scenario to the running cluster, starting at simulated time `t0`."""
    actions: list[tuple[float, int, Any]] = []
    for start, end, member, delay in sc.slow:
        actions.append((start, 1, ("slow", member, delay)))
        actions.append((end, 0, ("fast", member, 0.0)))
    for i, c in enumerate(sc.crashes):
        actions.append((c.at, 2, ("crash", c.member, i)))
        actions.append((c.restart_at, 3, ("restart", c.member, i)))
    actions.sort(key=lambda a: (a[0], a[1]))
    for at, _, (what, member, arg) in actions:
        await trio.sleep_until(t0 + at)
        if what == "slow":
            cluster.network.set_slow(cluster.address_of(member), arg)
        elif what == "fast":
            cluster.network.set_slow(cluster.address_of(member), 0.0)
        elif what == "crash":
            crash_incarnations[arg] = cluster.nodes[member].core.incarnation
            cluster.crash(member)
        else:
            await cluster.start(member)
    await trio.sleep_until(t0 + sc.duration)


# ----- one configuration -----------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (`q` in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def run_config(label: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run the whole scenario for one configuration; return its figures."""
    sc = make_scenario(args)
    switches = CONFIGS[label]
    result: dict[str, Any] = {}
    wall = time.monotonic()

    async def main() -> None:
        net = Network(seed=args.seed, loss=args.loss)
        crash_inc: dict[int, int] = {}
        async with open_sim_cluster(args.nodes, seed=args.seed, network=net, **switches) as cluster:
            await cluster.wait_for(cluster.converged, timeout=120, step=1.0)
            await trio.sleep(WARMUP)
            t0 = trio.current_time()
            await play(cluster, sc, t0, crash_inc)
            stats = [node.stats() for node in cluster.nodes.values()]
            result.update(analyse(cluster, sc, t0, crash_inc, args))
            result["deaths_declared_total"] = sum(s.get("deaths_declared", 0) for s in stats)
            result["suspicions_refuted_total"] = sum(s.get("suspicions_refuted", 0) for s in stats)
            result["packets_sent"] = net.stats.sent

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    result["wall_s"] = round(time.monotonic() - wall, 1)
    return result


FirstFails = dict[tuple[str, str], list[tuple[float, int]]]
"""`(observer, member)` -> every `(time, incarnation)` at which the observer declared
the member dead."""


@dataclass(slots=True)
class Truth:
    """What really happened, in simulated time: which lives ended in a crash, and
    who was slow when."""

    window: float
    """How long before a death a slow spell still counts as its cause."""
    slow_spans: dict[str, list[tuple[float, float]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    crashes_of: dict[str, list[tuple[float, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )

    @classmethod
    def of(cls, sc: Scenario, t0: float, crash_inc: dict[int, int], window: float) -> Truth:
        truth = cls(window)
        for start, end, member, _ in sc.slow:
            truth.slow_spans[member].append((t0 + start, t0 + end))
        for i, c in enumerate(sc.crashes):
            if i in crash_inc:
                truth.crashes_of[c.member].append((t0 + c.at, crash_inc[i]))
        return truth

    def is_true(self, member: str, incarnation: int, t: float) -> bool:
        return any(at <= t and incarnation <= inc for at, inc in self.crashes_of[member])

    def was_slow(self, member: str, t: float) -> bool:
        return any(s <= t and e >= t - self.window for s, e in self.slow_spans[member])


@dataclass(slots=True)
class FalseAlarms:
    """False deaths and suspicions, about healthy and about slow members."""

    fail_healthy: set[tuple[str, int]] = field(default_factory=set)
    fail_slow: set[tuple[str, int]] = field(default_factory=set)
    fail_events: set[tuple[str, str, int]] = field(default_factory=set)
    susp_healthy: set[tuple[str, int]] = field(default_factory=set)
    susp_slow: set[tuple[str, int]] = field(default_factory=set)

    def add(self, observer: str, member: Member, failed: bool, slow: bool) -> None:
        key = (member.name, member.incarnation)
        if not failed:
            (self.susp_slow if slow else self.susp_healthy).add(key)
        elif slow:
            self.fail_slow.add(key)
        else:
            self.fail_healthy.add(key)
            self.fail_events.add((observer, member.name, member.incarnation))


def slowest_detection(
    observers: list[str],
    member: str,
    at: float,
    restart: float,
    incarnation: int,
    first_fail: FirstFails,
) -> float:
    """Seconds from the crash at `at` until the last of `observers` declared that life
    of `member` dead; infinite if one of them did not before `restart`."""
    last = 0.0
    for o in observers:
        times = [
            t for t, inc in first_fail[(o, member)] if at <= t <= restart and inc <= incarnation
        ]
        if not times:
            return math.inf
        last = max(last, min(times) - at)
    return last


def detection_times(
    sc: Scenario, t0: float, crash_inc: dict[int, int], first_fail: FirstFails, nodes: int
) -> tuple[list[float], int]:
    """Detection time of every crash that was detected, and how many were not: every
    node running throughout the crash window must declare it."""
    down: list[tuple[float, float]] = [(t0 + c.at, t0 + c.restart_at) for c in sc.crashes]
    names = [f"n{i}" for i in range(nodes)]
    detect: list[float] = []
    undetected = 0
    for i, c in enumerate(sc.crashes):
        if i not in crash_inc:
            continue
        at, restart = t0 + c.at, t0 + c.restart_at
        observers = [
            n
            for n in names
            if n != c.member
            and not any(
                cj.member == n and d0 < restart and at < d1
                for cj, (d0, d1) in zip(sc.crashes, down, strict=True)
            )
        ]
        last = slowest_detection(observers, c.member, at, restart, crash_inc[i], first_fail)
        if math.isinf(last):
            undetected += 1
        else:
            detect.append(last)
    return detect, undetected


def analyse(
    cluster: SimCluster,
    sc: Scenario,
    t0: float,
    crash_inc: dict[int, int],
    args: argparse.Namespace,
) -> dict[str, Any]:
    lan = Config.lan("x")
    _, hi = suspicion_bounds(
        lan.suspicion_mult, lan.suspicion_max_timeout_mult, args.nodes, lan.probe_interval
    )
    truth = Truth.of(sc, t0, crash_inc, window=hi + args.delay_max + 5.0)
    alarms = FalseAlarms()
    first_fail: FirstFails = defaultdict(list)
    for obs in cluster.log:
        event = obs.event
        if obs.time < t0 or not isinstance(event, MemberFailed | MemberSuspected):
            continue
        m, failed = event.member, isinstance(event, MemberFailed)
        if failed:
            first_fail[(obs.observer, m.name)].append((obs.time, m.incarnation))
        if not truth.is_true(m.name, m.incarnation, obs.time):
            alarms.add(obs.observer, m, failed, truth.was_slow(m.name, obs.time))

    detect, undetected = detection_times(sc, t0, crash_inc, first_fail, args.nodes)
    med, p99 = percentile(detect, 50), percentile(detect, 99)
    return {
        "false_failures": len(alarms.fail_healthy),
        "false_failures_slow": len(alarms.fail_slow),
        "false_failure_events": len(alarms.fail_events),
        "false_suspicions": len(alarms.susp_healthy),
        "false_suspicions_slow": len(alarms.susp_slow),
        "crashes": len(detect) + undetected,
        "undetected": undetected,
        "detect_median_s": None if med is None else round(med, 3),
        "detect_p99_s": None if p99 is None else round(p99, 3),
    }


# ----- driver ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--hours", type=float, default=1.0, help="simulated scenario length")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--loss", type=float, default=0.01, help="datagram loss everywhere")
    p.add_argument("--max-slow", type=int, default=10, help="slow members per episode: 1..N")
    p.add_argument("--delay-min", type=float, default=1.0, help="slow delay lower bound (s)")
    p.add_argument("--delay-max", type=float, default=8.0, help="slow delay upper bound (s)")
    p.add_argument("--episode-min", type=float, default=10.0, help="episode length (s)")
    p.add_argument("--episode-max", type=float, default=60.0, help="episode length (s)")
    p.add_argument(
        "--crash-every", type=float, default=60.0, help="seconds between crashes (0: none)"
    )
    p.add_argument(
        "--restart-after",
        type=float,
        default=50.0,
        help="a crashed member restarts this long after its crash",
    )
    p.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help="comma-separated subset of " + ", ".join(CONFIGS),
    )
    p.add_argument("--jobs", type=int, default=2, help="configurations run in parallel")
    args = p.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        p.error(f"unknown config(s): {', '.join(unknown)}")
    if args.nodes < 3 or args.hours <= 0 or args.jobs < 1 or args.max_slow < 1:
        p.error("need --nodes >= 3, --hours > 0, --jobs >= 1, --max-slow >= 1")
    if args.crash_every and args.restart_after >= args.crash_every:
        p.error("--restart-after must be shorter than --crash-every")
    return args


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    print(
        f"# {args.nodes} nodes, {args.hours:g} simulated h, seed {args.seed}, "
        f"loss {args.loss:g}, 1..{args.max_slow} slow members "
        f"({args.delay_min:g}-{args.delay_max:g} s, episodes "
        f"{args.episode_min:g}-{args.episode_max:g} s), crash every "
        f"{args.crash_every:g} s",
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    with ProcessPoolExecutor(max_workers=min(args.jobs, len(args.configs))) as pool:
        futures = {c: pool.submit(run_config, c, args) for c in args.configs}
        for label, fut in futures.items():
            results[label] = fut.result()
            print(f"# {label}: done in {results[label]['wall_s']} s wall", flush=True)

    cols = [
        "false_failures",
        "false_failures_slow",
        "false_failure_events",
        "false_suspicions",
        "false_suspicions_slow",
        "detect_median_s",
        "detect_p99_s",
        "undetected",
        "crashes",
        "wall_s",
    ]
    heads = [
        "config",
        "FF healthy",
        "FF slow",
        "FF events",
        "FS healthy",
        "FS slow",
        "det med s",
        "det p99 s",
        "undet",
        "crashes",
        "wall s",
    ]
    rows = [[label] + [fmt(results[label][c]) for c in cols] for label in results]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    print("  ".join(h.rjust(w) for h, w in zip(heads, widths, strict=True)))
    for r in rows:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)))

    summary: dict[str, Any] = dict(results)
    if "plain" in results and "lifeguard" in results:
        plain, lg = results["plain"], results["lifeguard"]
        summary["reduction"] = round(plain["false_failures"] / max(1, lg["false_failures"]), 2)
        pm, lm = plain["detect_median_s"], lg["detect_median_s"]
        summary["detect_ratio"] = round(lm / pm, 3) if pm and lm is not None else None
        print(
            f"# false failures (healthy): plain {plain['false_failures']}, lifeguard "
            f"{lg['false_failures']} -> {summary['reduction']}x fewer; median detection "
            f"lifeguard/plain = {summary['detect_ratio']}"
        )
    summary["params"] = {k: v for k, v in vars(args).items() if k != "configs"}
    summary["wall_total_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
