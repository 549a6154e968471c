"""A keyed 3-agent cluster on loopback under a flood of garbage: random datagrams and
half-open TCP connections aimed at one agent. It must keep answering RPC, nobody may
be suspected, the drop counters must show the garbage, and its memory must stay
bounded. Every wait is bounded and every process is killed by PID on the way out.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from swimnode.agent import client as rpcclient
from swimnode.net.keyring import generate_key
from swimnode.testing.processes import AgentProcess, LocalCluster

NAMES = ["n0", "n1", "n2"]
DATAGRAMS = 100_000
HALF_OPEN = 200
FLOOD_SECONDS = 20.0  # upper bound on the datagram flood
STEP = 15.0


def rss_kib(pid: int) -> int:
    """Resident set size of `pid`, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS line")


def stats(agent: AgentProcess) -> dict[str, int]:
    counters: dict[str, int] = rpcclient.call(agent.rpc, "stats", timeout=5.0)["stats"]
    return counters


def flood_datagrams(port: int, count: int, seconds: float) -> int:
    """Send `count` random datagrams (1..1400 bytes) to `port` within `seconds`,
    paced in small bursts so the kernel's receive buffer is not the only thing
    tested. Returns how many were sent."""
    payloads = [os.urandom(n) for n in (1, 37, 38, 64, 200, 512, 1000, 1400)]
    # Some look like frames: the encrypted (0x11) and plaintext (0x10) headers make
    # the agent try to authenticate them, which is the expensive path.
    payloads += [b"\x11" + os.urandom(100), b"\x10" + os.urandom(100), b"\x01" + os.urandom(50)]
    sent = 0
    deadline = time.monotonic() + seconds
    start = time.monotonic()
    rate = count / (seconds * 0.6)  # aim to finish well within the bound
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        while sent < count and time.monotonic() < deadline:
            for _ in range(200):
                with contextlib.suppress(OSError):  # ENOBUFS and friends: go on
                    sock.sendto(payloads[sent % len(payloads)], ("127.0.0.1", port))
                sent += 1
            ahead = sent / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    return sent


def open_half_open(port: int, count: int) -> list[socket.socket]:
    """`count` TCP connections that send a length prefix promising a message and
    then nothing more."""
    socks = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(2.0)
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(b"\x00\x00\x10\x00")  # 4096 bytes announced, none sent
        except OSError:
            pass  # refused by a full backlog: still pressure on the listener
        socks.append(s)
    return socks


def nobody_suspected(cluster: LocalCluster) -> bool:
    for agent in cluster.agents.values():
        view = agent.view(timeout=5.0)
        if view is None or set(view) != set(NAMES) or set(view.values()) != {"alive"}:
            return False
    return True


def test_garbage_flood_and_half_open_connections(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(generate_key() + "\n")
    key_file.chmod(0o600)
    started = time.monotonic()
    with LocalCluster(
        profile="local", log_dir=tmp_path, extra_args=["--key-file", str(key_file)]
    ) as cluster:
        cluster.start_joined(NAMES, STEP)
        target = cluster.agents["n1"]
        others = [cluster.agents["n0"], cluster.agents["n2"]]
        # A monitor on a healthy agent sees any suspicion, however brief.
        monitor = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "swimnode",
                "monitor",
                "--json",
                "--rpc",
                f"127.0.0.1:{others[0].rpc_port}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(monitor.stdout or ()), daemon=True)
        reader.start()
        socks: list[socket.socket] = []
        try:
            time.sleep(1.0)  # let the agents settle before measuring
            before = stats(target)
            rss_before = rss_kib(target.proc.pid)

            result: dict[str, int] = {}
            flood = threading.Thread(
                target=lambda: result.update(
                    sent=flood_datagrams(target.port, DATAGRAMS, FLOOD_SECONDS)
                )
            )
            flood_start = time.monotonic()
            flood.start()
            socks = open_half_open(target.port, HALF_OPEN)
            rpc_answers = 0
            while flood.is_alive():
                # During the flood: the agent answers RPC and nobody is suspected.
                assert rpcclient.members(target.rpc, timeout=5.0), "no RPC answer during flood"
                rpc_answers += 1
                assert nobody_suspected(cluster)
                time.sleep(0.5)
            flood.join()
            flood_time = time.monotonic() - flood_start
            after = stats(target)
            time.sleep(2.0)  # a few protocol periods after the flood
            assert nobody_suspected(cluster)
            rss_after = rss_kib(target.proc.pid)
            for other in others:
                assert stats(other)["suspicions_raised"] == 0
        finally:
            for s in socks:
                s.close()
            if monitor.poll() is None:
                monitor.kill()
            monitor.wait(timeout=5)
            reader.join(timeout=5)
        events = [json.loads(line)["event"] for line in lines if line.strip()]
        assert "suspect" not in events and "failed" not in events, events

    dropped = {
        k: after[k] - before[k]
        for k in after
        if k.startswith("security_dropped") and after[k] != before[k]
    }
    garbage_seen = (
        sum(dropped.values())
        + after["transport_receive_overflow"]
        - before["transport_receive_overflow"]
    )
    streams = {
        k: after[k] - before[k] for k in ("transport_stream_rejected", "transport_stream_timeouts")
    }
    print(
        f"\nflood: {result['sent']} datagrams in {flood_time:.1f} s, {HALF_OPEN} half-open "
        f"connections, {rpc_answers} RPC answers during the flood"
    )
    print(
        f"dropped: {dropped}, receive overflow "
        f"{after['transport_receive_overflow'] - before['transport_receive_overflow']}, "
        f"streams {streams}"
    )
    print(
        f"RSS before {rss_before / 1024:.1f} MiB, after {rss_after / 1024:.1f} MiB; "
        f"total {time.monotonic() - started:.1f} s"
    )
    assert result["sent"] >= DATAGRAMS * 0.99
    assert dropped.get("security_dropped_bad_header", 0) > DATAGRAMS / 10
    assert garbage_seen > DATAGRAMS / 2
    assert streams["transport_stream_rejected"] > 0
    assert rss_after < 2 * rss_before + 20 * 1024
