"""The gateway's text side: tokenize, render chats, detokenize incrementally, match stop sequences.

Built on the `tokenizers` library and jinja2 only: importing this package never imports torch or transformers.
"""

from autoglm_rpc.text.chat_template import ChatMessage, ChatTemplate, ChatTurn
from autoglm_rpc.text.checkpoint import CheckpointFacts, GenerationDefaults, read_checkpoint_facts
from autoglm_rpc.text.detokenizer import IncrementalDetokenizer
from autoglm_rpc.text.errors import ChatTemplateError, ChatTemplateMissing, CheckpointFileError, TextError
from autoglm_rpc.text.output import TextStream
from autoglm_rpc.text.stops import StopMatch, StopSequenceMatcher
from autoglm_rpc.text.tokenizer import TextTokenizer

__all__ = [
    "ChatMessage",
    "ChatTemplate",
    "ChatTemplateError",
    "ChatTemplateMissing",
    "ChatTurn",
    "CheckpointFacts",
    "CheckpointFileError",
    "GenerationDefaults",
    "IncrementalDetokenizer",
    "StopMatch",
    "StopSequenceMatcher",
    "TextError",
    "TextStream",
    "TextTokenizer",
    "read_checkpoint_facts",
]
