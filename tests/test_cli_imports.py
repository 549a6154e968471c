"""The client commands and `import swimnode` stay free of Trio (docs/agent.md,
"Start-up cost"). Each check runs in a fresh interpreter: this one has Trio loaded."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import swimnode
from swimnode.testing.processes import LocalCluster


def run_fresh(code: str) -> Any:
    """Run `code` in a new interpreter; it prints one JSON value, returned here."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout.splitlines()[-1])


def test_client_commands_do_not_import_trio() -> None:
    result = run_fresh("""
        import contextlib, io, json, socket, sys
        from swimnode.agent import cli

        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            closed = f"127.0.0.1:{s.getsockname()[1]}"
        codes = []
        with contextlib.redirect_stdout(io.StringIO()), \\
                contextlib.redirect_stderr(io.StringIO()):
            for argv in (["members", "--help"], ["keys", "--help"], ["keygen"],
                         ["stats", "--rpc", closed], ["ring", "--rpc", closed],
                         ["keys", "list", "--rpc", closed], ["info", "--rpc", closed],
                         ["event", "deploy", "v1", "--rpc", closed]):
                codes.append(cli.main(argv))
        print(json.dumps({"codes": codes, "trio": "trio" in sys.modules}))
    """)
    assert result == {"codes": [0, 0, 0, 1, 1, 1, 1, 1], "trio": False}


def test_agent_and_demo_import_trio_only_to_run() -> None:
    result = run_fresh("""
        import contextlib, io, json, socket, sys
        from swimnode.agent import cli

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            helped = [cli.main(["agent", "--help"]), cli.main(["demo", "--help"]),
                      cli.main(["--version"])]
            before = "trio" in sys.modules
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
                busy.bind(("127.0.0.1", 0))
                taken = f"127.0.0.1:{busy.getsockname()[1]}"
                ran = cli.main(["agent", "--bind", taken, "--rpc", "127.0.0.1:0"])
        print(json.dumps({"helped": helped, "before": before, "ran": ran,
                          "after": "trio" in sys.modules, "version": out.getvalue().split()[-1],
                          "error": err.getvalue().strip().splitlines()}))
    """)
    assert result["helped"] == [0, 0, 0]
    assert (result["before"], result["after"]) == (False, True)
    assert result["version"] == swimnode.__version__
    # The busy address is a run-time failure, reported in one line with exit code 1.
    assert result["ran"] == 1
    assert len(result["error"]) == 1, result["error"]
    assert result["error"][0].startswith("swimnode agent: cannot bind 127.0.0.1:")


def test_import_swimnode_is_lazy() -> None:
    result = run_fresh("""
        import json, sys
        import swimnode

        before = "trio" in sys.modules
        listed = "Node" in dir(swimnode)
        from swimnode import Node
        print(json.dumps({"before": before, "listed": listed, "after": "trio" in sys.modules,
                          "same": swimnode.Node is Node, "name": Node.__qualname__}))
    """)
    assert result == {"before": False, "listed": True, "after": True, "same": True, "name": "Node"}


def test_asyncio_node_runs_without_trio() -> None:
    """An asyncio program's nodes, without a seed source, never load Trio
    (docs/embedding.md §6, "RSS"): two join over UDP and TCP, gossip and stop."""
    result = run_fresh("""
        import asyncio, json, sys
        from swimnode import Config
        from swimnode.aio import open_node

        async def main():
            a = Config.local("aio-a", bind=("127.0.0.1", 0))
            async with asyncio.timeout(20), open_node(a) as node_a:
                events = node_a.events()
                b = Config.local("aio-b", bind=("127.0.0.1", 0), seeds=[node_a.address])
                async with open_node(b, leave_on_exit=True) as node_b:
                    node_b.set_state("role", "db")
                    kinds = []
                    async for event in events:
                        kinds.append(event.kind)
                        if event.kind == "updated":
                            break
                    live = sorted(m.name for m in node_a.live_members())
                return kinds, live

        kinds, live = asyncio.run(main())
        print(json.dumps({"kinds": kinds, "live": live, "trio": "trio" in sys.modules}))
    """)
    assert result == {"kinds": ["joined", "updated"], "live": ["aio-a", "aio-b"], "trio": False}


def test_every_public_name_resolves() -> None:
    for name in swimnode.__all__:
        assert getattr(swimnode, name) is not None, name
    assert set(swimnode.__all__) <= set(dir(swimnode))
    assert swimnode.open_node.__module__ == "swimnode.node"


def test_deferred_modules_load_on_first_use() -> None:
    """What `python -m swimnode` defers (`lazyimport.defer_modules`) stays unloaded
    through Trio's import and swimnode's idle paths, and works once used."""
    result = run_fresh("""
        import json, sys
        from swimnode.lazyimport import defer_modules

        defer_modules("ssl", "hmac", "hashlib", "bz2", "lzma")
        import trio, trio._ssl
        import swimnode.agent.daemon, swimnode.net.keyring, swimnode.ring
        swimnode.ring.token_of("a")  # BLAKE2b, without OpenSSL
        native = ("_ssl", "_hashlib", "_bz2", "_lzma")
        idle = sorted(m for m in native if m in sys.modules)
        fp = swimnode.net.keyring.fingerprint(bytes(32))
        # trio holds the stand-in it imported; the real module answers through it.
        context = trio._ssl._stdlib_ssl.create_default_context()
        import ssl
        print(json.dumps({"idle": idle, "fp": fp, "context": isinstance(context, ssl.SSLContext),
                          "real": sys.modules["ssl"].__spec__ is not None,
                          "loaded": sorted(m for m in native if m in sys.modules)}))
    """)
    assert result == {
        "idle": [],
        "fp": hashlib.sha256(bytes(32)).hexdigest()[:8],
        "context": True,
        "real": True,
        "loaded": ["_hashlib", "_ssl"],
    }


def test_a_deferred_package_loads_its_submodules_alone() -> None:
    """`agent --metrics` loads `prometheus_client`'s registry and metric families
    without the package's `__init__`, which would import its HTTP exposition and
    `ssl` (docs/metrics.md, "Cost"); a name of the package itself still works."""
    result = run_fresh("""
        import json, sys
        from swimnode.lazyimport import defer_modules

        defer_modules("ssl", "prometheus_client")
        import swimnode.agent.httpmetrics
        heavy = ("prometheus_client.exposition", "http.server", "_ssl")
        idle = sorted(m for m in heavy if m in sys.modules)
        import prometheus_client
        print(json.dumps({"idle": idle, "full": prometheus_client.generate_latest.__module__}))
    """)
    assert result == {"idle": [], "full": "prometheus_client.exposition"}


def test_idle_agent_maps_no_openssl() -> None:
    """An agent without keys never loads OpenSSL's libraries (docs/agent.md,
    "Footprint"); agents with keys load them on first use (tests/test_agent_keys.py)."""
    with LocalCluster() as cluster:
        agent = cluster.start("lean")
        assert agent.wait_ready(timeout=30)
        maps = Path(f"/proc/{agent.proc.pid}/maps").read_text()
        assert "libssl" not in maps and "libcrypto" not in maps
