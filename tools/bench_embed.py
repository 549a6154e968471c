"""What each way of embedding a node costs: Trio (`swimnode.open_node`), asyncio
(`swimnode.aio`) and threads (`swimnode.blocking`), on loopback UDP.

For each flavour it starts a cluster of N nodes, one process each (the three
clusters run side by side, so they share the machine's load), then measures:

- idle CPU per node, ms of CPU per s, over `--window` seconds once all converged;
- RSS per process at the end of that window;
- event latency: from the node publishing an event (its `swimnode.members` log
  line, written on the node's thread just before the event is handed to the
  subscribers) to user code holding it (a task, or for `blocking` a consumer
  thread reading `node.events()`), over `--events` own `set_state` updates per
  node, one at a time;
- crash detection: seconds from SIGKILL of the last node to the first survivor and
  to every survivor declaring it failed (one crash per flavour: noisy);
- and, in this process, the CPU cost of one wakeup of a Trio task under `trio.run`
  and of an asyncio task, which `swimnode.aio`'s driver uses (what an idle node
  pays per wakeup).

    python tools/bench_embed.py --nodes 10 --window 20 --events 100
    python tools/bench_embed.py --nodes 0      # only the cost of one wakeup

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import benchlib

FLAVOURS = ("trio", "aio", "aio-uvloop", "blocking")
LOOPBACK = "127.0.0.1"


# ----- worker side: one node of one flavour ---------------------------------------


class Probe:
    """What a worker does with each event, whatever the flavour: track who is live
    (prints `converged` once all N are), print `failed NAME TIME` for each failure,
    and time its own `bench` updates from publication to receipt."""

    def __init__(self, name: str, nodes: int) -> None:
        self.name = name
        self.nodes = nodes
        self.live = {name}
        self.converged = False
        self.published = 0.0
        self.latencies: list[float] = []
        handler = logging.Handler()
        handler.emit = self._published  # type: ignore[method-assign]
        members = logging.getLogger("swimnode.members")
        members.setLevel(logging.INFO)
        members.propagate = False
        members.addHandler(handler)

    def _published(self, record: logging.LogRecord) -> None:
        args = record.args
        if isinstance(args, tuple) and args[1:3] == (self.name, "updated"):
            self.published = time.perf_counter()

    def on_event(self, event: Any) -> bool:
        """Handle one event; true if it is our own `bench` update."""
        received = time.perf_counter()
        member = getattr(event, "member", None)
        if member is None:
            return False
        if member.name == self.name:
            if "bench" in getattr(event, "changed_keys", ()):
                self.latencies.append(received - self.published)
                return True
            return False
        if event.kind in ("joined", "alive", "rejoined"):
            self.live.add(member.name)
        elif event.kind in ("failed", "left"):
            self.live.discard(member.name)
            say(f"{event.kind} {member.name} {time.time()}")
        if not self.converged and len(self.live) == self.nodes:
            self.converged = True
            say("converged")
        return False

    def report(self) -> None:
        say(json.dumps(self.latencies))
        self.latencies = []


def say(line: str) -> None:
    print(line, flush=True)


def worker_config(name: str, port: int, seed: int) -> Any:
    from swimnode import Config

    seeds = () if port == seed else ((LOOPBACK, seed),)
    return Config.local(name, bind=(LOOPBACK, port), seeds=seeds)


def run_trio_worker(name: str, port: int, seed: int, nodes: int) -> None:
    import trio

    import swimnode

    async def main() -> None:
        probe = Probe(name, nodes)
        async with swimnode.open_node(worker_config(name, port, seed)) as node:
            stream = node.events()
            own = trio.Event()

            async def consume() -> None:
                nonlocal own
                async for event in stream:
                    if probe.on_event(event):
                        own.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                say("ready")
                while (line := await trio.to_thread.run_sync(sys.stdin.readline)).strip():
                    command, *rest = line.split()
                    if command == "quit":
                        break
                    for i in range(int(rest[0])):
                        own = trio.Event()
                        node.set_state("bench", i)
                        await own.wait()
                    probe.report()
                nursery.cancel_scope.cancel()

    trio.run(main)


def run_aio_worker(
    name: str, port: int, seed: int, nodes: int, run: Callable[[Any], object] = asyncio.run
) -> None:
    import swimnode.aio

    async def main() -> None:
        probe = Probe(name, nodes)
        async with swimnode.aio.open_node(worker_config(name, port, seed)) as node:
            stream = node.events()
            own = asyncio.Event()

            async def consume() -> None:
                async for event in stream:
                    if probe.on_event(event):
                        own.set()

            task = asyncio.create_task(consume())
            say("ready")
            while (line := await asyncio.to_thread(sys.stdin.readline)).strip():
                command, *rest = line.split()
                if command == "quit":
                    break
                for i in range(int(rest[0])):
                    own.clear()
                    node.set_state("bench", i)
                    await own.wait()
                probe.report()
            task.cancel()

    run(main())


def run_uvloop_worker(name: str, port: int, seed: int, nodes: int) -> None:
    import uvloop

    run_aio_worker(name, port, seed, nodes, uvloop.run)


def run_blocking_worker(name: str, port: int, seed: int, nodes: int) -> None:
    import swimnode.blocking

    probe = Probe(name, nodes)
    own = threading.Event()
    with swimnode.blocking.start_node(worker_config(name, port, seed)) as node:
        stream = node.events()

        def consume() -> None:
            for event in stream:
                if probe.on_event(event):
                    own.set()

        consumer = threading.Thread(target=consume, daemon=True)
        consumer.start()
        say("ready")
        while (line := sys.stdin.readline()).strip():
            command, *rest = line.split()
            if command == "quit":
                break
            for i in range(int(rest[0])):
                own.clear()
                node.set_state("bench", i)
                own.wait()
            probe.report()
    consumer.join(10)


WORKERS: dict[str, Callable[[str, int, int, int], None]] = {
    "trio": run_trio_worker,
    "aio": run_aio_worker,
    "aio-uvloop": run_uvloop_worker,
    "blocking": run_blocking_worker,
}


# ----- parent side -----------------------------------------------------------------


@dataclass
class Worker:
    flavour: str
    name: str
    proc: subprocess.Popen[str]
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    failures: dict[str, float] = field(default_factory=dict)
    converged: bool = False

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def next_line(self, timeout: float) -> str:
        """The next line that is not a membership notice (those are recorded)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if not self.note(line):
                return line

    def note(self, line: str) -> bool:
        words = line.split()
        if words[:1] == ["converged"]:
            self.converged = True
            return True
        if words[:1] == ["failed"]:
            self.failures.setdefault(words[1], float(words[2]))
            return True
        return False

    def drain(self) -> None:
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return
            self.note(line)


