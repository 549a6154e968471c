"""Config validation: every rule names the field it refuses, in one line."""

from __future__ import annotations

import pytest

from swimnode import Config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"probe_timeout": 2.0}, "probe_timeout must not exceed probe_interval"),
        ({"udp_payload": 100}, "udp_payload must be between 512"),
        ({"bind": ("0.0.0.0", 7946)}, "binding a wildcard address"),
        ({"bind": ("::", 7946)}, "binding a wildcard address"),
        ({"bind": ("", 7946)}, "binding a wildcard address"),
        (
            {"bind": ("0.0.0.0", 7946), "advertise": ("0.0.0.0", 7946)},
            "binding a wildcard address",
        ),
    ],
)
def test_rules(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        Config.lan("a", **overrides)
    assert "\n" not in str(info.value)


def test_a_wildcard_bind_is_fine_with_an_address_to_advertise() -> None:
    config = Config.lan("a", bind=("0.0.0.0", 7946), advertise=("10.0.0.5", 7946))
    assert config.advertise_address == ("10.0.0.5", 7946)
    assert Config.lan("b", bind=("[::]", 7946), advertise=("fd00::5", 7946)).bind[0] == "[::]"
