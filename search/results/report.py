"""`search report`: the study-level comparison the paper shows, as files in one folder.

    report.md                  the table below, the verdict, what mattered
                               (`search.results.importance`), and the pictures; past
                               MAX_TABLE_ROWS trials, the table holds the best of them by
                               validation accuracy and, below those, every baseline and the
                               recommended trial(s), and says that report.csv has them all
    report.csv                 one row per completed trial, best validation accuracy first:
                               method, model, rank, alpha, dropout (then lr, targets and
                               scaling where the study's points set them,
                               `search.results.point_columns`), val_acc, test_acc, f1,
                               auc_micro, auc_macro, trainable_pct, trainable_params, and with
                               the study's verdict val_ci, test_ci (95% Wilson), tied,
                               recommended (`search.results.verdict`)
    metrics.png                the five metrics of every trial, side by side (axis from 0),
                               with the accuracies' 95% intervals as error bars; past
                               MAX_BARS trials, the best MAX_BARS of them and, below a dashed
                               line, every baseline and the recommended trial(s) (the title
                               says so)
    accuracy_vs_params.png     test accuracy (axis from 0) with its 95% interval against
                               trainable parameters (log scale), each point labelled with its
                               trial number; the trials tied with the best filled, the rest
                               hollow, the recommended one ringed. Past LABEL_EVERY_TRIAL
                               trials: every trial a small translucent dot (spread sideways
                               within its parameter count), a box of the quartiles and the
                               median per parameter count, and labels and intervals on the
                               best, the recommended and the baselines only
    best_confusion_matrix.png  the best trial's confusion matrix (from its artifacts)

The table, the charts and the Markdown cost what they show, not the study's size: a study of
5,000 trials draws the same number of bars and labels as one of 50.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.transforms import offset_copy
from optuna.artifacts.exceptions import ArtifactNotFound

from search.results import markdown
from search.results.figures import new_figure, save_figure
from search.results.importance import importance_lines, study_importances
from search.results.intervals import format_interval
from search.results.leaderboard import (
    Board,
    configuration_table,
    leaderboard,
    race_lines,
    with_verdict,
)
from search.results.point_columns import COLUMNS as EXTRA_COLUMNS
from search.results.point_columns import format_lr, word
from search.results.race import study_race
from search.results.verdict import NoVerdict, Verdict, assess, closing_lines
from search.study.names import quoted
from search.study.open_study import StudyError
from search.study.optuna_private import study_id, study_storage
from search.study.study_record import StudyRecord
from search.study.trial_reader import all_trials

METRICS = {"val_acc": "val acc", "test_acc": "test acc", "f1": "weighted F1",
           "auc_micro": "AUC micro", "auc_macro": "AUC macro"}
COLUMNS = ["trial", "method", "model", "rank", "alpha", "dropout", *METRICS, "trainable_pct",
           "trainable_params"]
VERDICT_COLUMNS = ["val_ci", "test_ci", "tied", "recommended"]
MAX_TABLE_ROWS = 50  # report.md's table (and per-configuration table): the best this many
MAX_BARS = 30  # metrics.png: the best this many trials
LABEL_EVERY_TRIAL = 50  # accuracy_vs_params.png labels every trial up to this many


def report_table(study: optuna.Study, board: Board | None = None,
                 trials: list[optuna.trial.FrozenTrial] | None = None
                 ) -> tuple[pd.DataFrame, Verdict | str]:
    """The completed trials, best first, with what each one is; and the study's verdict, or
    why it has none (then the table has no interval or tie columns). `board`: the study's
    `study_board`, when the caller has it (a dashboard refresh), so that its verdict is not
    computed a second time; `trials`, the study's trials when the caller has read them."""
    if board is not None and board.by == "trial":
        frame = board.frame
    else:
        trials = all_trials(study) if trials is None else trials
        frame = leaderboard(study, trials)
    if not (frame["state"] == "COMPLETE").any():
        raise StudyError(f"study {quoted(study.study_name)} has no completed trial to report")
    # The leaderboard's extra columns (lr, targets, scaling), where the study has them.
    columns = [*COLUMNS[:COLUMNS.index("dropout") + 1],
               *(c for c in EXTRA_COLUMNS if c in frame), *COLUMNS[COLUMNS.index("dropout") + 1:]]
    try:
        if board is not None and board.verdict is not None:
            verdict: Verdict | str = board.verdict
        else:  # a board without a verdict: `assess` says why
            verdict = assess(study, trials)
        if "tied" not in frame:
            frame = with_verdict(frame, verdict)
        columns = [*columns, *VERDICT_COLUMNS]
    except NoVerdict as why:
        verdict = str(why)
    frame = frame[frame["state"] == "COMPLETE"]
    spec = StudyRecord(study).train_spec
    # Points on other layers than the spec's: the targets column says which, row by row.
    lora = "LoRA" if "targets" in frame else f"LoRA on {spec.targets}"
    method = frame["baseline"].map({True: "baseline (head only)", False: lora})
    table = frame.assign(trial=frame["number"], method=method)[columns].reset_index(drop=True)
    return table, verdict


