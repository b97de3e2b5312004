"""What the access log and the RPC span learn about one call while it is served (a per-task context variable).

The interceptor (or the HTTP middleware) creates a `CallRecord` for each call of our services and makes it current;
the generation observer fills in the request id, token counts and timings as they become known; the interceptor
reads it back when the call ends. The record travels with the handler's task, so nothing is shared between calls.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass


@dataclass(slots=True)
class CallRecord:
    method: str
    request_id: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int = 0
    time_to_first_token: float | None = None  # seconds
    finish_reason: str | None = None
    capture_kernels: bool = False  # the caller sent x-autoglm-profile: kernels
    prompt: str | None = None  # only with log_prompts
    peer: str | None = None  # read when the call starts: grpc's peer() on a call already gone can crash


current_call: contextvars.ContextVar[CallRecord | None] = contextvars.ContextVar("autoglm_call", default=None)
