"""With `--log-format text`, a caller-chosen value cannot forge fields or lines in the access log."""

from __future__ import annotations

import logging
import shlex

import pytest

from autoglm_rpc.telemetry.logs import text_value
from tests.support import ServerThread

FORGED_ID = "x code=OK level=CRITICAL msg=forged"


def test_values_that_are_not_one_plain_word_are_quoted() -> None:
    assert text_value("req-1") == "req-1" and text_value(12.5) == "12.5"
    assert text_value(FORGED_ID) == '"x code=OK level=CRITICAL msg=forged"'
    assert text_value('a"b\nc=d') == '"a\\"b\\nc=d"'
    assert text_value("") == '""'


def test_a_forged_request_id_stays_one_field_of_the_access_line(
    glm_server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="autoglm_rpc.access"), glm_server.client() as client:
        client.generate(prompt="hello", max_new_tokens=2, request_id=FORGED_ID)
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "autoglm_rpc.access" and "request_id=" in r.getMessage()
    ]
    assert lines, caplog.text
    words = shlex.split(lines[-1])
    pairs = dict(word.split("=", 1) for word in words[2:])
    assert pairs["request_id"] == FORGED_ID
    assert words[1] == "OK" and "level" not in pairs and "msg" not in pairs
