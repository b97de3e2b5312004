"""Request ids scoped to their owner, so that API keys cannot see or take each other's ids.

With API keys, the id a caller chooses is only unique among its owner's requests: behind the front end every
request is known by `scoped(owner, request_id)` ("alice/req-1"), so another owner's request with the same id is a
different request (no DUPLICATE_REQUEST_ID to squat or probe with), and CancelGeneration of another owner's id
finds nothing (NOT_FOUND, the same answer as for an id that never existed). Callers only ever see their own id
(`public`). Owner names cannot contain "/" (see `security/keys.py`), so the owner prefix is unambiguous. Without
keys (owner None) ids are used as given.
"""

from __future__ import annotations


def scoped(owner: str | None, request_id: str) -> str:
    """The id the pool and the workers know the request by."""
    return request_id if owner is None else f"{owner}/{request_id}"


def public(owner: str | None, scoped_id: str) -> str:
    """The id its caller chose (or was given), from `scoped(owner, ...)`."""
    return scoped_id if owner is None else scoped_id.removeprefix(f"{owner}/")
