"""API keys kept as SHA-256 hashes, and the constant-time lookup of a presented key.

The format, one key per line (blank lines and `#` comments are ignored):

    sha256:<64 hex digits>  <name>

`autoglm-rpc hash-key --name NAME` prints such a line for a key read from stdin. The name is who the key belongs
to: it owns the requests made with the key and has its own rate limits. Several lines may share a name (key
rotation: the old and the new key both work until the old line is removed). Keys should be random and long
(`hash-key` refuses fewer than 16 characters), so a plain SHA-256 needs no salt or stretching. Both faces read a
presented key with `bearer_token` (gRPC metadata, HTTP headers).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PREFIX = "sha256:"
MIN_KEY_CHARS = 16
_NAME = re.compile(r"[A-Za-z0-9._@:+-]{1,64}")
_HEX = re.compile(r"[0-9a-f]{64}")
_SCHEME = "bearer "


def hash_key(key: str) -> str:
    """The stored form of `key`: `sha256:<hex>`."""
    return PREFIX + hashlib.sha256(key.encode()).hexdigest()


def key_line(key: str, name: str) -> str:
    """The keys-file line for `key` owned by `name`; ValueError for a short key or an unusable name."""
    if len(key) < MIN_KEY_CHARS:
        raise ValueError(f"the key has {len(key)} characters; use a random key of at least {MIN_KEY_CHARS}")
    if not _NAME.fullmatch(name):
        raise ValueError(f"name {name!r}: 1 to 64 of A-Z a-z 0-9 . _ @ : + -")
    return f"{hash_key(key)}  {name}"


@dataclass(frozen=True, slots=True)
class ApiKeys:
    """The known keys: (SHA-256 digest, owner name) pairs."""

    entries: tuple[tuple[bytes, str], ...]

    @classmethod
    def parse(cls, text: str, source: str) -> ApiKeys:
        """Read keys-file text (lines, or entries separated by commas); errors name `source` and the line."""
        entries: list[tuple[bytes, str]] = []
        for number, raw in enumerate(re.split(r"[\n,]", text), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[0].startswith(PREFIX):
                raise ValueError(f"{source}: entry {number}: expected `sha256:<hex>  <name>`")
            digest, name = parts[0].removeprefix(PREFIX).lower(), parts[1]
            if not _HEX.fullmatch(digest):
                raise ValueError(f"{source}: entry {number}: the hash must be 64 hex digits")
            if not _NAME.fullmatch(name):
                raise ValueError(
                    f"{source}: entry {number}: name {name!r} has characters other than A-Za-z0-9._@:+-"
                )
            if any(stored == bytes.fromhex(digest) for stored, _ in entries):
                raise ValueError(f"{source}: entry {number}: the same key is listed twice")
            entries.append((bytes.fromhex(digest), name))
        if not entries:
            raise ValueError(f"{source}: no keys (an empty list would let no one in)")
        return cls(tuple(entries))

    @classmethod
    def from_settings(cls, api_keys_file: str | None, api_keys: str | None) -> ApiKeys | None:
        """The keys of the file and the inline setting together; None when neither is set (no authentication)."""
        if api_keys_file is None and api_keys is None:
            return None
        entries: list[tuple[bytes, str]] = []
        if api_keys_file is not None:
            try:
                text = Path(api_keys_file).read_text()
            except OSError as exc:
                raise ValueError(f"api_keys_file: cannot read {api_keys_file}: {exc.strerror}") from None
            entries.extend(cls.parse(text, f"api_keys_file {api_keys_file}").entries)
        if api_keys is not None:
            entries.extend(cls.parse(api_keys, "api_keys").entries)
        return cls(tuple(entries))

    @property
    def names(self) -> frozenset[str]:
        return frozenset(name for _, name in self.entries)

    def identify(self, key: str) -> str | None:
        """The owner of `key`, or None. Every stored digest is compared, in constant time, whatever matches."""
        digest = hashlib.sha256(key.encode()).digest()
        owner = None
        for stored, name in self.entries:
            if hmac.compare_digest(digest, stored):
                owner = name
        return owner


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an `authorization: Bearer <token>` entry, or None."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value[: len(_SCHEME)].lower() == _SCHEME:
            return value[len(_SCHEME) :].strip()
    return None
