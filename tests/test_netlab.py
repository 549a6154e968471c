"""Agents on real addresses in a network-namespace lab (`swimnode.testing.netlab`).

These need root and `ip netns`; elsewhere they are skipped with the reason. Each
builds its own lab and tears it down, whatever happens. Durations are chosen so the
whole module stays within a few minutes on a 2-core machine; waits are bounded by
protocol guarantees (detection bounds), never by how fast this machine is.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from swimnode.protocol.config import Config
from swimnode.testing.netlab import LAB_IPV4, LAB_IPV6, Host, Lab, unavailable_reason
from swimnode.testing.processes import detection_bound

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
    """Every host's agent with the lab key; the first and the last host are static
    seeds for the first half of the hosts, a seed file names them for the second."""
    key = ["--key-file", str(lab.write_key())]
    # One seed on each side of the trunk, so either half can find the other.
    seeds = [lab.hosts[0], lab.hosts[-1]]
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


def bound(lab: Lab) -> float:
    """The lan profile's detection bound for the lab's size: a protocol guarantee."""
    return detection_bound(Config.lan("x"), len(lab.hosts))


def states_of(lab: Lab, observers: list[Host], name: str) -> dict[str, str | None]:
    """How each observer lists `name` (None: not listed or no answer)."""
    return {h.agent_name: (lab.view(h) or {}).get(name) for h in observers}


def total(lab: Lab, hosts: list[Host], counter: str) -> int:
    return sum(lab.stats(h).get(counter, 0) for h in hosts)


def test_sigstop_short_is_tolerated_long_is_failed_then_refuted(lab8: Lab) -> None:
    start_cluster(lab8)
    joined(lab8)
    victim, others = lab8.hosts[3], [h for h in lab8.hosts if h.index != 3]
    name = victim.agent_name

    # 2 s stopped: within Lifeguard's patience (a suspicion lasts at least 4 s on
    # lan at this size), so nobody may declare it dead, during or after.
    lab8.signal(victim, signal.SIGSTOP)
    seen: set[str | None] = set()
    until = time.monotonic() + 2.0
    while time.monotonic() < until:
        seen.update(states_of(lab8, others, name).values())
        time.sleep(0.2)
    lab8.signal(victim, signal.SIGCONT)
    lab8.wait(lambda: False, 3.0)  # let any suspicion run its course
    seen.update(states_of(lab8, others, name).values())
    assert "dead" not in seen and total(lab8, lab8.hosts, "deaths_declared") == 0

    # Stopped until every other host lists it failed (within the detection bound),
    # then continued: it must refute and be alive everywhere within 10 s.
    lab8.signal(victim, signal.SIGSTOP)
    try:
        failed = lab8.wait(lambda: lab8.all_see(others, {name: "dead"}), bound(lab8))
    finally:
        lab8.signal(victim, signal.SIGCONT)
    assert failed, states_of(lab8, others, name)
    back = lab8.wait(lambda: lab8.all_see(lab8.hosts, {name: "alive"}), 10.0)
    assert back, f"{states_of(lab8, lab8.hosts, name)}\n{lab8.log_tail(victim)}"


def test_wrong_key_and_plaintext_hosts_stay_out() -> None:
    with Lab(10) as lab:
        good, wrong, plain = lab.hosts[:8], lab.hosts[8], lab.hosts[9]
        key = ["--key-file", str(lab.write_key())]
        for host in good:
            lab.start_agent(host, *key, *seed_flags(good[:1]))
        if not lab.wait(lambda: all_alive(lab, good), 60.0):
            pytest.fail(f"no convergence: {[lab.view(h) for h in good]}")
        suspicions = total(lab, good, "suspicions_raised")
        other_key = str(lab.write_key_file(lab.workdir / "other-key"))
        lab.start_agent(wrong, "--key-file", other_key, *seed_flags(good[:3]))
        lab.start_agent(plain, "--insecure-plaintext", *seed_flags(good[:3]))

        def rejected() -> bool:
            # A plaintext agent without a label sends unframed packets: they fail the
            # header check before the plaintext one.
            plaintext = ("security_dropped_plaintext", "security_dropped_bad_header")
            return total(lab, good, "security_dropped_auth") > 0 and any(
                total(lab, good, counter) > 0 for counter in plaintext
            )

        # The intruders knock on their seeds from the start (join attempts over TCP).
        assert lab.wait(rejected, 30.0), [lab.stats(h) for h in good[:3]]
        lab.wait(lambda: False, 5.0)  # several probe periods with them knocking
        intruders = {wrong.agent_name: "", plain.agent_name: ""}
        assert lab.all_see(good, intruders), [lab.view(h) for h in good]
        assert all_alive(lab, good)
        assert total(lab, good, "suspicions_raised") == suspicions
        for intruder in (wrong, plain):
            assert lab.view(intruder) == {intruder.agent_name: "alive"}


def set_state(lab: Lab, host: Host, key: str, value: str) -> None:
    lab.rpc(host, "state_set", key=key, value=value)


def app_states(lab: Lab, host: Host) -> dict[str, object] | None:
    listing = lab.members(host)
    return None if listing is None else {m["name"]: m["app_state"] for m in listing}


def one_cluster_with_equal_state(lab: Lab) -> bool:
    if not all_alive(lab, lab.hosts):
        return False
    states = [app_states(lab, h) for h in lab.hosts]
    return all(s == states[0] for s in states)


def partitioned(lab: Lab, expected: str) -> bool:
    """Whether each half lists every host of the other half as `expected`
    ("" for not listed at all: reclaimed)."""
    left, right = lab.halves
    return lab.all_see(left, {h.agent_name: expected for h in right}) and lab.all_see(
        right, {h.agent_name: expected for h in left}
    )


RECLAIM = 30.0
"""`dead_reclaim_time` in the partition test, set with `--set` (lan's is 60 s): the
second partition, 120 s as the issue asks, lasts four times as long, so each side
has surely forgotten the other before the heal. The replay window may not be
longer (a `Config` rule), so it is set too."""


def test_partition_short_and_longer_than_dead_reclaim_time(lab8: Lab) -> None:
    reclaim = ["--set", f"dead_reclaim_time={RECLAIM:g}", "--set", f"replay_window={RECLAIM:g}"]
    start_cluster(lab8, *reclaim)
    joined(lab8)
    info = lab8.rpc(lab8.hosts[0], "info")["info"]
    assert info["timers"]["dead_reclaim_time"] == RECLAIM
    assert info["overridden"] == ["dead_reclaim_time", "replay_window"]
    for rounds, (hold, forgotten) in enumerate(((20.0, False), (120.0, True))):
        started = time.monotonic()
        lab8.partition()
        try:
            assert lab8.wait(lambda: partitioned(lab8, "dead"), bound(lab8)), [
                lab8.view(h) for h in lab8.hosts
            ]
            # State written on both sides while they cannot hear each other.
            for host in lab8.halves[0][:1] + lab8.halves[1][:1]:
                set_state(lab8, host, "written", f"round {rounds} by {host.agent_name}")
            if forgotten:
                # Reaping runs every dead_reclaim_time / 10 after the reclaim time.
                gone = lab8.wait(lambda: partitioned(lab8, ""), bound(lab8) + RECLAIM * 1.2)
                assert gone, [lab8.view(h) for h in lab8.hosts]
            lab8.wait(lambda: False, hold - (time.monotonic() - started))
        finally:
            lab8.heal()
        healed = lab8.wait(lambda: one_cluster_with_equal_state(lab8), 30.0)
        assert healed, [app_states(lab8, h) for h in lab8.hosts]


STATE_HOSTS = 40
"""Members in the small-MTU runs, as the issue asks. Started one at a time on the
`wan` profile, so that 40 interpreters starting on 2 shared cores cannot starve an
agent for as long as a suspicion lasts (docs/deploy.md argues the choice)."""
AGENTS_PER_HOST = 4
"""Agents sharing a namespace in those runs: 40 namespaces that all talk to each
other overflow the kernel's IPv6 neighbour table (shared by every namespace, 1,024
entries by default), and joins then wait for addresses that cannot be resolved."""
STATE_VALUE = 2044
"""Two keys of 4 + 2044 bytes each: 4 KiB of application state per member."""
OVERSIZE = (
    "dropped_oversize",
    "transport_oversize_dropped",
    "transport_stream_oversize",
    "security_dropped_oversize",
    "security_send_oversize",
)


@dataclass
class MtuRun:
    mtu: int
    converged: bool = False
    oversize: dict[str, int] = field(default_factory=dict)
    fragments_created: int = 0
    link_mtus: set[int] = field(default_factory=set)
    tx_packets: int = 0
    deaths: int = 0


def states_complete(lab: Lab, hosts: Sequence[Host] | None = None) -> bool:
    """Each of `hosts` (default: all) lists each of them alive with both state keys."""
    hosts = lab.hosts if hosts is None else hosts
    names = {h.agent_name for h in hosts}
    for host in hosts:
        listing = lab.members(host)
        if listing is None:
            return False
        complete = [
            m
            for m in listing
            if m["name"] in names and m["state"] == "alive" and len(m["app_state"]) == 2
        ]
        if len(complete) != len(hosts):
            return False
    return True


def everyone_live(lab: Lab) -> bool:
    """Cheap first check (counters only): every host counts every member live."""
    try:
        return all(lab.stats(h)["members_live"] == len(lab.hosts) for h in lab.hosts)
    except Exception:
        return False


def wait_joined(lab: Lab, host: Host, timeout: float = 60.0) -> None:
    """Wait until `host`'s agent knows a member besides itself (the seed: at once)."""

    def known() -> bool:
        listing = lab.members(host)
        return listing is not None and (host.index == 0 or len(listing) > 1)

    if not lab.wait(known, timeout, step=0.1):
        pytest.fail(f"{host.agent_name} did not join:\n{lab.log_tail(host)}")


