"""Run swimnode agents on real addresses in a network-namespace lab, until Ctrl-C.

    sudo python tools/netlab.py up --hosts 8 [--family 4|6|both] [--mtu 1500]
                                  [--agents-per-host 1]
    sudo python tools/netlab.py cleanup

`up` builds the lab (`swimnode.testing.netlab`), starts one agent per host with a
shared key, every agent seeded by the first host, prints how to reach each one, and
tears everything down on Ctrl-C or SIGTERM. `cleanup` removes what a crashed lab
run left behind (only runs whose process is gone). Needs root.
"""

from __future__ import annotations

import argparse
import sys
import time

from swimnode.net.transport import format_address
from swimnode.testing.netlab import Lab, LabError, remove_leftovers, unavailable_reason


def up(args: argparse.Namespace) -> None:
    family = {"ipv4": args.family != "6", "ipv6": args.family != "4"}
    with Lab(args.hosts, **family, mtu=args.mtu, agents_per_host=args.agents_per_host) as lab:
        key = str(lab.write_key())
        seed = lab.hosts[0]
        for host in lab.hosts:
            seeds = [] if host is seed else ["--seed", seed.address]
            lab.start_agent(host, "--key-file", key, *seeds)
        print(f"{'AGENT':<6} {'ADDRESS':<28} {'RPC':<16} NAMESPACE")
        for host in lab.hosts:
            rpc = format_address(host.rpc_address)
            print(f"{host.agent_name:<6} {host.address:<28} {rpc:<16} {host.namespace}")
        first = lab.hosts[0].namespace
        print(f"\ntry: ip netns exec {first} {sys.executable} -m swimnode members")
        print(f"logs: {lab.workdir}; Ctrl-C tears the lab down")
        while all(h.running for h in lab.hosts):
            time.sleep(1)
        print("an agent exited; tearing down", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="build a lab and run agents until Ctrl-C")
    start.add_argument("--hosts", type=int, default=8, help="hosts (default 8)")
    start.add_argument("--family", choices=("4", "6", "both"), default="both")
    start.add_argument("--mtu", type=int, default=1500, help="MTU of every host link")
    start.add_argument(
        "--agents-per-host",
        type=int,
        default=1,
        help="agents sharing each namespace, on consecutive ports (default 1)",
    )
    commands.add_parser("cleanup", help="remove leftovers of crashed lab runs")
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason is not None:
        print(f"netlab: {reason}", file=sys.stderr)
        return 1
    try:
        if args.command == "cleanup":
            removed = remove_leftovers()
            print(f"removed {len(removed)} namespace(s)" + "".join(f"\n  {n}" for n in removed))
        else:
            up(args)
    except (LabError, ValueError) as exc:
        print(f"netlab: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
