"""`python -m swimnode simulate`: a what-if run of a whole cluster, for choosing timers.

The flags become a `swimnode.testing.scenarios.Scenario`, run on the discrete-event
simulator (the real protocol cores, no Trio, no sockets); the figures come out as a
table (or one JSON object with `--json`), and `--plot FILE.png` draws the crash's
detection curve and the update's spread beside the epidemic expectations (needs
matplotlib: the `[plot]` extra). This module loads neither the simulator nor
matplotlib until the command runs, so the command line starts light.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from .settings import PROFILES, UsageError, config_overrides, split_assignments

if TYPE_CHECKING:
    from ..testing.scenarios import Partition, Report, Scenario

HELP = "Simulate a cluster and report what its timers cost."
ABOUT = (
    "Simulate a cluster on the discrete-event simulator (real protocol code, no "
    "network) and report what timers cost: detection time, false failures, "
    "dissemination rounds, traffic, healing after a partition."
)

_FIXED = {
    **dict.fromkeys(("name", "bind", "advertise", "seeds", "seed"), "the simulation sets it"),
    **dict.fromkeys(("label", "replay_window"), "the security layer is not simulated"),
}
"""Config fields that cannot be `--set`, and why."""

PROGRESS_AFTER = 2.0
"""Wall seconds before a progress bar appears (on a terminal only)."""


def _rate(text: str) -> float:
    """`--slow-rate` in bytes per second."""
    from ..testing.linkrate import parse_rate

    try:
        return parse_rate(text)
    except ValueError as exc:
        raise UsageError(f"--slow-rate: {exc}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's flags."""
    p.add_argument("--nodes", type=int, default=100, help="cluster size (default 100)")
    p.add_argument("--profile", choices=PROFILES, default="lan", help="config profile")
    p.add_argument("--loss", type=float, default=0.0, help="datagram loss, 0..1 (default 0)")
    p.add_argument("--latency", type=float, default=1.0, help="one-way latency, ms (default 1)")
    p.add_argument("--jitter", type=float, default=0.5, help="added 0..jitter ms (default 0.5)")
    p.add_argument("--crash", type=int, default=1, help="nodes killed at t0 (default 1)")
    p.add_argument(
        "--partition",
        metavar="FRACTION@T+DURATION",
        help="cut FRACTION of the nodes off from the rest at t0+T for DURATION seconds",
    )
    p.add_argument(
        "--newcomers", type=int, default=0, help="nodes that join through n0 at t0 (default 0)"
    )
    p.add_argument("--slow", type=int, default=0, help="nodes that read late from t0 (default 0)")
    p.add_argument(
        "--slow-delay", type=float, default=2.0, help="how late slow nodes read, s (default 2)"
    )
    p.add_argument(
        "--slow-rate",
        metavar="RATE",
        help="also limit the slow nodes' links to RATE each way, like 64kbit (default: no limit)",
    )
    p.add_argument(
        "--duration", type=float, default=60.0, help="simulated seconds after t0 (default 60)"
    )
    p.add_argument(
        "--window",
        type=float,
        default=10.0,
        help="simulated seconds of steady state whose traffic is measured (default 10)",
    )
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument(
        "--start",
        choices=("join", "converged"),
        default="join",
        help="nodes join through n0 (default), or start converged: for large N, "
        "whose join is N² news (docs/scale.md)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a config field, e.g. --set probe_interval=0.5 (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", metavar="FILE.png", help="draw the curves (needs the [plot] extra)")


