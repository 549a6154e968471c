"""The benchmark scripts in tools/, run as `python tools/X.py` from the repository root.

Each script that needs neither root, network namespaces nor Serf runs once at the
smallest sizes its flags allow, and must keep its contract: exit 0, a readable table,
and last one JSON line with the figures its docstring promises. Bad flags must give
argparse's usage and a one-line error (exit 2), no traceback. bench_netlab.py,
bench_slowlink.py (but for `--sim`), netlab.py and bench_agents.py's `--vs-serf` need
root, namespaces or Serf: only their `--help` runs here. bench_agents.py runs three
agents on loopback.

Nothing asserts how fast anything ran: measured figures (wall and CPU time, RSS) are
only checked to be numbers >= 0; simulated ones, which the seed fixes, to be there
and in order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_tool(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `python tools/SCRIPT ARGS` from the repository root, in a session of its
    own: past `timeout` its process group (with any agents or workers it started) is
    killed by id and the test fails."""
    argv = [sys.executable, f"tools/{script}", *args]
    with subprocess.Popen(
        argv,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
            pytest.fail(f"{' '.join(argv[1:])}: still running after {timeout} s\n{err[-3000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def report(script: str, *args: str, timeout: float = 60) -> Any:
    """The JSON line `script` ends with, after checking it exited 0 and printed
    something for people before it."""
    done = run_tool(script, *args, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) >= 2, done.stdout  # a table, then the JSON line
    return json.loads(lines[-1])


def measured(*values: float | None) -> bool:
    """Figures measured on this machine: there, and >= 0 (times may round to 0)."""
    return all(v is not None and v >= 0 for v in values)


def ordered(*values: float | None) -> bool:
    """Figures that are all there, each at most the next."""
    present = [v for v in values if v is not None]
    return len(present) == len(values) and present == sorted(present)


# ----- simulated (MockClock or the discrete-event simulator) ------------------------------


def test_bench_detection() -> None:
    r = report(
        "bench_detection.py", "--nodes", "3", "--crash", "1", "--trials", "1", "--window", "1"
    )
    assert (r["nodes"], r["crash"], r["trials"], r["seed"], r["loss"]) == (3, 1, 1, 1, 0.0)
    for key in ("first_suspect_s", "first_dead_s", "all_dead_s"):
        assert ordered(0, r[key]["median"], r[key]["p99"]), key
    assert ordered(0, r["first_suspect_s"]["median"], r["first_dead_s"]["median"])
    assert ordered(r["first_dead_s"]["median"], r["all_dead_s"]["median"])
    assert r["undetected"] == 0 and r["false_dead"] >= 0
    assert r["msgs_per_node_s"] > 0 and r["bytes_per_node_s"] > 0
    assert r["expected_s"] > 0 and r["sim_s"] > 0 and r["realtime_factor"] > 0
    assert measured(r["wall_s"], r["cpu_s"], r["realtime_factor_cpu"])


def test_bench_dissemination() -> None:
    # Fewer updates than nodes: the members that wrote nothing have nothing to spread.
    [r] = report("bench_dissemination.py", "--nodes", "3", "--updates", "2")
    assert (r["nodes"], r["loss"], r["burst_updates"]) == (3, 0.0, 2)
    assert r["origin"] in {"n0", "n1", "n2"}
    assert ordered(0, r["rounds_50"], r["rounds_99"], r["rounds_100"])
    assert r["seconds_100"] > 0 and r["burst_start"] > 0
    assert ordered(0, r["burst_seconds_100"])
    assert r["expect_push_rounds"] > 0 and r["expect_pushpull_rounds"] > 0
    assert measured(r["antientropy_bytes_per_node_s"], r["wall_s"])


def test_bench_join() -> None:
    rows = report("bench_join.py", "--nodes", "3", "--seeds", "1", "--announce", "16,0")
    assert [(r["nodes"], r["announce"], r["seeds"]) for r in rows] == [(3, 16, 1), (3, 0, 1)]
    for r in rows:
        assert ordered(0, r["join_s_min"], r["join_s_median"], r["join_s_max"])
        assert r["join_s_min"] > 0 and r["packets_per_node"] > 0 and r["mismatches"] >= 0


def test_bench_idle_wakeups() -> None:
    r = report("bench_idle_wakeups.py", "--nodes", "3", "--window", "1", "--seed", "1")
    assert (r["nodes"], r["window"], r["seed"]) == (3, 1.0, 1)
    for kind in ("own", "total"):
        row = r[f"{kind}_per_node_s"]
        assert ordered(0, row["min"], row["mean"], row["max"]) and row["max"] > 0
    assert r["own_per_node_s"]["mean"] <= r["total_per_node_s"]["mean"]


def test_bench_false_positives() -> None:
    # One crash (at 30 s, restarted at 60 s) in a 72 s scenario, two configurations
    # in two worker processes.
    r = report(
        "bench_false_positives.py",
        *("--nodes", "3", "--hours", "0.02", "--max-slow", "1"),
        *("--crash-every", "60", "--restart-after", "30", "--configs", "plain,lifeguard"),
        *("--jobs", "2"),
    )
    assert r["params"]["nodes"] == 3 and r["params"]["hours"] == 0.02
    for label in ("plain", "lifeguard"):
        c = r[label]
        assert c["crashes"] == 1 and c["undetected"] == 0
        assert ordered(0, c["detect_median_s"], c["detect_p99_s"]) and c["detect_median_s"] > 0
        counts = ["false_failures", "false_failures_slow", "false_failure_events"]
        counts += ["false_suspicions", "false_suspicions_slow", "deaths_declared_total"]
        assert all(isinstance(c[k], int) and c[k] >= 0 for k in counts)
        assert c["packets_sent"] > 0 and measured(c["wall_s"])
    assert r["reduction"] >= 0 and r["detect_ratio"] > 0 and measured(r["wall_total_s"])


def test_bench_fastsim_scale() -> None:
    # --start and --newcomers are not bench_fastsim's: they go to `simulate` as they are.
    out = report(
        "bench_fastsim.py",
        *("--nodes", "3", "--duration", "10", "--start", "converged", "--newcomers", "1"),
    )
    assert measured(out["load_at_start"])
    [r] = out["results"]
    assert r["nodes"] == 3 and r["sim_s"] > 0 and r["expected_detection_s"] > 0
    assert ordered(0, r["first_failed_s"], r["all_failed_s"]) and r["first_failed_s"] > 0
    assert ordered(0, r["rounds_50"], r["rounds_99"], r["rounds_100"])
    assert r["newcomers_known_s"] > 0 and r["false_failures"] >= 0
    assert r["msgs_per_node_s"] > 0 and r["bytes_per_node_s"] > 0
    assert r["realtime_factor"] > 0 and r["peak_rss_mib"] > 0 and r["bytes_per_member_view"] > 0
    assert measured(r["wall_s"], r["cpu_s"], r["join_wall_s"], r["rss_per_node_kib"])


def test_bench_fastsim_agree() -> None:
    out = report("bench_fastsim.py", "--agree", "--nodes", "3", "--seeds", "1")
    r = out["results"]
    assert (r["nodes"], r["seeds"], r["loss"]) == (3, 1, 0.0)
    figures = ["first_suspect", "first_dead", "all_dead", "rounds_50", "rounds_99", "rounds_100"]
    assert [row["figure"] for row in r["rows"]] == figures
    for row in r["rows"]:
        assert ordered(0, row["trio"]) and ordered(0, row["fast"]), row
    assert set(r["wall_s"]) == {"trio", "fast"} and measured(*r["wall_s"].values())


def test_bench_fastsim_agree_false_failures() -> None:
    # 0.03 h: long enough for bench_false_positives' first crash (at 30 s) to be detected.
    out = report(
        "bench_fastsim.py",
        *("--agree", "--false-failures", "--nodes", "3", "--seeds", "1", "--hours", "0.03"),
    )
    rows = {row["figure"]: row for row in out["results"]}
    figures = ["false_failures", "false_failures_slow", "false_suspicions", "detect_median_s"]
    assert list(rows) == figures
    for row in rows.values():
        assert ordered(0, row["trio"]) and ordered(0, row["fast"]), row
    assert rows["detect_median_s"]["trio"] > 0 and rows["detect_median_s"]["fast"] > 0


def test_fuzz_cluster() -> None:
    r = report("fuzz_cluster.py", "--examples", "2", "--steps", "2", "--seed", "1")
    assert (r["examples"], r["seed"], r["failures"], r["failed"], r["failure"]) == (
        2,
        1,
        0,
        False,
        None,
    )
    assert 0 <= r["steps"] <= 2 * 2 and r["checks"] >= 2 and r["sim_s"] > 0
    assert ordered(0, r["settle_median_s"], r["settle_max_s"]) and measured(r["wall_s"])


# ----- measured on this machine -----------------------------------------------------------


def test_bench_ring() -> None:
    args = ("--members", "3", "--vnodes", "1", "--keys", "10", "--repeats", "1")
    r = report("bench_ring.py", *args)
    assert (r["members"], r["vnodes"], r["tokens"]) == (3, 1, 3)
    assert r["owner_per_s"] > 0 and r["token_owner_per_s"] > 0 and r["preflist3_per_s"] > 0
    assert measured(r["build_s"])
    # Shares of the ring relative to a fair one: the largest at least 1, the smallest at most.
    assert ordered(0, r["ownership_min_rel"], 1, r["ownership_max_rel"])


def test_bench_wakeup() -> None:
    r = report("bench_wakeup.py", "--seconds", "0.01")
    rates = (10, 100, 1000)
    keys = {f"{kind}_sleep_us_at_{rate}" for kind in ("time", "trio") for rate in rates}
    assert set(r) == {"seconds", *keys} and r["seconds"] == 0.01
    assert measured(*(r[k] for k in keys))


def test_bench_startup() -> None:
    # One process per burst, one trial: each command and one agent, twice each.
    r = report("bench_startup.py", "--procs", "1", "--trials", "1")
    assert (r["procs"], r["trials"]) == (1, 1) and r["cpus"] >= 1
    cases = ["python -c pass", "import trio", "swimnode members --help"]
    cases += ["import swimnode.agent.daemon", "swimnode agent"]
    assert list(r["cases"]) == cases
    for figures in r["cases"].values():
        assert set(figures) == {"single_wall_s", "single_cpu_s", "burst_wall_s", "burst_cpu_s"}
        assert measured(*figures.values())
        assert figures["single_wall_s"] > 0 and figures["burst_wall_s"] > 0


def test_bench_embed_wakeups_only() -> None:
    r = report("bench_embed.py", "--nodes", "0", "--wakeups", "10")
    assert (r["nodes"], r["flavours"]) == (0, {}) and measured(r["load1"])
    assert set(r["wakeup_cpu_us"]) == {"trio.run", "asyncio task"}
    assert measured(*r["wakeup_cpu_us"].values())


def test_bench_embed_two_node_clusters() -> None:
    # Over a window this short the trio flavour's idle CPU often reads 0 (10 ms
    # ticks): the ratio to it is then None, not a division by zero.
    args = ("--nodes", "2", "--window", "0.1", "--events", "1", "--wakeups", "10")
    r = report("bench_embed.py", *args, "--flavours", "trio,aio,blocking", timeout=90)
    assert (r["nodes"], r["window"], r["events_per_node"]) == (2, 0.1, 1)
    assert set(r["flavours"]) == {"trio", "aio", "blocking"}
    trio_cpu = r["flavours"]["trio"]["idle_cpu_ms_per_s"]
    for row in r["flavours"].values():
        assert row["events"] == 2  # one per node
        assert ordered(0, row["event_p50_ms"], row["event_p99_ms"])
        assert ordered(0, row["detect_first_s"], row["detect_all_s"])
        assert row["detect_first_s"] > 0 and row["rss_mib"] > 0
        assert measured(row["idle_cpu_ms_per_s"])
        ratio = row["idle_cpu_vs_trio"]
        assert ratio is None if trio_cpu == 0 else ratio == row["idle_cpu_ms_per_s"] / trio_cpu


def test_bench_agents_three_on_loopback() -> None:
    # The local profile's short timers keep the kill detection to a few seconds.
    r = report("bench_agents.py", "--nodes", "3", "--idle", "0.1", "--profile", "local", timeout=90)
    assert (r["nodes"], r["profile"], r["trials"], r["start"]) == (3, "local", 1, "burst")
    assert (r["completed"], r["failures"], len(r["per_trial"])) == (1, [], 1)
    assert "serf" not in r
    counts = ("false_failed_start", "false_failed_idle", "false_suspicions")
    assert all(isinstance(r[k], int) and r[k] >= 0 for k in counts)
    times = [k for k in r["per_trial"][0] if k not in counts]
    assert len(times) == 13 and measured(*(r[k] for k in times))
    assert ordered(0, r["detect_first_s"], r["detect_all_s"]) and r["detect_first_s"] > 0
    assert r["start_s"] <= r["join_from_spawn_s"] and r["rss_mib"] > 0


def test_bench_slowlink_simulated() -> None:
    r = report("bench_slowlink.py", "--sim", "1", "--hosts", "3", "--bursts", "2", "--gap", "10")
    assert (r["hosts"], r["rate"], r["simulated_seeds"], len(r["bursts"])) == (3, "64kbit", [1], 2)
    for burst in r["bursts"]:
        assert burst["everywhere_s"] is None or 0 < burst["everywhere_s"] <= 10
        assert burst["slow_congestion"] >= 0 and burst["slow_delivered_kb"] > 0
    assert r["completed"] == sum(b["everywhere_s"] is not None for b in r["bursts"])


# ----- flags ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("bench_detection.py", ["--nodes", "2"], "need --nodes >= 3 and 1 <= --crash < nodes - 1"),
        ("bench_dissemination.py", ["--nodes", "3,x"], "--nodes takes comma-separated integers"),
        ("bench_ring.py", ["--keys", "many"], "argument --keys: invalid int value: 'many'"),
        ("bench_false_positives.py", ["--configs", "plain,nope"], "unknown config(s): nope"),
        (
            "bench_slowlink.py",
            ["--sim", "1", "--rate", "fast"],
            "rate 'fast' is not a positive rate like 64kbit",
        ),
    ],
)
def test_bad_flags_are_one_line(script: str, args: list[str], message: str) -> None:
    done = run_tool(script, *args, timeout=30)
    assert done.returncode == 2 and done.stdout == ""
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith(f"usage: {script} ")
    assert lines[-1] == f"{script}: error: {message}"


@pytest.mark.parametrize(
    "script", ["bench_netlab.py", "bench_slowlink.py", "netlab.py", "bench_agents.py"]
)
def test_help_of_the_scripts_that_need_root_or_serf(script: str) -> None:
    done = run_tool(script, "--help", timeout=30)
    assert done.returncode == 0 and "Traceback" not in done.stderr
    assert done.stdout.startswith(f"usage: {script} ")
    if script == "bench_agents.py":
        assert "--vs-serf" in done.stdout
