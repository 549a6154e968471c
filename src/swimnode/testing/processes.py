"""Agent processes on loopback, for the `demo --udp` mode, the tests and the benchmarks.

Everything here is blocking and process-based: each agent is a real
`python -m swimnode agent` subprocess, queried through its RPC endpoint and stopped by
its PID. `LocalCluster` is a context manager that always kills what it started.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

from ..agent import client as rpcclient
from ..protocol.broadcasts import retransmit_limit
from ..protocol.config import Config, Profile
from ..protocol.suspicion import suspicion_bounds

LOOPBACK = "127.0.0.1"
T = TypeVar("T")


_PORT_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_PORT = 10000


def _ports_the_kernel_never_picks() -> range | None:
    """The ports below the range Linux draws from for `bind(0)` and outgoing
    connections (from `_LOWEST_PORT`), or None where that range is unknown."""
    try:
        low = int(_PORT_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return range(_LOWEST_PORT, low) if low - _LOWEST_PORT >= 1000 else None


_UNPICKED = _ports_the_kernel_never_picks()
# Handed out in turn from a random start: a port this process chose is not chosen
# again (until the range wraps), even when its agent has not bound it yet.
_next_port = random.randrange(len(_UNPICKED)) if _UNPICKED else 0


def _candidate_port() -> int:
    global _next_port
    if _UNPICKED is None:
        return 0
    _next_port = (_next_port + 1) % len(_UNPICKED)
    return _UNPICKED[_next_port]


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """`count` distinct ports that are free for both TCP and UDP right now.

    An agent binds its ports only once its interpreter has started, seconds later
    when many start at once. A port the kernel picked for `bind(0)` is free game for
    the next `bind(0)` of any process in that time (measured here: 3,000 `bind(0)`s
    took 33 of 200 such ports), and the agent then exits with "address in use". So
    on Linux the ports come, in turn, from below the kernel's ephemeral range, which
    only an explicit bind can take; elsewhere the kernel picks them.
    """
    tries = 100 * count
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            tries -= 1
            want = _candidate_port() if tries > 0 else 0
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(tcp)
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            held.append(udp)
            try:
                tcp.bind((host, want))
                port: int = tcp.getsockname()[1]
                udp.bind((host, port))
            except OSError:
                continue
            ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


def detection_bound(config: Config, n: int) -> float:
    """Seconds within which every survivor should list a SIGKILLed member as dead.

    A shuffled round-robin probes each member at least once in two passes, so some
    survivor probes it within `2(n-1)` periods; its suspicion then lasts at most the
    maximum Lifeguard timeout; the dead record reaches everyone within about a period
    of gossip. Two seconds cover process scheduling and polling.
    """
    _, longest = suspicion_bounds(
        config.suspicion_mult, config.suspicion_max_timeout_mult, n, config.probe_interval
    )
    first_probe = (2 * (n - 1) + 1) * config.probe_interval
    spread = (
        config.probe_interval + retransmit_limit(config.retransmit_mult, n) * config.gossip_interval
    )
    return first_probe + longest + spread + 2.0


def wait_for(check: Callable[[], T | None], timeout: float, step: float = 0.05) -> T | None:
    """Poll `check` until it returns something other than None/False, or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            return None
        time.sleep(step)


@dataclass
class AgentProcess:
    """One `swimnode agent` subprocess on loopback."""

    name: str
    port: int
    rpc_port: int
    proc: subprocess.Popen[bytes]
    log_path: Path | None = None

    @property
    def address(self) -> str:
        """The agent's gossip address, `host:port`."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def rpc(self) -> tuple[str, int]:
        """The agent's RPC address."""
        return (LOOPBACK, self.rpc_port)

    @property
    def running(self) -> bool:
        """Whether the process has not exited yet."""
        return self.proc.poll() is None

    def view(self, timeout: float = 2.0) -> dict[str, str] | None:
        """`{member name: state}` as this agent sees it, or None if it does not answer."""
        try:
            return {m["name"]: m["state"] for m in rpcclient.members(self.rpc, timeout=timeout)}
        except rpcclient.RpcError:
            return None

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Wait until the agent answers RPC, which it does only once its gossip port
        is bound and its node runs. Seeds should be ready before others start, since
        a join that finds nobody listening backs off for the whole join timeout."""
        return wait_for(lambda: self.running and self.view() is not None, timeout) is not None

    def kill(self) -> None:
        """SIGKILL the agent (by PID) and reap it."""
        if self.running:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


@dataclass
class LocalCluster:
    """Agents started by `start`; leaving the `with` block kills every one of them."""

    profile: Profile = "local"
    log_dir: Path | None = None
    extra_args: Sequence[str] = ()
    agents: dict[str, AgentProcess] = field(default_factory=dict)

    def start(
        self,
        name: str,
        seeds: Iterable[AgentProcess] = (),
        *,
        port: int | None = None,
        rpc_port: int | None = None,
        args: Sequence[str] = (),
    ) -> AgentProcess:
        """Start agent `name`, joining through `seeds`; fresh free ports unless given.
        `args` are further agent flags for this agent only (after `extra_args`)."""
        if port is None or rpc_port is None:
            port, rpc_port = free_ports(2)
        argv = [
            sys.executable,
            "-m",
            "swimnode",
            "agent",
            "--name",
            name,
            "--bind",
            f"{LOOPBACK}:{port}",
            "--rpc",
            f"{LOOPBACK}:{rpc_port}",
            "--profile",
            self.profile,
            *self.extra_args,
            *args,
        ]
        for seed in seeds:
            argv += ["--seed", seed.address]
        log_path: Path | None = None
        log: IO[bytes] | int = subprocess.DEVNULL
        if self.log_dir is not None:
            log_path = self.log_dir / f"{name}.log"
            log = log_path.open("ab")
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        finally:
            if not isinstance(log, int):
                log.close()
        agent = AgentProcess(name, port, rpc_port, proc, log_path)
        self.agents[name] = agent
        return agent

    def running(self) -> list[AgentProcess]:
        """The agents whose process is still running."""
        return [a for a in self.agents.values() if a.running]

    def all_see(
        self, name: str, state: str, observers: Iterable[AgentProcess] | None = None
    ) -> bool:
        """Whether every observer (default: every running agent) lists `name` as `state`."""
        for agent in self.running() if observers is None else observers:
            view = agent.view()
            if view is None or view.get(name) != state:
                return False
        return True

    def converged(self, names: Iterable[str]) -> bool:
        """Whether every running agent lists exactly `names` as alive."""
        expected = set(names)
        for agent in self.running():
            view = agent.view()
            if view is None or {n for n, s in view.items() if s == "alive"} != expected:
                return False
        return True

    def start_joined(self, names: list[str], timeout: float) -> AgentProcess:
        """Start `names[0]` as the seed, the others through it, and wait until they
        all see each other alive; returns the seed. Raises RuntimeError if the seed
        does not come up or the agents do not converge within `timeout` each."""
        seed = self.start(names[0])
        if not seed.wait_ready(timeout):
            raise RuntimeError("seed agent did not start")
        for name in names[1:]:
            self.start(name, seeds=[seed])
        if not wait_for(lambda: self.converged(names), timeout):
            raise RuntimeError("agents did not converge")
        return seed

    def stop_all(self) -> None:
        """SIGKILL every agent still running, by PID, and reap them."""
        for agent in self.agents.values():
            # Already gone, or stuck in the kernel: nothing more a kill can do.
            with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                agent.kill()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