def parse_partition(text: str) -> Partition:
    """`FRACTION@T+DURATION`, e.g. `0.3@10+20`; raises `UsageError`."""
    from ..testing.scenarios import Partition

    try:
        fraction, rest = text.split("@", 1)
        at, duration = rest.split("+", 1)
        part = Partition(float(fraction), float(at), float(duration))
    except ValueError:
        raise UsageError(f"--partition: expected FRACTION@T+DURATION, got {text!r}") from None
    if not 0 < part.fraction < 1 or part.at < 0 or part.duration <= 0:
        raise UsageError("--partition: need 0 < FRACTION < 1, T >= 0 and DURATION > 0")
    return part


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`FIELD=VALUE` pairs as typed config values; raises `UsageError`."""
    return config_overrides(split_assignments(items, "--set"), _FIXED, "--set")


def scenario_from(ns: argparse.Namespace) -> Scenario:
    """The scenario the flags describe; raises `UsageError` on a bad one."""
    from ..testing.scenarios import Scenario

    if ns.nodes < 3:
        raise UsageError("--nodes must be at least 3")
    if not 0 <= ns.crash <= ns.nodes - 2 or not 0 <= ns.slow <= ns.nodes - 2 - ns.crash:
        raise UsageError("--crash and --slow together must leave at least 2 healthy nodes")
    if not 0 <= ns.newcomers <= 10 * ns.nodes:
        raise UsageError("--newcomers must be between 0 and 10 times --nodes")
    if not 0.0 <= ns.loss < 1.0:
        raise UsageError("--loss must be in [0, 1)")
    for flag, value in (("--latency", ns.latency), ("--jitter", ns.jitter)):
        if not 0 <= value < 60_000:
            raise UsageError(f"{flag} must be between 0 and 60000 ms")
    if ns.duration <= 0 or ns.window <= 0 or ns.slow_delay < 0:
        raise UsageError("--duration and --window must be > 0, and --slow-delay >= 0")
    sc = Scenario(
        nodes=ns.nodes,
        profile=ns.profile,
        overrides=parse_overrides(ns.overrides),
        loss=ns.loss,
        latency=ns.latency / 1000,
        jitter=ns.jitter / 1000,
        crash=ns.crash,
        slow=ns.slow,
        slow_delay=ns.slow_delay,
        slow_rate=None if ns.slow_rate is None else _rate(ns.slow_rate),
        partition=None if ns.partition is None else parse_partition(ns.partition),
        duration=ns.duration,
        window=ns.window,
        seed=ns.seed,
        start=ns.start,
        newcomers=ns.newcomers,
    )
    try:
        sc.config()
    except ValueError as exc:
        raise UsageError(f"--set: {exc}") from None
    return sc


def run(ns: argparse.Namespace) -> int:
    """The command: parse, simulate, print (and plot)."""
    sc = scenario_from(ns)
    if ns.plot is not None:
        _check_matplotlib()
    from ..testing import scenarios

    bar = ProgressBar(sys.stderr)
    try:
        report = scenarios.run(sc, bar.update)
    except RuntimeError as exc:
        bar.clear()
        print(f"swimnode simulate: {exc}", file=sys.stderr)
        return 1
    bar.clear()
    print(json.dumps(report_json(report)) if ns.json else render(report))
    if ns.plot is not None:
        try:
            plot(report, ns.plot)
        except OSError as exc:
            print(f"swimnode simulate: cannot write {ns.plot}: {exc.strerror}", file=sys.stderr)
            return 1
        if not ns.json:
            print(f"plot written to {ns.plot}")
    return 0


def _check_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'swimnode[plot]'") from None


class ProgressBar:
    """A one-line bar on a terminal's stderr, shown once a run has taken a couple of
    seconds; nothing at all when stderr is not a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._on = stream.isatty()
        self._start = time.monotonic()
        self._shown = False
        self._last = 0.0

    def update(self, phase: str, done: float) -> None:
        now = time.monotonic()
        if not self._on or now - self._start < PROGRESS_AFTER or now - self._last < 0.2:
            return
        self._last = now
        width = 30
        filled = round(done * width)
        bar = "#" * filled + "." * (width - filled)
        self._stream.write(f"\r[{bar}] {done:4.0%} {phase:<14} {now - self._start:6.0f} s")
        self._stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            self._stream.write("\r" + " " * 72 + "\r")
            self._stream.flush()
            self._shown = False


def report_json(report: Report) -> dict[str, Any]:
    """The report as plain JSON values (the curves included)."""
    out = dataclasses.asdict(report)
    scenario = out.pop("scenario")
    out.update({f"scenario_{k}": v for k, v in scenario.items()})
    out["realtime_factor"] = round(report.realtime_factor, 2)
    out["steady_realtime_factor"] = round(report.steady_realtime_factor, 2)
    return out


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "not within the run"
    return f"{value:g}{unit}"


