"""A sampling default in generation_config.json that no request could set is ignored with a warning naming the
file and the field; the model is served with transformers' default instead, and requests succeed."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from autoglm_rpc.text.checkpoint import read_checkpoint_facts
from tests.support import ServerThread, server_settings


def _with_defaults(source: Path, target: Path, **values: object) -> Path:
    shutil.copytree(source, target)
    path = target / "generation_config.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps(config | values))
    return target


def test_out_of_range_defaults_are_ignored_and_named(
    glm_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = {
        "do_sample": True,
        "top_p": 1.5,
        "temperature": -1,
        "top_k": -3,
        "repetition_penalty": 0,
        "max_new_tokens": 0,
    }
    checkpoint = _with_defaults(glm_checkpoint, tmp_path / "bad", **bad)
    with caplog.at_level(logging.WARNING, logger="autoglm_rpc.text.checkpoint"):
        defaults = read_checkpoint_facts(checkpoint).defaults
    assert (defaults.top_p, defaults.temperature, defaults.top_k) == (1.0, 1.0, 50)
    assert (defaults.repetition_penalty, defaults.max_new_tokens) == (1.0, None)
    for field in bad.keys() - {"do_sample"}:
        assert f"generation_config.json: {field} is" in caplog.text


def test_a_server_over_a_bad_default_serves_requests_that_leave_it_unset(
    glm_checkpoint: Path, tmp_path: Path
) -> None:
    checkpoint = _with_defaults(glm_checkpoint, tmp_path / "bad", do_sample=True, top_p=1.5)
    server = ServerThread(server_settings(checkpoint, workers=1)).start()
    try:
        with server.client() as client:
            assert client.list_models(timeout=10).models[0].defaults.top_p == 1.0
            # Sampling is on (the checkpoint's do_sample) with no seed: EOS may come early, so it is ignored.
            reply = client.generate("Hello", max_new_tokens=3, stopping={"ignore_eos": True}, timeout=60)
            assert reply.usage.completion_tokens == 3
    finally:
        server.stop()
