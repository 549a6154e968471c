"""Agent-process benchmark on loopback: real `swimnode agent` processes (and, with
`--vs-serf`, Serf agents) measured from the outside through their RPC endpoints.

    python tools/bench_agents.py --nodes 100 --trials 2 --vs-serf [--stagger 0.1]

Per trial, in this order:

- start-up: the seed is started and listens, then the others are spawned at once
  (burst, the default) or `--stagger` seconds apart. An agent *listens* once it
  answers its RPC endpoint, which both implementations open only after their gossip
  port is bound. `start_s`: last agent spawned -> every agent listens.
- join convergence: `join_s` from when the last agent listens, `join_from_spawn_s`
  from its spawn, until every agent lists all N alive.
- false failures while every agent is running: members that some agent logged as
  failed, from the spawns until the join converged (`false_failed_start`) and over
  the idle window after it (`false_failed_idle`); and the suspicions raised over
  both, summed over agents (swimnode's `suspicions_raised`; Serf shows no count).
- idle CPU per agent over `--idle` seconds (ms of CPU per second, /proc/PID/stat;
  the median agent and the mean over agents) and RSS per agent (VmRSS).
- a late joiner (unless `--no-late-joiner`), started into the converged cluster
  through the seed: spawn -> it listens, then from there until every member lists it
  alive and until it lists every member alive.
- kill detection: SIGKILL of one agent -> the first and every survivor lists it dead.
- leave: the leave RPC to one agent -> every other agent lists it left.

A phase that does not finish within its limit is recorded as such (the table shows
`-` and the reason; the JSON line lists it) and the rest of that trial is skipped.
Prints a table per implementation, then one JSON line: medians over the trials that
measured each figure, every trial's figures, and the failures; Serf's under "serf".
Every process is killed by PID at the end of each trial, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import msgpack

from benchlib import compile_package, cpu_seconds, rss_mib
from swimnode.agent.client import RpcError, call
from swimnode.protocol.config import Config, Profile
from swimnode.testing.processes import LocalCluster, detection_bound, free_ports

METRICS = (
    "start_s",
    "join_s",
    "join_from_spawn_s",
    "false_failed_start",
    "false_failed_idle",
    "false_suspicions",
    "cpu_ms_per_s",
    "cpu_mean_ms_per_s",
    "rss_mib",
    "late_start_s",
    "late_known_s",
    "late_knows_s",
    "late_known_from_spawn_s",
    "detect_first_s",
    "detect_all_s",
    "leave_s",
)
COUNTS = ("false_failed_start", "false_failed_idle", "false_suspicions")
"""Metrics that are counts, summed over the trials rather than taken as medians."""
LATE = "late"
"""The late joiner's name."""
POLL_STEP = 0.02
"""Shortest pause between two rounds of looks at the agents."""


def pause_after(round_started: float) -> None:
    """Sleep as long as the round of looks took, and at least `POLL_STEP`. The agents
    answer on the cores they gossip on: at N=100, looking back to back kept more
    than half a core busy in the agents alone, slowing what it measures."""
    time.sleep(max(POLL_STEP, time.monotonic() - round_started))


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


@runtime_checkable
class Logs(Protocol):
    """An agent whose log goes to a file: a failure can quote it, and it names the
    members the agent saw fail (`failed_line`'s group 1)."""

    log_path: Path
    failed_line: ClassVar[re.Pattern[str]]


def failed_since(agent: Logs, offset: int) -> tuple[set[str], int]:
    """Members `agent` logged as failed past byte `offset` of its log, and the
    offset its log has reached."""
    with agent.log_path.open("rb") as log:
        log.seek(offset)
        text = log.read()
    names = {m.group(1) for m in agent.failed_line.finditer(text.decode(errors="replace"))}
    return names, offset + len(text)


