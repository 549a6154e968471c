"""A network-namespace lab: swimnode agents on real, separate IP addresses.

Each lab host is a Linux network namespace holding one end of a veth pair; the other
ends sit on two bridges in a namespace of their own, joined by a trunk veth, so
taking the trunk down splits the lab in two halves that still reach each other
inside. Hosts get an IPv4 address in `LAB_IPV4` and/or an IPv6 address in
`LAB_IPV6`, a per-host MTU and optionally a `tbf` rate limit. Every agent binds its
host's own address (so the secure default is exercised: the lab writes one key with
`keygen`) and serves RPC on 127.0.0.1 inside its namespace. A namespace may hold
several agents, on consecutive ports of its address (`agents_per_host`).

Safety rules, which the lab keeps by construction:

- The root namespace is never touched: every link is created inside a lab
  namespace (`ip -n NS link add ... peer ... netns OTHER`), so the root gets no
  address, no route and no interface of the lab.
- Every name the lab creates starts with `PREFIX` and the creating process's PID,
  and only such names are ever deleted.
- Processes are stopped by the PIDs the lab started. A crashed run's leftovers (its
  PID no longer runs) are removed at the next start: the processes still inside its
  namespaces (`ip netns pids`), then the namespaces and its work directory.
- Every wait is bounded in time, and `close()` runs on success, failure, Ctrl-C and
  SIGTERM (the context manager turns SIGTERM into `KeyboardInterrupt`).

The lab's RPC calls run in one thread per host that has entered that host's network
namespace (`setns(2)`), so a socket to 127.0.0.1 is the host's own loopback; that
avoids starting a Python client per query. `Lab.cli` runs the real command line
client with `ip netns exec` instead, for checks that should see what an operator
sees.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from ..agent import client as rpcclient
from ..net.transport import Address, format_address
from .processes import wait_for

PREFIX = "swl-"
"""Start of every namespace and work directory the lab creates."""
LAB_IPV4 = ipaddress.IPv4Network("10.231.0.0/24")
LAB_IPV6 = ipaddress.IPv6Network("fd00:5357:4c::/64")
AGENT_PORT = 7946
RPC: Address = ("127.0.0.1", 7373)
HOST_LINK = f"{PREFIX}eth0"
"""The host's end of its veth pair (inside the host's namespace)."""
TRUNK = (f"{PREFIX}t0", f"{PREFIX}t1")
"""The veth pair joining the two bridges; down means the lab is partitioned."""
BRIDGES = (f"{PREFIX}br0", f"{PREFIX}br1")
NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000
_COMMAND_TIMEOUT = 20.0
_NAME = re.compile(rf"^{re.escape(PREFIX)}(\d+)-")
_LAB_NUMBERS = itertools.count()
"""Labs of one process get distinct names."""


class LabError(RuntimeError):
    """A lab command failed; `str()` is one line naming the command."""


def unavailable_reason() -> str | None:
    """Why a lab cannot be built here (not root, no `ip`, no namespaces), or None."""
    if os.geteuid() != 0:
        return "the network lab needs root (ip netns, veth, tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"the network lab needs `{tool}` (iproute2)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    done = _run(["ip", "netns", "add", probe], check=False)
    if done.returncode != 0:
        return f"`ip netns add` does not work here: {done.stderr.strip()}"
    _run(["ip", "netns", "delete", probe], check=False)
    return None


def _run(
    argv: Sequence[str], *, check: bool = True, timeout: float = _COMMAND_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise LabError(f"`{' '.join(argv)}` did not finish within {timeout:g} s") from None
    if check and done.returncode != 0:
        message = done.stderr.strip().splitlines()
        raise LabError(f"`{' '.join(argv)}` failed: {message[-1] if message else done.returncode}")
    return done


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _run(["ip", "netns", "list"]).stdout.splitlines() if line]


def _kill_namespace_processes(namespace: str) -> None:
    # Only processes inside our own namespace: the lab put them there.
    listed = _run(["ip", "netns", "pids", namespace], check=False).stdout.split()
    for pid in (int(p) for p in listed if p.isdigit()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def remove_leftovers() -> list[str]:
    """Remove namespaces and work directories of earlier lab runs whose process is
    gone (a crash, a SIGKILL); returns the namespaces removed. Runs of live
    processes, and anything without the lab's prefix, are left alone."""
    removed = []
    for namespace in _namespaces():
        match = _NAME.match(namespace)
        if match is None or _pid_running(int(match.group(1))):
            continue
        _kill_namespace_processes(namespace)
        _run(["ip", "netns", "delete", namespace], check=False)
        removed.append(namespace)
    for directory in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        match = _NAME.match(directory.name)
        if match is not None and not _pid_running(int(match.group(1))):
            shutil.rmtree(directory, ignore_errors=True)
    return removed


