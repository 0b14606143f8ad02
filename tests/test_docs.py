"""Every relative link in the tracked markdown reaches a file, and every #anchor a heading of it, so moving a
file or renaming a section cannot leave a dead link in the docs."""

import re
import subprocess
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCED = re.compile(r"^```.*?^```", re.S | re.M)
HEADING = re.compile(r"^#{1,6} +(.+?) *#*$", re.M)


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings: lowercased, punctuation dropped, spaces to hyphens, a repeated
    one suffixed -1, -2, ..."""
    seen: Counter[str] = Counter()
    anchors = set()
    for heading in HEADING.findall(FENCED.sub("", markdown)):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
        seen[slug] += 1
    return anchors


def dead_links(path: Path) -> list[str]:
    dead = []
    for target in LINK.findall(FENCED.sub("", path.read_text())):
        if re.match(r"[a-z]+:", target):  # http:, mailto: ...: not checked offline
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            dead.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in github_anchors(linked.read_text()):
            dead.append(f"{target}: no such heading")
    return dead


def test_github_anchors_follow_githubs_rule():
    assert github_anchors("# Top\n## What one request costs (session 14)\n```\n# not a heading\n```\n## Top\n") == {
        "top", "what-one-request-costs-session-14", "top-1"}


def test_every_relative_link_in_the_docs_resolves():
    tracked = subprocess.run(["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True, check=True)
    dead = {name: links for name in tracked.stdout.split() if (links := dead_links(ROOT / name))}
    assert not dead, dead
