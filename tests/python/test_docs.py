"""The user docs (docs/*.md) stay true: every ```python block runs, and where a ```text block
follows it, the block printed exactly that text. Blocks of one page share a namespace, in order.

Skipped, as the page says: a block right after `<!-- no-run ... -->` (needs a GPU build), and
the blocks of a section marked `<!-- pending ... -->` (describes what is not merged yet).
Relative links and their #anchors must resolve.
"""
from __future__ import annotations

import contextlib
import sys
import io
import os
import re
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = os.path.join(ROOT, "docs")
PAGES = sorted(f for f in os.listdir(DOCS) if f.endswith(".md"))


def code_blocks(text: str) -> list[dict]:
    lines = text.split("\n")
    out, pending, norun, i = [], False, False, 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            pending = False  # a pending marker covers its section
        if "<!-- pending" in line:
            pending = True
        if "<!-- no-run" in line:
            norun = True
        m = re.match(r"^```(\w*)\s*$", line)
        if m:
            start = i + 1
            i += 1
            while not lines[i].startswith("```"):
                i += 1
            out.append(dict(lang=m.group(1), code="\n".join(lines[start:i]), line=start + 1,
                            skip=pending or norun))
            norun = False
        i += 1
    return out


@pytest.mark.parametrize("page", PAGES)
def test_examples_run_and_print_what_the_page_shows(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    path = os.path.join(DOCS, page)
    blocks = code_blocks(open(path).read())
    main = types.ModuleType("__main__")  # torch.compile resolves an example's globals here
    monkeypatch.setitem(sys.modules, "__main__", main)
    namespace = main.__dict__
    ran = 0
    for n, b in enumerate(blocks):
        if b["lang"] != "python" or b["skip"]:
            continue
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(compile(b["code"], f"{path}:{b['line']}", "exec"), namespace)
        ran += 1
        got = buf.getvalue().rstrip("\n")
        nxt = blocks[n + 1] if n + 1 < len(blocks) else None
        if got and nxt is not None and nxt["lang"] == "text":
            assert got == nxt["code"].rstrip("\n"), f"{page}:{b['line']}: printed output differs from the page"
    if not any(b["lang"] == "python" for b in blocks):
        pytest.skip(f"{page} has no python examples")


def _slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: str) -> set[str]:
    text = re.sub(r"```.*?```", "", open(path).read(), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#+ (.*)$", text, flags=re.M)}


@pytest.mark.parametrize("page", [os.path.join("docs", p) for p in PAGES] + ["README.md"])
def test_links_resolve(page):
    path = os.path.join(ROOT, page)
    text = re.sub(r"```.*?```", "", open(path).read(), flags=re.S)
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto
        file, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
        if not os.path.exists(dest):
            bad.append(f"{target}: no such file")
        elif anchor and dest.endswith(".md") and anchor not in _anchors(dest):
            bad.append(f"{target}: no such heading")
    assert not bad, f"{page}: broken links: {bad}"