def flag(table: pd.DataFrame, column: str) -> pd.Series:
    """A yes/no column of the table as bools (False where absent or unknown)."""
    if column not in table:
        return pd.Series(False, index=table.index)
    return table[column].map(lambda value: value is True or value is np.True_)


def is_baseline_row(table: pd.DataFrame) -> pd.Series:
    if "baseline" in table:
        return flag(table, "baseline")
    return table["rank"].isna()


def top_rows(table: pd.DataFrame, limit: int) -> tuple[pd.DataFrame, int]:
    """What a bounded chart or table shows of `table` (best first): all of it up to `limit`
    rows, else its first `limit` rows and, below them in the table's order, every baseline
    and recommended row that is not among them; and how many rows were left out."""
    if len(table) <= limit:
        return table, 0
    keep = np.zeros(len(table), dtype=bool)
    keep[:limit] = True
    keep |= (is_baseline_row(table) | flag(table, "recommended")).to_numpy()
    return table[keep], int((~keep).sum())


def shown_note(shown: pd.DataFrame, total: int, limit: int, what: str, where: str) -> str:
    """What a bounded chart or table (`shown`, from `top_rows`) shows, in words: the best
    `limit` of `total` `what`s, and `where` the lower-ranked baselines and recommended
    rows are."""
    note = f"the best {limit} of {total:,} {what}s by validation accuracy"
    below = shown.iloc[limit:]
    baselines = int(is_baseline_row(below).sum())
    recommended = int((flag(below, "recommended") & ~is_baseline_row(below)).sum())
    parts = [f"{count} {name}{'s' if count > 1 else ''}" if count > 1 else f"the {name}"
             for count, name in ((baselines, "baseline"), (recommended, f"recommended {what}"))
             if count]
    return f"{note}; {where}, ranked lower: {' and '.join(parts)}" if parts else note


def error_bars(table: pd.DataFrame, column: str) -> list[list[float]] | None:
    """[[below], [above]] of each row's 95% interval around its value (matplotlib's xerr /
    yerr), or None without intervals."""
    interval = {"val_acc": "val_ci", "test_acc": "test_ci"}.get(column)
    if interval not in table or table[interval].isna().any():
        return None
    values = table[column].astype(float).tolist()
    lows = [v - ci[0] for v, ci in zip(values, table[interval], strict=True)]
    highs = [ci[1] - v for v, ci in zip(values, table[interval], strict=True)]
    return [lows, highs]


def label(row: pd.Series) -> str:
    if pd.isna(row["rank"]):
        return f"#{row['trial']} {row['model']} head"
    return (f"#{row['trial']} r{row['rank']} a{row['alpha']:g} d{row['dropout']:.2g}"
            + "".join(f" {short_word(c, row[c])}" for c in EXTRA_COLUMNS if c in row))


def short_word(column: str, value) -> str:
    """An extra column in a chart's label: lr0.001, all, rsLoRA."""
    if column == "lr":
        return f"lr{format_lr(value)}"
    return word(column, value).removeprefix("targets ")


