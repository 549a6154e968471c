"""Protocol fields over the profile: the agent's `--set`, `SWIMNODE_PROTOCOL` and
`[protocol]`, one parser shared with `simulate --set`, and `info` showing them."""

from __future__ import annotations

import pytest

from swimnode.agent import cli
from swimnode.agent.info import TIMER_FIELDS, agent_info, render_info
from swimnode.agent.settings import AgentSettings, UsageError, load_settings
from swimnode.agent.simulate import parse_overrides
from swimnode.protocol.config import Config


def load(
    argv: list[str], env: dict[str, str] | None = None, files: dict[str, str] | None = None
) -> AgentSettings:
    def read(path: str) -> str:
        if files is None or path not in files:
            raise FileNotFoundError(2, "No such file or directory", path)
        return files[path]

    return load_settings(argv, env or {}, read, default_name="host")


def test_set_overrides_the_profile_and_keeps_its_other_fields() -> None:
    settings = load(
        ["--profile", "wan", "--set", "dead_reclaim_time=300", "--set", "lifeguard_buddy=off"]
    )
    config = settings.node_config()
    assert config.dead_reclaim_time == 300.0 and config.lifeguard_buddy is False
    wan = Config.wan("host")
    assert (config.probe_interval, config.suspicion_mult) == (wan.probe_interval, 6)
    # Integers are integers, seconds floats, whatever text they came as.
    config = load(["--set", "gossip_nodes=5", "--set", "probe_interval=2"]).node_config()
    assert (config.gossip_nodes, config.probe_interval) == (5, 2.0)
    assert type(config.gossip_nodes) is int and type(config.probe_interval) is float


def test_fields_merge_one_by_one_flags_over_env_over_file() -> None:
    files = {
        "c.toml": "[protocol]\nprobe_interval = 3\nprobe_timeout = 1.5\n"
        "lifeguard_awareness = false\ngossip_nodes = 4\n"
    }
    env = {"SWIMNODE_CONFIG": "c.toml", "SWIMNODE_PROTOCOL": "probe_timeout=2, gossip_nodes=5,"}
    settings = load(["--set", "gossip_nodes=6"], env, files)
    assert dict(settings.protocol) == {
        "probe_interval": 3.0,
        "probe_timeout": 2.0,
        "lifeguard_awareness": False,
        "gossip_nodes": 6,
    }
    assert load([]).protocol == ()


@pytest.mark.parametrize(
    ("argv", "env", "toml", "message"),
    [
        (["--set", "probe_interval"], {}, "", "--set 'probe_interval': expected FIELD=VALUE"),
        (["--set", "=1"], {}, "", "--set '=1': expected FIELD=VALUE"),
        (["--set", "nope=1"], {}, "", "--set nope: unknown config field"),
        (["--set", "bind=10.0.0.1:1"], {}, "", "--set bind: not settable here (use --bind)"),
        (["--set", "udp_payload=600"], {}, "", "not settable here (use --udp-payload)"),
        (["--set", "probe_interval=fast"], {}, "", "--set probe_interval: expected a finite"),
        (["--set", "probe_interval=nan"], {}, "", "expected a finite number, got 'nan'"),
        (["--set", "gossip_nodes=2.5"], {}, "", "--set gossip_nodes: expected an integer"),
        (["--set", "lifeguard_buddy=maybe"], {}, "", "expected true or false, got 'maybe'"),
        (["--set", "probe_timeout=5"], {}, "", "probe_timeout must not exceed probe_interval"),
        # Config's own rules see the fields together: a shorter reclaim time needs a
        # replay window no longer than it.
        (["--set", "dead_reclaim_time=30"], {}, "", "replay_window must be > 0 and <="),
        ([], {"SWIMNODE_PROTOCOL": "gossip_nodes"}, "", "SWIMNODE_PROTOCOL 'gossip_nodes'"),
        ([], {"SWIMNODE_PROTOCOL": "gossip_nodes=x"}, "", "SWIMNODE_PROTOCOL gossip_nodes:"),
        ([], {}, "protocol = 1", "c.toml: protocol must be a table"),
        ([], {}, '[protocol]\nprobe_interval = "2"', "expected a finite number, got '2'"),
        ([], {}, "[protocol]\ngossip_nodes = true", "c.toml: [protocol] gossip_nodes: expected"),
        ([], {}, "[protocol]\nlabel = 1", "c.toml: [protocol] label: not settable here"),
    ],
)
def test_bad_fields_are_one_line_errors(
    argv: list[str], env: dict[str, str], toml: str, message: str
) -> None:
    files = {"c.toml": toml} if toml else {}
    with pytest.raises(UsageError) as info:
        load([*argv, *(["--config", "c.toml"] if toml else [])], env, files)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_agent_command_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["agent", "--set", "probe_interval=0"]) == 2
    err = capsys.readouterr().err
    assert err == "swimnode agent: probe_interval must be > 0\n"


def test_simulate_shares_the_parser_with_its_own_fixed_fields() -> None:
    assert parse_overrides(["probe_interval=0.5", "lifeguard_buddy=no"]) == {
        "probe_interval": 0.5,
        "lifeguard_buddy": False,
    }
    with pytest.raises(UsageError, match="replay_window: not settable here"):
        parse_overrides(["replay_window=5"])
    # The agent runs the security layer, so it may tune the replay window.
    config = load(["--set", "dead_reclaim_time=30", "--set", "replay_window=30"]).node_config()
    assert (config.dead_reclaim_time, config.replay_window) == (30.0, 30.0)


def test_info_marks_fields_set_over_the_profile() -> None:
    settings = load(["--set", "dead_reclaim_time=300", "--set", "request_rate=20"])
    info = agent_info(
        config=settings.node_config(),
        profile="lan",
        bind=("127.0.0.1", 7946),
        rpc=("127.0.0.1", 7373),
        metrics=None,
        fingerprints=[],
        members=[],
        uptime=1.0,
        overridden=[name for name, _ in settings.protocol],
    )
    # Every timer as before, then the overridden fields that are not timers.
    assert list(info["timers"]) == [*TIMER_FIELDS, "request_rate"]
    assert info["overridden"] == ["dead_reclaim_time", "request_rate"]
    lines = dict(line.split(None, 1) for line in render_info(info, as_json=False).splitlines())
    assert lines["dead_reclaim_time"] == "300 s (set)"
    assert lines["request_rate"] == "20 (set)"
    assert lines["probe_interval"] == "1 s"
