"""Agent-process benchmark on loopback: real `swimnode agent` processes (and, with
`--vs-serf`, Serf agents) measured from the outside through their RPC endpoints.

    python tools/bench_agents.py --nodes 10 --trials 1 --profile lan [--vs-serf]

Per trial: start-up (last agent spawned -> every agent answers its RPC endpoint), join
convergence (every agent up -> every agent lists N alive; `join_from_spawn_s` counts
from the spawn instead, start-up included), idle
CPU per agent (ms of CPU per second over `--idle` seconds, from /proc/PID/stat) and
RSS (VmRSS from /proc/PID/status), failure detection after SIGKILL of one agent (first
survivor and all survivors list it dead), and graceful leave propagation (leave RPC ->
every remaining agent lists it left). Prints a table, then one JSON line of medians
over the trials; with `--vs-serf` the line carries Serf's figures under "serf".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from benchlib import compile_package, cpu_seconds, rss_mib
from swimnode.agent.client import call
from swimnode.protocol.config import Config, Profile
from swimnode.testing.processes import LocalCluster, detection_bound, free_ports, wait_for

METRICS = (
    "start_s",
    "join_s",
    "join_from_spawn_s",
    "detect_first_s",
    "detect_all_s",
    "leave_s",
    "cpu_ms_per_s",
    "rss_mib",
)
FALSE_SUSPICIONS = "false_suspicions"
"""Suspicions raised while every member was alive (joining and idle); reported
where the implementation counts them (swimnode), summed over agents."""


class Agent(Protocol):
    """What the measurements need from one agent, whatever its implementation."""

    name: str

    @property
    def pid(self) -> int: ...

    def view(self) -> dict[str, str] | None:
        """`{member: state}` with states alive/suspect/dead/left, or None."""

    def leave(self) -> None:
        """Ask the agent to leave gracefully."""

    def suspicions(self) -> int | None:
        """Suspicions this agent has raised so far, or None if it does not say."""


class Cluster(Protocol):
    """Starts agents and kills every one it started when closed."""

    def start(self, name: str, seed: Agent | None) -> Agent: ...

    def kill(self, agent: Agent) -> None: ...

    def close(self) -> None: ...


# ----- swimnode --------------------------------------------------------------------------


@dataclass
class SwimAgent:
    name: str
    cluster: LocalCluster

    @property
    def pid(self) -> int:
        return self.cluster.agents[self.name].proc.pid

    def view(self) -> dict[str, str] | None:
        return self.cluster.agents[self.name].view()

    def leave(self) -> None:
        call(self.cluster.agents[self.name].rpc, "leave", timeout=30)

    def suspicions(self) -> int:
        stats = call(self.cluster.agents[self.name].rpc, "stats", timeout=10)["stats"]
        return int(stats.get("suspicions_raised", 0))


class SwimCluster:
    def __init__(self, profile: Profile) -> None:
        self.local = LocalCluster(profile=profile)

    def start(self, name: str, seed: Agent | None) -> Agent:
        seeds = [] if seed is None else [self.local.agents[seed.name]]
        self.local.start(name, seeds=seeds)
        return SwimAgent(name, self.local)

    def kill(self, agent: Agent) -> None:
        self.local.agents[agent.name].kill()

    def close(self) -> None:
        self.local.stop_all()


# ----- Serf ------------------------------------------------------------------------------

_SERF_STATES = {"alive": "alive", "leaving": "alive", "failed": "dead", "left": "left"}


@dataclass
class SerfAgent:
    name: str
    port: int
    rpc_port: int
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _serf(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["serf", *args, f"-rpc-addr=127.0.0.1:{self.rpc_port}"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )

    def view(self) -> dict[str, str] | None:
        done = self._serf("members", "-format=json")
        if done.returncode != 0:
            return None
        members = json.loads(done.stdout)["members"]
        return {m["name"]: _SERF_STATES.get(m["status"], m["status"]) for m in members}

    def leave(self) -> None:
        self._serf("leave")

    def suspicions(self) -> None:
        return None  # Serf does not report memberlist's suspicions


class SerfCluster:
    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.agents: list[SerfAgent] = []

    def start(self, name: str, seed: Agent | None) -> Agent:
        port, rpc_port = free_ports(2)
        args = [
            "serf",
            "agent",
            f"-node={name}",
            f"-bind=127.0.0.1:{port}",
            f"-rpc-addr=127.0.0.1:{rpc_port}",
            f"-profile={self.profile}",
            "-log-level=warn",
        ]
        if isinstance(seed, SerfAgent):
            args.append(f"-join=127.0.0.1:{seed.port}")
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        agent = SerfAgent(name, port, rpc_port, proc)
        self.agents.append(agent)
        return agent

    def kill(self, agent: Agent) -> None:
        assert isinstance(agent, SerfAgent)
        if agent.proc.poll() is None:
            os.kill(agent.proc.pid, signal.SIGKILL)
        agent.proc.wait(timeout=10)

    def close(self) -> None:
        for agent in self.agents:
            with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                self.kill(agent)


# ----- measurements ----------------------------------------------------------------------


@dataclass
class Trial:
    values: dict[str, float] = field(default_factory=dict)


def views(pool: ThreadPoolExecutor, agents: list[Agent]) -> list[dict[str, str] | None]:
    """Every agent's view, asked concurrently so one round is one RPC latency."""
    return list(pool.map(lambda a: a.view(), agents))


