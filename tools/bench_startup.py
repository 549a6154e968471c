"""Process start-up cost: how long a Python process takes to start, and how much CPU
it uses, for the commands swimnode users run.

    python tools/bench_startup.py [--procs 9] [--trials 3]

Cases: a bare interpreter (`python -c pass`), `import trio`, a client command that
needs no agent (`swimnode members --help`), `import swimnode.agent.daemon`, and a real agent
(`swimnode agent`, until it answers on its RPC endpoint). Each case runs alone
(`single`: wall time and CPU time) and as `--procs` processes spawned at once
(`burst`: wall time until the last one is done or answering, median CPU per process),
which is what starting a local cluster does: tools/bench_agents.py starts 9 agents
together at --nodes 10. Prints a table of medians over the trials, then one JSON line.

CPU time is user + system: from `os.wait4` for the commands, from `/proc/PID/stat`
(10 ms ticks) for an agent at the moment it first answers. Memory is not reported:
on Linux a spawned child's `ru_maxrss` starts at its parent's peak, so it would show
this script's size rather than the command's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from benchlib import compile_package, cpu_seconds
from swimnode.agent.client import RpcError, call
from swimnode.testing.processes import LocalCluster, free_ports, wait_for

COMMANDS: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "import trio": ["-c", "import trio"],
    "swimnode members --help": ["-m", "swimnode", "members", "--help"],
    "import swimnode.agent.daemon": ["-c", "import swimnode.agent.daemon"],
}
AGENT = "swimnode agent"
PROCESS_LIMIT = 60.0
"""Seconds a process may take before it is killed and the run fails."""


@dataclass(frozen=True, slots=True)
class Run:
    """One case measured once: alone, then `procs` at once."""

    single_wall_s: float
    single_cpu_s: float
    burst_wall_s: float
    burst_cpu_s: float
    """Median CPU of one process of the burst."""


# ----- plain commands ----------------------------------------------------------------------


def spawn(args: Sequence[str]) -> int:
    """Start `python ARGS` with its output discarded; returns the PID."""
    devnull = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_WRONLY, 0) for fd in (1, 2)]
    return os.posix_spawn(sys.executable, [sys.executable, *args], os.environ, file_actions=devnull)


def reap(pids: list[int]) -> list[resource.struct_rusage]:
    """Wait for every process in `pids` (killing, by PID, any still running after
    `PROCESS_LIMIT`); returns their resource usage. Raises if one failed."""
    done: set[int] = set()

    def kill_stragglers() -> None:
        for pid in set(pids) - done:
            os.kill(pid, signal.SIGKILL)

    watchdog = threading.Timer(PROCESS_LIMIT, kill_stragglers)
    watchdog.start()
    results = []
    try:
        for pid in pids:
            _, status, usage = os.wait4(pid, 0)
            done.add(pid)
            results.append((pid, os.waitstatus_to_exitcode(status), usage))
    finally:
        watchdog.cancel()
    for pid, code, _ in results:
        if code != 0:
            raise RuntimeError(f"process {pid} exited with code {code}")
    return [usage for _, _, usage in results]


def cpu_of(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def measure_command(args: Sequence[str], procs: int) -> Run:
    start = time.monotonic()
    [alone] = reap([spawn(args)])
    single_wall = time.monotonic() - start
    start = time.monotonic()
    burst = reap([spawn(args) for _ in range(procs)])
    burst_wall = time.monotonic() - start
    return Run(single_wall, cpu_of(alone), burst_wall, statistics.median(cpu_of(u) for u in burst))


# ----- agents ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready:
    """An agent at the moment it first answered RPC."""

    wall_s: float
    cpu_s: float


def start_agents(count: int, pool: ThreadPoolExecutor) -> list[Ready]:
    """Start `count` agents at once and wait until each answers RPC; they are all
    killed (by PID) on return."""
    # Every port chosen in one call, so no two agents are handed the same one.
    ports = free_ports(2 * count)
    with tempfile.TemporaryDirectory() as logs, LocalCluster(log_dir=Path(logs)) as cluster:
        start = time.monotonic()
        agents = [
            cluster.start(f"s{i}", port=ports[2 * i], rpc_port=ports[2 * i + 1])
            for i in range(count)
        ]

        def ready(index: int) -> Ready:
            agent = agents[index]

            def answers() -> bool:
                try:
                    call(agent.rpc, "stats", timeout=PROCESS_LIMIT)
                except RpcError:
                    if not agent.running:
                        log = agent.log_path.read_text().strip() if agent.log_path else ""
                        raise RuntimeError(f"agent {agent.name} exited: {log}") from None
                    return False
                return True

            if not wait_for(answers, PROCESS_LIMIT, step=0.01):
                raise RuntimeError(f"agent {agent.name} did not answer")
            wall = time.monotonic() - start
            return Ready(wall, cpu_seconds(agent.proc.pid))

        return list(pool.map(ready, range(count)))


def measure_agents(procs: int, pool: ThreadPoolExecutor) -> Run:
    [alone] = start_agents(1, pool)
    burst = start_agents(procs, pool)
    return Run(
        alone.wall_s,
        alone.cpu_s,
        max(r.wall_s for r in burst),
        statistics.median(r.cpu_s for r in burst),
    )


# ----- report ------------------------------------------------------------------------------


def medians(runs: list[Run]) -> dict[str, float]:
    return {
        key: round(statistics.median(getattr(r, key) for r in runs), 3) for key in Run.__slots__
    }


def print_table(results: dict[str, dict[str, float]], procs: int) -> None:
    header = ("case", "alone: wall s", "CPU s", f"{procs} at once: wall s", "CPU s/proc")
    rows = [(case, *(f"{m[k]:.3f}" for k in Run.__slots__)) for case, m in results.items()]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--procs", type=int, default=9, help="processes spawned at once per burst (default 9)"
    )
    parser.add_argument("--trials", type=int, default=3, help="trials (default 3)")
    args = parser.parse_args()
    compile_package()
    if args.procs < 1 or args.trials < 1:
        parser.error("need --procs >= 1 and --trials >= 1")
    runs: dict[str, list[Run]] = {name: [] for name in (*COMMANDS, AGENT)}
    try:
        with ThreadPoolExecutor(max_workers=args.procs) as pool:
            # Trials interleave the cases so a slow spell of the machine hits them all.
            for _ in range(args.trials):
                for name, argv in COMMANDS.items():
                    runs[name].append(measure_command(argv, args.procs))
                runs[AGENT].append(measure_agents(args.procs, pool))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    results = {name: medians(r) for name, r in runs.items()}
    print_table(results, args.procs)
    print(
        json.dumps(
            {"procs": args.procs, "trials": args.trials, "cpus": os.cpu_count(), "cases": results}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
