"""What `python -m swimnode simulate` runs: one scripted scenario on the
discrete-event simulator, and the figures a user needs to choose timers.

The script, in simulated time: start `nodes` nodes (10 ms apart, joining through
`n0`) and wait until every view is complete (or, with `start="converged"`, start
them all at once with complete views); let the join traffic settle and measure
the steady state's messages and bytes per node per second over `window` seconds.
Then, at t0, one node sets an application-state key (its spread gives the
dissemination rounds), `crash` other nodes are killed and `slow` others start
reading everything `slow_delay` late; a partition, if asked for, cuts a fraction of
the nodes off from t0 + `at` for `duration` seconds. The run ends at t0 +
`duration`, or later if it is still waiting for the partition to heal. With
`newcomers`, that many nodes start at t0 and join through n0.

Times are taken from the events the nodes emit (exact, not polled): first
suspicion and first and last `failed` about each crashed node, the holders of the
new key, deaths of members that never crashed (false failures, apart from deaths
across a partition while it lasts and until the views converge again).
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..protocol.config import Config, Profile
from ..protocol.core import SwimCore
from ..protocol.events import MemberEvent, MemberFailed, MemberSuspected, MemberUpdated
from ..protocol.member import MemberState
from ..protocol.suspicion import suspicion_bounds
from .fastcluster import FastCluster, Start
from .fastsim import FastSim

__all__ = [
    "DetectionTrial",
    "Partition",
    "Report",
    "Scenario",
    "detection_trial",
    "dissemination_trial",
    "expected_detection",
    "pull_push_curve",
    "push_curve",
    "run",
]

PROBE_KEY = "simulate.probe"
"""The application-state key whose spread is timed."""


@dataclass(frozen=True, slots=True)
class Partition:
    """A `fraction` of the nodes cut off from the rest `at` seconds after t0, for
    `duration` seconds."""

    fraction: float
    at: float
    duration: float


@dataclass(slots=True)
class Scenario:
    """Everything a run depends on; equal scenarios give equal reports."""

    nodes: int = 100
    profile: Profile = "lan"
    overrides: dict[str, Any] = field(default_factory=dict)
    """Config fields for every node (`--set key=value`)."""
    loss: float = 0.0
    latency: float = 0.001
    jitter: float = 0.0005
    crash: int = 1
    slow: int = 0
    slow_delay: float = 2.0
    slow_rate: float | None = None
    """Bytes per second the slow nodes' links are limited to from t0, each way
    (`LinkModel.limit_rate`), or None."""
    partition: Partition | None = None
    duration: float = 60.0
    """Simulated seconds from t0 to the end (more while waiting for a heal)."""
    window: float = 10.0
    """Simulated seconds of steady state whose traffic is measured."""
    seed: int = 1
    start: Start = "join"
    """"join": nodes start 10 ms apart and join through n0, and the run waits until
    every view is complete; "converged": every node starts at once holding every
    other (`FastCluster`), for sizes whose join is too slow to simulate."""
    newcomers: int = 0
    """Nodes started at t0 that join through n0 (named after the others); the report
    says when they and the cluster knew each other. They are left out of the
    crash's and the update's figures, which are about the members before t0."""

    def config(self) -> Config:
        """The config every node gets, but for its name and addresses (this also
        checks `overrides`: `ValueError` names the first bad field)."""
        return Config.profile(self.profile, "n0", **self.overrides)


@dataclass(slots=True)
class Report:
    """A run's figures: simulated seconds unless named otherwise, None when it did
    not happen within the run."""

    scenario: Scenario
    converge_s: float | None = None
    msgs_per_node_s: float = 0.0
    bytes_per_node_s: float = 0.0
    first_suspect_s: float | None = None
    first_failed_s: float | None = None
    all_failed_s: float | None = None
    undetected: int = 0
    expected_detection_s: float = 0.0
    false_failures: int = 0
    false_failures_slow: int = 0
    false_suspicions: int = 0
    false_suspicions_slow: int = 0
    rounds_50: float | None = None
    rounds_99: float | None = None
    rounds_100: float | None = None
    expect_push_rounds: float = 0.0
    expect_pushpull_rounds: float = 0.0
    heal_converge_s: float | None = None
    """From the heal until every node holds every running node live again."""
    newcomers_known_s: float | None = None
    """From t0 until every running node holds every newcomer alive and every
    newcomer holds every running node live."""
    congestion: int = 0
    """Datagrams dropped and stream messages timed out on rate-limited links."""
    sim_s: float = 0.0
    join_wall_s: float = 0.0
    """Wall seconds until every view was complete: N nodes learning of N others
    is N² news, which dominates short runs of large clusters."""
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mib: float = 0.0
    rss_per_node_kib: float = 0.0
    crash_curve: list[tuple[float, float]] = field(default_factory=list)
    """(seconds after the crash, fraction of survivors that declared every crashed
    node failed)."""
    suspect_curve: list[tuple[float, float]] = field(default_factory=list)
    """The same for suspecting (or having declared failed) every crashed node."""
    spread_curve: list[tuple[float, float]] = field(default_factory=list)
    """(rounds after the update, fraction of nodes holding it)."""

    @property
    def realtime_factor(self) -> float:
        """Simulated seconds per wall-clock second."""
        return self.sim_s / self.wall_s if self.wall_s else math.inf

    @property
    def steady_realtime_factor(self) -> float:
        """The same once the cluster has converged (the join left out)."""
        wall = self.wall_s - self.join_wall_s
        return (self.sim_s - (self.converge_s or 0.0)) / wall if wall > 0 else math.inf


def expected_detection(config: Config, nodes: int) -> float:
    """SWIM's expected time to the first `failed` about a crashed member: e/(e-1)
    protocol periods to the first failed probe (SWIM §3.1), then the shortest
    suspicion timeout (Lifeguard)."""
    lo, _ = suspicion_bounds(
        config.suspicion_mult, config.suspicion_max_timeout_mult, nodes, config.probe_interval
    )
    return math.e / (math.e - 1) * config.probe_interval + lo


def push_curve(nodes: int, rounds: int) -> list[float]:
    """Mean-field fraction informed after each round of push gossip, one target per
    round (Pittel 1987: about log2 N + ln N rounds to reach everyone)."""
    return _curve(nodes, rounds, lambda u: u * math.exp(-(1 - u)))


def pull_push_curve(nodes: int, rounds: int) -> list[float]:
    """The same for push-pull, what an anti-entropy round is (Karp et al. 2000:
    about log3 N + ln ln N rounds): a node stays uninformed only if the peer it
    asked is uninformed too and nobody informed picked it."""
    return _curve(nodes, rounds, lambda u: u * u * math.exp(-(1 - u)))


def _curve(nodes: int, rounds: int, step: Callable[[float], float]) -> list[float]:
    uninformed = 1 - 1 / nodes
    out = [1 - uninformed]
    for _ in range(rounds):
        uninformed = step(uninformed)
        out.append(1 - uninformed)
    return out


# ----- the run ------------------------------------------------------------------------


Progress = Callable[[str, float], None]
"""`(phase, fraction done)`: called every simulated second or so."""


@dataclass(slots=True)
class _Tracker:
    """What the event hook gathers after t0."""

    t0: float = math.inf
    victims: frozenset[str] = frozenset()
    slow: frozenset[str] = frozenset()
    origin: str = ""
    newcomers: frozenset[str] = frozenset()
    """Observers whose events are not counted (see `Scenario.newcomers`)."""
    first_suspect: dict[str, float] = field(default_factory=dict)
    failed_by: dict[str, dict[str, float]] = field(default_factory=dict)
    suspected_by: dict[str, dict[str, float]] = field(default_factory=dict)
    """Victim -> observer -> when it first suspected (or declared) the victim."""
    holders: dict[str, float] = field(default_factory=dict)
    false_failed: set[tuple[str, int]] = field(default_factory=set)
    false_failed_slow: set[tuple[str, int]] = field(default_factory=set)
    false_suspected: set[tuple[str, int]] = field(default_factory=set)
    false_suspected_slow: set[tuple[str, int]] = field(default_factory=set)
    excused: Callable[[float], bool] = lambda _t: False
    """Whether a suspicion or death at that time may be the partition's doing."""

    def __call__(self, now: float, observer: str, event: MemberEvent) -> None:
        if now < self.t0 or observer in self.newcomers:
            return
        name = event.member.name
        if isinstance(event, MemberUpdated):
            if name == self.origin and PROBE_KEY in event.changed_keys:
                self.holders.setdefault(observer, now - self.t0)
            return
        if not isinstance(event, MemberSuspected | MemberFailed):
            return
        failed = isinstance(event, MemberFailed)
        if name in self.victims:
            self.first_suspect.setdefault(name, now - self.t0)
            self.suspected_by.setdefault(name, {}).setdefault(observer, now - self.t0)
            if failed:
                self.failed_by.setdefault(name, {}).setdefault(observer, now - self.t0)
            return
        if self.excused(now):
            return
        key = (name, event.member.incarnation)
        slow = name in self.slow
        if not failed:
            (self.false_suspected_slow if slow else self.false_suspected).add(key)
        else:
            (self.false_failed_slow if slow else self.false_failed).add(key)


