"""Agent settings: flags, environment, TOML file and their precedence (no processes)."""

from __future__ import annotations

import pytest

from swimnode.agent.settings import (
    DEFAULT_BIND,
    DEFAULT_RPC,
    AgentSettings,
    UsageError,
    load_settings,
    parse_address,
    parse_toml,
)


def no_file(path: str) -> str:
    raise FileNotFoundError(2, "No such file or directory", path)


def load(
    argv: list[str], env: dict[str, str] | None = None, files: dict[str, str] | None = None
) -> AgentSettings:
    def read(path: str) -> str:
        if files is None or path not in files:
            return no_file(path)
        return files[path]

    return load_settings(argv, env or {}, read, default_name="host")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7946", ("127.0.0.1", 7946)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("[::1]:7946", ("::1", 7946)),
        ("[fe80::1%eth0]:1", ("fe80::1%eth0", 1)),
        ("node.example:65535", ("node.example", 65535)),
        (" 10.0.0.1:80 ", ("10.0.0.1", 80)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "7946",
        ":7946",
        "host:",
        "host:port",
        "host:65536",
        "host:-1",
        "::1:7946",
        "[::1]",
        "[::1]7946",
        "[]:1",
    ],
)
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_address(text, what="seed address")
    assert "seed address" in str(info.value)
    assert "\n" not in str(info.value)


def test_defaults() -> None:
    s = load([])
    assert s == AgentSettings(name="host")
    assert (s.bind, s.rpc, s.profile, s.log_level, s.log_json) == (
        DEFAULT_BIND,
        DEFAULT_RPC,
        "lan",
        "info",
        False,
    )
    assert s.node_config().probe_interval == 1.0


def test_flags() -> None:
    s = load(
        [
            "--name",
            "a",
            "--bind",
            "[::1]:8000",
            "--advertise",
            "10.0.0.5:8000",
            "--seed",
            "10.0.0.1:7946",
            "--seed",
            "[::1]:7000",
            "--profile",
            "local",
            "--rpc",
            "127.0.0.1:9000",
            "--log-level",
            "debug",
            "--log-json",
        ]
    )
    assert s == AgentSettings(
        name="a",
        bind=("::1", 8000),
        advertise=("10.0.0.5", 8000),
        seeds=(("10.0.0.1", 7946), ("::1", 7000)),
        profile="local",
        rpc=("127.0.0.1", 9000),
        log_level="debug",
        log_json=True,
    )
    config = s.node_config()
    assert config.advertise_address == ("10.0.0.5", 8000)
    assert config.probe_timeout == 0.2  # the local profile's


def test_precedence_flags_over_env_over_file_over_defaults() -> None:
    files = {
        "a.toml": 'name = "file"\nbind = "127.0.0.1:1"\nrpc = "127.0.0.1:2"\n'
        'profile = "wan"\nseeds = ["127.0.0.1:3"]\nlog_json = true\n'
    }
    env = {
        "SWIMNODE_CONFIG": "a.toml",
        "SWIMNODE_BIND": "127.0.0.1:10",
        "SWIMNODE_RPC": "127.0.0.1:20",
        "SWIMNODE_SEEDS": "127.0.0.1:30, 127.0.0.1:31",
    }
    s = load(["--rpc", "127.0.0.1:200"], env, files)
    assert s.name == "file"  # only the file sets it
    assert s.profile == "wan"
    assert s.log_json is True
    assert s.bind == ("127.0.0.1", 10)  # env beats file
    assert s.seeds == (("127.0.0.1", 30), ("127.0.0.1", 31))
    assert s.rpc == ("127.0.0.1", 200)  # flag beats env
    assert s.log_level == "info"  # default


def test_config_flag_beats_config_env() -> None:
    files = {"flag.toml": 'name = "from-flag"\n', "env.toml": 'name = "from-env"\n'}
    s = load(["--config", "flag.toml"], {"SWIMNODE_CONFIG": "env.toml"}, files)
    assert s.name == "from-flag"