# Every score here is in [0, 1]: its axis runs from 0 to 1, so bar lengths and distances
# compare as the numbers do (an axis starting near the lowest score makes small gaps look
# large). The axis label says so; the exact values are written on the bars.
SCORE_AXIS = (0.0, 1.0)
MAX_STACKED = 20  # labels in one column of accuracy_vs_params.png before they are merged
LABEL_OFFSET = 10  # points from a column's points to its labels: past the ring (7.4 points)
# The labelled chart's axes are this wide in its 8-inch figure (the legend takes the right); it
# grows to at most MAX_CHART_INCHES (wider, a dashboard note would show it scaled down).
LABELLED_AXES_INCHES, MAX_CHART_INCHES = 4.4, 10.0
BELOW_GAP = 0.6  # metrics.png: room (in rows) for the dashed line above the rows ranked lower


def plot_metrics(table: pd.DataFrame, path: Path, title: str) -> None:
    """One group of horizontal bars per trial, best first from the top: the trial labels
    read horizontally at the left whatever their length, and the legend sits outside the
    axes, to the right, clear of labels and bars. Past MAX_BARS trials, the best MAX_BARS
    and, below a dashed line, the baselines and the recommended trial(s) ranked lower."""
    total = len(table)
    table, left_out = top_rows(table, MAX_BARS)
    labels = [label(row) for _, row in table.iterrows()]
    height = 0.8 / len(METRICS)
    below = len(table) > MAX_BARS  # rows ranked below the best MAX_BARS: a gap before them
    rows = [i + (BELOW_GAP if below and i >= MAX_BARS else 0) for i in range(len(table))]
    figure, axes = new_figure(size=(9.5, 0.9 * (rows[-1] + 1) + 1.6 + (0.3 if left_out else 0)))
    for index, (column, name) in enumerate(METRICS.items()):
        positions = [i + (index - (len(METRICS) - 1) / 2) * height for i in rows]
        values = table[column].astype(float)
        errors = error_bars(table, column)
        bars = axes.barh(positions, values, height, label=name, xerr=errors,
                         error_kw={"elinewidth": 0.8, "capsize": 1.5, "ecolor": "0.2"})
        if errors is not None:  # the value and its interval mid-bar, clear of the error bar
            interval = table[{"val_acc": "val_ci", "test_acc": "test_ci"}[column]]
            axes.bar_label(bars, [f"{v:.3f} [{lo:.3f}, {hi:.3f}]" for v, (lo, hi)
                                  in zip(values, interval, strict=True)],
                           label_type="center", fontsize=6, color="white")
            continue
        inside = [f"{v:.3f}" if v >= 0.15 else "" for v in values]
        outside = [f"{v:.3f}" if v < 0.15 else "" for v in values]
        axes.bar_label(bars, inside, label_type="edge", padding=-24, fontsize=6,
                       color="white")
        axes.bar_label(bars, outside, label_type="edge", padding=2, fontsize=6)
    axes.set_xlim(*SCORE_AXIS)
    axes.set_xlabel("score (axis from 0 to 1)")
    axes.set_yticks(rows, labels, fontsize=8)
    axes.set_ylim(rows[-1] + 0.5, -0.5)  # best (first row) at the top
    axes.grid(axis="x", alpha=0.3)
    if below:
        line = MAX_BARS - 0.5 + BELOW_GAP / 2
        axes.axhline(line, color="0.3", linestyle="--", linewidth=1)
        axes.annotate(f"{left_out:,} trials not shown (report.csv has every trial)",
                      (0.5, line), ha="center", va="center", fontsize=7,
                      bbox={"boxstyle": "round", "fc": "white", "ec": "0.3"})
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    shown = shown_note(table, total, MAX_BARS, "trial", "below the dashed line")
    shown = shown.replace("; ", ";\n", 1)  # two lines: the title spans the axes alone
    axes.set_title(f"{title}\n{shown}" if left_out else title, fontsize=10)
    save_figure(figure, path)


