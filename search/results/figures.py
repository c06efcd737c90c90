"""Matplotlib for files only: the Agg backend (no window, no display needed) and one way to
write a figure, shared by the per-trial pictures and the study report."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

DPI = 110


def new_figure(*rows_columns: int, size: tuple[float, float]):
    """`plt.subplots` on the Agg backend: (figure, axes)."""
    return plt.subplots(*rows_columns, figsize=size)


def save_figure(figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