def last_words(agent: Agent) -> str:
    """The last line the agent wrote, to say why it stopped; empty if unknown."""
    if not isinstance(agent, Logs):
        return ""
    with contextlib.suppress(OSError):
        lines = agent.log_path.read_text(errors="replace").strip().splitlines()
        if lines:
            return f": {lines[-1].strip()}"
    return ""


def exited(pid: int) -> bool:
    """Whether process `pid` has ended (gone, or a zombie not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


# ----- swimnode --------------------------------------------------------------------------


@dataclass
class SwimAgent:
    name: str
    cluster: LocalCluster
    failed_line: ClassVar[re.Pattern[str]] = re.compile(r"\] member (\S+) failed \(")

    @property
    def pid(self) -> int:
        return self.cluster.agents[self.name].proc.pid

    @property
    def log_path(self) -> Path:
        path = self.cluster.agents[self.name].log_path
        assert path is not None  # SwimCluster gives its agents a log directory
        return path

    def view(self) -> dict[str, str] | None:
        return self.cluster.agents[self.name].view()

    def leave(self) -> None:
        # The agent may exit before its answer arrives.
        with contextlib.suppress(RpcError):
            call(self.cluster.agents[self.name].rpc, "leave", timeout=30)

    def suspicions(self) -> int | None:
        try:
            stats = call(self.cluster.agents[self.name].rpc, "stats", timeout=10)["stats"]
        except RpcError:
            return None
        return int(stats.get("suspicions_raised", 0))


class LogDir:
    """Where a cluster's agents write their logs: a fresh directory under `keep`,
    left in place, or else a temporary one removed when the cluster closes."""

    def __init__(self, prefix: str, keep: Path | None) -> None:
        self._temp = None if keep else tempfile.TemporaryDirectory(prefix=prefix)
        self.path = Path(
            self._temp.name if self._temp else tempfile.mkdtemp(prefix=prefix, dir=keep)
        )

    def cleanup(self) -> None:
        if self._temp is not None:
            self._temp.cleanup()


class SwimCluster:
    def __init__(self, profile: Profile, keep_logs: Path | None = None) -> None:
        self.log_dir = LogDir("swimnode-", keep_logs)
        self.local = LocalCluster(profile=profile, log_dir=self.log_dir.path)

    def start(self, name: str, seed: Agent | None) -> Agent:
        seeds = [] if seed is None else [self.local.agents[seed.name]]
        self.local.start(name, seeds=seeds)
        return SwimAgent(name, self.local)

    def kill(self, agent: Agent) -> None:
        self.local.agents[agent.name].kill()

    def close(self) -> None:
        self.local.stop_all()
        self.log_dir.cleanup()


# ----- Serf ------------------------------------------------------------------------------

_SERF_STATES = {"alive": "alive", "leaving": "alive", "failed": "dead", "left": "left"}


class SerfRpcError(Exception):
    """Serf's RPC endpoint refused, broke or did not answer."""