def spread_labels(heights: list[float], gap: float, top: float = 0.98) -> list[float]:
    """Label heights for points sharing one x: each point's own height where it can be, else
    moved just far enough that labels stay `gap` apart and below `top`, in the same order."""
    order = sorted(range(len(heights)), key=lambda i: heights[i])
    placed = [0.0] * len(heights)
    below = float("-inf")
    for index in order:  # upwards: clear of the label below
        below = placed[index] = max(heights[index], below + gap)
    above = top + gap
    for index in reversed(order):  # downwards: clear of the label above, and of the top
        above = placed[index] = min(placed[index], above - gap)
    return placed


def labelled_chart_width(table: pd.DataFrame) -> float:
    """Inches of the labelled accuracy-against-parameters chart: 8, wider (up to
    MAX_CHART_INCHES) where parameter counts stand so close on the log axis that a column's
    labels would run into the next column's points."""
    params = np.unique(table["trainable_params"].astype(float).to_numpy())
    counts = np.log10(params[np.isfinite(params) & (params > 0)])
    if len(counts) < 2:
        return 8.0
    span = counts[-1] - counts[0] + np.log10(1.3 * 1.6) + 0.1  # the x limits set below
    longest = max(len(f"#{number}") for number in table["trial"])
    # the offset, the widest label ("#" is wider than a digit) and the next column's points
    footprint = (LABEL_OFFSET + 10) / 72 + longest * CHARACTER_INCHES
    axes_inches = span * footprint / np.diff(counts).min()
    return float(min(MAX_CHART_INCHES, max(8.0, axes_inches + 8.0 - LABELLED_AXES_INCHES)))