@pytest.fixture(scope="module", params=[576, 1280])
def mtu_run(request: pytest.FixtureRequest) -> MtuRun:
    """40 members with 4 KiB of state each, 4 to a namespace, on links of the given
    MTU: IPv4 at 576 (below IPv6's minimum), IPv6 only at 1280; the figures once
    they converged."""
    mtu: int = request.param
    run = MtuRun(mtu)
    family = {"ipv4": mtu < 1280, "ipv6": mtu >= 1280}
    with Lab(STATE_HOSTS, **family, mtu=mtu, profile="wan", agents_per_host=AGENTS_PER_HOST) as lab:
        key = str(lab.write_key())
        # The datagram budget fitted to the link: the MTU less the IP and UDP headers
        # (20 + 8 bytes on IPv4, 40 + 8 on IPv6), as docs/deploy.md advises.
        budget = f"--udp-payload={mtu - (28 if mtu < 1280 else 48)}"
        for host in lab.hosts:
            state = [f"--state=s{i}={host.index:04d}{'x' * STATE_VALUE}" for i in (0, 1)]
            seeds = seed_flags(lab.hosts[:1]) if host.index else []
            lab.start_agent(host, "--key-file", key, budget, *seeds, *state)
            # The next one starts once this one has joined: one interpreter starting
            # at a time, and one join at a time for the seed to answer.
            wait_joined(lab, host)
        run.converged = lab.wait(lambda: everyone_live(lab), 90.0, step=1.0) and lab.wait(
            lambda: states_complete(lab), 60.0, step=3.0
        )
        stats = [lab.stats(h) for h in lab.hosts]
        run.oversize = {k: sum(s.get(k, 0) for s in stats) for k in OVERSIZE}
        run.deaths = sum(s.get("deaths_declared", 0) for s in stats)
        # Counters of the namespace (its link, its IP stack): one host of each.
        for host in lab.hosts[::AGENTS_PER_HOST]:
            snmp = lab.snmp(host)
            run.fragments_created += snmp.get("Ip.FragCreates", 0) + snmp.get("Ip6FragCreates", 0)
            link = lab.link_stats(host)
            run.link_mtus.add(link["mtu"])
            run.tx_packets += link["stats64"]["tx"]["packets"]
    return run