def all_alive(pool: ThreadPoolExecutor, agents: list[Agent]) -> bool:
    """Whether every agent answers and lists exactly `agents` as alive."""
    names = {a.name for a in agents}
    for view in views(pool, agents):
        if view is None or {n for n, s in view.items() if s == "alive"} != names:
            return False
    return True


def all_list(pool: ThreadPoolExecutor, among: list[Agent], subject: str, state: str) -> bool:
    """Whether every agent of `among` answers and lists `subject` as `state`."""
    return all(view is not None and view.get(subject) == state for view in views(pool, among))


def time_until(check: Callable[[], bool], limit: float) -> float:
    """Seconds until `check()` holds; raises if it does not within `limit`."""
    start = time.monotonic()
    if wait_for(check, limit, step=0.02) is None:
        raise RuntimeError(f"condition not reached within {limit:g} s")
    return time.monotonic() - start


def start_and_join(
    cluster: Cluster, names: list[str], pool: ThreadPoolExecutor, trial: Trial
) -> list[Agent]:
    """Start the seed, then the others through it; time start-up and join convergence."""
    seed = cluster.start(names[0], None)
    wait_for(lambda: seed.view() is not None, 20)
    agents = [seed] + [cluster.start(n, seed) for n in names[1:]]

    # Two clocks start when the last agent is spawned. Interpreter start-up is
    # not the protocol: with N processes starting at once on a small machine it
    # dominates, so join convergence also counts from when every agent is up
    # (answers RPC; each joins in the background, so that is before it has joined).
    spawned = time.monotonic()
    up: set[str] = set()

    def all_up_or_joined() -> bool:
        if len(up) < len(agents):
            for agent, view in zip(agents, views(pool, agents), strict=True):
                if view is not None:
                    up.add(agent.name)
            if len(up) < len(agents):
                return False
            trial.values["start_s"] = time.monotonic() - spawned
        return all_alive(pool, agents)

    trial.values["join_from_spawn_s"] = time_until(all_up_or_joined, 60)
    trial.values["join_s"] = trial.values["join_from_spawn_s"] - trial.values["start_s"]
    return agents


def measure_idle(agents: list[Agent], idle: float, trial: Trial) -> None:
    """CPU over `idle` seconds, RSS, and the suspicions raised so far."""
    before = {a.name: cpu_seconds(a.pid) for a in agents}
    time.sleep(idle)
    trial.values["cpu_ms_per_s"] = statistics.median(
        (cpu_seconds(a.pid) - before[a.name]) * 1000 / idle for a in agents
    )
    trial.values["rss_mib"] = statistics.median(rss_mib(a.pid) for a in agents)
    raised = [a.suspicions() for a in agents]
    if all(r is not None for r in raised):
        trial.values[FALSE_SUSPICIONS] = sum(r for r in raised if r is not None)


def measure_detection(
    cluster: Cluster,
    victim: Agent,
    survivors: list[Agent],
    bound: float,
    pool: ThreadPoolExecutor,
    trial: Trial,
) -> None:
    """Kill `victim`; time until the first and until every survivor lists it dead."""
    cluster.kill(victim)
    start = time.monotonic()
    first: float | None = None
    while True:
        seen = [v is not None and v.get(victim.name) == "dead" for v in views(pool, survivors)]
        now = time.monotonic() - start
        if first is None and any(seen):
            first = now
        if all(seen):
            break
        if now > bound:
            raise RuntimeError(f"{victim.name} not dead everywhere within {bound:.0f} s")
        time.sleep(0.02)
    trial.values["detect_first_s"] = first if first is not None else now
    trial.values["detect_all_s"] = now


