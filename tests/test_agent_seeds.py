"""How the agent turns --seed, --seed-file and --seed-dns into the node's seed source."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from swimnode.agent.daemon import LoggedSeeds, seed_source
from swimnode.agent.settings import AgentSettings
from swimnode.net.seeds import SeedSourceError


def test_static_seeds_alone_need_no_source() -> None:
    assert seed_source(AgentSettings(name="a")) is None
    assert seed_source(AgentSettings(name="a", seeds=(("127.0.0.1", 1),))) is None
    assert isinstance(seed_source(AgentSettings(name="a", seed_files=("f",))), LoggedSeeds)
    assert isinstance(seed_source(AgentSettings(name="a", seed_dns=(("h", 1),))), LoggedSeeds)


async def test_sources_are_combined_in_order(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("# the seeds\n127.0.0.1:2\n\n127.0.0.1:1  # again\n[::1]:3\n")
    settings = AgentSettings(
        name="a", seeds=(("127.0.0.1", 1),), seed_files=(str(seeds),), seed_dns=(("127.0.0.1", 4),)
    )
    source = seed_source(settings)
    assert source is not None
    assert await source.resolve() == [
        ("127.0.0.1", 1),
        ("127.0.0.1", 2),
        ("::1", 3),
        ("127.0.0.1", 4),
    ]
    # Re-read on every call: an edit shows at the next refresh.
    seeds.write_text("127.0.0.1:5\n")
    assert await source.resolve() == [("127.0.0.1", 1), ("127.0.0.1", 5), ("127.0.0.1", 4)]


async def test_a_failing_source_is_logged_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "missing.txt"
    source = LoggedSeeds(
        AgentSettings(name="a", seeds=(("127.0.0.1", 1),), seed_files=(str(missing),))
    )
    with caplog.at_level(logging.WARNING, logger="swimnode.agent"):
        assert await source.resolve() == [("127.0.0.1", 1)]
    [record] = caplog.records
    assert f"{missing}: cannot read seed file" in record.getMessage()


async def test_every_source_failing_names_each(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("127.0.0.1:1\nnot an address:x\n")
    source = LoggedSeeds(AgentSettings(name="a", seed_files=(str(tmp_path / "nope"), str(bad))))
    with pytest.raises(SeedSourceError) as info:
        await source.resolve()
    message = str(info.value)
    assert "nope: cannot read seed file" in message
    assert f"{bad}:2:" in message
    assert "\n" not in message
