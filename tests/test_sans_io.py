"""The protocol package is sans-IO: importing any of its modules loads no I/O or
concurrency library (no Trio, no sockets, no event loop, no threads). Checked in a
fresh interpreter, since this test process has long since imported all of them."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

FORBIDDEN = ("trio", "socket", "_socket", "select", "selectors", "asyncio", "threading")
"""Modules the protocol core must not need (none of them is loaded at interpreter
start-up, so any that shows up came from the package)."""

_PROBE = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys

    forbidden = json.loads(sys.argv[1])
    early = sorted(m for m in forbidden if m in sys.modules)
    import swimnode.protocol as package

    found = {}
    culprits = {}
    names = sorted(
        info.name for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
    )
    for name in ["swimnode.protocol", *names]:
        importlib.import_module(name)
        new = [m for m in forbidden if m in sys.modules and m not in found]
        for m in new:
            found[m] = name
        if new:
            culprits[name] = new
    print(json.dumps({"early": early, "modules": names, "culprits": culprits}))
    """
)


def _import_report() -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(FORBIDDEN)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    report: dict[str, object] = json.loads(done.stdout)
    return report


def test_protocol_modules_import_no_io_library() -> None:
    report = _import_report()
    # Nothing forbidden before the package is imported, or the check proves nothing.
    assert report["early"] == []
    modules = report["modules"]
    assert isinstance(modules, list)
    # Discovered, not listed by hand: a new module is covered as soon as it exists.
    assert {"swimnode.protocol.core", "swimnode.protocol.contract"} <= set(modules)
    assert {"swimnode.protocol.probing", "swimnode.protocol.antientropy"} <= set(modules)
    # Which module first pulled in which forbidden library, if any.
    assert report["culprits"] == {}