def pump(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line.strip())


def start_worker(flavour: str, name: str, port: int, seed: int, nodes: int) -> Worker:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--worker", flavour, name, str(port), str(seed), str(nodes)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    worker = Worker(flavour, name, proc)
    assert proc.stdout is not None
    threading.Thread(target=pump, args=(proc.stdout, worker.lines), daemon=True).start()
    return worker


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_clusters(flavours: list[str], nodes: int) -> dict[str, list[Worker]]:
    """One cluster per flavour, each node its own process; returns once all run."""
    from swimnode.testing.processes import free_ports

    workers: dict[str, list[Worker]] = {}
    for flavour in flavours:
        ports = free_ports(nodes)
        seed = start_worker(flavour, f"{flavour}0", ports[0], ports[0], nodes)
        workers[flavour] = [seed]
        if seed.next_line(30) != "ready":
            raise SystemExit(f"{flavour} seed did not start")
        workers[flavour] += [
            start_worker(flavour, f"{flavour}{i}", ports[i], ports[0], nodes)
            for i in range(1, nodes)
        ]
    for group in workers.values():
        for w in group[1:]:
            if w.next_line(60) != "ready":
                raise SystemExit(f"{w.name} did not start")
    return workers


def idle_cpu(every: list[Worker], window: float) -> tuple[dict[int, float], dict[int, float]]:
    """CPU ms/s of each worker process over `window` idle seconds, and its RSS (MiB)."""
    before = {w.proc.pid: benchlib.cpu_seconds(w.proc.pid) for w in every}
    time.sleep(window)
    after = {w.proc.pid: benchlib.cpu_seconds(w.proc.pid) for w in every}
    rss = {w.proc.pid: benchlib.rss_mib(w.proc.pid) for w in every}
    return {pid: (after[pid] - before[pid]) * 1000 / window for pid in before}, rss


def crash_last(workers: dict[str, list[Worker]]) -> dict[str, list[float]]:
    """SIGKILL each cluster's last node; per flavour, the seconds until each
    survivor declared it failed."""
    killed_at: dict[str, float] = {}
    for flavour, group in workers.items():
        killed_at[flavour] = time.time()
        os.kill(group[-1].proc.pid, signal.SIGKILL)
        group[-1].proc.wait(10)

    def all_detected() -> bool:
        for group in workers.values():
            for w in group[:-1]:
                w.drain()
        return all(g[-1].name in w.failures for g in workers.values() for w in g[:-1])

    wait_until(all_detected, 120, "crash detection")
    return {
        flavour: [w.failures[group[-1].name] - killed_at[flavour] for w in group[:-1]]
        for flavour, group in workers.items()
    }


