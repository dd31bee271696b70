"""Structured logs: JSON lines, stable names, and no secrets ever."""

from __future__ import annotations

import io
import json

import structlog

from glimpse_edge.logs import REDACTED, configure_logging, redact

JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZCI6ImFiYyJ9.Zm9vYmFyYmF6cXV4cXV1eA"


def test_json_lines_with_event_names_and_secrets_masked() -> None:
    out = io.StringIO()
    configure_logging("debug", "json", stream=out)
    log = structlog.get_logger("t")
    log.info("signaling.connected", url="ws://x", token=JWT, password="hunter2",
             nested={"credential": "c", "note": f"Bearer {JWT}"}, items=[JWT])
    line = json.loads(out.getvalue())
    assert line["event"] == "signaling.connected" and line["level"] == "info"
    assert line["token"] == REDACTED and line["password"] == REDACTED
    assert line["nested"] == {"credential": REDACTED, "note": f"Bearer {REDACTED}"}
    assert JWT not in out.getvalue() and "hunter2" not in out.getvalue()


def test_exceptions_are_masked_too() -> None:
    out = io.StringIO()
    configure_logging("debug", "console", stream=out)
    try:
        raise RuntimeError(f"server said no to {JWT}")
    except RuntimeError:
        structlog.get_logger("t").exception("signaling.failed")
    assert "signaling.failed" in out.getvalue() and JWT not in out.getvalue()


def test_level_filters() -> None:
    out = io.StringIO()
    configure_logging("warning", "json", stream=out)
    structlog.get_logger("t").info("room.joined")
    assert out.getvalue() == ""


def test_redact_leaves_plain_values() -> None:
    assert redact({"a": 1, "b": ["x", None]}) == {"a": 1, "b": ["x", None]}