def test_small_mtu_state_converges_without_oversize_drops(mtu_run: MtuRun) -> None:
    assert mtu_run.converged
    assert mtu_run.link_mtus == {mtu_run.mtu} and mtu_run.tx_packets > 0
    assert mtu_run.oversize == dict.fromkeys(OVERSIZE, 0)
    # Nobody was declared dead on the way: every member ran throughout.
    assert mtu_run.deaths == 0


def test_small_mtu_no_datagram_larger_than_the_mtu(mtu_run: MtuRun) -> None:
    # A datagram over the MTU is fragmented by the sending kernel, which counts it.
    # With --udp-payload fitted to the link none is; with the default 1,400-byte
    # budget the 40-member run at 576 fragmented (docs/deploy.md, "What the lab showed").
    assert mtu_run.fragments_created == 0


def test_ipv6_only_join_and_crash_detection() -> None:
    with Lab(8, ipv4=False) as lab:
        start_cluster(lab)
        joined(lab)
        assert all(h.address.startswith("[fd00:") for h in lab.hosts)
        listing = lab.members(lab.hosts[5]) or []
        assert {m["address"] for m in listing} == {h.address for h in lab.hosts}
        victim, others = lab.hosts[2], [h for h in lab.hosts if h.index != 2]
        lab.kill(victim)
        dead = lab.wait(lambda: lab.all_see(others, {victim.agent_name: "dead"}), bound(lab))
        assert dead, states_of(lab, others, victim.agent_name)