def plot_accuracy_vs_params(table: pd.DataFrame, path: Path, title: str) -> None:
    """Test accuracy against trainable parameters: every trial labelled up to
    LABEL_EVERY_TRIAL trials, past that the distribution per parameter count
    (`plot_many_trials`)."""
    if len(table) > LABEL_EVERY_TRIAL:
        plot_many_trials(table, path, title)
        return
    figure, axes = new_figure(size=(labelled_chart_width(table), 5))
    baseline = table["rank"].isna()
    tied = table["tied"].fillna(False).astype(bool) if "tied" in table else None
    for rows, marker, name in ((table[~baseline], "o", "LoRA"),
                               (table[baseline], "s", "baseline (head only)")):
        if rows.empty:
            continue
        x, y = rows["trainable_params"].astype(float), rows["test_acc"].astype(float)
        bars = error_bars(rows, "test_acc")
        if bars is not None:
            axes.errorbar(x, y, yerr=bars, fmt="none", ecolor="0.5", elinewidth=0.8, capsize=2)
        if tied is None:
            axes.scatter(x, y, marker=marker, s=60, label=name)
            continue
        inside = tied[rows.index]
        colour = axes.scatter([], [], marker=marker).get_facecolor()  # the next cycle colour
        if inside.any():
            axes.scatter(x[inside], y[inside], marker=marker, s=60, color=colour,
                         label=f"{name}, tied with the best")
        if (~inside).any():
            axes.scatter(x[~inside], y[~inside], marker=marker, s=60, facecolors="none",
                         edgecolors=colour, label=f"{name}, worse than the best")
    if "recommended" in table and table["recommended"].fillna(False).astype(bool).any():
        chosen = table[table["recommended"].fillna(False).astype(bool)]
        axes.scatter(chosen["trainable_params"].astype(float), chosen["test_acc"].astype(float),
                     s=220, facecolors="none", edgecolors="crimson", linewidths=1.5,
                     label="recommended")
    # Each point is labelled with its trial number (the table says what the trial is: long
    # labels would run into the next column of points). Trials with the same parameter count
    # (same rank) stand in one column: their labels are stacked so that none covers another,
    # each joined to its point by a thin line where it had to move. A column of more than
    # MAX_STACKED trials gets one label: how many trials it holds.
    # Labels start LABEL_OFFSET points right of their column, whatever the axis spans: clear
    # of the points, their error bars' caps and the recommended trial's ring.
    beside = offset_copy(axes.transData, figure, x=LABEL_OFFSET, units="points")
    for _, group in table.groupby("trainable_params", sort=False):
        xs = group["trainable_params"].astype(float).tolist()
        ys = group["test_acc"].astype(float).tolist()
        numbers = [f"#{number}" for number in group["trial"]]
        if len(group) > MAX_STACKED:
            axes.annotate(f"{len(group)} trials", (xs[0], sum(ys) / len(ys)),
                          xytext=(xs[0], sum(ys) / len(ys)), textcoords=beside, fontsize=7,
                          va="center")
            continue
        for x, y, text, at in zip(xs, ys, numbers, spread_labels(ys, gap=0.035), strict=True):
            moved = abs(at - y) > 0.005
            axes.annotate(text, (x, y), xytext=(x, at), textcoords=beside, fontsize=7,
                          va="center",
                          arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5",
                                      "shrinkA": 0} if moved else None)
    axes.set_xscale("log")
    low, high = axes.get_xlim()
    axes.set_xlim(low / 1.3, high * 1.6)  # room for the labels right of the last points
    axes.set_ylim(*SCORE_AXIS)
    axes.set_xlabel("trainable parameters (log scale); points labelled by trial number")
    axes.set_ylabel("test accuracy with 95% interval (axis from 0 to 1)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    axes.set_title(title, fontsize=10)
    save_figure(figure, path)


BOX_MIN = 5  # trials of one parameter count that get a box of their quartiles
TIED, WORSE = "C0", "0.55"  # dots of the trials tied with the best, and of the rest


def column_halfwidth(params: np.ndarray) -> float:
    """Half the width (in decades of the log x axis) a parameter count's column of dots may
    take: at most 0.06, and less where counts stand closer (they never overlap)."""
    counts = np.unique(np.log10(params[params > 0]))
    gaps = np.diff(counts)
    return float(min(0.06, 0.4 * gaps.min())) if len(gaps) else 0.06


# How wide a character of a 7-point label is, and the many-trials chart's axes (of its 8-inch
# figure, the legend takes the right): what keeps labels on one row from overlapping.
CHARACTER_INCHES, AXES_INCHES = 0.062, 4.2


def name_labels(table: pd.DataFrame, roles: dict[int, list[str]]) -> list[tuple[int, str]]:
    """One label per configuration and role (its seeds' trials together: "#3, #9, #15
    recommended"), anchored at its first row's point, left to right by parameters."""
    groups: dict[tuple, list[int]] = {}
    for index, role in roles.items():
        row = table.iloc[index]
        key = (tuple(role), *(None if pd.isna(row[c]) else row[c]
                              for c in ("model", "rank", "alpha", "dropout", *EXTRA_COLUMNS)
                              if c in row))
        groups.setdefault(key, []).append(index)
    texts = []
    for key, indices in groups.items():
        numbers = [f"#{table['trial'].iloc[i]}" for i in indices]
        shown = ", ".join(numbers[:3]) + (f" +{len(numbers) - 3}" if len(numbers) > 3 else "")
        texts.append((indices[0], f"{shown} {', '.join(key[0])}"))
    params = table["trainable_params"].astype(float).to_numpy()
    return sorted(texts, key=lambda t: (params[t[0]], t[0]))


def label_levels(centres: list[float], widths: list[float]) -> list[int]:
    """For labels centred at `centres` (left to right) of `widths` on the x axis, the
    lowest level (0, 1, ...) on which each clears the labels already placed there."""
    placed: list[list[tuple[float, float]]] = []
    levels = []
    for centre, width in zip(centres, widths, strict=True):
        span = (centre - width / 2, centre + width / 2)
        level = next((k for k, spans in enumerate(placed)
                      if all(span[0] > b or span[1] < a for a, b in spans)), len(placed))
        if level == len(placed):
            placed.append([])
        placed[level].append(span)
        levels.append(level)
    return levels


def plot_many_trials(table: pd.DataFrame, path: Path, title: str) -> None:
    """Accuracy against parameters for a study of many trials: one small translucent dot per
    trial, spread sideways within its parameter count's column (seeded, so the picture is
    the same each time), the quartiles and the median of each column as a box; the best,
    the recommended and the baselines drawn over them with their 95% intervals and labelled
    (the only labels: 5,000 trial numbers would be a black smear)."""
    figure, axes = new_figure(size=(8, 5))
    baseline = is_baseline_row(table).to_numpy()
    tied = flag(table, "tied").to_numpy()
    recommended = flag(table, "recommended").to_numpy()
    has_verdict = "tied" in table
    params = table["trainable_params"].astype(float).to_numpy()
    accuracy = table["test_acc"].astype(float).to_numpy()
    half = column_halfwidth(params)
    lora = ~baseline
    rng = np.random.default_rng(0)
    spread = params * 10 ** (rng.uniform(-0.8, 0.8, len(params)) * half)
    dot_alpha = float(np.clip(12 / np.sqrt(max(lora.sum(), 1)), 0.12, 0.6))
    handles = []
    groups = ([(lora & tied, TIED, "LoRA trial, tied with the best"),
               (lora & ~tied, WORSE, "LoRA trial, worse than the best")] if has_verdict else
              [(lora, TIED, "LoRA trial")])
    for rows, colour, name in groups:
        if rows.any():
            axes.scatter(spread[rows], accuracy[rows], s=7, color=colour, alpha=dot_alpha,
                         linewidths=0, zorder=2)
            handles.append(Line2D([], [], marker="o", linestyle="", color=colour,
                                  markersize=5, label=name))
    boxed = False
    for count in np.unique(params[lora]):
        values = accuracy[lora & (params == count)]
        if len(values) < BOX_MIN:
            continue
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        left, right = count * 10 ** -half, count * 10 ** half
        axes.add_patch(Rectangle((left, q1), right - left, q3 - q1, facecolor="none",
                                 edgecolor="black", linewidth=1, zorder=3))
        axes.plot([left, right], [median, median], color="black", linewidth=1.5, zorder=3)
        boxed = True
    if boxed:
        handles.append(Patch(facecolor="none", edgecolor="black",
                             label=f"quartiles and median per parameter count\n"
                                   f"(columns of {BOX_MIN}+ trials)"))
    # The trials worth a name: the best LoRA trial (the table's first), the recommended and
    # the baselines, each at its own x (not spread) with its interval.
    named = np.zeros(len(table), dtype=bool)
    best = int(np.argmax(lora)) if lora.any() else None
    if best is not None:
        named[best] = True
    named |= recommended | baseline
    rows = table[named]
    bars = error_bars(rows, "test_acc")
    if bars is not None:
        axes.errorbar(params[named], accuracy[named], yerr=bars, fmt="none", ecolor="0.15",
                      elinewidth=1, capsize=3, zorder=4)
        handles.append(Line2D([], [], color="0.15", linewidth=1,
                              label="95% interval (of the named trials)"))
    if baseline.any():
        axes.scatter(params[baseline], accuracy[baseline], marker="s", s=50, color="C1",
                     edgecolors="black", linewidths=0.5, zorder=5)
        handles.append(Line2D([], [], marker="s", linestyle="", color="C1", markersize=7,
                              markeredgecolor="black", label="baseline (head only)"))
    if best is not None:
        axes.scatter(params[best], accuracy[best], marker="*", s=160, color="gold",
                     edgecolors="black", linewidths=0.7, zorder=6)
        handles.append(Line2D([], [], marker="*", linestyle="", color="gold", markersize=12,
                              markeredgecolor="black", label="best (validation accuracy)"))
    if recommended.any():
        axes.scatter(params[recommended], accuracy[recommended], s=220, facecolors="none",
                     edgecolors="crimson", linewidths=1.5, zorder=6)
        handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="none",
                              markeredgecolor="crimson", markeredgewidth=1.5, markersize=13,
                              label="recommended"))
    axes.set_xscale("log")
    low, high = axes.get_xlim()
    axes.set_xlim(low / 1.3, high * 1.3)
    axes.set_ylim(*SCORE_AXIS)
    roles = {index: [role for role, on in (("best", index == best),
                                           ("recommended", recommended[index]),
                                           ("baseline", baseline[index])) if on]
             for index in np.flatnonzero(named)}
    texts = name_labels(table, roles)
    # The labels go below the lowest dot where there is room (scores sit high on an axis
    # from 0), on the highest row where each clears the others; else right of the columns,
    # stacked clear of each other. A thin line joins each to its (first) trial's point.
    decades = float(np.log10(axes.get_xlim()[1] / axes.get_xlim()[0]))
    widths = [(len(text) * CHARACTER_INCHES + 0.1) * decades / AXES_INCHES for _, text in texts]
    levels = label_levels([float(np.log10(params[i])) for i, _ in texts], widths)
    floor = float(accuracy.min())
    if floor - 0.06 * (max(levels, default=0) + 1) > 0.02:
        places = [(params[i], floor - 0.06 * (level + 1), "center")
                  for (i, _), level in zip(texts, levels, strict=True)]
    else:
        heights = spread_labels([float(accuracy[i]) for i, _ in texts], gap=0.06)
        places = [(params[i] * 10 ** (2 * half + 0.02), at, "left")
                  for (i, _), at in zip(texts, heights, strict=True)]
    for (index, text), (x, at, align) in zip(texts, places, strict=True):
        axes.annotate(text, (params[index], accuracy[index]), xytext=(x, at),
                      fontsize=7, ha=align, va="center", zorder=7,
                      bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "0.5",
                            "alpha": 0.9},
                      arrowprops={"arrowstyle": "-", "lw": 0.6, "color": "0.3"})
    axes.set_xlabel("trainable parameters (log scale; a count's dots spread sideways)")
    axes.set_ylabel("test accuracy (axis from 0 to 1)")
    axes.grid(alpha=0.3)
    axes.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                borderaxespad=0)
    named_roles = [role for role, any_ in (("best", best is not None),
                                           ("recommended", recommended.any()),
                                           ("baselines", baseline.any())) if any_]
    axes.set_title(f"{title}\n{len(table):,} trials, a dot each; named: "
                   f"{', '.join(named_roles)}", fontsize=10)
    save_figure(figure, path)