def measure(flavours: list[str], nodes: int, window: float, events: int) -> dict[str, Any]:
    workers: dict[str, list[Worker]] = {}
    try:
        workers = start_clusters(flavours, nodes)
        every = [w for group in workers.values() for w in group]

        def all_converged() -> bool:
            for w in every:
                w.drain()
            return all(w.converged for w in every)

        wait_until(all_converged, 60, "convergence")
        time.sleep(3.0)  # the join news runs out of retransmissions
        cpu, rss = idle_cpu(every, window)
        latencies: dict[str, list[float]] = {f: [] for f in flavours}
        for w in every:
            w.send(f"latency {events}")
            latencies[w.flavour] += json.loads(w.next_line(60))
        detected = crash_last(workers)
        result: dict[str, Any] = {}
        for flavour, group in workers.items():
            lat = latencies[flavour]
            result[flavour] = {
                "idle_cpu_ms_per_s": statistics.fmean(cpu[w.proc.pid] for w in group),
                "rss_mib": statistics.fmean(rss[w.proc.pid] for w in group),
                "event_p50_ms": percentile(lat, 0.50) * 1000,
                "event_p99_ms": percentile(lat, 0.99) * 1000,
                "events": len(lat),
                "detect_first_s": min(detected[flavour]),
                "detect_all_s": max(detected[flavour]),
            }
        return result
    finally:
        for group in workers.values():
            for w in group:
                if w.proc.poll() is None:
                    os.kill(w.proc.pid, signal.SIGKILL)
                w.proc.wait(10)


def wakeup_cost(wakeups: int) -> dict[str, float]:
    """CPU microseconds (all threads) per wakeup of a task sleeping 0.5 ms at a
    time: a Trio task under `trio.run` (the Trio and blocking flavours), and an
    asyncio task (the aio flavour's driver) on asyncio's default loop. (Not on
    uvloop: its timers count whole milliseconds, so a 0.5 ms sleep does not wait.)"""
    import trio

    async def sleeper() -> None:
        for _ in range(wakeups):
            await trio.sleep(0.0005)

    async def asyncio_sleeper() -> None:
        for _ in range(wakeups):
            await asyncio.sleep(0.0005)

    runs: dict[str, Callable[[], object]] = {
        "trio.run": lambda: trio.run(sleeper),
        "asyncio task": lambda: asyncio.run(asyncio_sleeper()),
    }
    costs = {}
    for label, run in runs.items():
        start = time.process_time()
        run()
        costs[label] = (time.process_time() - start) / wakeups * 1e6
    return costs


def main() -> int:
    if sys.argv[1:2] == ["--worker"]:
        flavour, name, port, seed, nodes = sys.argv[2:7]
        WORKERS[flavour](name, int(port), int(seed), int(nodes))
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--nodes", type=int, default=10, help="nodes (processes) per flavour (0: wakeups only)"
    )
    parser.add_argument("--window", type=float, default=20.0, help="idle seconds measured")
    parser.add_argument("--events", type=int, default=100, help="latency samples per node")
    parser.add_argument(
        "--flavours",
        default="trio,aio,blocking",
        help=f"comma-separated, of {', '.join(FLAVOURS)} (aio-uvloop needs uvloop)",
    )
    parser.add_argument(
        "--wakeups", type=int, default=4000, help="wakeups timed for the cost of one (0: skip)"
    )
    args = parser.parse_args()
    flavours = args.flavours.split(",")
    if unknown := set(flavours) - set(FLAVOURS):
        parser.error(f"unknown flavour(s): {', '.join(sorted(unknown))}")
    benchlib.compile_package()
    result = measure(flavours, args.nodes, args.window, args.events) if args.nodes else {}
    load = os.getloadavg()[0]
    print(f"{args.nodes} nodes per flavour, idle window {args.window:g} s, load {load:.2f}")
    header = ("flavour", "idle ms/s", "RSS MiB", "ev p50 ms", "ev p99 ms", "detect 1st", "all")
    print("".join(f"{h:>12}" for h in header))
    for flavour, row in result.items():
        print(
            f"{flavour:>12}{row['idle_cpu_ms_per_s']:>12.3f}{row['rss_mib']:>12.1f}"
            f"{row['event_p50_ms']:>12.3f}{row['event_p99_ms']:>12.3f}"
            f"{row['detect_first_s']:>12.2f}{row['detect_all_s']:>12.2f}"
        )
    wakeups = wakeup_cost(args.wakeups) if args.wakeups else {}
    for label, cost in wakeups.items():
        print(f"one wakeup, {label}: {cost:.1f} us of CPU")
    if "trio" in result:
        base = result["trio"]["idle_cpu_ms_per_s"]
        for row in result.values():
            # CPU is read in 10 ms ticks: a short window can read none for Trio.
            row["idle_cpu_vs_trio"] = row["idle_cpu_ms_per_s"] / base if base else None
    print(
        json.dumps(
            {
                "nodes": args.nodes,
                "window": args.window,
                "events_per_node": args.events,
                "load1": load,
                "flavours": result,
                "wakeup_cpu_us": wakeups,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