class SerfRpc:
    """Serf's msgpack RPC over one connection kept open, so that polling costs neither
    a `serf` process per look (at N=100, a hundred per round) nor, since Serf logs
    each accepted client, a log line."""

    def __init__(self, port: int) -> None:
        self.address = ("127.0.0.1", port)
        self._sock: socket.socket | None = None
        self._unpacker = msgpack.Unpacker(raw=False)
        self._seq = 0
        self._lock = threading.Lock()

    def call(self, command: str, *, body: bool, timeout: float = 5.0) -> Any:
        """Send `command`; return its reply's body if it has one (`body`)."""
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.create_connection(self.address, timeout=timeout)
                    self._unpacker = msgpack.Unpacker(raw=False)
                    self._request("handshake", {"Version": 1})
                self._sock.settimeout(timeout)
                self._request(command)
                return self._read() if body else None
            except (OSError, ValueError, msgpack.UnpackException) as exc:
                self.close()
                raise SerfRpcError(str(exc)) from None

    def _request(self, command: str, args: dict[str, Any] | None = None) -> None:
        assert self._sock is not None
        self._seq += 1
        frames = [{"Command": command, "Seq": self._seq}] + ([] if args is None else [args])
        self._sock.sendall(b"".join(msgpack.packb(f) for f in frames))
        header = self._read()
        if header.get("Error"):
            raise SerfRpcError(header["Error"])

    def _read(self) -> Any:
        assert self._sock is not None
        while True:
            for item in self._unpacker:
                return item
            data = self._sock.recv(65536)
            if not data:
                raise SerfRpcError("connection closed")
            self._unpacker.feed(data)

    def close(self) -> None:
        """Drop the connection; the next call opens another."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


@dataclass
class SerfAgent:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    rpc: SerfRpc
    log_path: Path
    failed_line: ClassVar[re.Pattern[str]] = re.compile(r"EventMemberFailed: (\S+) ")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def view(self) -> dict[str, str] | None:
        try:
            members = self.rpc.call("members", body=True)["Members"]
        except SerfRpcError:
            return None
        return {m["Name"]: _SERF_STATES.get(m["Status"], m["Status"]) for m in members}

    def leave(self) -> None:
        with contextlib.suppress(SerfRpcError):
            self.rpc.call("leave", body=False, timeout=30)

    def suspicions(self) -> None:
        return None  # Serf counts memberlist's suspicions nowhere it shows


class SerfCluster:
    def __init__(self, profile: Profile, keep_logs: Path | None = None) -> None:
        self.profile = profile
        self.agents: list[SerfAgent] = []
        self.log_dir = LogDir("serf-", keep_logs)

    def start(self, name: str, seed: Agent | None) -> Agent:
        port, rpc_port = free_ports(2)
        args = [
            "serf",
            "agent",
            f"-node={name}",
            f"-bind=127.0.0.1:{port}",
            f"-rpc-addr=127.0.0.1:{rpc_port}",
            f"-profile={self.profile}",
            "-log-level=info",  # for the EventMemberFailed lines
        ]
        if isinstance(seed, SerfAgent):
            args.append(f"-join=127.0.0.1:{seed.port}")
        log_path = self.log_dir.path / f"{name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        agent = SerfAgent(name, port, proc, SerfRpc(rpc_port), log_path)
        self.agents.append(agent)
        return agent

    def kill(self, agent: Agent) -> None:
        assert isinstance(agent, SerfAgent)
        agent.rpc.close()
        if agent.proc.poll() is None:
            os.kill(agent.proc.pid, signal.SIGKILL)
        agent.proc.wait(timeout=10)

    def close(self) -> None:
        for agent in self.agents:
            with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                self.kill(agent)
        self.log_dir.cleanup()


# ----- measurements ----------------------------------------------------------------------


class PhaseFailed(Exception):
    """A phase did not finish within its limit; the message says which and why."""


@dataclass
class Trial:
    values: dict[str, float] = field(default_factory=dict)
    failure: str | None = None


View = dict[str, str]
Check = tuple[Agent, Callable[[View], bool]]


def watch(
    pool: ThreadPoolExecutor, checks: Sequence[Check], start: float, limit: float
) -> list[float] | None:
    """Seconds from `start` until each check first held, the last of them confirmed
    by one round in which all hold together; None past `limit` seconds.

    Only agents with a check still pending are asked, so a round costs the agents
    (and the machine they share) less as the condition spreads.
    """
    first: list[float | None] = [None] * len(checks)
    while True:
        pending = [i for i, t in enumerate(first) if t is None] or list(range(len(checks)))
        confirming = all(t is not None for t in first)
        agents = list({id(checks[i][0]): checks[i][0] for i in pending}.values())
        asked = time.monotonic()
        seen = dict(zip((id(a) for a in agents), pool.map(lambda a: a.view(), agents), strict=True))
        now = time.monotonic() - start
        for i in pending:
            agent, holds = checks[i]
            view = seen[id(agent)]
            ok = view is not None and holds(view)
            if not ok:
                first[i] = None
            elif not confirming:
                first[i] = now
        if confirming and all(t is not None for t in first):
            return [t for t in first if t is not None]
        if now > limit:
            return None
        pause_after(asked)


def lists_alive(names: set[str]) -> Callable[[View], bool]:
    """Check: the view lists exactly `names` as alive."""
    return lambda view: {n for n, s in view.items() if s == "alive"} == names


def lists_as(subject: str, state: str) -> Callable[[View], bool]:
    """Check: the view lists `subject` as `state`."""
    return lambda view: view.get(subject) == state


def wait_listening(pool: ThreadPoolExecutor, agents: list[Agent], limit: float) -> dict[str, float]:
    """Monotonic time at which each agent first answered; raises `PhaseFailed` if one
    exits first (a busy port, a failed join) or some do not answer within `limit`."""
    at: dict[str, float] = {}
    deadline = time.monotonic() + limit
    while len(at) < len(agents):
        pending = [a for a in agents if a.name not in at]
        asked = time.monotonic()
        answered = list(pool.map(lambda a: a.view() is not None, pending))
        now = time.monotonic()
        for agent, ok in zip(pending, answered, strict=True):
            if ok:
                at[agent.name] = now
            elif exited(agent.pid):
                raise PhaseFailed(f"{agent.name} exited before it listened{last_words(agent)}")
        if now > deadline and len(at) < len(agents):
            raise PhaseFailed(f"{len(agents) - len(at)} agents not listening after {limit:g} s")
        pause_after(asked)
    return at


def start_and_join(
    cluster: Cluster,
    names: list[str],
    stagger: float,
    limit: float,
    pool: ThreadPoolExecutor,
    trial: Trial,
) -> list[Agent]:
    """Start the seed and wait until it listens, then the others through it; time
    start-up and join convergence."""
    seed = cluster.start(names[0], None)
    wait_listening(pool, [seed], limit)
    agents = [seed]
    for name in names[1:]:
        if stagger > 0 and len(agents) > 1:
            time.sleep(stagger)
        agents.append(cluster.start(name, seed))
    spawned = time.monotonic()
    listened = max(wait_listening(pool, agents, limit).values())
    trial.values["start_s"] = listened - spawned
    everyone = set(names)
    times = watch(pool, [(a, lists_alive(everyone)) for a in agents], listened, limit)
    if times is None:
        raise PhaseFailed(f"join: not every agent lists all {len(names)} alive after {limit:g} s")
    trial.values["join_s"] = max(times)
    trial.values["join_from_spawn_s"] = listened - spawned + max(times)
    return agents


class FalseFailures:
    """Members some agent logged as failed while every agent was running, counted
    apart for the start (spawn -> join converged) and the idle window after it."""

    def __init__(self) -> None:
        self.offsets: dict[str, int] = {}

    def count(self, agents: list[Agent], key: str, trial: Trial) -> None:
        """Count the members logged as failed since the last count under `key`."""
        failed: set[str] = set()
        for agent in agents:
            if not isinstance(agent, Logs):
                return  # not every agent says: no figure
            names, self.offsets[agent.name] = failed_since(agent, self.offsets.get(agent.name, 0))
            failed |= names
        trial.values[key] = len(failed)


def count_suspicions(agents: list[Agent], pool: ThreadPoolExecutor, trial: Trial) -> None:
    """Suspicions raised so far, summed over agents, where every agent reports them."""
    counts = list(pool.map(lambda a: a.suspicions(), agents))
    if all(c is not None for c in counts):
        trial.values["false_suspicions"] = sum(c for c in counts if c is not None)


def measure_idle(agents: list[Agent], idle: float, trial: Trial) -> None:
    """CPU per agent over `idle` seconds (median and mean) and RSS per agent."""
    before = {a.name: cpu_seconds(a.pid) for a in agents}
    time.sleep(idle)
    used = [(cpu_seconds(a.pid) - before[a.name]) * 1000 / idle for a in agents]
    trial.values["cpu_ms_per_s"] = statistics.median(used)
    trial.values["cpu_mean_ms_per_s"] = statistics.fmean(used)
    trial.values["rss_mib"] = statistics.median(rss_mib(a.pid) for a in agents)


def measure_late_joiner(
    cluster: Cluster,
    seed: Agent,
    agents: list[Agent],
    limit: float,
    pool: ThreadPoolExecutor,
    trial: Trial,
) -> Agent:
    """Start one more agent through the seed; time until it listens, then until every
    member lists it alive and until it lists every member alive."""
    spawned = time.monotonic()
    late = cluster.start(LATE, seed)
    listened = wait_listening(pool, [late], limit)[LATE]
    trial.values["late_start_s"] = listened - spawned
    everyone = {a.name for a in agents} | {LATE}
    checks = [(a, lists_as(LATE, "alive")) for a in agents] + [(late, lists_alive(everyone))]
    times = watch(pool, checks, listened, limit)
    if times is None:
        raise PhaseFailed(f"late joiner: not known alive everywhere after {limit:g} s")
    trial.values["late_known_s"] = max(times[:-1])
    trial.values["late_knows_s"] = times[-1]
    trial.values["late_known_from_spawn_s"] = listened - spawned + max(times[:-1])
    return late


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
    times = watch(pool, [(s, lists_as(victim.name, "dead")) for s in survivors], start, bound)
    if times is None:
        raise PhaseFailed(f"detection: {victim.name} not dead everywhere after {bound:.0f} s")
    trial.values["detect_first_s"] = min(times)
    trial.values["detect_all_s"] = max(times)


def measure_leave(
    leaver: Agent, rest: list[Agent], limit: float, pool: ThreadPoolExecutor, trial: Trial
) -> None:
    """Ask `leaver` to leave; time until every agent of `rest` lists it left."""
    start = time.monotonic()
    pool.submit(leaver.leave)
    times = watch(pool, [(a, lists_as(leaver.name, "left")) for a in rest], start, limit)
    if times is None:
        raise PhaseFailed(f"leave: {leaver.name} not left everywhere after {limit:g} s")
    trial.values["leave_s"] = max(times)


@dataclass(frozen=True)
class Plan:
    """One implementation's trials: how many agents, how they start, what is measured."""

    nodes: int
    profile: Profile
    idle: float
    stagger: float = 0.0
    late_joiner: bool = False
    limit: float = 60.0
    """Longest wait for start-up, join convergence, a late joiner and a leave."""


