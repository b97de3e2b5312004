"""Whether a chat template takes a message's content as a list of parts ("openai") or as a string ("string"),
read from the template itself as vLLM's `--chat-template-content-format auto` does: a template that loops over a
message's content (`{% for item in message.content %}`, or over a variable set from it) takes parts."""

from __future__ import annotations

import jinja2
from jinja2 import nodes

from autoglm_rpc.text.chat_template import parse_template


def detect_content_format(source: str | None) -> str:
    """ "openai" when the template iterates over a message's content, else "string" (also for no template)."""
    if not source:
        return "string"
    try:
        tree = parse_template(source)
    except jinja2.TemplateSyntaxError:
        return "string"  # the tokenizer refuses such a template anyway
    content_names = {
        target.name
        for assign in tree.find_all(nodes.Assign)
        if _reads_content(assign.node)
        for target in ([assign.target] if isinstance(assign.target, nodes.Name) else [])
    }
    for loop in tree.find_all(nodes.For):
        if _reads_content(loop.iter) or (isinstance(loop.iter, nodes.Name) and loop.iter.name in content_names):
            return "openai"
    return "string"


def _reads_content(node: nodes.Node) -> bool:
    """Whether `node` is, or filters, `x.content` / `x['content']`."""
    while isinstance(node, nodes.Filter | nodes.Test) and node.node is not None:
        node = node.node
    if isinstance(node, nodes.Getattr):
        return node.attr == "content"
    if isinstance(node, nodes.Getitem):
        return isinstance(node.arg, nodes.Const) and node.arg.value == "content"
    return False
