"""Write one benchmark's section of a docs page, leaving the other benchmarks' sections as they are."""

from __future__ import annotations

from pathlib import Path


def write_section(path: str | Path, name: str, text: str) -> None:
    """Replace the block between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` in ``path`` with ``text``
    (appended at the end if the page has no such block yet; the page is created if missing)."""
    p = Path(path)
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{text.strip()}\n{end}\n"
    page = p.read_text() if p.exists() else ""
    if start in page and end in page:
        head, rest = page.split(start, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        page = head + block + tail
    else:
        page = (page.rstrip() + "\n\n" if page.strip() else "") + block
    p.write_text(page)