def run_trial(make: Callable[[], Cluster], plan: Plan, pool: ThreadPoolExecutor) -> Trial:
    names = [f"b{i}" for i in range(plan.nodes)]
    bound = detection_bound(Config.profile(plan.profile, "x"), plan.nodes + 1) + 10
    cluster = make()
    trial = Trial()
    try:
        agents = start_and_join(cluster, names, plan.stagger, plan.limit, pool, trial)
        false_failures = FalseFailures()
        false_failures.count(agents, "false_failed_start", trial)
        measure_idle(agents, plan.idle, trial)
        false_failures.count(agents, "false_failed_idle", trial)
        count_suspicions(agents, pool, trial)
        if plan.late_joiner:
            late = measure_late_joiner(cluster, agents[0], agents, plan.limit, pool, trial)
            agents = [*agents, late]
        victim, leaver = agents[plan.nodes - 1], agents[plan.nodes - 2]
        survivors = [a for a in agents if a is not victim]
        measure_detection(cluster, victim, survivors, bound, pool, trial)
        measure_leave(leaver, [a for a in survivors if a is not leaver], plan.limit, pool, trial)
    except PhaseFailed as exc:
        trial.failure = str(exc)
    finally:
        cluster.close()
    return trial


def summary(trials: list[Trial]) -> dict[str, Any]:
    """Medians over the trials that measured each metric (counts summed), each
    trial's figures, and the failures."""
    out: dict[str, Any] = {}
    for key in METRICS:
        values = [t.values[key] for t in trials if key in t.values]
        if not values:
            out[key] = None
        elif key in COUNTS:
            out[key] = sum(values)
        else:
            out[key] = round(statistics.median(values), 3)
    out["completed"] = sum(t.failure is None for t in trials)
    out["failures"] = [t.failure for t in trials if t.failure is not None]
    out["per_trial"] = [{k: round(v, 3) for k, v in t.values.items()} for t in trials]
    return out


