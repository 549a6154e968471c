"""Application state across a slow link, in a network-namespace lab or simulated.

    sudo python tools/bench_slowlink.py --hosts 8 --rate 64kbit --bursts 5 --gap 35
    python tools/bench_slowlink.py --sim 1,2,3 --hosts 8 --rate 64kbit --bursts 5

Starts one encrypted agent per lab host (`swimnode.testing.netlab`), waits until all
list each other alive, limits the last host's link with `tbf` both ways, then
`--bursts` times, `--gap` seconds apart, has every member write two keys of 2 KiB
at once. Per burst it reports how long until every host held every member's new
values (none: not within the gap), and what the slow host took in meanwhile: stream
timeouts (transfers that did not arrive whole within the transport's 10 s) and bytes
on its link. Prints a table, then one JSON line. Needs root.

With `--sim SEEDS` it runs the same bursts in the discrete-event simulator instead
(`FastCluster`, the LAN profile, no encryption), once per seed, the slow host's link
limited by `LinkModel.limit_rate`; no root needed. The table then shows what the
slow link lost (`congestion`: datagrams dropped and streams timed out on it) and the
bytes delivered to the slow host, rather than the lab's timeouts and link bytes.
docs/gossip.md §3 has what both measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from swimnode.testing.fastcluster import FastCluster
from swimnode.testing.fastsim import FastSim
from swimnode.testing.linkrate import parse_rate
from swimnode.testing.netlab import Host, Lab, unavailable_reason

VALUE_BYTES = 2044
"""Two keys of 4 + 2044 bytes: 4 KiB of state per member, as in tests/test_netlab.py."""


def burst_values(burst: int, index: int) -> dict[str, str]:
    prefix = f"{burst:02d}{index:04d}"
    return {f"s{i}": prefix + "x" * (VALUE_BYTES - 2) for i in (0, 1)}


def holds_burst(lab: Lab, burst: int) -> bool:
    """Whether every host lists every member with that member's values of `burst`."""
    want = {h.agent_name: burst_values(burst, h.index) for h in lab.hosts}
    for host in lab.hosts:
        listing = lab.members(host)
        if listing is None:
            return False
        got = {m["name"]: m["app_state"] for m in listing}
        if any(got.get(name) != values for name, values in want.items()):
            return False
    return True


def rx_bytes(lab: Lab, host: Host) -> int:
    return int(lab.link_stats(host)["stats64"]["rx"]["bytes"])


def run(hosts: int, rate: str, bursts: int, gap: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with Lab(hosts) as lab:
        key = str(lab.write_key())
        first = lab.hosts[0]
        for host in lab.hosts:
            seeds = ["--seed", first.address] if host is not first else []
            lab.start_agent(host, "--key-file", key, *seeds)
        names = {h.agent_name for h in lab.hosts}
        if not lab.wait(lambda: lab.all_see(lab.hosts, dict.fromkeys(names, "alive")), 60):
            raise SystemExit(f"the {hosts} agents did not converge within 60 s")
        slow = lab.hosts[-1]
        lab.limit_rate(slow, rate)
        time.sleep(5)
        for burst in range(bursts):
            timeouts = lab.stats(slow).get("transport_stream_timeouts", 0)
            rx = rx_bytes(lab, slow)
            start = time.monotonic()
            for host in lab.hosts:
                for key_name, value in burst_values(burst, host.index).items():
                    lab.rpc(host, "state_set", key=key_name, value=value)
            done: float | None = None
            while time.monotonic() < start + gap:
                if done is None and holds_burst(lab, burst):
                    done = round(time.monotonic() - start, 1)
                time.sleep(0.5)
            rows.append(
                {
                    "everywhere_s": done,
                    "slow_stream_timeouts": lab.stats(slow).get("transport_stream_timeouts", 0)
                    - timeouts,
                    "slow_rx_kb": round((rx_bytes(lab, slow) - rx) / 1000, 1),
                }
            )
            print(f"burst {burst + 1}: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def run_sim(hosts: int, rate: float, bursts: int, gap: float, seed: int) -> list[dict[str, Any]]:
    """`run`, simulated: the same bursts through a link limited to `rate` bytes/s."""
    sim = FastSim(seed)
    cluster = FastCluster(hosts, seed=seed, sim=sim)
    if cluster.wait_for(cluster.converged, timeout=60) is None:
        raise SystemExit(f"the {hosts} simulated nodes did not converge within 60 s")
    slow_name = cluster.names[-1]
    sim.limit_rate(cluster.address_of(slow_name), rate)
    sim.run_for(5)
    slow = cluster.cores[slow_name]
    rows: list[dict[str, Any]] = []
    for burst in range(bursts):
        want = {name: burst_values(burst, i) for i, name in enumerate(cluster.names)}
        lost, delivered = sim.stats.congestion, slow.stats["bytes_received"]
        start = sim.now
        for name, values in want.items():
            for key_name, value in values.items():
                cluster.set_state(name, key_name, value)
        took = cluster.wait_for(cluster.state_converged, timeout=gap, step=0.1)
        sim.run_for(start + gap - sim.now)
        rows.append(
            {
                "everywhere_s": None if took is None else round(took, 1),
                "slow_congestion": sim.stats.congestion - lost,
                "slow_delivered_kb": round((slow.stats["bytes_received"] - delivered) / 1000, 1),
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--rate", default="64kbit", help="tbf rate of the slow host's link")
    parser.add_argument("--bursts", type=int, default=5)
    parser.add_argument("--gap", type=float, default=35.0, help="seconds between bursts")
    parser.add_argument(
        "--sim", metavar="SEEDS", help="simulate instead, once per seed (comma-separated)"
    )
    args = parser.parse_args()
    if args.hosts < 2 or args.bursts < 1 or not 10 <= args.gap <= 600:
        parser.error("need --hosts >= 2, --bursts >= 1 and 10 <= --gap <= 600")
    try:
        rate = parse_rate(args.rate)
        seeds = [int(seed) for seed in args.sim.split(",")] if args.sim else []
    except ValueError as exc:
        parser.error(str(exc))
    if args.sim:
        rows = [
            row for seed in seeds for row in run_sim(args.hosts, rate, args.bursts, args.gap, seed)
        ]
        columns = ("slow_congestion", "slow_delivered_kb")
        where = f"simulated, seeds {args.sim}"
    else:
        reason = unavailable_reason()
        if reason is not None:
            parser.error(f"no lab here: {reason}")
        rows = run(args.hosts, args.rate, args.bursts, args.gap)
        columns = ("slow_stream_timeouts", "slow_rx_kb")
        where = "lab"
    print(f"{args.hosts} hosts ({where}), the last at {args.rate}; 4 KiB per member a burst")
    print(f"{'burst':>6}{'everywhere s':>14}{columns[0]:>22}{columns[1]:>20}")
    for i, row in enumerate(rows, 1):
        shown = "-" if row["everywhere_s"] is None else f"{row['everywhere_s']:.1f}"
        print(f"{i:>6}{shown:>14}{row[columns[0]]:>22}{row[columns[1]]:>20.1f}")
    times = [r["everywhere_s"] for r in rows if r["everywhere_s"] is not None]
    summary = {
        "hosts": args.hosts,
        "rate": args.rate,
        "gap_s": args.gap,
        "simulated_seeds": seeds,
        "bursts": rows,
        "completed": len(times),
        "median_everywhere_s": statistics.median(times) if times else None,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
