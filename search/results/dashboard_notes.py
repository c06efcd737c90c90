"""What the dashboard shows of a study: the leaderboard as the study's note, the accuracy
against trainable parameters chart as a study artifact, and on each finished trial's note one
line on what it is and how it ended, with what the study's verdict says of it.

optuna-dashboard lists trials one at a time (its trial-table page renders blank in 0.21), but
it renders a note's Markdown, tables included, on the study's Note page and on top of each
trial's page. So the leaderboard lives there. Every worker refreshes it after each trial or
pack it finishes (`refresh_dashboard`), under the study's "notes" lock
(`search.study.enqueue_lock.study_lock`): two workers finishing at once write one after the
other, the second from a fresh read, so a slower writer never overwrites a newer leaderboard
with an older one. A note or the chart is written only when its content changed.

Notes are dashboard notes (`optuna_dashboard.save_note`): versioned study system attributes.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any

import optuna
import optuna_dashboard
import pandas as pd
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna_dashboard._note import get_note_from_system_attrs

from search.results import markdown
from search.results.leaderboard import configuration_frame, study_board
from search.results.verdict import Configuration, Verdict, describe_p
from search.study.enqueue_lock import study_lock

CHART_ATTR = "leaderboard_chart"  # study user attribute: the current chart's artifact id
CHART_FILE = "accuracy_vs_params.png"
FINISHED = ("COMPLETE", "PRUNED", "FAIL")


def baseline_note(model: str) -> str:
    return (f"**Baseline** ({model}, head only): no LoRA; the pretrained backbone is frozen "
            "and only the classification head is trained.")


def describe_row(row: dict[str, Any]) -> str:
    if row["baseline"]:
        return f"baseline {row['model']} (head only)"
    return (f"LoRA r={row['rank']} alpha={row['alpha']:g} dropout={row['dropout']:g} on "
            f"{row['model']}")


def present(value: Any) -> bool:
    return value is not None and not pd.isna(value)


def trial_line(row: dict[str, Any], epochs: int | None, pruner: str | None) -> str:
    """One line: what the trial is and how it ended."""
    what = f"**{describe_row(row)}**"
    note = f"; {row['note']}" if row["note"] else ""
    if row["state"] == "COMPLETE":
        known = {key: row.get(key) for key in ("val_acc", "test_acc", "trainable_pct",
                                               "trainable_params", "train_seconds")}
        parts = [f"{key} {known[key]:.4f}" for key in ("val_acc", "test_acc")
                 if present(known[key])]
        if present(known["trainable_pct"]) and present(known["trainable_params"]):
            parts.append(f"{known['trainable_pct']:.3f}% trainable "
                         f"({known['trainable_params']:,} parameters)")
        if present(known["train_seconds"]):
            parts.append(f"{known['train_seconds']:.1f} s")
        return f"{what}: {', '.join(['complete', *parts])}{note}."
    if row["state"] == "PRUNED":
        of = f" of {epochs}" if epochs else ""
        by = f"the {pruner} pruner" if pruner and pruner != "none" else "the pruner"
        reached = f" at val_acc {row['val_acc']:.4f}" if present(row["val_acc"]) else ""
        return (f"{what}: pruned by {by} after epoch {row['epochs']}{of}{reached}: below what "
                f"the study's other trials had reached by then{note}.")
    return f"{what}: failed: {row['note'] or 'no error recorded'}."


def verdict_line(verdict: Verdict, configuration: Configuration) -> str:
    """What the verdict says of every trial of `configuration`."""
    best, test = verdict.best, verdict.ties[configuration.key]
    seeds = (f" (mean over its {len(configuration.trials)} seeds: trials "
             f"{', '.join(map(str, configuration.numbers))})" if len(configuration.trials) > 1
             else "")
    if configuration is best:
        line = f"**Best** validation accuracy {best.val_accs.mean():.4f}{seeds}."
    elif configuration.baseline:
        gap = 100 * (best.val_accs.mean() - configuration.val_accs.mean())
        where = "below" if gap >= 0 else "above"
        line = (f"{abs(gap):.1f} pp {where} the best LoRA configuration ({best.describe()}) "
                f"on validation, {describe_p(test.p_value)} (paired test"
                f"{'; not told apart from it' if test.tied else ''}){seeds}.")
    else:
        line = (f"{'Tied with' if test.tied else 'Worse than'} the best ({best.describe()}): "
                f"{describe_p(test.p_value)}, Holm-adjusted {test.p_holm:.2g}{seeds}.")
    if configuration is verdict.recommended:
        tied = sum(verdict.tied(c) for c in verdict.configurations if not c.baseline)
        line += (f" **Recommended**: the fewest trainable parameters "
                 f"({configuration.trainable_params:,}) among the {tied} LoRA configurations "
                 "tied with the best (`search export --pick recommended`).")
    return line


def trial_notes(study: optuna.Study, frame: pd.DataFrame, verdict: Verdict | None
                ) -> dict[int, str]:
    """Each finished trial's note by trial number."""
    epochs = study.user_attrs.get("train_spec", {}).get("epochs")
    pruner = study.user_attrs.get("tpe", {}).get("pruner")
    by_number = ({t.number: c for c in verdict.configurations for t in c.trials}
                 if verdict is not None else {})
    notes = {}
    for row in frame.to_dict("records"):
        if row["state"] not in FINISHED:
            continue
        parts = [baseline_note(row["model"])] if row["baseline"] else []
        parts.append(trial_line(row, epochs, pruner))
        if row["number"] in by_number:
            parts.append(verdict_line(verdict, by_number[row["number"]]))
        notes[row["number"]] = "\n\n".join(parts)
    return notes


