"""Fuzz a simulated cluster with the stateful machine of `swimnode.testing.fuzz` (issue #6).

Each example is a 5-8 node lan cluster driven through crashes, restarts, partitions,
packet loss, application-state writes and key rotations, replayed under
`MockClock(autojump_threshold=0)` and checked for completeness, accuracy and
convergence after every quiet period. A failure is shrunk by Hypothesis and printed
as a `swimnode.testing.fuzz.replay(Scenario(...))` call that reproduces it exactly.

    python tools/fuzz_cluster.py --examples 50 --steps 20 --seed 1

Prints a summary for people, then one JSON line: examples, steps, checks, failures,
sim_s, wall_s, seed, and the failure report (or null).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from statistics import median

from hypothesis import HealthCheck, Phase, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.stateful import get_state_machine_test

from swimnode.testing.fuzz import ClusterMachine, FuzzStats, quiet_bound


class FuzzMachine(ClusterMachine):
    stats = FuzzStats()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20, help="scenarios to run")
    parser.add_argument("--steps", type=int, default=15, help="most steps per scenario")
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis seed")
    parser.add_argument(
        "--no-shrink",
        action="store_true",
        help="report the first failure as found, without shrinking it",
    )
    parser.add_argument("--verbose", action="store_true", help="one line per example")
    args = parser.parse_args(argv)
    if args.examples < 1 or args.steps < 1:
        parser.error("--examples and --steps must be >= 1")
    # Join retries while partitioned are expected here; keep the output readable.
    logging.getLogger("swimnode").setLevel(logging.ERROR)

    phases = [Phase.explicit, Phase.generate] + ([] if args.no_shrink else [Phase.shrink])
    config = settings(
        max_examples=args.examples,
        stateful_step_count=args.steps,
        deadline=None,
        database=None,
        phases=phases,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )
    stats = FuzzMachine.stats = FuzzStats()
    test = hypothesis_seed(args.seed)(get_state_machine_test(FuzzMachine, settings=config))
    start = time.perf_counter()
    error: BaseException | None = None
    try:
        test()
    except Exception as exc:  # the failing example, already printed by Hypothesis
        error = exc
    wall = time.perf_counter() - start

    kinds: Counter[str] = Counter()
    for scenario in stats.scenarios:
        kinds.update(type(s).__name__ for s in scenario.steps)
    if args.verbose:
        for i, scenario in enumerate(stats.scenarios):
            print(f"example {i}: n={scenario.n} seed={scenario.seed} steps={len(scenario.steps)}")
    print(f"examples run    {stats.examples}")
    print(f"steps           {stats.steps} (+ a final quiet period each)")
    print(f"quiet checks    {stats.checks}")
    print("step kinds      " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    print(f"simulated time  {stats.sim_time:.0f} s")
    settled = sorted(stats.settled)
    if settled:
        print(
            f"quiet periods   properties restored in median {median(settled):.1f} s, "
            f"max {settled[-1]:.1f} s (bound {quiet_bound(8):.0f} s at 8 nodes)"
        )
    print(f"wall time       {wall:.1f} s")
    print(f"failures        {stats.failures} (examples that failed, shrinking included)")
    report = stats.last_failure
    if error is not None:
        print("\nminimal failing scenario:" if report else "\nerror:")
        print(report if report else f"{type(error).__name__}: {error}")
    print(
        json.dumps(
            {
                "examples": stats.examples,
                "steps": stats.steps,
                "checks": stats.checks,
                "failures": stats.failures,
                "failed": error is not None,
                "sim_s": round(stats.sim_time, 1),
                "settle_median_s": round(median(settled), 1) if settled else None,
                "settle_max_s": round(settled[-1], 1) if settled else None,
                "wall_s": round(wall, 2),
                "seed": args.seed,
                "failure": report if error is not None else None,
            }
        )
    )
    return 1 if error is not None else 0


if __name__ == "__main__":
    sys.exit(main())
