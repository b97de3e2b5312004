"""docs/configuration.md's settings reference is the one the code generates (`make docs`), and the generator
describes every setting from the code: a flag's help, else the setting's comment in its section."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from autoglm_rpc.startup.config import setting_names
from tools import config_reference


@dataclass(frozen=True)
class _Commented:
    plain: int = 1  # said on its line
    # said above it,
    # over two lines
    above: str | None = None
    bare: bool = False


def test_the_committed_reference_is_the_generated_one() -> None:
    page = config_reference.PAGE.read_text()
    assert config_reference.rewrite(page) == page, "docs/configuration.md is stale: run `make docs`"


def test_every_setting_has_a_row_with_its_variable() -> None:
    rendered = config_reference.render()
    for name in setting_names():
        assert f"| `{name}` | " in rendered, name
        assert f"`AUTOGLM_{name.upper()}`" in rendered, name
    assert "`--no-prefix-caching` | `AUTOGLM_ENABLE_PREFIX_CACHING` | `true` |" in rendered
    assert "`--max-batch-size` | `AUTOGLM_MAX_BATCH_SIZE`, `BATCH_SIZE` | `32` |" in rendered


def test_comments_are_read_from_the_section_source() -> None:
    comments = config_reference.field_comments(_Commented)
    assert comments == {"plain": "said on its line", "above": "said above it, over two lines"}


def test_a_setting_nobody_describes_is_an_error() -> None:
    with pytest.raises(ValueError, match="'bare' has no `serve` flag help and no comment"):
        config_reference.section_table("test", _Commented, {})


def test_lost_markers_are_an_error() -> None:
    with pytest.raises(ValueError, match="lost its config-reference markers"):
        config_reference.rewrite("# Configuration\n")