def copy_best_confusion(study: optuna.Study, table: pd.DataFrame,
                        store: optuna.artifacts.FileSystemArtifactStore, path: Path) -> bool:
    storage = study_storage(study)  # one trial read, not the study's every trial
    best = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(
        study_id(study), int(table.iloc[0]["trial"])))
    artifact = best.user_attrs.get("artifacts", {}).get("confusion_matrix.png")
    if artifact is None:
        return False
    try:
        with store.open_reader(artifact) as reader:
            path.write_bytes(reader.read())
    except (ArtifactNotFound, ValueError):  # ValueError: an id that leads out of the store
        return False
    return True


FORMATS = {"alpha": "{:g}", "dropout": "{:.3g}", "trainable_pct": "{:.3f}", "val_sd": "{:.4f}",
           "test_sd": "{:.4f}", **{column: "{:.4f}" for column in METRICS}}


def markdown_table(table: pd.DataFrame) -> str:
    def cell(column: str, value) -> str:
        if isinstance(value, list):
            return format_interval(value, places=4)
        if isinstance(value, bool):
            return "yes" if value else ""
        if value is None or pd.isna(value):
            return "-"
        if column == "lr":
            return format_lr(value)
        return FORMATS.get(column, "{}").format(value)

    return markdown.table(list(table.columns),
                          [[cell(c, v) for c, v in zip(table.columns, row, strict=True)]
                           for row in table.itertuples(index=False)])