@pytest.mark.parametrize(
    ("value", "expected"), [("1", True), ("TRUE", True), ("no", False), ("off", False)]
)
def test_env_bool(value: str, expected: bool) -> None:
    assert load([], {"SWIMNODE_LOG_JSON": value}).log_json is expected


def test_empty_env_values_are_ignored() -> None:
    assert load([], {"SWIMNODE_NAME": "", "SWIMNODE_BIND": ""}) == AgentSettings(name="host")


@pytest.mark.parametrize(
    ("argv", "env", "files", "fragment"),
    [
        (["--bind", "nope"], {}, {}, "bad bind address"),
        (["--seed", "10.0.0.1:0"], {}, {}, "real port"),
        (["--advertise", "10.0.0.1:0"], {}, {}, "real port"),
        (["--profile", "fast"], {}, {}, "invalid choice"),
        (["--unknown"], {}, {}, "unrecognized arguments"),
        ([], {"SWIMNODE_PROFILE": "fast"}, {}, "unknown profile"),
        ([], {"SWIMNODE_LOG_LEVEL": "loud"}, {}, "unknown log level"),
        ([], {"SWIMNODE_LOG_JSON": "maybe"}, {}, "SWIMNODE_LOG_JSON"),
        ([], {"SWIMNODE_NAME": "x" * 300}, {}, "name must be"),
        (["--config", "missing.toml"], {}, {}, "cannot read config file missing.toml"),
        (["--config", "c.toml"], {}, {"c.toml": "name = "}, "c.toml:"),
        (["--config", "c.toml"], {}, {"c.toml": 'colour = "red"'}, "unknown key 'colour'"),
        (["--config", "c.toml"], {}, {"c.toml": 'seeds = "a:1"'}, "seeds must be a list"),
        (["--config", "c.toml"], {}, {"c.toml": "bind = 7946"}, "bind must be a string"),
        (["--config", "c.toml"], {}, {"c.toml": 'log_json = "yes"'}, "log_json must be"),
        (["--seed-dns", "seeds.local:0"], {}, {}, "bad DNS seed: port 0 out of range"),
        (["--seed-dns", "host:port"], {}, {}, "bad DNS seed: invalid port"),
        (["--seed-file", " "], {}, {}, "seed file paths must not be empty"),
        (["--state", "novalue"], {}, {}, "argument --state: expected KEY=VALUE"),
        (["--state", "=v"], {}, {}, "expected KEY=VALUE"),
        (["--state-json", "k={"], {}, {}, "value of 'k' is not JSON"),
        (["--state", "big=" + "x" * 5000], {}, {}, "initial state: state value for 'big'"),
        (["--state", "k" * 200 + "=v"], {}, {}, "initial state: state key"),
        ([], {"SWIMNODE_STATE": "[1]"}, {}, "SWIMNODE_STATE: expected a JSON object"),
        ([], {"SWIMNODE_STATE": "{"}, {}, "SWIMNODE_STATE: not a JSON object"),
        (["--config", "c.toml"], {}, {"c.toml": 'state = "x"'}, "state must be a table"),
        (["--config", "c.toml"], {}, {"c.toml": "seed_dns = [1]"}, "seed_dns must be a list"),
        (["--udp-payload", "big"], {}, {}, "udp_payload must be an integer, got 'big'"),
        ([], {"SWIMNODE_UDP_PAYLOAD": "100"}, {}, "udp_payload must be between 512"),
        (["--config", "c.toml"], {}, {"c.toml": 'udp_payload = "1"'}, "must be an integer"),
        (
            ["--bind", "0.0.0.0:7946", "--insecure-plaintext"],
            {},
            {},
            "binding a wildcard address (0.0.0.0 or ::) needs an advertise address",
        ),
        (["--bind", "[::]:7946", "--key-file", "/k"], {}, {}, "needs an advertise address"),
        (
            ["--config", "c.toml"],
            {},
            {"c.toml": "[state]\nat = 1979-05-27"},
            "initial state: state value for 'at' is not msgpack-serializable",
        ),
    ],
)
def test_errors_are_one_line(
    argv: list[str], env: dict[str, str], files: dict[str, str], fragment: str
) -> None:
    with pytest.raises(UsageError) as info:
        load(argv, env, files)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_parse_toml_accepts_every_key() -> None:
    text = (
        'name = "a"\nbind = "127.0.0.1:1"\nadvertise = "10.0.0.1:1"\nseeds = []\n'
        'seed_files = ["/etc/seeds"]\nseed_dns = ["seeds.local"]\n'
        'profile = "lan"\nrpc = "127.0.0.1:2"\nlog_level = "warning"\nlog_json = false\n'
        '[state]\nrole = "db"\n'
    )
    assert set(parse_toml(text, "x.toml")) == {
        "name",
        "bind",
        "advertise",
        "seeds",
        "seed_files",
        "seed_dns",
        "state",
        "profile",
        "rpc",
        "log_level",
        "log_json",
    }


