"""What one wakeup from idle costs on this machine: CPU time per wakeup of a bare
`time.sleep` loop and of a Trio task sleeping in a loop, at a few rates.

    python tools/bench_wakeup.py [--seconds 5]

An idle agent does almost no work per wakeup, so its CPU use is close to (wakeups per
second) x (this cost); docs/agent.md, "Idle cost", explains how swimnode keeps the
wakeups down. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import trio

RATES = (10, 100, 1000)


def plain(rate: int, seconds: float) -> float:
    """Microseconds of CPU per `time.sleep` wakeup."""
    count = max(1, int(rate * seconds))
    cpu = time.process_time()
    for _ in range(count):
        time.sleep(1 / rate)
    return (time.process_time() - cpu) * 1e6 / count


def in_trio(rate: int, seconds: float) -> float:
    """Microseconds of CPU per wakeup of a Trio task sleeping in a loop."""
    count = max(1, int(rate * seconds))

    async def loop() -> float:
        cpu = time.process_time()
        for _ in range(count):
            await trio.sleep(1 / rate)
        return (time.process_time() - cpu) * 1e6 / count

    return trio.run(loop)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="time spent at each rate (default 5)"
    )
    args = parser.parse_args()
    if args.seconds <= 0:
        parser.error("--seconds must be > 0")
    result: dict[str, object] = {"seconds": args.seconds}
    print(f"{'wakeups/s':>10} {'time.sleep us':>14} {'trio.sleep us':>14}")
    for rate in RATES:
        bare, trio_us = plain(rate, args.seconds), in_trio(rate, args.seconds)
        print(f"{rate:>10} {bare:>14.1f} {trio_us:>14.1f}")
        result[f"time_sleep_us_at_{rate}"] = round(bare, 1)
        result[f"trio_sleep_us_at_{rate}"] = round(trio_us, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