def bounded_table(table: pd.DataFrame, what: str, everything: str) -> list[str]:
    """A Markdown table of at most MAX_TABLE_ROWS rows (and the baselines and recommended
    rows below them), after a line saying what it leaves out and where to find it, if
    anything."""
    shown, left_out = top_rows(table, MAX_TABLE_ROWS)
    if not left_out:
        return [markdown_table(shown)]
    note = shown_note(shown, len(table), MAX_TABLE_ROWS, what, "after them")
    return [f"The table shows {note} ({left_out:,} left out; {everything}).", "",
            markdown_table(shown)]


def numbered(noun: str, numbers: list[int]) -> str:
    """"trial 4" or "trials 4, 9, 15": the recommendation names one trial, or its seeds'."""
    return f"{noun}{'' if len(numbers) == 1 else 's'} {', '.join(map(str, numbers))}"


def verdict_text(verdict: Verdict | str, mattered: list[str] | None = None,
                 race=None) -> list[str]:
    """The report's answer: tied set, recommendation, baseline gap, test-set check, where a
    racing study's `race` (`search.results.race.study_race`) stands; then `mattered`, the
    lines of what mattered (`search.results.importance.importance_lines`)."""
    mattered = [f"- {line}" for line in mattered or []]
    if isinstance(verdict, str):
        return [f"No tie test or intervals: {verdict.removeprefix('no tie test: ')}.",
                *([""] if mattered else []), *mattered]
    chosen = verdict.recommended
    lines = [f"**Recommended: {verdict.describe(chosen)}** ({chosen.trainable_params:,} trainable "
             f"parameters; {numbered('trial', chosen.numbers)}). Intervals are 95% "
             "Wilson intervals per trial; *tied* means a paired test on the validation images "
             "could not tell the trial's configuration from the best's (Holm-corrected, 0.05).",
             ""]
    lines += [f"- {line}" for line in [*closing_lines(verdict), *race_lines(race, verdict)]]
    lines += mattered
    if verdict.seeds > 1:
        configurations = (configuration_table(verdict, race).drop(columns=["model", "method"])
                          .assign(trials=lambda f: f["trials"].map(
                              lambda t: ", ".join(map(str, t)))))
        lines += ["", "Per configuration over its seeds (mean, sd; intervals over seeds x "
                      "examples, by bootstrap):", "",
                  *bounded_table(configurations, "configuration",
                                 "`search leaderboard --by configuration` lists them all")]
    return lines


