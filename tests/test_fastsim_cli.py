"""`python -m swimnode simulate`: flags, output, errors, and no Trio."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from swimnode.agent import cli, simulate

SMALL = ["simulate", "--nodes", "12", "--duration", "25", "--seed", "3"]


def test_json_report(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [*SMALL, "--json", "--set", "probe_interval=0.8", "--loss", "0.01", "--window", "5"]
    assert cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["scenario_nodes"] == 12
    assert report["scenario_overrides"] == {"probe_interval": 0.8}
    assert report["first_failed_s"] is not None and report["all_failed_s"] is not None
    assert report["rounds_100"] is not None
    assert report["msgs_per_node_s"] > 0
    assert report["crash_curve"][-1][1] == 1.0


def test_a_converged_start(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([*SMALL, "--start", "converged", "--newcomers", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["scenario_start"] == "converged" and report["converge_s"] == 0.0
    # The crash's and the update's figures are about the 12 members before t0:
    # complete, though the newcomers never knew the crashed node.
    assert report["all_failed_s"] is not None and report["rounds_100"] is not None
    assert report["spread_curve"][-1][1] == 1.0 and len(report["spread_curve"]) == 11
    assert report["false_failures"] == report["false_suspicions"] == 0
    assert 0 < report["newcomers_known_s"] < 5
    assert cli.main([*SMALL, "--start", "converged"]) == 0
    out = capsys.readouterr().out
    assert "converged (no join simulated)" in out and "after the join" not in out
    assert "newcomers" not in out


def test_table_with_a_partition_and_slow_nodes(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [*SMALL, "--slow", "2", "--partition", "0.25@2+20", "--crash", "0"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "converged again after the heal" in out
    assert "first suspicion" not in out  # nothing crashed
    assert "real-time factor" in out


def test_slow_nodes_behind_slow_links(capsys: pytest.CaptureFixture[str]) -> None:
    # 800 bit/s: 100 bytes a second, less than the gossip the slow nodes are sent.
    argv = [*SMALL, "--slow", "2", "--slow-delay", "0", "--slow-rate", "800bit", "--json"]
    assert cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["scenario_slow_rate"] == 100.0
    assert report["congestion"] > 0
    assert cli.main([*SMALL, "--slow", "2", "--crash", "0"]) == 0
    assert "slow links" not in capsys.readouterr().out
    assert cli.main([*SMALL, "--slow", "2", "--slow-rate", "1mbit", "--crash", "0"]) == 0
    assert "lost on the slow links (datagrams, streams)     0" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nodes", "2"], "--nodes must be at least 3"),
        (["--loss", "1.5"], "--loss must be in [0, 1)"),
        (["--window", "0"], "--window must be > 0"),
        (["--partition", "half@3"], "expected FRACTION@T+DURATION"),
        (["--partition", "1.5@3+4"], "0 < FRACTION < 1"),
        (["--set", "nope=1"], "--set nope: unknown config field"),
        (["--set", "seed=4"], "--set seed: not settable here (the simulation sets it)"),
        (["--set", "probe_interval"], "--set 'probe_interval': expected FIELD=VALUE"),
        (["--set", "probe_interval=fast"], "--set probe_interval: expected a finite number"),
        (["--set", "probe_timeout=5"], "probe_timeout must not exceed probe_interval"),
        (["--set", "lifeguard_buddy=maybe"], "expected true or false"),
        (["--nodes", "12", "--crash", "11"], "at least 2 healthy nodes"),
        (["--start", "warm"], "argument --start: invalid choice: 'warm'"),
        (["--newcomers", "-1"], "--newcomers must be between 0 and 10 times --nodes"),
        (["--slow-rate", "64k"], "--slow-rate: rate '64k' is not a positive rate like 64kbit"),
        (["--slow-rate", "0kbit"], "--slow-rate: rate '0kbit' is not a positive rate like 64kbit"),
    ],
)
def test_bad_flags_are_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["simulate", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("swimnode simulate: ")


def test_plot_without_matplotlib_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    assert cli.main([*SMALL, "--plot", "out.png"]) == 2
    assert "swimnode[plot]" in capsys.readouterr().err


def test_progress_bar_only_on_a_terminal() -> None:
    class Tty:
        def __init__(self, tty: bool) -> None:
            self.text, self.tty = "", tty

        def isatty(self) -> bool:
            return self.tty

        def write(self, s: str) -> None:
            self.text += s

        def flush(self) -> None:
            pass

    for tty in (True, False):
        stream = Tty(tty)
        bar = simulate.ProgressBar(stream)  # type: ignore[arg-type]
        bar._start -= simulate.PROGRESS_AFTER  # as if the run had lasted a while
        bar.update("scenario", 0.5)
        bar.clear()
        assert ("50%" in stream.text) is tty


def test_simulate_imports_no_trio() -> None:
    code = (
        "import contextlib, io, sys\n"
        "from swimnode.agent import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    code = cli.main(['simulate', '--nodes', '5', '--duration', '5'])\n"
        "print(code, 'trio' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.split() == ["0", "False"]


def test_a_seed_reproduces_a_run_across_processes() -> None:
    # Different hash seeds, so nothing may depend on the order of a set of strings.
    reports = []
    for hash_seed in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-m", "swimnode", *SMALL, "--loss", "0.05", "--slow", "2", "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
        )
        report = json.loads(done.stdout)
        for measured in ("wall_s", "cpu_s", "join_wall_s", "peak_rss_mib", "rss_per_node_kib"):
            del report[measured]
        del report["realtime_factor"], report["steady_realtime_factor"]
        reports.append(report)
    assert reports[0] == reports[1]
