"""The agent and its client commands as real processes on loopback.

Every wait is bounded, and every process started here is killed by its PID in a
`finally` (LocalCluster's exit, or an explicit kill).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swimnode.protocol.config import Config
from swimnode.testing.processes import (
    AgentProcess,
    LocalCluster,
    detection_bound,
    free_ports,
    wait_for,
)

CLI = [sys.executable, "-m", "swimnode"]
STEP = 15.0  # bound for anything that should happen within a few protocol periods
NAMES = [f"n{i}" for i in range(5)]


def run_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def members_json(agent: AgentProcess) -> dict[str, dict[str, Any]]:
    """What the real `members --json` command prints for `agent`, by name."""
    done = run_cli("members", "--rpc", f"127.0.0.1:{agent.rpc_port}", "--json")
    assert done.returncode == 0, done.stderr
    return {m["name"]: m for m in json.loads(done.stdout)}


def assert_one_line_error(done: subprocess.CompletedProcess[str], code: int) -> None:
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stdout == ""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(profile="local", log_dir=tmp_path) as c:
        yield c


def start_five(cluster: LocalCluster) -> AgentProcess:
    return cluster.start_joined(NAMES, STEP)


def test_kill_restart_leave_and_signal(cluster: LocalCluster) -> None:
    seed = start_five(cluster)
    for agent in cluster.agents.values():
        view = members_json(agent)
        assert sorted(view) == NAMES
        assert {m["state"] for m in view.values()} == {"alive"}
        assert view[agent.name]["address"] == agent.address
        assert all(isinstance(m["incarnation"], int) for m in view.values())

    monitor = subprocess.Popen(
        [*CLI, "monitor", "--rpc", f"127.0.0.1:{seed.rpc_port}", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert monitor.stdout is not None
        initial = [json.loads(monitor.stdout.readline()) for _ in NAMES]
        assert {(e["event"], e["name"], e["state"]) for e in initial} == {
            ("member", n, "alive") for n in NAMES
        }

        victim = cluster.agents["n4"]
        survivors = [a for a in cluster.agents.values() if a is not victim]
        victim.kill()
        bound = detection_bound(Config.local("n4"), len(NAMES))
        assert wait_for(lambda: cluster.all_see("n4", "dead", survivors), bound), (
            f"not every survivor listed n4 dead within {bound:.1f} s"
        )
        for agent in survivors:
            assert members_json(agent)["n4"]["state"] == "dead"

        # The monitor streams the same story, one flushed JSON object per line.
        seen: list[dict[str, Any]] = []
        while not any(e["event"] == "failed" for e in seen):
            seen.append(json.loads(monitor.stdout.readline()))
        assert {"event", "name", "address", "state", "incarnation"} <= set(seen[-1])
        assert (seen[-1]["name"], seen[-1]["state"]) == ("n4", "dead")
    finally:
        monitor.kill()
        monitor.wait(timeout=10)

    restarted = cluster.start("n4", seeds=[seed])
    assert wait_for(lambda: cluster.converged(NAMES), STEP), "n4 did not rejoin"
    assert members_json(restarted)["n4"]["state"] == "alive"

    leaver = cluster.agents["n3"]
    done = run_cli("leave", "--rpc", f"127.0.0.1:{leaver.rpc_port}")
    assert done.returncode == 0, done.stderr
    assert leaver.proc.wait(timeout=STEP) == 0
    assert wait_for(lambda: cluster.all_see("n3", "left"), STEP), "n3's leave did not spread"

    # SIGTERM means the same graceful leave, then exit 0.
    stopped = cluster.agents["n2"]
    os.kill(stopped.proc.pid, signal.SIGTERM)
    assert stopped.proc.wait(timeout=STEP) == 0
    assert wait_for(lambda: cluster.all_see("n2", "left"), STEP), "SIGTERM did not leave"


def test_garbage_datagrams_are_counted_and_survived(cluster: LocalCluster) -> None:
    seed = cluster.start("g0")
    assert seed.wait_ready(STEP)
    other = cluster.start("g1", seeds=[seed])
    assert wait_for(lambda: cluster.converged(["g0", "g1"]), STEP)
    before = stats(seed)
    rng = random.Random(3)
    sent = 300
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(sent):
            # 0xc1 is never used by msgpack, so no datagram can decode by accident.
            s.sendto(b"\xc1" + rng.randbytes(i % 200), ("127.0.0.1", seed.port))
            if i % 50 == 0:
                time.sleep(0.01)  # stay under the loopback socket buffer

    def dropped() -> int:
        after = stats(seed)
        return after.get("dropped_malformed", 0) - before.get("dropped_malformed", 0)

    assert wait_for(lambda: dropped() >= sent, STEP), f"only {dropped()} of {sent} counted"
    time.sleep(1.0)  # a few protocol periods under the garbage's aftermath
    assert cluster.converged(["g0", "g1"])
    assert other.view() == {"g0": "alive", "g1": "alive"}


def stats(agent: AgentProcess) -> dict[str, int]:
    done = run_cli("stats", "--rpc", f"127.0.0.1:{agent.rpc_port}", "--json")
    assert done.returncode == 0, done.stderr
    result: dict[str, int] = json.loads(done.stdout)
    return result


def test_one_line_errors(tmp_path: Path) -> None:
    bad_key = tmp_path / "bad.toml"
    bad_key.write_text('name = "x"\ncolour = "blue"\n')
    closed_rpc = f"127.0.0.1:{free_ports(1)[0]}"
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy_tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    procs: list[tuple[list[str], int, subprocess.Popen[str]]] = []
    try:
        busy.bind(("127.0.0.1", 0))
        busy_port = busy.getsockname()[1]
        busy_tcp.bind(("127.0.0.1", 0))
        busy_tcp.listen()
        busy_rpc = busy_tcp.getsockname()[1]
        free = free_ports(2)
        cases: list[tuple[list[str], int]] = [
            (["agent", "--bind", "nonsense"], 2),
            (["agent", "--bind", "::1:7946"], 2),
            (["agent", "--profile", "fast"], 2),
            (["agent", "--frobnicate"], 2),
            (["agent", "--config", str(tmp_path / "missing.toml")], 2),
            (["agent", "--config", str(bad_key)], 2),
            (["agent", "--bind", f"127.0.0.1:{busy_port}", "--rpc", f"127.0.0.1:{free[0]}"], 1),
            (["agent", "--bind", f"127.0.0.1:{free[1]}", "--rpc", f"127.0.0.1:{busy_rpc}"], 1),
            (["members", "--rpc", closed_rpc], 1),
            (["members", "--status", "zombie"], 2),
            (["stats", "--rpc", closed_rpc, "--json"], 1),
            (["monitor", "--rpc", closed_rpc], 1),
            (["leave", "--rpc", closed_rpc], 1),
            (["state", "get", "k", "--rpc", closed_rpc], 1),
            (["state", "set", "k", "{", "--json-value"], 2),
            (["state", "frob"], 2),
            (["ring", "--rpc", closed_rpc], 1),
            (["agent", "--state", "novalue"], 2),
            (["agent", "--seed-dns", "host:99999"], 2),
            (["frobnicate"], 2),
        ]
        # A few at a time: each is a Python start-up, and they do not interact, but
        # twenty at once on a small loaded machine can take longer than any timeout.
        for start in range(0, len(cases), 4):
            batch = []
            for args, code in cases[start : start + 4]:
                proc = subprocess.Popen(
                    [*CLI, *args],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    stdin=subprocess.DEVNULL,
                )
                procs.append((args, code, proc))
                batch.append((args, code, proc))
            for args, code, proc in batch:
                out, err = proc.communicate(timeout=60)
                done = subprocess.CompletedProcess(args, proc.returncode, out, err)
                assert_one_line_error(done, code)
    finally:
        for _, _, proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        busy.close()
        busy_tcp.close()


@pytest.mark.skipif(
    not Path("/proc/sys/net/ipv4/ip_local_port_range").exists(), reason="Linux only"
)
def test_free_ports_are_not_handed_out_twice_or_picked_by_the_kernel() -> None:
    # An agent binds its ports seconds after they were chosen; neither a later
    # free_ports nor any process's bind(0) may take one meanwhile (a bind(0) did,
    # before: 33 of 200 ports).
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = free_ports(200)
    assert len(set(ports)) == 200
    assert all(p < low for p in ports)
    assert not set(free_ports(200)) & set(ports)
    taken = set()
    for kind in [socket.SOCK_STREAM, socket.SOCK_DGRAM] * 1500:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            taken.add(s.getsockname()[1])
    assert not taken & set(ports)
    for port in ports[:10]:  # still free for both protocols
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", port))
            udp.bind(("127.0.0.1", port))


def test_state_spreads_and_ring_covers_every_member(cluster: LocalCluster, tmp_path: Path) -> None:
    # s0 seeds the others through each kind of seed source: a file and a DNS name
    # (a numeric one, so no resolver is needed), and starts with application state.
    seed = cluster.start("s0", args=["--state", "role=seed", "--state-json", "weight=3"])
    assert seed.wait_ready(STEP), "seed agent did not start"
    seed_file = tmp_path / "seeds.txt"
    seed_file.write_text(f"# written by the test\n{seed.address}\n")
    writer = cluster.start("s1", args=["--seed-file", str(seed_file)])
    reader = cluster.start("s2", args=["--seed-dns", seed.address])
    names = ["s0", "s1", "s2"]
    assert wait_for(lambda: cluster.converged(names), STEP), "agents did not converge"

    def rpc_of(agent: AgentProcess) -> str:
        return f"127.0.0.1:{agent.rpc_port}"

    done = run_cli("state", "set", "color", "blue", "--rpc", rpc_of(writer))
    assert done.returncode == 0, done.stderr
    done = run_cli("state", "set", "slots", "[1, 2, 3]", "--json-value", "--rpc", rpc_of(writer))
    assert done.returncode == 0, done.stderr
    # s1's updates travel by gossip; s0's initial state reaches s2 through the join's
    # push-pull or, if that exchange was lost (a loaded machine can time it out),
    # through a later anti-entropy round. Either way both arrive, in any order.
    expected = {"s0": {"role": "seed", "weight": 3}, "s1": {"color": "blue", "slots": [1, 2, 3]}}

    def seen_by_reader() -> dict[str, Any] | None:
        view = members_json(reader)
        return view if all(view[n]["app_state"] == s for n, s in expected.items()) else None

    view = wait_for(seen_by_reader, STEP, step=0.2)
    assert view is not None, f"state did not reach s2: {members_json(reader)}"

    done = run_cli("state", "get", "color", "--member", "s1", "--rpc", rpc_of(reader))
    assert (done.returncode, done.stdout) == (0, "blue\n"), done.stderr
    done = run_cli("state", "list", "--json", "--rpc", rpc_of(writer))
    assert json.loads(done.stdout) == {"color": "blue", "slots": [1, 2, 3]}
    assert_one_line_error(run_cli("state", "set", "big", "x" * 5000, "--rpc", rpc_of(writer)), 1)
    assert_one_line_error(run_cli("state", "get", "nope", "--rpc", rpc_of(writer)), 1)

    done = run_cli("ring", "--json", "--rpc", rpc_of(reader))
    assert done.returncode == 0, done.stderr
    ring = json.loads(done.stdout)
    assert [m["name"] for m in ring["members"]] == names
    assert sum(m["fraction"] for m in ring["members"]) == pytest.approx(1.0)
    assert {m["tokens"] for m in ring["members"]} == {100}
    # s1's "slots" state as its tokens: it now holds exactly those three.
    done = run_cli("ring", "--json", "--tokens-key", "slots", "--rpc", rpc_of(reader))
    slots = {m["name"]: m for m in json.loads(done.stdout)["members"]}
    assert (slots["s1"]["source"], slots["s1"]["tokens"]) == ("advertised", 3)

    done = run_cli("state", "delete", "color", "--rpc", rpc_of(writer))
    assert done.returncode == 0, done.stderr
    assert wait_for(
        lambda: "color" not in members_json(reader)["s1"]["app_state"], STEP, step=0.2
    ), "the deletion did not reach s2"
