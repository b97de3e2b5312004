"""API key files and hashing, and the rate limiter's buckets (with a clock the test moves)."""

from __future__ import annotations

import pytest

from autoglm_rpc.core.errors import RateLimited
from autoglm_rpc.security.keys import ApiKeys, bearer_token, hash_key, key_line
from autoglm_rpc.security.rate_limit import RateLimiter

KEY = "k" * 20


def test_keys_file_lines_round_trip_and_identify_the_owner() -> None:
    text = f"# comment\n\n{key_line(KEY, 'alice')}\n{key_line('x' * 16, 'bob')}  # trailing comment\n"
    keys = ApiKeys.parse(text, "keys")
    assert keys.identify(KEY) == "alice"
    assert keys.identify("x" * 16) == "bob"
    assert keys.identify("y" * 16) is None
    assert ApiKeys.parse(f"{hash_key(KEY)} carol,{hash_key('z' * 16)} carol", "inline").names == {"carol"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "no keys"),
        ("md5:abc alice", "expected `sha256:<hex>  <name>`"),
        ("sha256:abc alice", "64 hex digits"),
        (f"{hash_key(KEY)} al/ice", "name 'al/ice'"),
        (f"{hash_key(KEY)} a\n{hash_key(KEY)} b", "entry 2: the same key is listed twice"),
    ],
)
def test_bad_keys_files_name_the_entry(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        ApiKeys.parse(text, "keys")


def test_hash_key_refuses_short_keys() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        key_line("short", "alice")


def test_bearer_token_is_read_from_metadata() -> None:
    assert bearer_token((("x-other", "1"), ("authorization", "Bearer abc "))) == "abc"
    assert bearer_token((("authorization", "bearer abc"),)) == "abc"
    assert bearer_token((("authorization", "Basic abc"),)) is None
    assert bearer_token(None) is None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_request_bucket_allows_a_minute_burst_then_refills() -> None:
    clock = Clock()
    limiter = RateLimiter(requests_per_minute=3, clock=clock)
    for _ in range(3):
        limiter.admit_request("alice")
    with pytest.raises(RateLimited) as caught:
        limiter.admit_request("alice")
    assert caught.value.retry_after == pytest.approx(20.0)
    limiter.admit_request("bob")  # its own bucket
    clock.now += 20.0
    limiter.admit_request("alice")


def test_tokens_are_reserved_and_the_unused_part_refunded() -> None:
    clock = Clock()
    limiter = RateLimiter(tokens_per_minute=100, clock=clock)
    limiter.reserve_tokens(None, 80)
    limiter.refund_tokens(None, 50)  # generated 30 of the 80 reserved: 50 back
    limiter.reserve_tokens(None, 70)
    with pytest.raises(RateLimited) as caught:
        limiter.reserve_tokens(None, 10)
    assert caught.value.retry_after == pytest.approx(6.0)
    with pytest.raises(RateLimited) as caught:
        limiter.reserve_tokens(None, 101)
    assert caught.value.retry_after is None and "more than the 100 tokens per minute" in str(caught.value)


def test_zero_limits_are_off() -> None:
    limiter = RateLimiter()
    assert not limiter.is_active
    for _ in range(1000):
        limiter.admit_request("alice")
        limiter.reserve_tokens("alice", 10**9)


def test_hash_key_command_prints_the_keys_file_line(monkeypatch, capsys) -> None:
    import io

    from autoglm_rpc.startup.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO(KEY + "\n"))
    assert main(["hash-key", "--name", "alice"]) == 0
    line = capsys.readouterr().out
    assert line == f"{hash_key(KEY)}  alice\n"
    assert ApiKeys.parse(line, "stdout").identify(KEY) == "alice"
