"""The code blocks that documentation pages mark for their tests: `<!-- name:start -->`, one fenced block of
`language`, `<!-- name:end -->`. Tests read commands and examples from there, so what a page shows is what runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def block(page: str, name: str, language: str) -> str:
    """The body of the block marked `name` in `page`, a path from the repository root (docs/grpc-api.md)."""
    text = (ROOT / page).read_text()
    match = re.search(rf"<!-- {name}:start -->\n```{language}\n(.*?)```\n<!-- {name}:end -->", text, re.S)
    assert match, f"{page} lost its {name} markers (or the {language} block between them)"
    return match.group(1)


def shell_commands(text: str, program: str) -> list[str]:
    """The `program` command lines of a shell block: continuation lines joined, a quoted body that spans lines
    kept whole, comments and other lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    commands: list[str] = []
    for line in joined.splitlines():
        if commands and commands[-1].count("'") % 2:  # a -d '...' body that spans lines
            commands[-1] += "\n" + line
        elif line.startswith(f"{program} "):
            commands.append(line)
    return commands