def render(report: Report) -> str:
    """The table a person reads."""
    sc = report.scenario
    joined = sc.start == "join"
    rows = [
        (
            "cluster converged after" if joined else "cluster started",
            _fmt(report.converge_s, " s") if joined else "converged (no join simulated)",
        ),
        ("messages per node per second", _fmt(report.msgs_per_node_s)),
        ("bytes per node per second", _fmt(report.bytes_per_node_s)),
    ]
    if sc.crash:
        rows += [
            (f"first suspicion of a crashed node ({sc.crash})", _fmt(report.first_suspect_s, " s")),
            ("first 'failed'", _fmt(report.first_failed_s, " s")),
            ("'failed' everywhere", _fmt(report.all_failed_s, " s")),
            ("SWIM expectation (first 'failed')", _fmt(report.expected_detection_s, " s")),
        ]
    rows += [
        (
            "false failures (healthy / slow members)",
            f"{report.false_failures} / {report.false_failures_slow}",
        ),
        (
            "false suspicions (healthy / slow members)",
            f"{report.false_suspicions} / {report.false_suspicions_slow}",
        ),
        (
            "update reached 50% / 99% / 100% (rounds)",
            f"{_fmt(report.rounds_50)} / {_fmt(report.rounds_99)} / {_fmt(report.rounds_100)}",
        ),
        (
            "epidemic expectation push / push-pull (rounds)",
            f"{report.expect_push_rounds:g} / {report.expect_pushpull_rounds:g}",
        ),
    ]
    if sc.slow_rate is not None:
        rows.append(("lost on the slow links (datagrams, streams)", str(report.congestion)))
    if sc.newcomers:
        rows.append(
            (
                f"newcomers ({sc.newcomers}) and cluster know each other",
                _fmt(report.newcomers_known_s, " s"),
            )
        )
    if sc.partition is not None:
        rows.append(("converged again after the heal", _fmt(report.heal_converge_s, " s")))
    rows += [
        (
            "simulated / wall / CPU seconds",
            f"{report.sim_s:g} / {report.wall_s:g} / {report.cpu_s:g}",
        ),
        (
            "real-time factor (after the join)" if joined else "real-time factor",
            f"{report.realtime_factor:.1f} ({report.steady_realtime_factor:.1f})"
            if joined
            else f"{report.realtime_factor:.1f}",
        ),
        ("memory per simulated node", f"{report.rss_per_node_kib:g} KiB"),
    ]
    title = (
        f"{sc.nodes} nodes, {sc.profile} profile, loss {sc.loss:g}, latency "
        f"{sc.latency * 1000:g} ms, seed {sc.seed}; times from t0 (crash and update)"
    )
    width = max(len(label) for label, _ in rows)
    lines = [title] + [f"  {label:<{width}}  {value}" for label, value in rows]
    return "\n".join(lines)


def plot(report: Report, path: str) -> None:
    """Draw the crash's detection curve and the update's spread into `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..testing.scenarios import pull_push_curve, push_curve

    sc = report.scenario
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for curve, label in ((report.suspect_curve, "suspect it"), (report.crash_curve, "failed")):
        if curve:
            xs = [0.0] + [t for t, _ in curve]
            ys = [0.0] + [f for _, f in curve]
            left.step(xs, ys, where="post", label=label)
    if report.crash_curve:
        left.axvline(
            report.expected_detection_s, linestyle=":", color="grey", label="SWIM expectation"
        )
    left.set_xlabel("seconds after the crash")
    left.set_ylabel("fraction of members that know")
    left.set_title(f"crash of {sc.crash} node(s), N={sc.nodes}")
    left.legend(loc="lower right")
    if report.spread_curve:
        xs = [0.0] + [r for r, _ in report.spread_curve]
        ys = [1 / sc.nodes] + [f for _, f in report.spread_curve]
        right.step(xs, ys, where="post", label="simulated")
        # Far enough for the push-pull expectation to reach everyone too.
        rounds = max(2, int(max(xs)) + 2, math.ceil(report.expect_pushpull_rounds) + 2)
        right.plot(range(rounds + 1), push_curve(sc.nodes, rounds), "--", label="push (expected)")
        right.plot(
            range(rounds + 1), pull_push_curve(sc.nodes, rounds), ":", label="push-pull (expected)"
        )
    right.set_xlabel("anti-entropy rounds after the update")
    right.set_ylabel("fraction of members holding it")
    right.set_title("dissemination of one update")
    right.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
