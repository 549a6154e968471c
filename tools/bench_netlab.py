"""Agents on real addresses: swimnode against Serf in one network-namespace lab.

    sudo python tools/bench_netlab.py --nodes 8 --trials 1 --profile lan [--idle 20] [--no-serf]

The measurements of `bench_agents.py` (start-up, join convergence, idle CPU and RSS
per agent, crash detection after SIGKILL, graceful leave propagation), taken from
agents that each run in their own namespace on their own address
(`swimnode.testing.netlab`), encrypted with one shared key: swimnode with a
`keygen` key file, Serf with `-encrypt` of the same key. The same lab hosts run
swimnode first, then Serf. Prints a table per implementation, then one JSON line of
medians with Serf's under "serf". Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass

from bench_agents import _SERF_STATES, Agent, _exit_cleanly, bench
from benchlib import compile_package
from swimnode.agent.client import RpcError
from swimnode.testing.netlab import RPC, Host, Lab, LabError, unavailable_reason

# ----- swimnode --------------------------------------------------------------------------


@dataclass
class SwimHost:
    name: str
    host: Host
    lab: Lab

    @property
    def pid(self) -> int:
        return self.host.pid

    def view(self) -> dict[str, str] | None:
        return self.lab.view(self.host)

    def leave(self) -> None:
        # The agent may exit before its answer arrives.
        with contextlib.suppress(RpcError):
            self.lab.rpc(self.host, "leave", timeout=30)

    def suspicions(self) -> int:
        return int(self.lab.stats(self.host).get("suspicions_raised", 0))


class LabCluster:
    """Agents started on the lab's hosts in order; `close` kills them by PID."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.used: list[Host] = []

    def _next_host(self) -> Host:
        host = self.lab.hosts[len(self.used)]
        self.used.append(host)
        return host

    def kill(self, agent: Agent) -> None:
        assert isinstance(agent, SwimHost | SerfHost)
        self.lab.kill(agent.host)

    def close(self) -> None:
        for host in self.used:
            self.lab.kill(host)


class SwimLabCluster(LabCluster):
    def start(self, name: str, seed: Agent | None) -> Agent:
        host = self._next_host()
        seeds = ["--seed", seed.host.address] if isinstance(seed, SwimHost) else []
        self.lab.start_agent(host, "--key-file", str(self.lab.key_file), *seeds, name=name)
        return SwimHost(name, host, self.lab)


# ----- Serf ------------------------------------------------------------------------------


@dataclass
class SerfHost:
    name: str
    host: Host
    lab: Lab

    @property
    def pid(self) -> int:
        return self.host.pid

    def _serf(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = ["ip", "netns", "exec", self.host.namespace, "serf", *args]
        return subprocess.run(
            [*argv, f"-rpc-addr={RPC[0]}:{RPC[1]}"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )

    def view(self) -> dict[str, str] | None:
        done = self._serf("members", "-format=json")
        if done.returncode != 0:
            return None
        members = json.loads(done.stdout)["members"]
        return {m["name"]: _SERF_STATES.get(m["status"], m["status"]) for m in members}

    def leave(self) -> None:
        self._serf("leave")

    def suspicions(self) -> None:
        return None  # Serf does not report memberlist's suspicions


class SerfLabCluster(LabCluster):
    def __init__(self, lab: Lab, profile: str) -> None:
        super().__init__(lab)
        self.profile = profile
        self.key = lab.key_file.read_text().strip()

    def start(self, name: str, seed: Agent | None) -> Agent:
        host = self._next_host()
        argv = [
            "ip", "netns", "exec", host.namespace, "serf", "agent",
            f"-node={name}", f"-bind={host.address}", f"-rpc-addr={RPC[0]}:{RPC[1]}",
            f"-profile={self.profile}", f"-encrypt={self.key}", "-log-level=warn",
        ]  # fmt: skip
        if isinstance(seed, SerfHost):
            argv.append(f"-join={seed.host.address}")
        # Serf's log goes nowhere: the lab's own log path is for swimnode agents.
        host.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        host.agent_name = name
        return SerfHost(name, host, self.lab)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=8, help="lab hosts (default 8)")
    parser.add_argument("--trials", type=int, default=1, help="trials (default 1)")
    parser.add_argument("--profile", choices=("lan", "wan", "local"), default="lan")
    parser.add_argument("--idle", type=float, default=20.0, help="idle CPU window, s")
    parser.add_argument("--no-serf", action="store_true", help="swimnode only")
    args = parser.parse_args()
    if not 3 <= args.nodes <= 64 or args.trials < 1 or args.idle <= 0:
        parser.error("need 3 <= --nodes <= 64, --trials >= 1 and --idle > 0")
    reason = unavailable_reason()
    if reason is not None:
        print(f"bench_netlab: {reason}", file=sys.stderr)
        return 1
    serf = not args.no_serf
    if serf and shutil.which("serf") is None:
        print("bench_netlab: no `serf` on PATH; run with --no-serf", file=sys.stderr)
        return 1
    compile_package()
    result: dict[str, object] = {
        "nodes": args.nodes,
        "profile": args.profile,
        "trials": args.trials,
        "lab": "netns, one address per agent, encrypted",
    }
    try:
        with _exit_cleanly(), Lab(args.nodes, ipv6=False) as lab:
            lab.write_key()
            result.update(bench("swimnode", lambda: SwimLabCluster(lab), args))
            if serf:
                result["serf"] = bench("serf", lambda: SerfLabCluster(lab, args.profile), args)
    except LabError as exc:
        print(f"bench_netlab: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