def measure_leave(leaver: Agent, rest: list[Agent], pool: ThreadPoolExecutor, trial: Trial) -> None:
    """Ask `leaver` to leave; time until every agent of `rest` lists it left."""
    start = time.monotonic()
    pool.submit(leaver.leave)
    wait_for(lambda: all_list(pool, rest, leaver.name, "left"), 30, step=0.02)
    trial.values["leave_s"] = time.monotonic() - start


def run_trial(
    make: Callable[[], Cluster], nodes: int, profile: Profile, idle: float, pool: ThreadPoolExecutor
) -> Trial:
    names = [f"b{i}" for i in range(nodes)]
    bound = detection_bound(Config.profile(profile, "x"), nodes) + 10
    cluster = make()
    trial = Trial()
    try:
        agents = start_and_join(cluster, names, pool, trial)
        measure_idle(agents, idle, trial)
        victim, survivors = agents[-1], agents[:-1]
        measure_detection(cluster, victim, survivors, bound, pool, trial)
        measure_leave(survivors[-1], survivors[:-1], pool, trial)
    finally:
        cluster.close()
    return trial


def medians(trials: list[Trial]) -> dict[str, float]:
    """Medians of the metrics, and false suspicions summed over the trials."""
    out = {k: round(statistics.median(t.values[k] for t in trials), 3) for k in METRICS}
    if all(FALSE_SUSPICIONS in t.values for t in trials):
        out[FALSE_SUSPICIONS] = sum(t.values[FALSE_SUSPICIONS] for t in trials)
    return out


def print_table(label: str, trials: list[Trial]) -> None:
    print(f"{label:<10} {'trial':>5} " + " ".join(f"{k:>15}" for k in METRICS))
    for i, t in enumerate(trials, 1):
        print(f"{label:<10} {i:>5} " + " ".join(f"{t.values[k]:>15.3f}" for k in METRICS))
    m = medians(trials)
    if len(trials) > 1:
        print(f"{label:<10} {'med':>5} " + " ".join(f"{m[k]:>15.3f}" for k in METRICS))
    if FALSE_SUSPICIONS in m:
        print(
            f"{label:<10} false suspicions while all were alive (all trials): "
            f"{m[FALSE_SUSPICIONS]:g}"
        )


def bench(label: str, make: Callable[[], Cluster], args: argparse.Namespace) -> dict[str, float]:
    with ThreadPoolExecutor(max_workers=args.nodes) as pool:
        trials = [
            run_trial(make, args.nodes, args.profile, args.idle, pool) for _ in range(args.trials)
        ]
    print_table(label, trials)
    return medians(trials)


@contextlib.contextmanager
def _exit_cleanly() -> Iterator[None]:
    # Ctrl-C still runs every cluster's close() (the finally blocks) on the way out.
    try:
        yield
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=10, help="agents per trial (default 10)")
    parser.add_argument("--trials", type=int, default=1, help="trials (default 1)")
    parser.add_argument(
        "--profile",
        choices=("lan", "wan", "local"),
        default="lan",
        help="timer profile for both implementations (default lan)",
    )
    parser.add_argument(
        "--idle", type=float, default=20.0, help="idle CPU window, seconds (default 20)"
    )
    parser.add_argument(
        "--vs-serf", action="store_true", help="also run Serf agents (needs `serf` on PATH)"
    )
    args = parser.parse_args()
    compile_package()
    if args.nodes < 3 or args.trials < 1 or args.idle <= 0:
        parser.error("need --nodes >= 3, --trials >= 1 and --idle > 0")
    with socket.socket() as probe:  # loopback must work before spawning anything
        probe.bind(("127.0.0.1", 0))
    with _exit_cleanly():
        result: dict[str, object] = {
            "nodes": args.nodes,
            "profile": args.profile,
            "trials": args.trials,
        }
        result.update(bench("swimnode", lambda: SwimCluster(args.profile), args))
        if args.vs_serf:
            if shutil.which("serf") is None:
                print(
                    "--vs-serf: no `serf` binary on PATH (try `apt-get install serf`); "
                    "skipping the Serf run",
                    file=sys.stderr,
                )
            else:
                result["serf"] = bench("serf", lambda: SerfCluster(args.profile), args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
