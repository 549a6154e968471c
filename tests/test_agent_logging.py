"""The agent's log formats."""

from __future__ import annotations

import json
import logging

from swimnode.agent.daemon import JsonFormatter, _not_node_membership_line


def record(
    name: str, level: int, msg: str, fields: dict[str, object] | None = None
) -> logging.LogRecord:
    rec = logging.LogRecord(name, level, __file__, 1, msg, (), None)
    if fields is not None:
        rec.fields = fields
    return rec


def test_json_lines_carry_the_fields() -> None:
    line = JsonFormatter().format(
        record(
            "swimnode.agent",
            logging.INFO,
            "member b joined",
            {"event": "joined", "name": "b"},
        )
    )
    data = json.loads(line)
    assert "\n" not in line
    assert data["message"] == "member b joined"
    assert (data["level"], data["event"], data["name"]) == ("info", "joined", "b")
    assert data["time"].endswith("Z")


def test_node_membership_lines_are_not_doubled() -> None:
    assert not _not_node_membership_line(record("swimnode.members", logging.INFO, "x"))
    assert _not_node_membership_line(record("swimnode", logging.INFO, "x"))
    assert _not_node_membership_line(record("swimnode", logging.WARNING, "join failed"))
    assert _not_node_membership_line(record("swimnode.agent", logging.INFO, "x"))