SLOW_WINDOW = 120.0
"""Seconds watched with one host at 64 kbit/s, as the issue asks."""
SLOW_BURST_AT = 10.0
"""When, into the window, every member writes 4 KiB of application state: the
slow link must then carry 28 KiB in and 4 KiB to each peer, a few seconds' worth."""


def test_one_slow_host_causes_no_false_failures(lab8: Lab) -> None:
    start_cluster(lab8)
    joined(lab8)
    slow, fast = lab8.hosts[-1], lab8.hosts[:-1]
    lab8.limit_rate(slow, "64kbit")
    seen: dict[tuple[str, str], set[str]] = {}  # (observer, member) -> states listed
    started = time.monotonic()
    burst: float | None = None
    spread_after: float | None = None
    fast_spread_after: float | None = None
    while time.monotonic() < started + SLOW_WINDOW:
        for host in lab8.hosts:
            for name, state in (lab8.view(host) or {}).items():
                seen.setdefault((host.agent_name, name), set()).add(state)
        if burst is None and time.monotonic() >= started + SLOW_BURST_AT:
            burst = time.monotonic()
            for host in lab8.hosts:
                for i in (0, 1):
                    set_state(lab8, host, f"s{i}", f"{host.index:04d}{'x' * STATE_VALUE}")
        if burst is not None and fast_spread_after is None and states_complete(lab8, fast):
            fast_spread_after = time.monotonic() - burst
        if burst is not None and spread_after is None and states_complete(lab8):
            spread_after = time.monotonic() - burst
        time.sleep(1.0)
    # No observer, the slow host included, ever listed a healthy host as failed.
    healthy = {h.agent_name for h in fast}
    false_failures = {k: v for k, v in seen.items() if k[1] in healthy and "dead" in v}
    assert false_failures == {}, seen
    assert total(lab8, fast, "deaths_declared") == 0
    # The slow member does not hold the others back: the burst spread among them,
    # and, with state rounds flow-controlled, across the slow link too (before,
    # the same deltas from every peer at once kept timing out, for good at times).
    assert fast_spread_after is not None
    assert spread_after is not None
    assert lab8.wait(lambda: lab8.all_see(lab8.hosts, dict.fromkeys(healthy, "alive")), 10.0)
    # What happened to the slow host is reported (docs/deploy.md), not asserted.
    by_others = [v for (observer, name), v in seen.items() if name == slow.agent_name != observer]
    as_listed = sorted(set().union(*by_others))
    counters = lab8.stats(slow)
    shown = ("probes", "indirect_probes", "stale_acks", "transport_stream_timeouts")
    print(
        f"\nslow host over {SLOW_WINDOW:g} s: listed as {as_listed} by the others; "
        f"state burst among the others after {fast_spread_after:.1f} s, everywhere "
        f"after {spread_after:.1f} s; "
        + f"suspicions raised by the others {total(lab8, fast, 'suspicions_raised')}, "
        f"by it {counters.get('suspicions_raised', 0)}; "
        + ", ".join(f"{k} {counters.get(k, 0)}" for k in shown)
        + f"; its link {lab8.link_stats(slow)['stats64']}"
    )
