"""The README and docs/ hold together: every relative Markdown link points to a file that exists (and, with a
`#fragment` into a Markdown page, to one of its headings), and no page points outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
# Working notes kept beside the repository, never part of it: no page may send a reader there.
OUTSIDE = re.compile(r"\.\./shared|\b(?:DESIGN|CONTRACT|STYLE|TRACING)\.md\b")


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as dashes."""
    headings = re.findall(r"^#{1,6} (.+)$", FENCE.sub("", page.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def links(page: Path) -> list[str]:
    return [target for target in LINK.findall(FENCE.sub("", page.read_text())) if "://" not in target]


def test_there_are_pages_and_links() -> None:
    assert len(PAGES) > 10 and sum(len(links(page)) for page in PAGES) > 50


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or (fragment and file.suffix == ".md" and fragment not in anchors(file)):
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_points_outside_the_repository(page: Path) -> None:
    assert not OUTSIDE.findall(page.read_text())
    for target in links(page):
        path = target.partition("#")[0]
        assert not path or (page.parent / path).resolve().is_relative_to(ROOT), target


def test_anchors_follow_github() -> None:
    page = ROOT / "docs" / "performance.md"
    assert {"gpu-check", "transformers-serve-beside-the-service"} <= anchors(page)
    assert "the-gateways-cost-per-token-over-grpc-and-over-http" in anchors(page)
