"""With API keys, PRIORITY_HIGH is a privilege of the owners named in high_priority_owners."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from autoglm.v1 import types_pb2
from autoglm_rpc.client import AutoglmError, Client
from autoglm_rpc.security.priority import PriorityPolicy
from tests.security.conftest import gateway_only, write_keys
from tests.support import server_settings

ALICE, BOB = "alice-key-0123456789abcdef", "bob-key-0123456789abcdef"


def _reason(client: Client, priority: int) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(AutoglmError) as caught:
        client.generate("hi", max_new_tokens=2, priority=priority, timeout=10)
    return caught.value.code, caught.value.reason


def test_only_named_owners_may_ask_for_high_priority(glm_checkpoint: Path, tmp_path: Path) -> None:
    keys = write_keys(tmp_path / "keys", {ALICE: "alice", BOB: "bob"})
    settings = server_settings(glm_checkpoint, api_keys_file=str(keys), high_priority_owners="alice")
    # No workers run here: a request that passes the priority check ends NO_READY_WORKER.
    with gateway_only(settings) as app:
        target = f"127.0.0.1:{app.port}"
        with Client(target, api_key=BOB) as bob, Client(target, api_key=ALICE) as alice:
            assert _reason(bob, types_pb2.PRIORITY_HIGH) == (grpc.StatusCode.PERMISSION_DENIED, "")
            assert _reason(bob, types_pb2.PRIORITY_NORMAL)[1] == "NO_READY_WORKER"
            assert _reason(alice, types_pb2.PRIORITY_HIGH)[1] == "NO_READY_WORKER"


def test_the_setting_names_key_owners() -> None:
    assert PriorityPolicy.from_setting(" alice, ", frozenset({"alice"})).high_priority_owners == {"alice"}
    with pytest.raises(ValueError, match="high_priority_owners: mallory own"):
        PriorityPolicy.from_setting("alice,mallory", frozenset({"alice"}))
    with pytest.raises(ValueError, match="needs API keys"):
        PriorityPolicy.from_setting("alice", None)
