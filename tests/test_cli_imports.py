"""The client commands and `import swimnode` stay free of Trio (docs/agent.md,
"Start-up cost"). Each check runs in a fresh interpreter: this one has Trio loaded."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import swimnode


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
                         ["keys", "list", "--rpc", closed]):
                codes.append(cli.main(argv))
        print(json.dumps({"codes": codes, "trio": "trio" in sys.modules}))
    """)
    assert result == {"codes": [0, 0, 0, 1, 1, 1], "trio": False}


def test_agent_command_imports_trio_on_demand() -> None:
    result = run_fresh("""
        import contextlib, io, json, sys
        from swimnode.agent import cli

        with contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(["agent", "--help"])
        print(json.dumps([code, "trio" in sys.modules]))
    """)
    assert result == [0, True]


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


def test_every_public_name_resolves() -> None:
    for name in swimnode.__all__:
        assert getattr(swimnode, name) is not None, name
    assert set(swimnode.__all__) <= set(dir(swimnode))
    assert swimnode.open_node.__module__ == "swimnode.node"