def _rss_mib(field_name: str = "VmRSS") -> float:
    """This process's memory from /proc (0 where there is no /proc)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run(scenario: Scenario, progress: Progress | None = None) -> Report:
    """Run `scenario` and measure it (see the module's docstring)."""
    sc = scenario
    config = sc.config()
    report = Report(sc, expected_detection_s=round(expected_detection(config, sc.nodes), 3))
    report.expect_push_rounds = round(math.log2(sc.nodes) + math.log(sc.nodes), 2)
    report.expect_pushpull_rounds = round(math.log(sc.nodes, 3) + math.log(math.log(sc.nodes)), 2)
    wall0, cpu0, rss0 = time.perf_counter(), time.process_time(), _rss_mib()
    tell = progress or (lambda _phase, _done: None)
    sim = FastSim(sc.seed, latency=sc.latency, jitter=sc.jitter, loss=sc.loss)
    tell("starting", 0.0)
    cluster = FastCluster(
        sc.nodes,
        seed=sc.seed,
        profile=sc.profile,
        sim=sim,
        record=False,
        start=sc.start,
        **sc.overrides,
    )
    tracker = _Tracker()
    cluster.on_event(tracker)
    converge_limit = 60 + sc.nodes * 0.2
    part = sc.partition
    length = sc.duration if part is None else max(sc.duration, part.at + part.duration)
    horizon = sim.now + 10 + 10 + sc.window + length  # a guess until converged

    def wait(predicate: Callable[[], bool], limit: float, phase: str, step: float) -> bool:
        def check() -> bool:
            tell(phase, min(0.99, sim.now / horizon))
            return predicate()

        return cluster.wait_for(check, limit, step) is not None

    # A converged start holds complete views by construction (and the tests check
    # it); comparing N² records would take minutes at ten thousand nodes.
    if sc.start == "join" and not wait(cluster.converged, converge_limit, "converging", 0.5):
        raise RuntimeError(f"{sc.nodes} nodes did not converge in {converge_limit:g} simulated s")
    report.converge_s = round(sim.now, 2)
    report.join_wall_s = round(time.perf_counter() - wall0, 2)
    horizon = sim.now + 10 + sc.window + length
    sim.run_for(10)  # let the join rumours die down
    before = {n: sim.sent_by(cluster.address_of(n)) for n in cluster.names}
    _advance(sim, sc.window, horizon, "steady state", tell)
    sent = {n: sim.sent_by(cluster.address_of(n)) for n in before}
    scale = len(sent) * sc.window
    report.msgs_per_node_s = round(sum(sent[n][0] - before[n][0] for n in sent) / scale, 3)
    report.bytes_per_node_s = round(sum(sent[n][1] - before[n][1] for n in sent) / scale, 1)
    _script(cluster, sc, tracker, report)
    _advance(sim, length, horizon, "scenario", tell)
    if part is not None:
        # Deaths across the cut stay excused until the views are whole again.
        wait(lambda: report.heal_converge_s is not None, 600, "healing", 0.5)
    _summarise(report, tracker, cluster)
    report.sim_s = round(sim.now, 2)
    report.wall_s = round(time.perf_counter() - wall0, 2)
    report.cpu_s = round(time.process_time() - cpu0, 2)
    report.peak_rss_mib = round(_rss_mib("VmHWM"), 1)
    report.rss_per_node_kib = round(max(0.0, _rss_mib() - rss0) * 1024 / sc.nodes, 1)
    tell("done", 1.0)
    return report


def _advance(sim: FastSim, seconds: float, horizon: float, phase: str, tell: Progress) -> None:
    end = sim.now + seconds
    while sim.now < end:
        sim.run_until(min(end, sim.now + 1.0))
        tell(phase, min(0.99, sim.now / horizon))


def _script(cluster: FastCluster, sc: Scenario, tracker: _Tracker, report: Report) -> None:
    """Pick victims, slow nodes, the origin and the partition; start them at t0."""
    rng = random.Random(f"scenario/{sc.seed}")
    sim = cluster.sim
    names = cluster.names
    # Never n0, the seed every node joined through, as the benchmarks do.
    others = [n for n in names if n != "n0"]
    crash = min(sc.crash, max(0, len(others) - 1))
    victims = rng.sample(others, crash)
    healthy = [n for n in names if n not in victims]
    slow = rng.sample([n for n in healthy if n != "n0"], min(sc.slow, len(healthy) - 1))
    origin = rng.choice([n for n in healthy if n not in slow])
    t0 = sim.now
    tracker.t0, tracker.victims, tracker.slow, tracker.origin = (
        t0,
        frozenset(victims),
        frozenset(slow),
        origin,
    )
    tracker.holders[origin] = 0.0
    tracker.newcomers = frozenset(f"n{i}" for i in range(len(names), len(names) + sc.newcomers))
    cluster.set_state(origin, PROBE_KEY, 1)
    for name in victims:
        cluster.crash(name)
    for name in slow:
        sim.set_slow(cluster.address_of(name), sc.slow_delay)
        if sc.slow_rate is not None:
            sim.limit_rate(cluster.address_of(name), sc.slow_rate)
    if tracker.newcomers:
        _add_newcomers(cluster, sorted(tracker.newcomers, key=lambda n: int(n[1:])), report)
    part = sc.partition
    if part is None:
        return
    side = set(rng.sample(healthy, max(1, round(part.fraction * len(healthy)))))
    rest = [n for n in healthy if n not in side]
    start, heal = t0 + part.at, t0 + part.at + part.duration
    healed: list[float] = []
    tracker.excused = lambda t: start <= t and (not healed or t <= healed[0])

    def cut() -> None:
        sim.partition([cluster.address_of(n) for n in side], [cluster.address_of(n) for n in rest])

    def mend() -> None:
        sim.heal()

        # Deaths stay excused until every view is whole again.
        def converged() -> None:
            if _whole(cluster):
                healed.append(sim.now)
                report.heal_converge_s = round(sim.now - heal, 2)
            else:
                sim.call_at(sim.now + 0.5, converged)

        converged()

    sim.call_at(start, cut)
    sim.call_at(heal, mend)


def _add_newcomers(cluster: FastCluster, names: list[str], report: Report) -> None:
    """Start `names`, which join through n0, and time until they and the cluster
    know each other (polled every 0.1 s)."""
    sim = cluster.sim
    t0 = sim.now
    for name in names:
        cluster.start(name)

    def check() -> None:
        if _know_each_other(cluster, names):
            report.newcomers_known_s = round(sim.now - t0, 2)
        else:
            sim.call_at(sim.now + 0.1, check)

    sim.call_at(t0 + 0.1, check)


def _know_each_other(cluster: FastCluster, newcomers: list[str]) -> bool:
    """Every running node holds every newcomer alive, and every newcomer holds every
    running node live (a crashed one may still be live to it, as to everyone until
    detected)."""
    cores = cluster.cores
    for name, core in cores.items():
        for newcomer in newcomers:
            member = core.member(newcomer)
            if newcomer != name and (member is None or member.state is not MemberState.ALIVE):
                return False
    for newcomer in newcomers:
        core = cores[newcomer]
        for name in cores:
            member = core.member(name)
            if member is None or not member.is_live:
                return False
    return True


def _whole(cluster: FastCluster) -> bool:
    """Every running node holds every running node live (alive or suspect) and no
    other: the partition's deaths are undone. (Slow members may stay under
    suspicion for as long as they are slow, so `converged` could wait forever.)"""
    cores = cluster.cores
    running = set(cores)
    if any(core.n_live != len(running) for core in cores.values()):
        return False
    return all({m.name for m in c.members() if m.is_live} == running for c in cores.values())


def _summarise(report: Report, tracker: _Tracker, cluster: FastCluster) -> None:
    survivors = len([n for n in cluster.names if n not in tracker.newcomers])
    victims = sorted(tracker.victims)
    if victims:
        report.first_suspect_s = _median([tracker.first_suspect.get(v) for v in victims])
        report.first_failed_s = _median(
            [
                min(tracker.failed_by[v].values()) if v in tracker.failed_by else None
                for v in victims
            ]
        )
        done = [
            max(tracker.failed_by[v].values())
            if len(tracker.failed_by.get(v, {})) >= survivors
            else None
            for v in victims
        ]
        report.all_failed_s = _median(done)
        report.undetected = sum(1 for d in done if d is None)
        report.crash_curve = _crash_curve(tracker.victims, tracker.failed_by, survivors)
        report.suspect_curve = _crash_curve(tracker.victims, tracker.suspected_by, survivors)
    report.false_failures = len(tracker.false_failed)
    report.false_failures_slow = len(tracker.false_failed_slow)
    report.false_suspicions = len(tracker.false_suspected)
    report.false_suspicions_slow = len(tracker.false_suspected_slow)
    report.congestion = cluster.sim.stats.congestion
    interval = cluster.cores[tracker.origin].config.state_gossip_interval
    times = sorted(tracker.holders.values())
    total = survivors

    def rounds_at(fraction: float) -> float | None:
        k = math.ceil(fraction * total)
        return round(times[k - 1] / interval, 2) if len(times) >= k else None

    report.rounds_50, report.rounds_99, report.rounds_100 = (
        rounds_at(0.5),
        rounds_at(0.99),
        rounds_at(1.0),
    )
    report.spread_curve = [(round(t / interval, 3), (i + 1) / total) for i, t in enumerate(times)]


def _crash_curve(
    victims: frozenset[str], seen_by: dict[str, dict[str, float]], survivors: int
) -> list[tuple[float, float]]:
    """When each survivor had seen every crashed node (suspected or failed, per
    `seen_by`): (time, fraction of survivors)."""
    complete = sorted(
        max(seen_by[v][observer] for v in victims)
        for observer in seen_by.get(next(iter(victims)), {})
        if all(observer in seen_by.get(v, {}) for v in victims)
    )
    return [(round(at, 3), (i + 1) / survivors) for i, at in enumerate(complete)]


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


# ----- the benchmarks' scenarios, for comparing with the Trio simulation --------------


@dataclass(slots=True)
class DetectionTrial:
    """What `tools/bench_detection.py` measures in one trial, in simulated seconds
    from the crash (one entry per crashed node)."""

    first_suspect: list[float] = field(default_factory=list)
    first_dead: list[float] = field(default_factory=list)
    all_dead: list[float] = field(default_factory=list)
    undetected: int = 0
    msgs_per_node_s: float = 0.0
    bytes_per_node_s: float = 0.0


DETECTION_STEP = 0.1
"""`tools/bench_detection.py` polls every member's view this often (simulated s)."""


def detection_trial(
    nodes: int, crash: int, loss: float, seed: int, window: float, limit: float
) -> DetectionTrial:
    """`tools/bench_detection.py`'s trial on the discrete-event simulator: converge,
    settle 10 s, measure traffic over `window`, crash `crash` random nodes (not n0),
    and poll every survivor's view each 0.1 s until all are dead or `limit` passed."""
    trial = DetectionTrial()
    sim = FastSim(seed, loss=loss)
    cluster = FastCluster(nodes, seed=seed, sim=sim, record=False)
    if cluster.wait_for(cluster.converged, timeout=60 + nodes * 0.2, step=0.5) is None:
        raise RuntimeError(f"cluster of {nodes} did not converge (seed {seed})")
    sim.run_for(10)
    before = {a: sim.sent_by(a) for a in sim.nodes}
    sim.run_for(window)
    sent = [(sim.sent_by(a)[0] - b[0], sim.sent_by(a)[1] - b[1]) for a, b in before.items()]
    trial.msgs_per_node_s = sum(m for m, _ in sent) / len(sent) / window
    trial.bytes_per_node_s = sum(b for _, b in sent) / len(sent) / window
    victims = random.Random(seed).sample([n for n in cluster.names if n != "n0"], crash)
    crash_at = sim.now
    for name in victims:
        cluster.crash(name)
    survivors = list(cluster.cores.values())
    first_suspect: dict[str, float] = {}
    first_dead: dict[str, float] = {}
    all_dead: dict[str, float] = {}
    while len(all_dead) < len(victims) and sim.now < crash_at + limit:
        now = sim.now - crash_at
        for v in victims:
            if v not in all_dead:
                _observe(v, now, survivors, first_suspect, first_dead, all_dead)
        sim.run_for(DETECTION_STEP)
    trial.first_suspect = list(first_suspect.values())
    trial.first_dead = list(first_dead.values())
    trial.all_dead = list(all_dead.values())
    trial.undetected = len(victims) - len(all_dead)
    return trial


def _observe(
    victim: str,
    now: float,
    survivors: list[SwimCore],
    first_suspect: dict[str, float],
    first_dead: dict[str, float],
    all_dead: dict[str, float],
) -> None:
    states = [s.member(victim) for s in survivors]
    dead = [m is not None and m.state is MemberState.DEAD for m in states]
    if any(dead):
        first_dead.setdefault(victim, now)
        first_suspect.setdefault(victim, now)
    elif any(m is not None and m.state is MemberState.SUSPECT for m in states):
        first_suspect.setdefault(victim, now)
    if all(dead):
        all_dead[victim] = now


def dissemination_trial(nodes: int, loss: float, seed: int) -> dict[str, float | None]:
    """`tools/bench_dissemination.py`'s spread of one key on the discrete-event
    simulator: converge, wait 50 s, then one random node sets a key under `loss`;
    rounds (of `state_gossip_interval`) until 50%, 99% and 100% hold it."""
    sim = FastSim(seed)
    cluster = FastCluster(nodes, seed=seed, sim=sim, record=False)
    if cluster.wait_for(cluster.converged, timeout=120 + nodes * 0.3, step=1.0) is None:
        raise RuntimeError(f"{nodes} nodes did not converge")
    interval = cluster.cores["n0"].config.state_gossip_interval
    sim.run_for(30 + 20)  # the bench's settling, then its 20 s of idle measurement
    sim.loss = loss
    origin = random.Random(seed).choice(cluster.names)
    start = sim.now
    holders = {origin: 0.0}

    def hook(now: float, observer: str, event: MemberEvent) -> None:
        if (
            isinstance(event, MemberUpdated)
            and event.member.name == origin
            and "probe" in event.changed_keys
        ):
            holders.setdefault(observer, now - start)

    cluster.on_event(hook)
    cluster.set_state(origin, "probe", 1)
    cluster.wait_for(lambda: len(holders) >= nodes, timeout=120, step=0.1)
    times = sorted(holders.values())

    def rounds(fraction: float) -> float | None:
        k = math.ceil(fraction * nodes)
        return round(times[k - 1] / interval, 2) if len(times) >= k else None

    return {"rounds_50": rounds(0.5), "rounds_99": rounds(0.99), "rounds_100": rounds(1.0)}
