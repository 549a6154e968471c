"""`python -m swimnode query` against real agents whose event handlers answer
queries: filters by state and by name, a failing responder, bad flags."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from swimnode.agent import client as rpcclient
from swimnode.agent.cli import render_query_frame, render_query_summary
from swimnode.testing.processes import LocalCluster, wait_for

CLI = [sys.executable, "-m", "swimnode"]
STEP = 15.0


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(profile="local", log_dir=tmp_path) as c:
        yield c


def script(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def test_rendering() -> None:
    assert render_query_frame({"ack": "n1", "answering": True}) == "ack from n1"
    assert render_query_frame({"ack": "n2", "answering": False}) == "ack from n2 (no responder)"
    assert render_query_frame({"response": "n1", "payload": b"up 3 days\n"}) == (
        "answer from n1: up 3 days"
    )
    done = {
        "done": True,
        "kind": "uptime",
        "expected": ["n1", "n2"],
        "acks": ["n1", "n2"],
        "responses": {"n1": b"ok", "n2": b"\xff"},
        "missing": [],
        "timeout": 1.6,
    }
    assert render_query_summary(done, as_json=False) == "2 of 2 selected members answered"
    assert json.loads(render_query_summary(done, as_json=True))["responses"] == {
        "n1": "ok",
        "n2": {"$base64": "/w=="},
    }


def test_query_reaches_only_the_selected_members(cluster: LocalCluster, tmp_path: Path) -> None:
    answer = script(tmp_path / "answer.sh", 'echo "$SWIMNODE_SELF_NAME got $(cat)"')
    fail = script(tmp_path / "fail.sh", "echo broken >&2; exit 3")
    roles = {"q0": ("db", answer), "q1": ("db", fail), "q2": ("web", answer)}
    seed = None
    for name, (role, handler) in roles.items():
        args = ["--state", f"role={role}", "--event-handler", f"query:uptime={handler}"]
        agent = cluster.start(name, seeds=[seed] if seed else [], args=args)
        if seed is None:
            seed = agent
            assert seed.wait_ready(STEP)
    assert seed is not None
    assert wait_for(lambda: cluster.converged(list(roles)), STEP)

    def roles_reached_q2() -> bool:
        listing = rpcclient.members(cluster.agents["q2"].rpc)
        return all(m["app_state"].get("role") == roles[m["name"]][0] for m in listing)

    assert wait_for(roles_reached_q2, STEP, step=0.2)

    q2 = f"127.0.0.1:{cluster.agents['q2'].rpc_port}"
    done = run_cli(
        "query", "uptime", "hello", "--state", "role=^db$", "--timeout", "3", "--json", "--rpc", q2
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["expected"] == ["q0", "q1"]  # q2 itself is not a db
    assert result["responses"] == {"q0": "q0 got hello\n"}
    assert result["missing"] == ["q1"]  # its handler failed: logged, no answer
    assert set(result["acks"]) == {"q0", "q1"}
    log = (tmp_path / "q1.log").read_text()
    assert "event handler" in log and "exited with 3: broken" in log

    done = run_cli("query", "uptime", "hi", "--node", "q2", "--rpc", f"127.0.0.1:{seed.rpc_port}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "ack from q2",
        "answer from q2: q2 got hi",
        "1 of 1 selected members answered",
    ]
    assert all(agent.running for agent in cluster.agents.values())


def test_bad_query_flags_are_one_line() -> None:
    done = run_cli("query", "x", "--state", "role=(", "--rpc", "127.0.0.1:1")
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith("swimnode query: argument --state: bad regex '(' for 'role'")
    done = run_cli("query", "x", "--state", "noequals", "--rpc", "127.0.0.1:1")
    assert done.returncode == 2 and "expected KEY=REGEX" in done.stderr
    # A pattern members would refuse to run is refused before anything is sent.
    done = run_cli("query", "x", "--state", "role=^(a+)+$", "--rpc", "127.0.0.1:1")
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
    assert "regex '^(a+)+$' for 'role' refused: a group repeated" in done.stderr