def _enter_namespace(path: str) -> None:
    # Network namespaces are per thread: this thread stays in the host's namespace
    # for its whole life, and sockets it creates belong there.
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns({path}) failed")
    finally:
        os.close(fd)


@dataclass
class Host:
    """One agent's place in the lab: a namespace, its addresses, the agent's ports
    and (once started) its agent. Hosts of one namespace share its addresses and
    link, each with ports of its own (`Lab(agents_per_host=...)`)."""

    index: int
    namespace: str
    ipv4: str | None
    ipv6: str | None
    mtu: int
    link: int = 0
    """The namespace's number: its bridge port is `swl-p<link>`."""
    port: int = AGENT_PORT
    rpc_port: int = RPC[1]
    proc: subprocess.Popen[bytes] | None = None
    agent_name: str = ""
    log_path: Path | None = None
    _rpc: ThreadPoolExecutor | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        """The agent's `host:port`, on IPv4 when the host has both."""
        host = self.ipv4 if self.ipv4 is not None else self.ipv6
        assert host is not None
        return format_address((host, self.port))

    @property
    def rpc_address(self) -> Address:
        """The agent's RPC endpoint, on the namespace's loopback."""
        return (RPC[0], self.rpc_port)

    @property
    def pid(self) -> int:
        """The agent's PID; raises if no agent was started."""
        if self.proc is None:
            raise LabError(f"no agent runs on {self.namespace}")
        return self.proc.pid

    @property
    def running(self) -> bool:
        """Whether this host's agent was started and has not exited."""
        return self.proc is not None and self.proc.poll() is None