def test_seed_sources_from_every_source() -> None:
    s = load(
        [
            "--seed-file",
            "/a",
            "--seed-file",
            "b.txt",
            "--seed-dns",
            "seeds.local",
            "--seed-dns",
            "[::1]:8000",
            "--seed-dns",
            "10.0.0.9:7000",
        ]
    )
    assert s.seed_files == ("/a", "b.txt")
    assert s.seed_dns == (("seeds.local", 7946), ("::1", 8000), ("10.0.0.9", 7000))
    env = load([], {"SWIMNODE_SEED_FILES": "/x, /y", "SWIMNODE_SEED_DNS": "s.example:1"})
    assert (env.seed_files, env.seed_dns) == (("/x", "/y"), (("s.example", 1),))
    files = {"c.toml": 'seed_files = ["/f"]\nseed_dns = ["d.example"]\n'}
    f = load(["--config", "c.toml", "--seed-dns", "flag.example"], {}, files)
    assert (f.seed_files, f.seed_dns) == (("/f",), (("flag.example", 7946),))


def test_initial_state_merges_key_by_key() -> None:
    files = {
        "c.toml": '[state]\nrole = "file"\nzone = "eu"\ntokens = [1, 2]\n'
        'labels = { tier = "gold" }\n'
    }
    env = {"SWIMNODE_CONFIG": "c.toml", "SWIMNODE_STATE": '{"zone": "us", "weight": 2}'}
    s = load(
        [
            "--state",
            "role=flag",
            "--state-json",
            "load=[0.5, null]",
            "--state",
            "empty=",
            "--state",
            "eq=a=b",
        ],
        env,
        files,
    )
    assert dict(s.state) == {
        "role": "flag",
        "zone": "us",
        "tokens": [1, 2],
        "labels": {"tier": "gold"},
        "weight": 2,
        "load": [0.5, None],
        "empty": "",
        "eq": "a=b",
    }
    # A later flag wins, whichever of the two flags it is.
    assert dict(load(["--state", "n=1", "--state-json", "n=1"]).state) == {"n": 1}
    assert dict(load(["--state-json", "n=1", "--state", "n=1"]).state) == {"n": "1"}
    assert load([]).state == ()


def test_udp_payload_from_every_source() -> None:
    # The datagram budget follows the path MTU: links below 1428 bytes (IPv4) need it.
    assert load([], {}, {}).node_config().udp_payload == 1400
    assert load(["--udp-payload", "548"], {}, {}).node_config().udp_payload == 548
    env = {"SWIMNODE_UDP_PAYLOAD": "1232"}
    assert load([], env, {}).node_config().udp_payload == 1232
    files = {"c.toml": "udp_payload = 1000"}
    assert load(["--config", "c.toml"], {}, files).node_config().udp_payload == 1000
    assert load(["--udp-payload", "600", "--config", "c.toml"], env, files).udp_payload == 600


def test_wildcard_bind_with_advertise() -> None:
    s = load(["--bind", "0.0.0.0:7946", "--advertise", "10.0.0.5:7946", "--key-file", "/k"])
    assert s.node_config().advertise_address == ("10.0.0.5", 7946)