def print_table(label: str, trials: list[Trial]) -> None:
    """One row per metric, one column per trial, then the medians (counts: sums)."""
    result = summary(trials)
    heads = [f"trial {i}" for i in range(1, len(trials) + 1)] + ["median/sum"]
    print(f"{label:<24}" + "".join(f"{h:>12}" for h in heads))
    for key in METRICS:
        cells = [t.values.get(key) for t in trials] + [result[key]]
        print(f"{key:<24}" + "".join(f"{'-' if c is None else f'{c:.3f}':>12}" for c in cells))
    for i, trial in enumerate(trials, 1):
        if trial.failure is not None:
            print(f"{label}: trial {i} stopped: {trial.failure}")


def bench(
    label: str,
    make: Callable[[], Cluster],
    args: argparse.Namespace,
    *,
    stagger: float = 0.0,
    late_joiner: bool = False,
) -> dict[str, Any]:
    """Run `args.trials` trials of `args.nodes` agents; print the table and return
    the summary."""
    plan = Plan(args.nodes, args.profile, args.idle, stagger, late_joiner)
    with ThreadPoolExecutor(max_workers=min(32, args.nodes + 1)) as pool:
        trials = [run_trial(make, plan, pool) for _ in range(args.trials)]
    print_table(label, trials)
    return summary(trials)


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
        "--stagger",
        type=float,
        default=0.0,
        help="seconds between spawns after the seed (default 0: all at once)",
    )
    parser.add_argument("--no-late-joiner", action="store_true", help="skip the late joiner")
    parser.add_argument(
        "--keep-logs",
        type=Path,
        metavar="DIR",
        help="keep every agent's log, one new directory per trial under DIR",
    )
    parser.add_argument(
        "--vs-serf", action="store_true", help="also run Serf agents (needs `serf` on PATH)"
    )
    args = parser.parse_args()
    if args.nodes < 3 or args.trials < 1 or args.idle <= 0 or args.stagger < 0:
        parser.error("need --nodes >= 3, --trials >= 1, --idle > 0 and --stagger >= 0")
    if args.keep_logs is not None and not args.keep_logs.is_dir():
        parser.error(f"--keep-logs: {args.keep_logs} is not a directory")
    compile_package()
    with socket.socket() as probe:  # loopback must work before spawning anything
        probe.bind(("127.0.0.1", 0))
    with _exit_cleanly():
        result: dict[str, Any] = {
            "nodes": args.nodes,
            "profile": args.profile,
            "trials": args.trials,
            "start": f"stagger {args.stagger:g} s" if args.stagger else "burst",
        }
        result.update(
            bench(
                "swimnode",
                lambda: SwimCluster(args.profile, args.keep_logs),
                args,
                stagger=args.stagger,
                late_joiner=not args.no_late_joiner,
            )
        )
        if args.vs_serf:
            if shutil.which("serf") is None:
                print(
                    "--vs-serf: no `serf` binary on PATH (try `apt-get install serf`); "
                    "skipping the Serf run",
                    file=sys.stderr,
                )
            else:
                result["serf"] = bench(
                    "serf",
                    lambda: SerfCluster(args.profile, args.keep_logs),
                    args,
                    stagger=args.stagger,
                    late_joiner=not args.no_late_joiner,
                )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