def write_report(study: optuna.Study, store: optuna.artifacts.FileSystemArtifactStore,
                 folder: Path) -> list[str]:
    """Write every file of the report into `folder`; their names."""
    trials = all_trials(study)
    table, verdict = report_table(study, trials=trials)
    mattered = importance_lines(study_importances(study, trials))
    race = study_race(study, trials)
    folder.mkdir(parents=True, exist_ok=True)
    title = f"study {study.study_name}"
    table.to_csv(folder / "report.csv", index=False)
    plot_metrics(table, folder / "metrics.png",
                 f"{title}: metrics per trial (val acc; the rest on test"
                 f"{'' if isinstance(verdict, str) else '; error bars: 95% intervals'})")
    plot_accuracy_vs_params(table, folder / "accuracy_vs_params.png",
                            f"{title}: accuracy against trainable parameters")
    has_confusion = copy_best_confusion(study, table, store,
                                        folder / "best_confusion_matrix.png")
    best = table.iloc[0]
    text = [f"# {title}", "",
            f"{len(table):,} completed {'trial' if len(table) == 1 else 'trials'}, best "
            "validation accuracy first. Best: trial "
            f"{best['trial']} ({best['method']}), val acc {best['val_acc']:.4f}, test acc "
            f"{best['test_acc']:.4f}.", "", *verdict_text(verdict, mattered, race), "",
            *bounded_table(table, "trial", "report.csv has every trial"), "",
            "![metrics per trial](metrics.png)", "",
            "![accuracy against trainable parameters](accuracy_vs_params.png)", ""]
    if has_confusion:
        text += [f"Best trial's test confusion matrix (trial {best['trial']}):", "",
                 "![best trial's confusion matrix](best_confusion_matrix.png)", ""]
    (folder / "report.md").write_text("\n".join(text))
    names = ["report.md", "report.csv", "metrics.png", "accuracy_vs_params.png"]
    return names + (["best_confusion_matrix.png"] if has_confusion else [])
