"""Agents on real addresses in a network-namespace lab (`swimnode.testing.netlab`).

These need root and `ip netns`; elsewhere they are skipped with the reason. Each
builds its own lab and tears it down, whatever happens. Durations are chosen so the
whole module stays within a few minutes on a 2-core machine; waits are bounded by
protocol guarantees (detection bounds), never by how fast this machine is.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterator

import pytest

from swimnode.testing.netlab import LAB_IPV4, LAB_IPV6, Host, Lab, unavailable_reason

_REASON = unavailable_reason()
pytestmark = [
    pytest.mark.netlab,
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
]


def all_alive(lab: Lab, hosts: list[Host]) -> bool:
    """Whether every host's agent lists exactly `hosts` as alive."""
    names = {h.agent_name for h in hosts}
    for host in hosts:
        view = lab.view(host)
        if view is None or {n for n, s in view.items() if s == "alive"} != names:
            return False
    return True


def seed_flags(seeds: list[Host]) -> list[str]:
    return [arg for s in seeds for arg in ("--seed", s.address)]


def start_cluster(lab: Lab, *extra: str) -> None:
    """Every host's agent with the lab key; the first two hosts are static seeds
    for the first half, a seed file names them for the second half."""
    key = ["--key-file", str(lab.write_key())]
    seeds = lab.hosts[:2]
    seed_file = str(lab.write_seed_file(seeds))
    for host in lab.hosts:
        if host.index < len(lab.hosts) // 2:
            lab.start_agent(host, *key, *seed_flags(seeds), *extra)
        else:
            lab.start_agent(host, *key, "--seed-file", seed_file, *extra)


def joined(lab: Lab, timeout: float = 60.0) -> None:
    if not lab.wait(lambda: all_alive(lab, lab.hosts), timeout):
        views = {h.agent_name: lab.view(h) for h in lab.hosts}
        pytest.fail(f"no convergence within {timeout:g} s: {views}\n{lab.log_tail(lab.hosts[-1])}")


@pytest.fixture
def lab8() -> Iterator[Lab]:
    with Lab(8) as lab:
        yield lab


def root_routes() -> str:
    """The root namespace's addresses and routes, both families."""
    shown = [
        subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout
        for args in (["addr"], ["-4", "route"], ["-6", "route"])
    ]
    return "\n".join(shown)


def in_lab(text: str) -> list[str]:
    """Words of `text` that are addresses or prefixes inside the lab's subnets."""
    found = []
    for word in text.split():
        try:
            net = ipaddress.ip_network(word, strict=False)
        except ValueError:
            continue
        lab_net = LAB_IPV4 if net.version == 4 else LAB_IPV6
        if net.overlaps(lab_net):
            found.append(word)
    return found


def test_eight_hosts_join_by_static_seeds_and_seed_file(lab8: Lab) -> None:
    start_cluster(lab8)
    joined(lab8)
    for host in lab8.hosts:
        done = lab8.cli(host, "members", "--json")
        assert done.returncode == 0, done.stderr
        listing = {m["name"]: m for m in json.loads(done.stdout)}
        assert {n: m["state"] for n, m in listing.items()} == {
            h.agent_name: "alive" for h in lab8.hosts
        }
        assert {n: m["address"] for n, m in listing.items()} == {
            h.agent_name: h.address for h in lab8.hosts
        }
    # The safety rule: the root namespace has no address and no route in the lab.
    assert in_lab(root_routes()) == []
