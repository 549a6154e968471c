"""The agent's security settings, `keygen`, and cluster-wide `keys` commands: parsing
(pure), the RPC command against in-process nodes on loopback, and real agent
processes. Every process started here is killed by its PID on the way out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from swimnode.agent import client as rpcclient
from swimnode.agent import rpc
from swimnode.agent.daemon import Agent
from swimnode.agent.keyqueries import register_key_handlers
from swimnode.agent.settings import AgentSettings, UsageError, agent_parser, load_settings
from swimnode.net.keyring import Keyring, fingerprint, generate_key, parse_key
from swimnode.net.security import DROP_REASONS, SecureTransport
from swimnode.net.udp import open_udp_transport
from swimnode.node import open_node, secure
from swimnode.protocol.config import Config
from swimnode.testing.processes import LocalCluster, free_ports, wait_for

CLI = [sys.executable, "-m", "swimnode"]
NAMES = ["n0", "n1", "n2"]
STEP = 15.0


def run_cli(
    *args: str, timeout: float = 30.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
        env=env,
    )


def fp(key: str) -> str:
    return fingerprint(parse_key(key))


# ----- settings (pure) -----------------------------------------------------------------


def test_security_flags_env_and_file() -> None:
    key1, key2 = generate_key(), generate_key()
    s = load_settings(["--key-file", "/k", "--label", "blue"], {}, lambda p: "", default_name="h")
    assert (s.key_file, s.label, s.node_config().label) == ("/k", "blue", "blue")
    s = load_settings(
        [],
        {
            "SWIMNODE_KEYS": f" {key1}, {key2} ",
            "SWIMNODE_LABEL": "red",
            "SWIMNODE_INSECURE_PLAINTEXT": "yes",
        },
        lambda p: "",
        default_name="h",
    )
    assert s.keyring is not None and s.keyring.fingerprints == [fp(key1), fp(key2)]
    assert (s.label, s.insecure_plaintext) == ("red", True)
    assert key1 not in repr(s)  # settings show fingerprints, never keys
    s = load_settings(
        ["--config", "a.toml"],
        {},
        lambda p: (
            'label = "green"\ninsecure_plaintext = true\nbind = "0.0.0.0:7946"\n'
            'advertise = "10.0.0.5:7946"\nkey_file = "/k"\n'
        ),
        default_name="h",
    )
    assert (s.label, s.insecure_plaintext, s.key_file) == ("green", True, "/k")


def test_secure_by_default() -> None:
    with pytest.raises(
        UsageError,
        match=r"refusing to bind 0\.0\.0\.0:7946 without an "
        "encryption key",
    ) as info:
        load_settings(["--bind", "0.0.0.0:7946"], {}, lambda p: "", default_name="h")
    assert "\n" not in str(info.value)
    for ok in (["--insecure-plaintext"], ["--key-file", "/k"]):
        load_settings(["--bind", "10.0.0.1:7946", *ok], {}, lambda p: "", default_name="h")
    load_settings(
        ["--bind", "10.0.0.1:7946"],
        {"SWIMNODE_KEYS": generate_key()},
        lambda p: "",
        default_name="h",
    )
    load_settings(["--bind", "[::1]:7946"], {}, lambda p: "", default_name="h")


def test_bad_keys_are_one_line_errors_without_the_key() -> None:
    bad = generate_key()[:-4] + "!!!="
    with pytest.raises(UsageError) as info:
        load_settings(
            [], {"SWIMNODE_KEYS": f"{generate_key()},{bad}"}, lambda p: "", default_name="h"
        )
    assert str(info.value) == "SWIMNODE_KEYS: key 2: key is not valid base64"
    with pytest.raises(UsageError, match="both a key file and SWIMNODE_KEYS"):
        load_settings(
            ["--key-file", "/k"], {"SWIMNODE_KEYS": generate_key()}, lambda p: "", default_name="h"
        )
    with pytest.raises(UsageError, match="insecure_plaintext must be true or false"):
        load_settings(["--config", "a"], {}, lambda p: "insecure_plaintext = 1", default_name="h")


def test_help_lists_the_security_flags() -> None:
    text = agent_parser().format_help()
    assert "--key-file" in text and "--insecure-plaintext" in text and "--label" in text


# ----- RPC against in-process nodes -----------------------------------------------------


async def test_keys_rpc_on_a_loopback_cluster() -> None:
    old, new = generate_key(), generate_key()
    rings = {name: Keyring(old) for name in NAMES}
    ports = free_ports(4)
    addresses = [("127.0.0.1", p) for p in ports[:3]]
    agents: dict[str, Agent] = {}

    async def run_member(i: int, *, task_status: trio.TaskStatus[None]) -> None:
        name = NAMES[i]
        config = Config.local(name, bind=addresses[i], seeds=(addresses[0],) if i else ())
        async with open_udp_transport(config.bind) as udp:
            transport = secure(udp, config, rings[name])
            assert isinstance(transport, SecureTransport)
            async with open_node(config, transport=transport) as node:
                register_key_handlers(node, rings[name])
                agents[name] = Agent(
                    node,
                    udp,
                    AgentSettings(name, profile="local"),
                    security=transport,
                    keyring=rings[name],
                )
                task_status.started()
                await trio.sleep_forever()

    def converged() -> bool:
        return all(
            {m.name for m in a.members() if m.state.label == "alive"} == set(NAMES)
            for a in agents.values()
        )

    async with trio.open_nursery() as nursery:
        for i in range(3):
            await nursery.start(run_member, i)
        listener = await rpc.open_rpc_listener(("127.0.0.1", ports[3]))
        nursery.start_soon(rpc.serve_rpc, listener, agents["n1"])
        with trio.fail_after(STEP):
            while not converged():  # noqa: ASYNC110 (polling real sockets, no event)
                await trio.sleep(0.05)

        async def call(args: dict[str, object]) -> dict[str, Any]:
            return await trio.to_thread.run_sync(
                lambda: rpcclient.call(("127.0.0.1", ports[3]), "keys", args, timeout=STEP)
            )

        listing = await call({"action": "list"})
        assert (listing["nodes"], listing["answered"], listing["failed"]) == (3, 3, {})
        assert listing["keys"] == {fp(old): 3} and listing["primary"] == {fp(old): 3}
        installed = await call({"action": "install", "key": new})
        assert installed["failed"] == {} and installed["key"] == fp(new)
        assert all(r.fingerprints == [fp(old), fp(new)] for r in rings.values())
        refused = await call({"action": "remove", "key": old})
        assert set(refused["failed"]) == set(NAMES)
        assert "is the primary key" in next(iter(refused["failed"].values()))
        with pytest.raises(rpcclient.RpcError, match="key is not valid base64") as info:
            await call({"action": "use", "key": "not-a-key"})
        assert "not-a-key" not in str(info.value)
        stats = agents["n1"].stats()
        assert all(f"security_{reason}" in stats for reason in DROP_REASONS)
        assert converged()
        nursery.cancel_scope.cancel()


# ----- real processes ---------------------------------------------------------------------


def test_keygen_prints_a_fresh_key() -> None:
    first, second = run_cli("keygen"), run_cli("keygen")
    assert first.returncode == 0 and first.stderr == ""
    assert len(parse_key(first.stdout)) == 32
    assert first.stdout != second.stdout


def test_agent_refuses_plaintext_beyond_loopback_and_bad_key_files(tmp_path: Path) -> None:
    port, rpc_port = free_ports(2)
    done = run_cli(
        "agent", "--name", "x", "--bind", f"0.0.0.0:{port}", "--rpc", f"127.0.0.1:{rpc_port}"
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"swimnode agent: refusing to bind 0.0.0.0:{port} without an encryption key: give "
        "--key-file or SWIMNODE_KEYS, or --insecure-plaintext to allow unencrypted traffic"
    ]
    bad = tmp_path / "bad"
    secret = generate_key()
    bad.write_text(secret[:20] + "\n")
    done = run_cli(
        "agent",
        "--name",
        "x",
        "--bind",
        f"127.0.0.1:{port}",
        "--rpc",
        f"127.0.0.1:{rpc_port}",
        "--key-file",
        str(bad),
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"swimnode agent: {bad}:1: key must decode to 32 bytes, got 15"
    ]
    assert secret[:20] not in done.stderr


def test_keys_commands_rotate_a_real_cluster(tmp_path: Path) -> None:
    old, new = generate_key(), generate_key()
    key_file = tmp_path / "keys"
    key_file.write_text(f"# cluster key\n{old}\n")
    key_file.chmod(0o644)  # readable by others: the agents warn
    with LocalCluster(
        profile="local", log_dir=tmp_path, extra_args=["--key-file", str(key_file)]
    ) as cluster:
        cluster.start_joined(NAMES, STEP)
        rpc_flag = ["--rpc", f"127.0.0.1:{cluster.agents['n2'].rpc_port}"]

        def keys(*args: str) -> dict[str, object]:
            done = run_cli("keys", *args, *rpc_flag, "--json")
            assert done.returncode == 0, done.stderr
            report: dict[str, object] = json.loads(done.stdout)
            return report

        listing = keys("list")
        assert (listing["nodes"], listing["answered"], listing["ok"]) == (3, 3, True)
        assert listing["keys"] == {fp(old): 3}
        assert keys("install", new)["failed"] == {}
        assert keys("list")["keys"] == {fp(old): 3, fp(new): 3}
        assert keys("use", new)["failed"] == {}
        assert keys("list")["primary"] == {fp(new): 3}
        # Removing the key in use fails everywhere, with the reason, and exit code 1.
        done = run_cli("keys", "remove", new, *rpc_flag)
        assert done.returncode == 1
        assert f"key {fp(new)} is the primary key" in done.stdout
        assert done.stderr.strip() == "swimnode keys remove: 3 of 3 members failed"
        assert keys("remove", old)["failed"] == {}
        final = keys("list")
        assert final["keys"] == {fp(new): 3} and final["primary"] == {fp(new): 3}
        assert wait_for(lambda: cluster.converged(NAMES), 3.0)
        text = run_cli("keys", "list", *rpc_flag)
        assert text.returncode == 0
        assert text.stdout.splitlines()[0] == "3 of 3 members answered"
        stats = run_cli("stats", "--json", *rpc_flag)
        counters = json.loads(stats.stdout)
        assert all(f"security_{reason}" in counters for reason in DROP_REASONS)
        for name in NAMES:
            assert cluster.agents[name].view() == dict.fromkeys(NAMES, "alive")
    for name in NAMES:
        log = (tmp_path / f"{name}.log").read_text()
        assert old not in log and new not in log
        assert "is accessible by group or others (mode 644)" in log
        assert f"primary {fp(old)}" in log
