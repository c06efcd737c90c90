"""`search report`: the study-level comparison the paper shows, as files in one folder.

    report.md                  the table below, the verdict, and the pictures
    report.csv                 one row per completed trial, best validation accuracy first:
                               method, model, rank, alpha, dropout, val_acc, test_acc, f1,
                               auc_micro, auc_macro, trainable_pct, trainable_params, and with
                               the study's verdict val_ci, test_ci (95% Wilson), tied,
                               recommended (`search.results.verdict`)
    metrics.png                the five metrics of every trial, side by side (axis from 0),
                               with the accuracies' 95% intervals as error bars
    accuracy_vs_params.png     test accuracy (axis from 0) with its 95% interval against
                               trainable parameters (log scale), each point labelled with its
                               trial number; the trials tied with the best filled, the rest
                               hollow, the recommended one ringed
    best_confusion_matrix.png  the best trial's confusion matrix (from its artifacts)
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
from optuna.artifacts.exceptions import ArtifactNotFound

from search.results import markdown
from search.results.figures import new_figure, save_figure
from search.results.leaderboard import configuration_frame, leaderboard, with_verdict
from search.results.verdict import NoVerdict, Verdict, assess, closing_lines
from search.study.open_study import StudyError, stored_train_spec

METRICS = {"val_acc": "val acc", "test_acc": "test acc", "f1": "weighted F1",
           "auc_micro": "AUC micro", "auc_macro": "AUC macro"}
COLUMNS = ["trial", "method", "model", "rank", "alpha", "dropout", *METRICS, "trainable_pct",
           "trainable_params"]
VERDICT_COLUMNS = ["val_ci", "test_ci", "tied", "recommended"]


def report_table(study: optuna.Study) -> tuple[pd.DataFrame, Verdict | str]:
    """The completed trials, best first, with what each one is; and the study's verdict, or
    why it has none (then the table has no interval or tie columns)."""
    frame = leaderboard(study)
    if not (frame["state"] == "COMPLETE").any():
        raise StudyError(f"study {study.study_name!r} has no completed trial to report")
    columns = COLUMNS
    try:
        verdict: Verdict | str = assess(study)
        frame = with_verdict(frame, verdict)
        columns = [*COLUMNS, *VERDICT_COLUMNS]
    except NoVerdict as why:
        verdict = str(why)
    frame = frame[frame["state"] == "COMPLETE"]
    spec = stored_train_spec(study)
    method = frame["baseline"].map({True: "baseline (head only)",
                                    False: f"LoRA on {spec.targets}"})
    table = frame.assign(trial=frame["number"], method=method)[columns].reset_index(drop=True)
    return table, verdict


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
    return f"#{row['trial']} r{row['rank']} a{row['alpha']:g} d{row['dropout']:.2g}"


# Every score here is in [0, 1]: its axis runs from 0 to 1, so bar lengths and distances
# compare as the numbers do (an axis starting near the lowest score makes small gaps look
# large). The axis label says so; the exact values are written on the bars.
SCORE_AXIS = (0.0, 1.0)
MAX_STACKED = 20  # labels in one column of accuracy_vs_params.png before they are merged


def plot_metrics(table: pd.DataFrame, path: Path, title: str) -> None:
    """One group of horizontal bars per trial, best first from the top: the trial labels
    read horizontally at the left whatever their length, and the legend sits outside the
    axes, to the right, clear of labels and bars."""
    labels = [label(row) for _, row in table.iterrows()]
    height = 0.8 / len(METRICS)
    figure, axes = new_figure(size=(9.5, 0.9 * len(table) + 1.6))
    for index, (column, name) in enumerate(METRICS.items()):
        positions = [i + (index - (len(METRICS) - 1) / 2) * height for i in range(len(table))]
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
    axes.set_yticks(range(len(table)), labels, fontsize=8)
    axes.set_ylim(len(table) - 0.5, -0.5)  # best (first row) at the top
    axes.grid(axis="x", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    axes.set_title(title, fontsize=10)
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


def plot_accuracy_vs_params(table: pd.DataFrame, path: Path, title: str) -> None:
    figure, axes = new_figure(size=(8, 5))
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
    for _, group in table.groupby("trainable_params", sort=False):
        xs = group["trainable_params"].astype(float).tolist()
        ys = group["test_acc"].astype(float).tolist()
        numbers = [f"#{number}" for number in group["trial"]]
        if len(group) > MAX_STACKED:
            axes.annotate(f"{len(group)} trials", (xs[0], sum(ys) / len(ys)),
                          xytext=(xs[0] * 1.08, sum(ys) / len(ys)), fontsize=7, va="center")
            continue
        for x, y, text, at in zip(xs, ys, numbers, spread_labels(ys, gap=0.035), strict=True):
            moved = abs(at - y) > 0.005
            axes.annotate(text, (x, y), xytext=(x * 1.08, at), fontsize=7, va="center",
                          arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5"}
                          if moved else None)
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


def copy_best_confusion(study: optuna.Study, table: pd.DataFrame,
                        store: optuna.artifacts.FileSystemArtifactStore, path: Path) -> bool:
    best = study.trials[int(table.iloc[0]["trial"])]
    artifact = best.user_attrs.get("artifacts", {}).get("confusion_matrix.png")
    if artifact is None:
        return False
    try:
        with store.open_reader(artifact) as reader:
            path.write_bytes(reader.read())
    except ArtifactNotFound:
        return False
    return True


FORMATS = {"alpha": "{:g}", "dropout": "{:.3g}", "trainable_pct": "{:.3f}", "val_sd": "{:.4f}",
           "test_sd": "{:.4f}", **{column: "{:.4f}" for column in METRICS}}


def markdown_table(table: pd.DataFrame) -> str:
    def cell(column: str, value) -> str:
        if isinstance(value, list):
            return f"{value[0]:.4f}-{value[1]:.4f}"
        if isinstance(value, bool):
            return "yes" if value else ""
        if value is None or pd.isna(value):
            return "-"
        return FORMATS.get(column, "{}").format(value)

    return markdown.table(list(table.columns),
                          [[cell(c, v) for c, v in zip(table.columns, row, strict=True)]
                           for row in table.itertuples(index=False)])


def verdict_text(verdict: Verdict | str) -> list[str]:
    """The report's answer: tied set, recommendation, baseline gap, test-set check."""
    if isinstance(verdict, str):
        return [f"No tie test or intervals: {verdict.removeprefix('no tie test: ')}."]
    chosen = verdict.recommended
    lines = [f"**Recommended: {chosen.describe()}** ({chosen.trainable_params:,} trainable "
             f"parameters; trials {', '.join(map(str, chosen.numbers))}). Intervals are 95% "
             "Wilson intervals per trial; *tied* means a paired test on the validation images "
             "could not tell the trial's configuration from the best's (Holm-corrected, 0.05).",
             ""]
    lines += [f"- {line}" for line in closing_lines(verdict)]
    if verdict.seeds > 1:
        lines += ["", "Per configuration over its seeds (mean, sd; intervals over seeds x "
                      "examples, by bootstrap):", "",
                  markdown_table(configuration_frame(verdict).drop(columns=["model", "method"])
                                 .assign(trials=lambda f: f["trials"].map(
                                     lambda t: ", ".join(map(str, t)))))]
    return lines


def write_report(study: optuna.Study, store: optuna.artifacts.FileSystemArtifactStore,
                 folder: Path) -> list[str]:
    """Write every file of the report into `folder`; their names."""
    table, verdict = report_table(study)
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
            f"{len(table)} completed trials, best validation accuracy first. Best: trial "
            f"{best['trial']} ({best['method']}), val acc {best['val_acc']:.4f}, test acc "
            f"{best['test_acc']:.4f}.", "", *verdict_text(verdict), "", markdown_table(table), "",
            "![metrics per trial](metrics.png)", "",
            "![accuracy against trainable parameters](accuracy_vs_params.png)", ""]
    if has_confusion:
        text += [f"Best trial's test confusion matrix (trial {best['trial']}):", "",
                 "![best trial's confusion matrix](best_confusion_matrix.png)", ""]
    (folder / "report.md").write_text("\n".join(text))
    names = ["report.md", "report.csv", "metrics.png", "accuracy_vs_params.png"]
    return names + (["best_confusion_matrix.png"] if has_confusion else [])