class Lab:
    """K hosts on a bridged network in namespaces; use as a context manager.

    `hosts` hosts, IPv4 and/or IPv6, `mtu` on every host link (an int, or one per
    host). With `agents_per_host` above 1, that many consecutive hosts share one
    namespace (its addresses, link, MTU and rate limit) on consecutive ports: the
    kernel's neighbour tables are shared by every namespace (IPv6's overflows at
    1,024 entries by default), so 40 namespaces that all talk to each other exhaust
    them while 10 do not. The lab is built on `__enter__` (after removing leftovers
    of crashed runs) and torn down on `__exit__`, whatever happened in between.
    """

    def __init__(
        self,
        hosts: int,
        *,
        ipv4: bool = True,
        ipv6: bool = True,
        mtu: int | Sequence[int] = 1500,
        profile: str = "lan",
        agents_per_host: int = 1,
    ) -> None:
        if not 1 <= hosts <= 200:
            raise ValueError(f"hosts must be 1..200, got {hosts}")
        if not 1 <= agents_per_host <= 16:
            raise ValueError(f"agents_per_host must be 1..16, got {agents_per_host}")
        if not (ipv4 or ipv6):
            raise ValueError("a lab needs IPv4, IPv6 or both")
        links = -(-hosts // agents_per_host)
        mtus = [mtu] * links if isinstance(mtu, int) else list(mtu)
        if len(mtus) != links:
            raise ValueError(f"{len(mtus)} MTUs given for {links} host links")
        if ipv6 and min(mtus) < 1280:
            raise ValueError("IPv6 needs an MTU of at least 1280")
        self.tag = f"{PREFIX}{os.getpid()}-{next(_LAB_NUMBERS)}"
        self.profile = profile
        self.bridge_ns = f"{self.tag}-br"
        self.links = links
        self.hosts = [
            Host(
                i,
                f"{self.tag}-h{link}",
                str(LAB_IPV4[10 + link]) if ipv4 else None,
                str(LAB_IPV6[10 + link]) if ipv6 else None,
                mtus[link],
                link=link,
                port=AGENT_PORT + slot,
                rpc_port=RPC[1] + slot,
            )
            for i in range(hosts)
            for link, slot in [divmod(i, agents_per_host)]
        ]
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.tag}-"))
        self.key_file = self.workdir / "keys"
        self._created: list[str] = []
        self._old_sigterm: Any = None

    # ----- building and tearing down ---------------------------------------------------

    def __enter__(self) -> Lab:
        self._catch_sigterm()
        try:
            remove_leftovers()
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _catch_sigterm(self) -> None:
        # A test runner's timeout or a CI job's cancel sends SIGTERM; without this the
        # interpreter dies without running `close()`.
        def interrupt(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        with contextlib.suppress(ValueError):  # not the main thread: nothing to do
            self._old_sigterm = signal.signal(signal.SIGTERM, interrupt)

    def _add_namespace(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self._created.append(name)
        self._ip(name, "link", "set", "lo", "up")

    def _ip(self, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
        return _run(["ip", "-n", namespace, *args])

    def _build(self) -> None:
        self._add_namespace(self.bridge_ns)
        for bridge in BRIDGES:
            self._ip(self.bridge_ns, "link", "add", bridge, "type", "bridge")
        top = str(max(h.mtu for h in self.hosts))
        self._ip(
            self.bridge_ns, "link", "add", TRUNK[0], "mtu", top,
            "type", "veth", "peer", "name", TRUNK[1], "mtu", top,
        )  # fmt: skip
        for end, bridge in zip(TRUNK, BRIDGES, strict=True):
            self._ip(self.bridge_ns, "link", "set", end, "master", bridge, "up")
        for bridge in BRIDGES:
            self._ip(self.bridge_ns, "link", "set", bridge, "up")
        for host in self.hosts:
            if host.namespace not in self._created:
                self._build_link(host)
            host._rpc = ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix=host.namespace,
                initializer=_enter_namespace,
                initargs=(str(NETNS_DIR / host.namespace),),
            )

    def _build_link(self, host: Host) -> None:
        self._add_namespace(host.namespace)
        port = f"{PREFIX}p{host.link}"
        mtu = str(host.mtu)
        self._ip(
            host.namespace, "link", "add", HOST_LINK, "mtu", mtu, "type", "veth",
            "peer", "name", port, "mtu", mtu, "netns", self.bridge_ns,
        )  # fmt: skip
        half = BRIDGES[0] if host.link < (self.links + 1) // 2 else BRIDGES[1]
        self._ip(self.bridge_ns, "link", "set", port, "master", half, "up")
        if host.ipv4 is not None:
            self._ip(host.namespace, "addr", "add", f"{host.ipv4}/24", "dev", HOST_LINK)
        if host.ipv6 is not None:
            # nodad: the address is usable at once instead of after duplicate detection.
            self._ip(host.namespace, "addr", "add", f"{host.ipv6}/64", "dev", HOST_LINK, "nodad")
        self._ip(host.namespace, "link", "set", HOST_LINK, "up")

    def close(self) -> None:
        """Stop every agent the lab started (by PID), then remove its namespaces and
        work directory. Safe to call more than once."""
        for host in self.hosts:
            self.kill(host)
            if host._rpc is not None:
                host._rpc.shutdown(wait=False, cancel_futures=True)
                host._rpc = None
        for namespace in reversed(self._created):
            # Anything still inside (a client that timed out) was started by us too.
            _kill_namespace_processes(namespace)
            _run(["ip", "netns", "delete", namespace], check=False)
        self._created.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self._old_sigterm is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None

    # ----- agents ----------------------------------------------------------------------

    def write_key(self) -> Path:
        """Make one cluster key with `swimnode keygen`, into a mode-600 file."""
        return self.write_key_file(self.key_file)

    def write_key_file(self, path: Path) -> Path:
        """Write a fresh `keygen` key to `path` (mode 600) and return it."""
        key = _run([sys.executable, "-m", "swimnode", "keygen"]).stdout.strip()
        path.touch(mode=0o600)
        path.write_text(key + "\n")
        return path

    def write_seed_file(self, hosts: Sequence[Host], name: str = "seeds") -> Path:
        """A seed file listing `hosts`' addresses, one per line."""
        path = self.workdir / name
        path.write_text("".join(h.address + "\n" for h in hosts))
        return path

    def start_agent(self, host: Host, *args: str, name: str | None = None) -> Host:
        """Start `swimnode agent` in `host`'s namespace, bound to its address, RPC on
        its loopback; `args` are further agent flags (seeds, keys, state, ...)."""
        if host.running:
            raise LabError(f"an agent already runs on {host.namespace}")
        host.agent_name = name or f"n{host.index}"
        host.log_path = self.workdir / f"{host.agent_name}.log"
        argv = [
            "ip", "netns", "exec", host.namespace,
            sys.executable, "-m", "swimnode", "agent",
            "--name", host.agent_name,
            "--bind", host.address,
            "--rpc", format_address(host.rpc_address),
            "--profile", self.profile,
            *args,
        ]  # fmt: skip
        log: IO[bytes]
        with host.log_path.open("ab") as log:
            # `ip netns exec` execs the command, so this PID is the agent's own.
            host.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        return host

    def kill(self, host: Host) -> None:
        """SIGKILL `host`'s agent by PID (a stopped one too) and reap it."""
        if host.proc is None:
            return
        if host.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(host.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            host.proc.wait(timeout=10)

    def signal(self, host: Host, signum: int) -> None:
        """Send `signum` to `host`'s agent, by PID."""
        os.kill(host.pid, signum)

    def log_tail(self, host: Host, lines: int = 15) -> str:
        """The last lines of `host`'s agent log, for failure messages."""
        if host.log_path is None or not host.log_path.exists():
            return ""
        return "\n".join(host.log_path.read_text(errors="replace").splitlines()[-lines:])

    # ----- asking the agents -----------------------------------------------------------

    def rpc(self, host: Host, command: str, timeout: float = 5.0, **args: Any) -> dict[str, Any]:
        """One RPC command to `host`'s agent, sent from inside its namespace; raises
        `rpcclient.RpcError`."""
        if host._rpc is None:
            raise LabError(f"{host.namespace} is not built")
        future = host._rpc.submit(rpcclient.call, host.rpc_address, command, args, timeout=timeout)
        return future.result(timeout=timeout + 5)

    def members(self, host: Host) -> list[dict[str, Any]] | None:
        """`host`'s member list (the `members --json` shape), or None if it does not answer."""
        try:
            listing: list[dict[str, Any]] = self.rpc(host, "members")["members"]
        except rpcclient.RpcError:
            return None
        return listing

    def view(self, host: Host) -> dict[str, str] | None:
        """`{member name: state}` as `host`'s agent sees it, or None."""
        listing = self.members(host)
        return None if listing is None else {m["name"]: m["state"] for m in listing}

    def stats(self, host: Host) -> dict[str, int]:
        """`host`'s agent counters (`stats`)."""
        counters: dict[str, int] = self.rpc(host, "stats")["stats"]
        return counters

    def cli(
        self, host: Host, *args: str, timeout: float = 20.0
    ) -> subprocess.CompletedProcess[str]:
        """Run `python -m swimnode ARGS --rpc ...` against `host`'s agent, in its namespace."""
        argv = ["ip", "netns", "exec", host.namespace, sys.executable, "-m", "swimnode"]
        rpc = ["--rpc", format_address(host.rpc_address)]
        return _run([*argv, *args, *rpc], check=False, timeout=timeout)

    def wait(self, check: Callable[[], bool], timeout: float, step: float = 0.25) -> bool:
        """Poll `check` until it holds or `timeout` seconds pass; whether it held."""
        return wait_for(check, timeout, step) is not None

    def all_see(self, observers: Sequence[Host], expected: dict[str, str]) -> bool:
        """Whether every observer lists each name of `expected` in that state (alive,
        suspect, dead, left; a name mapped to "" must be absent)."""
        for host in observers:
            view = self.view(host)
            if view is None:
                return False
            for name, state in expected.items():
                if view.get(name, "") != state:
                    return False
        return True

    # ----- faults ----------------------------------------------------------------------

    @property
    def halves(self) -> tuple[list[Host], list[Host]]:
        """The hosts on each bridge: what `partition()` separates."""
        cut = (self.links + 1) // 2
        return [h for h in self.hosts if h.link < cut], [h for h in self.hosts if h.link >= cut]

    def partition(self) -> None:
        """Take the trunk between the two bridges down: each half still reaches itself."""
        self._ip(self.bridge_ns, "link", "set", TRUNK[0], "down")

    def heal(self) -> None:
        """Bring the trunk back up."""
        self._ip(self.bridge_ns, "link", "set", TRUNK[0], "up")

    def set_link(self, host: Host, up: bool) -> None:
        """Bring `host`'s link (its bridge port, shared by its namespace) down or up."""
        state = "up" if up else "down"
        self._ip(self.bridge_ns, "link", "set", f"{PREFIX}p{host.link}", state)

    def limit_rate(self, host: Host, rate: str, burst: str = "2kb", latency: str = "500ms") -> None:
        """Limit `host`'s link both ways with `tbf` (rate like "64kbit"); the hosts
        sharing its namespace share the limit."""
        tbf = ["root", "tbf", "rate", rate, "burst", burst, "latency", latency]
        _run(["tc", "-n", host.namespace, "qdisc", "replace", "dev", HOST_LINK, *tbf])
        port = f"{PREFIX}p{host.link}"
        _run(["tc", "-n", self.bridge_ns, "qdisc", "replace", "dev", port, *tbf])

    # ----- what the kernel saw ---------------------------------------------------------

    def link_stats(self, host: Host) -> dict[str, Any]:
        """`ip -s -j link show` of `host`'s link: mtu, stats64 rx/tx counters (of
        every host of its namespace)."""
        done = self._ip(host.namespace, "-s", "-j", "link", "show", HOST_LINK)
        shown: list[dict[str, Any]] = json.loads(done.stdout)
        return shown[0]

    def snmp(self, host: Host) -> dict[str, int]:
        """The host's namespace's IP counters (`/proc/net/snmp`, `snmp6`) as
        `Ip.FragCreates`, `Ip6FragCreates`, ...: fragmentation there means a datagram
        exceeded the MTU."""
        if host._rpc is None:
            raise LabError(f"{host.namespace} is not built")
        return host._rpc.submit(_read_snmp).result(timeout=10)


def _read_snmp() -> dict[str, int]:
    # /proc/thread-self/net shows the calling thread's namespace, not the process's.
    base = Path("/proc/thread-self/net")
    counters: dict[str, int] = {}
    lines = (base / "snmp").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        proto, _, keys = names.partition(":")
        for key, value in zip(keys.split(), values.partition(":")[2].split(), strict=False):
            with contextlib.suppress(ValueError):
                counters[f"{proto}.{key}"] = int(value)
    snmp6 = base / "snmp6"
    if snmp6.exists():
        for line in snmp6.read_text().splitlines():
            key, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                counters[key] = int(value.strip())
    return counters
