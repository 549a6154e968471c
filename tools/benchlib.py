"""Helpers only the benchmarks need: bytecode for the package under test, and a
process's CPU time and memory read from Linux `/proc`. The tools import this as
`benchlib`, since running `python tools/X.py` puts `tools/` on `sys.path`."""

from __future__ import annotations

import compileall
import os
from pathlib import Path

import swimnode


def compile_package() -> None:
    """Write swimnode's bytecode next to its sources, as installing a package does.

    An editable install has none, and under PYTHONDONTWRITEBYTECODE=1 (set on some
    machines) Python never writes it, so every agent would compile every module at
    every start: measured here, about 2 MiB more RSS per agent and more CPU time at
    start. Benchmarks call this first so they measure the agent, not the compiler.
    """
    compileall.compile_dir(Path(swimnode.__file__).parent, quiet=1)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """Resident set size of `pid`, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
