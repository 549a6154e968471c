"""Seed address parsing and seed sources (`swimnode.net.seeds`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from swimnode.net.seeds import (
    CombinedSeeds,
    DnsSeeds,
    FileSeeds,
    SeedSource,
    SeedSourceError,
    StaticSeeds,
)
from swimnode.net.transport import Address, parse_address

# ----- parse_address ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1:7000", ("10.0.0.1", 7000)),
        ("10.0.0.1", ("10.0.0.1", 7946)),
        ("node-a.example.com:1", ("node-a.example.com", 1)),
        ("node-a", ("node-a", 7946)),
        ("  node-a:65535 \n", ("node-a", 65535)),
        ("[::1]:7000", ("::1", 7000)),
        ("[::1]", ("::1", 7946)),
        ("[0:0::1]:80", ("::1", 80)),
        ("[FE80::1%eth0]:80", ("fe80::1%eth0", 80)),
        ("::1", ("::1", 7946)),
        ("2001:db8::5", ("2001:db8::5", 7946)),
    ],
)
def test_parse_address_accepts(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


def test_parse_address_default_port() -> None:
    assert parse_address("h", default_port=1234) == ("h", 1234)
    assert parse_address("[::1]", 1234) == ("::1", 1234)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "host:",
        ":7000",
        "host:port",
        "host:0",
        "host:65536",
        "host:-1",
        "host:+80",
        "host:7 0",
        "ho st:80",
        "[::1",
        "[::1]7000",
        "[::1]:",
        "[not-v6]:80",
        "[]:80",
        "2001:db8::5:70000",
        "a:b:c",
        "host:80\nother:81",
    ],
)
def test_parse_address_rejects_with_one_line_message(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_address(text)
    message = str(info.value)
    assert message
    assert "\n" not in message


# ----- StaticSeeds -----------------------------------------------------------------------


async def test_static_seeds_parse_and_dedup() -> None:
    seeds = StaticSeeds(["a:1", ("b", 2), "a:1", "c"])
    assert await seeds.resolve() == [("a", 1), ("b", 2), ("c", 7946)]
    with pytest.raises(ValueError):
        StaticSeeds(["a:bad"])


# ----- FileSeeds -------------------------------------------------------------------------


async def test_file_seeds_reread_after_edit(tmp_path: Path) -> None:
    path = tmp_path / "seeds.txt"
    path.write_text("# seeds\n10.0.0.1:7000\n\n  [::1]:7001  # local v6\nnode-c\n10.0.0.1:7000\n")
    seeds = FileSeeds(path)
    assert await seeds.resolve() == [("10.0.0.1", 7000), ("::1", 7001), ("node-c", 7946)]
    path.write_text("10.0.0.9:9000\n")
    assert await seeds.resolve() == [("10.0.0.9", 9000)]
    path.write_text("# nothing yet\n")
    assert await seeds.resolve() == []


async def test_file_seeds_bad_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "seeds.txt"
    path.write_text("10.0.0.1:7000\n# comment\nhost:notaport\n")
    with pytest.raises(SeedSourceError) as info:
        await FileSeeds(path).resolve()
    message = str(info.value)
    assert message.startswith(f"{path}:3: ")
    assert "notaport" in message
    assert "\n" not in message


async def test_file_seeds_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.txt"
    with pytest.raises(SeedSourceError) as info:
        await FileSeeds(path).resolve()
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


async def test_file_seeds_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(SeedSourceError, match="cannot read"):
        await FileSeeds(tmp_path).resolve()


# ----- DnsSeeds --------------------------------------------------------------------------


async def test_dns_localhost_resolves_to_loopback_only() -> None:
    addresses = await DnsSeeds("localhost", 7946).resolve()
    assert addresses
    assert len(addresses) == len(set(addresses))
    assert {host for host, _ in addresses} <= {"127.0.0.1", "::1"}
    assert all(port == 7946 for _, port in addresses)


async def test_dns_failure_raises_seed_source_error() -> None:
    # .invalid is reserved (RFC 6761) and never resolves; a short timeout keeps the test
    # fast even if the local resolver tries the network before giving up.
    with pytest.raises(SeedSourceError, match=re.escape("no-such-seed.invalid")):
        await DnsSeeds("no-such-seed.invalid", 7946, timeout=2.0).resolve()


def test_dns_seeds_validates_arguments() -> None:
    with pytest.raises(ValueError):
        DnsSeeds("localhost", 0)
    with pytest.raises(ValueError):
        DnsSeeds("localhost", 7946, timeout=0)


# ----- CombinedSeeds ---------------------------------------------------------------------


class Failing(SeedSource):
    async def resolve(self) -> list[Address]:
        raise SeedSourceError("failing source is down")


async def test_combined_union_dedup_in_order() -> None:
    combined = CombinedSeeds(
        [StaticSeeds(["a:1", "b:2"]), StaticSeeds(["b:2", "c:3", "a:1"]), StaticSeeds([])]
    )
    assert await combined.resolve() == [("a", 1), ("b", 2), ("c", 3)]
    assert combined.last_errors == []


async def test_combined_partial_failure_keeps_errors(tmp_path: Path) -> None:
    failing = Failing()
    missing = FileSeeds(tmp_path / "absent.txt")
    combined = CombinedSeeds([failing, StaticSeeds(["a:1"]), missing, StaticSeeds(["b:2"])])
    assert await combined.resolve() == [("a", 1), ("b", 2)]
    assert [source for source, _ in combined.last_errors] == [failing, missing]
    assert all(isinstance(e, SeedSourceError) for _, e in combined.last_errors)
    # Errors describe the latest resolve only.
    combined.sources = [StaticSeeds(["c:3"])]
    assert await combined.resolve() == [("c", 3)]
    assert combined.last_errors == []


async def test_combined_all_failed_raises() -> None:
    combined = CombinedSeeds([Failing(), Failing()])
    with pytest.raises(SeedSourceError, match="all 2 seed sources failed") as info:
        await combined.resolve()
    assert "\n" not in str(info.value)
    assert len(combined.last_errors) == 2


async def test_combined_of_nothing_is_empty() -> None:
    assert await CombinedSeeds([]).resolve() == []
