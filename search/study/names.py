"""How messages show a study name: as the user typed it, between plain quotes.

`repr()` would not: it escapes what Python deems unprintable (a full-width space U+3000 that
a CJK input method types, an emoji's zero-width joiner, a right-to-left mark: '研究\\u3000α')
and switches to double quotes for a name with an apostrophe.
"""

from __future__ import annotations


def quoted(name: str) -> str:
    return f"'{name}'"
