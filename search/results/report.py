"""`search report`: the study-level comparison the paper shows, as files in one folder.

    report.md                  the table below, and the pictures
    report.csv                 one row per completed trial, best validation accuracy first:
                               method, model, rank, alpha, dropout, val_acc, test_acc, f1,
                               auc_micro, auc_macro, trainable_pct, trainable_params
    metrics.png                the five metrics of every trial, side by side
    accuracy_vs_params.png     test accuracy against trainable parameters (log scale)
    best_confusion_matrix.png  the best trial's confusion matrix (from its artifacts)
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
from optuna.artifacts.exceptions import ArtifactNotFound

from search.figures import new_figure, save_figure
from search.leaderboard import leaderboard
from search.studies import StudyError, stored_train_spec

METRICS = {"val_acc": "val acc", "test_acc": "test acc", "f1": "weighted F1",
           "auc_micro": "AUC micro", "auc_macro": "AUC macro"}
COLUMNS = ["trial", "method", "model", "rank", "alpha", "dropout", *METRICS, "trainable_pct",
           "trainable_params"]


def report_table(study: optuna.Study) -> pd.DataFrame:
    """The completed trials, best first, with what each one is."""
    frame = leaderboard(study)
    frame = frame[frame["state"] == "COMPLETE"]
    if frame.empty:
        raise StudyError(f"study {study.study_name!r} has no completed trial to report")
    spec = stored_train_spec(study)
    method = frame["baseline"].map({True: "baseline (head only)",
                                    False: f"LoRA on {spec.targets}"})
    return frame.assign(trial=frame["number"], method=method)[COLUMNS].reset_index(drop=True)


def label(row: pd.Series) -> str:
    if pd.isna(row["rank"]):
        return f"#{row['trial']} {row['model']} head"
    return f"#{row['trial']} r{row['rank']} a{row['alpha']:g} d{row['dropout']:.2g}"


def plot_metrics(table: pd.DataFrame, path: Path, title: str) -> None:
    labels = [label(row) for _, row in table.iterrows()]
    width = 0.8 / len(METRICS)
    figure, axes = new_figure(size=(max(7, 0.9 * len(table) + 3), 4.8))
    for index, (column, name) in enumerate(METRICS.items()):
        positions = [i + (index - (len(METRICS) - 1) / 2) * width for i in range(len(table))]
        axes.bar(positions, table[column].astype(float), width, label=name)
    low = float(table[list(METRICS)].astype(float).min().min())
    axes.set_ylim(max(0.0, low - 0.05), 1.0)
    axes.set_xticks(range(len(table)), labels, rotation=45, ha="right", fontsize=8)
    axes.set_ylabel("score")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8, ncols=len(METRICS), loc="upper center",
                bbox_to_anchor=(0.5, -0.28))
    axes.set_title(title)
    save_figure(figure, path)


def plot_accuracy_vs_params(table: pd.DataFrame, path: Path, title: str) -> None:
    figure, axes = new_figure(size=(7, 5))
    baseline = table["rank"].isna()
    for rows, marker, name in ((table[~baseline], "o", "LoRA"),
                               (table[baseline], "s", "baseline (head only)")):
        axes.scatter(rows["trainable_params"].astype(float), rows["test_acc"].astype(float),
                     marker=marker, s=60, label=name)
        for _, row in rows.iterrows():
            axes.annotate(label(row), (float(row["trainable_params"]), float(row["test_acc"])),
                          fontsize=7, xytext=(4, 3), textcoords="offset points")
    axes.set_xscale("log")
    axes.set_xlabel("trainable parameters (log scale)")
    axes.set_ylabel("test accuracy")
    axes.grid(alpha=0.3)
    axes.legend()
    axes.set_title(title)
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


FORMATS = {"alpha": "{:g}", "dropout": "{:.3g}", "trainable_pct": "{:.3f}",
           **{column: "{:.4f}" for column in METRICS}}


def markdown_table(table: pd.DataFrame) -> str:
    def cell(column: str, value) -> str:
        if value is None or pd.isna(value):
            return "-"
        return FORMATS.get(column, "{}").format(value)

    lines = ["| " + " | ".join(table.columns) + " |",
             "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(c, v) for c, v in zip(table.columns, row, strict=True))
              + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def write_report(study: optuna.Study, store: optuna.artifacts.FileSystemArtifactStore,
                 folder: Path) -> list[str]:
    """Write every file of the report into `folder`; their names."""
    table = report_table(study)
    folder.mkdir(parents=True, exist_ok=True)
    title = f"study {study.study_name}"
    table.to_csv(folder / "report.csv", index=False)
    plot_metrics(table, folder / "metrics.png",
                 f"{title}: metrics per trial (val acc; the rest on test)")
    plot_accuracy_vs_params(table, folder / "accuracy_vs_params.png",
                            f"{title}: accuracy against trainable parameters")
    has_confusion = copy_best_confusion(study, table, store,
                                        folder / "best_confusion_matrix.png")
    best = table.iloc[0]
    text = [f"# {title}", "",
            f"{len(table)} completed trials, best validation accuracy first. Best: trial "
            f"{best['trial']} ({best['method']}), val acc {best['val_acc']:.4f}, test acc "
            f"{best['test_acc']:.4f}.", "", markdown_table(table), "",
            "![metrics per trial](metrics.png)", "",
            "![accuracy against trainable parameters](accuracy_vs_params.png)", ""]
    if has_confusion:
        text += [f"Best trial's test confusion matrix (trial {best['trial']}):", "",
                 "![best trial's confusion matrix](best_confusion_matrix.png)", ""]
    (folder / "report.md").write_text("\n".join(text))
    names = ["report.md", "report.csv", "metrics.png", "accuracy_vs_params.png"]
    return names + (["best_confusion_matrix.png"] if has_confusion else [])
