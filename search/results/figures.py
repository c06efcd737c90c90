"""Matplotlib for files only: the Agg backend (no window, no display needed) and one way to
write a figure, shared by the per-trial pictures and the study report.

Text that users chose (a study name, an image folder's class names) may be in any script.
The charts draw it with DejaVu Sans (matplotlib's own) and, for what it lacks, the first of
`FALLBACK_FONTS` this host has (matplotlib falls back glyph by glyph through the family
list). A character none of them has is drawn as U+FFFD, the replacement character, instead
of an empty box with a "Glyph ... missing from font(s)" warning per character: the text
files beside the charts (report.md, report.csv, the notes) keep the name as typed.
"""

from __future__ import annotations

import functools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib import font_manager  # noqa: E402
from matplotlib.ft2font import FT2Font  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from matplotlib.ticker import FixedFormatter, Formatter, FuncFormatter  # noqa: E402

DPI = 110
BASE_FONT = "DejaVu Sans"  # matplotlib's own: Latin, Greek, Cyrillic and much else
# Fonts with CJK glyphs (most also Hangul and kana), by the names Linux distributions, macOS
# and Windows install them under; none needs to be there.
FALLBACK_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK KR",
                  "Source Han Sans", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
                  "Droid Sans Fallback", "Hiragino Sans", "PingFang SC", "Microsoft YaHei",
                  "Malgun Gothic", "Arial Unicode MS")
MISSING_GLYPH = "\ufffd"


@functools.cache
def chart_fonts() -> tuple[str, ...]:
    """The charts' font family list: the base font, then the installed fallbacks."""
    installed = {font.name for font in font_manager.fontManager.ttflist}
    return (BASE_FONT, *[name for name in FALLBACK_FONTS if name in installed])


@functools.cache
def drawable_characters() -> frozenset[int]:
    """The code points some font of `chart_fonts` has a glyph for."""
    covered: set[int] = set()
    for name in chart_fonts():
        path = font_manager.findfont(font_manager.FontProperties(family=[name]))
        covered |= set(FT2Font(path).get_charmap())
    return frozenset(covered)


def drawable(text: str) -> str:
    """`text` with each character no chart font can draw replaced by MISSING_GLYPH."""
    covered = drawable_characters()
    return "".join(c if ord(c) in covered or c in "\n\t" else MISSING_GLYPH for c in text)


class DrawableLabels(Formatter):
    """Tick labels given as text (class names: `set_ticks(ticks, labels)` makes a
    FuncFormatter of them), made `drawable` each time drawing asks the axis for them."""

    def __init__(self, labels: Formatter) -> None:
        self.labels = labels

    def __call__(self, x, pos=None) -> str:
        return drawable(self.labels(x, pos))

    def set_locs(self, locs) -> None:
        self.labels.set_locs(locs)


def replace_missing_glyphs(figure) -> None:
    """Every text of `figure` `drawable`: its texts, and its axes' tick labels given as
    text, which drawing would otherwise set again."""
    for axes in figure.axes:
        for axis in (axes.xaxis, axes.yaxis):
            if isinstance(axis.get_major_formatter(), FuncFormatter | FixedFormatter):
                axis.set_major_formatter(DrawableLabels(axis.get_major_formatter()))
    for text in figure.findobj(Text):
        content = text.get_text()
        if content and drawable(content) != content:
            text.set_text(drawable(content))


def use_chart_fonts() -> None:
    """Every text of this process's charts in `chart_fonts` (set once: a text takes its font
    when it is made, the axes' ticks when the figure is)."""
    if len(chart_fonts()) > 1:
        matplotlib.rcParams["font.family"] = list(chart_fonts())


def new_figure(*rows_columns: int, size: tuple[float, float]):
    """`plt.subplots` on the Agg backend: (figure, axes)."""
    use_chart_fonts()
    return plt.subplots(*rows_columns, figsize=size)


def save_figure(figure, path: Path) -> None:
    replace_missing_glyphs(figure)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
