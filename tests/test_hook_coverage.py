"""Every hookspec has a kind, a one-line docstring, a test and a line on the plugins page."""

from __future__ import annotations

import re
from pathlib import Path

from cnmt import hookspecs
from cnmt.registry import KINDS, SECTIONS_HOOK

REPO_ROOT = Path(__file__).resolve().parent.parent
HOOK_NAMES = sorted(name for name in dir(hookspecs) if name.startswith("cnmt_register_"))


def test_every_kind_has_a_hook_and_every_hook_a_kind():
    assert sorted([*KINDS.values(), SECTIONS_HOOK]) == HOOK_NAMES


def test_every_hookspec_has_a_one_line_docstring():
    for name in HOOK_NAMES:
        doc = getattr(hookspecs, name).__doc__
        assert doc and "\n" not in doc.strip(), name


def test_every_hook_is_tested():
    """A hook counts as tested when a test module other than this one names it."""
    sources = "\n".join(
        p.read_text(encoding="utf-8")
        for p in (REPO_ROOT / "tests").glob("test_*.py")
        if p.name != Path(__file__).name
    )
    untested = [name for name in HOOK_NAMES if name not in sources]
    assert not untested, f"hooks without a test: {untested}"


def test_every_hook_is_documented_on_the_plugins_page():
    page = (REPO_ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    undocumented = [n for n in HOOK_NAMES if not re.search(rf"`{n}\(register\)`", page)]
    assert not undocumented, f"hooks missing from docs/plugins.md: {undocumented}"