NOTE_COLUMNS = {"number": "#", "state": "state", "method": "method", "model": "model",
                "rank": "rank", "alpha": "alpha", "dropout": "dropout", "seed": "seed",
                "epochs": "epochs", "val_acc": "val_acc", "val_ci": "val 95%",
                "test_acc": "test_acc", "test_ci": "test 95%",
                "trainable_params": "trainable", "train_seconds": "seconds",
                "tied": "tied", "recommended": "recommended", "note": "note"}


def markdown_cell(column: str, value: Any) -> str:
    if isinstance(value, list):
        return f"{value[0]:.3f}-{value[1]:.3f}"
    if isinstance(value, bool):
        return {"baseline": "yes", "tied": "yes", "recommended": "**yes**"}.get(column, "") \
            if value else ""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "-"
    if column in ("val_acc", "test_acc", "val_sd", "test_sd"):
        return f"{value:.4f}"
    if column == "alpha":
        return f"{value:g}"
    if column == "dropout":
        return f"{value:.3g}"
    if column == "train_seconds":
        return f"{value:.1f}"
    if column == "trainable_params":
        return f"{value:,}"
    return str(value)


def markdown_table(frame: pd.DataFrame, columns: dict[str, str]) -> list[str]:
    shown = [c for c in columns if c in frame]
    return markdown.table([columns[c] for c in shown],
                          [[markdown_cell(c, row[c]) for c in shown]
                           for row in frame.to_dict("records")]).splitlines()


def leaderboard_note(study: optuna.Study, frame: pd.DataFrame, lines: list[str],
                     verdict: Verdict | None, chart: str | None) -> str:
    """The study's note: the verdict's lines, every trial best first (with seeds, every
    configuration first), then the chart."""
    text = [f"## Leaderboard of study {study.study_name}", "",
            "Every trial, best validation accuracy first, the baseline marked; `tied`: not told "
            "apart from the best by a paired test on the validation images (Holm-corrected); "
            "intervals: 95% Wilson. Refreshed by the workers after each trial they finish "
            "(`search leaderboard --note` rewrites it).", ""]
    text += [f"- {line}" for line in lines] + [""]
    if verdict is not None and verdict.seeds > 1:
        text += ["### Configurations over their seeds", ""]
        text += markdown_table(configuration_frame(verdict).drop(columns=["model", "method"])
                               .assign(trials=lambda f: f["trials"].map(
                                   lambda t: ", ".join(map(str, t)))),
                               {"baseline": "baseline", "rank": "rank", "alpha": "alpha",
                                "dropout": "dropout", "seeds": "seeds", "val_acc": "val_acc",
                                "val_sd": "val sd", "val_ci": "val 95%", "test_acc": "test_acc",
                                "test_ci": "test 95%", "tied": "tied",
                                "recommended": "recommended", "trainable_params": "trainable",
                                "trials": "trials"})
        text += ["", "### Trials", ""]
    marked = frame.assign(method=frame["baseline"].map({True: "**baseline** (head)",
                                                         False: "LoRA"}))
    text += markdown_table(marked, NOTE_COLUMNS)
    if chart is not None:
        text += ["", f"![test accuracy against trainable parameters](/artifacts/"
                     f"{study._study_id}/{chart})"]
    return "\n".join(text) + "\n"


def upload_chart(study: optuna.Study, store: optuna.artifacts.FileSystemArtifactStore) -> str:
    """The report's accuracy-versus-parameters chart of a study with a completed trial, as a
    study artifact in place of the last one (removed as the dashboard removes an artifact:
    the file, and its record set to null); its id."""
    from search.results.report import plot_accuracy_vs_params, report_table  # matplotlib

    table, _ = report_table(study)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / CHART_FILE
        plot_accuracy_vs_params(table, path, f"study {study.study_name}: test accuracy "
                                "against trainable parameters")
        artifact = optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(path),
                                                    study_or_trial=study, mimetype="image/png")
    old = study.user_attrs.get(CHART_ATTR)
    study.set_user_attr(CHART_ATTR, artifact)
    if old:
        with contextlib.suppress(ArtifactNotFound):
            store.remove(old)
        study._storage.set_study_system_attr(study._study_id, f"artifacts:{old}",
                                             json.dumps(None))
    return artifact


def refresh_dashboard(study: optuna.Study, store: optuna.artifacts.FileSystemArtifactStore,
                      url: str) -> int:
    """Rewrite the study's leaderboard note (with a new chart when it changed) and every
    finished trial's note that changed, under the study's notes lock; how many notes were
    written."""
    with study_lock(study._storage, url, study.study_name, "notes"):
        board = study_board(study, by="trial")
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        attrs = study._storage.get_study_system_attrs(study._study_id)
        written = 0
        for number, body in trial_notes(study, board.frame, board.verdict).items():
            trial_id = trials[number]._trial_id
            if get_note_from_system_attrs(attrs, trial_id)["body"] != body:
                optuna_dashboard.save_note(optuna.Trial(study, trial_id), body)
                written += 1
        current = get_note_from_system_attrs(attrs, None)["body"]
        chart = study.user_attrs.get(CHART_ATTR)
        note = leaderboard_note(study, board.frame, board.lines, board.verdict, chart)
        if note != current:
            if (board.frame["state"] == "COMPLETE").any():
                chart = upload_chart(study, store)
                note = leaderboard_note(study, board.frame, board.lines, board.verdict, chart)
            optuna_dashboard.save_note(study, note)
            written += 1
        return written
