"""Make a span current inside an async generator that a caller may abandon.

When a client goes away mid-stream, grpc (or the event loop's async-generator finalizer) closes the handler's
generator from another task, whose `contextvars.Context` is a copy of, not the one, where the span was attached.
Resetting a context variable's token there raises ValueError ("created in a different Context"): OpenTelemetry's
`detach` logs that as an ERROR with a traceback, and a token of our own ends as "Task exception was never
retrieved". Where the generator is closed from another Context, the Context the tokens were set in is being
dropped with its task, so there is nothing to restore: `attached` detaches only in the Context it attached in.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace

# Set with each attach; resetting its token tells whether this is the Context the attach happened in.
_attach_marker: contextvars.ContextVar[object] = contextvars.ContextVar("autoglm_attach_marker", default=None)


def reset_here(variable: contextvars.ContextVar, token: contextvars.Token) -> bool:
    """Reset `variable` to before `token` if this is the Context `token` was made in; say whether it was."""
    try:
        variable.reset(token)
    except ValueError:  # another Context: the one the token belongs to is being dropped anyway
        return False
    return True


@contextmanager
def attached(span: trace.Span) -> Iterator[None]:
    """`span` is current inside the block, and is detached on the way out only in the Context it was attached."""
    marker = _attach_marker.set(object())
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield
    finally:
        if reset_here(_attach_marker, marker):
            otel_context.detach(token)
