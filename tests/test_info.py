"""`python -m swimnode info`: the report's shape, its rendering, and a real agent
answering it over RPC, with key fingerprints and never keys."""

from __future__ import annotations

import json
import sys

import trio

import swimnode
from swimnode.agent import client as rpcclient
from swimnode.agent import rpc
from swimnode.agent.daemon import Agent
from swimnode.agent.info import TIMER_FIELDS, agent_info, format_duration, render_info
from swimnode.agent.settings import AgentSettings
from swimnode.net.keyring import Keyring, generate_key, parse_key
from swimnode.net.udp import open_udp_transport
from swimnode.node import Node, secure
from swimnode.protocol.codec import PROTOCOL_VERSION
from swimnode.protocol.config import Config
from swimnode.protocol.member import Member, MemberState

WAIT = 20.0


def sample_members() -> list[Member]:
    states = [MemberState.ALIVE, MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD]
    return [
        Member(f"m{i}", ("127.0.0.1", 7000 + i), 0, state, 0.0) for i, state in enumerate(states)
    ]


def test_report_shape() -> None:
    config = Config.local("alpha", bind=("127.0.0.1", 7946), label="prod")
    info = agent_info(
        config=config,
        profile="local",
        bind=("127.0.0.1", 7946),
        rpc=("127.0.0.1", 7373),
        metrics=None,
        fingerprints=["d15cc722", "33425106"],
        members=sample_members(),
        uptime=3725.4567,
    )
    assert info["name"] == "alpha"
    assert info["address"] == info["bind"] == "127.0.0.1:7946"
    assert (info["rpc"], info["metrics"]) == ("127.0.0.1:7373", None)
    assert (info["version"], info["protocol_version"]) == (swimnode.__version__, PROTOCOL_VERSION)
    assert (info["profile"], info["label"], info["encrypted"]) == ("local", "prod", True)
    assert info["keys"] == ["d15cc722", "33425106"]
    assert info["members"] == {"alive": 2, "suspect": 1, "dead": 1, "left": 0}
    assert list(info["timers"]) == list(TIMER_FIELDS)
    assert info["timers"]["probe_interval"] == config.probe_interval
    assert info["uptime"] == 3725.457
    # It travels as msgpack and prints as JSON unchanged.
    assert json.loads(json.dumps(info)) == info
    assert rpcclient.decode_body(rpcclient.encode_frame(info)[4:]) == info

    text = render_info(info, as_json=False)
    lines = {name: value for name, value in (line.split(None, 1) for line in text.splitlines())}
    assert lines["name"] == "alpha"
    assert lines["keys"] == "2 key(s), primary d15cc722, others 33425106"
    assert lines["members"] == "2 alive, 1 suspect, 1 dead, 0 left"
    assert lines["uptime"] == "1h 02m 05s"
    assert lines["metrics"] == "off"
    assert lines["probe_interval"] == f"{config.probe_interval:g} s"
    assert lines["indirect_checks"] == str(config.indirect_checks)
    assert json.loads(render_info(info, as_json=True)) == info


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 59.9, 60, 3600, 90061)] == [
        "0s",
        "59s",
        "1m 00s",
        "1h 00m 00s",
        "1d 1h 01m 01s",
    ]


async def test_a_real_agent_answers_info_without_keys_in_it() -> None:
    key = generate_key()
    keyring = Keyring(parse_key(key))
    config = Config.local("solo", bind=("127.0.0.1", 0))
    settings = AgentSettings("solo", profile="local", rpc=("127.0.0.1", 0))
    with trio.fail_after(WAIT):
        async with open_udp_transport(config.bind) as udp, trio.open_nursery() as nursery:
            node = Node(config, secure(udp, config, keyring))
            await nursery.start(node.run)
            agent = Agent(node, udp, settings, keyring=keyring)
            listener = await rpc.open_rpc_listener(("127.0.0.1", 0))
            host, port = listener.socket.getsockname()[:2]
            nursery.start_soon(rpc.serve_rpc, listener, agent)
            # The real command, in its own process, prints the agent's report.
            done = await trio.run_process(
                [sys.executable, "-m", "swimnode", "info", "--json", "--rpc", f"{host}:{port}"],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            nursery.cancel_scope.cancel()
    assert done.returncode == 0, done.stderr
    assert key.encode() not in done.stdout
    info = json.loads(done.stdout)
    assert info["name"] == "solo"
    assert info["address"] == info["bind"] == f"127.0.0.1:{udp.local_address[1]}"
    assert info["keys"] == keyring.fingerprints and info["encrypted"] is True
    assert info["members"] == {"alive": 1, "suspect": 0, "dead": 0, "left": 0}
    assert info["profile"] == "local" and info["uptime"] >= 0
