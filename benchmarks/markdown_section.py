"""Replacing one benchmark's section of BENCHMARKS.md, between its HTML comment markers."""

from __future__ import annotations

import re
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def write_section(name: str, text: str, path: Path = BENCHMARKS) -> None:
    """Put `text` between `<!-- name -->` and `<!-- /name -->`, appending both when absent."""
    document = path.read_text()
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    section = f"{start}\n{text}\n{end}"
    if start in document:
        document = re.sub(f"{re.escape(start)}.*?{re.escape(end)}", lambda _: section,
                          document, flags=re.S)
    else:
        document = document.rstrip() + "\n\n" + section + "\n"
    path.write_text(document)
