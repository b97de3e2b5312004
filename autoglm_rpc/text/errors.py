"""The text layer's errors: a small taxonomy that the gateway's error map turns into gRPC statuses.

`CheckpointFileError` is an operator problem found at start-up (the process should not serve); the chat errors
are per-request problems: `ChatTemplateMissing` maps to FAILED_PRECONDITION / CHAT_TEMPLATE_MISSING and
`ChatTemplateError` (the template rejected the caller's messages) to INVALID_ARGUMENT / INVALID_PARAMETER.
"""

from __future__ import annotations


class TextError(Exception):
    """Base class of every error raised by `autoglm_rpc.text`."""


class CheckpointFileError(TextError):
    """A checkpoint file the gateway needs is missing, unreadable or malformed; the message says which and why."""


class ChatTemplateMissing(TextError):
    """Chat input was given but the checkpoint has no chat template."""


class ChatTemplateError(TextError):
    """The chat template could not render these messages (it raised, or it misused a value).

    `message` is the template's own explanation (for `raise_exception(...)`, the text it was called with), fit to
    show to the caller.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
