"""What the dashboard shows of a study: the leaderboard as the study's note (the verdict, the
top rows, a link to the full leaderboard as a CSV study artifact, the accuracy against
trainable parameters chart as another), and on each finished trial's note what the trial is
and how it ended.

optuna-dashboard lists trials one at a time (its trial-table page renders blank in 0.21), but
it renders a note's Markdown, tables included, on the study's Note page and on top of each
trial's page. So the leaderboard lives there, kept small whatever the study's size (at most
`MAX_NOTE_BYTES`: a browser must render it), and a trial's note holds nothing that moves when
other trials finish (its standing, tied or recommended, is on the study's note), so a finished
trial's note is written once.

Refreshing never holds a worker. A worker that finished a trial or pack marks the board dirty
(`mark_dirty`: one write) and refreshes only if no other process is refreshing
(`refresh_when_free`, the study's "notes" lock taken without waiting); the one refreshing
looks at the mark again before it lets go of the lock, and once more after, so a trial that
finished meanwhile is always shown by someone (a bounded number of rounds; a worker whose
queue is empty refreshes, waiting for the lock, if the board is still dirty:
`refresh_if_dirty`). A refresh reads the trials after the mark it clears, so it shows every
trial that finished before that mark was set.

Notes are written in optuna-dashboard's stored format by `search.results.note_store`, at a
cost that does not grow with the study; a process remembers what it last wrote or read of
each trial's note (`DashboardMemory`) and writes only what changed.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial

from objectives.spec import LoraParams
from search.results import markdown, note_store
from search.results.intervals import format_interval
from search.results.leaderboard import STATE_ORDER, Board, configuration_table, render, study_board
from search.results.point_columns import format_lr, own_parts
from search.results.verdict import Verdict, VerdictCache
from search.study.contained_store import is_artifact_id
from search.study.enqueue_lock import study_lock, try_study_lock
from search.study.optuna_private import study_id, study_storage, trial_id
from search.study.study_record import LEADERBOARD_CHART, LEADERBOARD_CSV, StudyRecord
from search.study.trials import trial_point

CHART_FILE = "accuracy_vs_params.png"
CSV_FILE = "leaderboard.csv"
FINISHED = ("COMPLETE", "PRUNED", "FAIL")
# Study system attributes: the token of the last finished trial's mark, and the mark the last
# refresh showed. Equal: the board is current.
DIRTY_ATTR = "search:leaderboard_dirty"
CLEAN_ATTR = "search:leaderboard_clean"
MAX_NOTE_BYTES = 64 * 1024
TOP_ROWS = 50  # rows of the study's note's table (every baseline and the recommended besides)
NAMED_TIED = 10  # tied configurations the note names one by one
MAX_CELL = 160  # characters of a table cell (an error message) in the study's note
MAX_LINE = 1000  # characters of one of the verdict's lines in the study's note
MAX_REFRESHES = 2  # refreshes one call makes at most while trials keep finishing
BULK_READ = 64  # notes not in memory beyond which all the study's notes are read in one query


@dataclass
class DashboardMemory:
    """What one process keeps between its refreshes of one study (a worker: one for its whole
    life): the verdict's work, and each trial's note as it last wrote or read it (by trial
    id; a complete or pruned trial's note only changes with the trial itself, so it is not
    read again)."""

    verdicts: VerdictCache = field(default_factory=lambda: VerdictCache(threads=1))
    notes: dict[int, str] = field(default_factory=dict)
    # How a refresh reads the study's trials: a worker through its study's cached storage
    # (which reads only what changed); a command that refreshes once, all at once
    # (`search.study.trial_reader.all_trials`).
    read_trials: Callable[[optuna.Study], list[FrozenTrial]] = field(
        default=lambda study: study.get_trials(deepcopy=False))


def baseline_note(model: str) -> str:
    return (f"**Baseline** ({model}, head only): no LoRA; the pretrained backbone is frozen "
            "and only the classification head is trained.")


STANDING = ("Where it stands among the others (tied with the best, recommended) is on the "
            "study's Note page: the leaderboard.")


def describe_row(row: dict[str, Any], point: LoraParams | None = None) -> str:
    """What the trial of `row` is; with its `point`, what the point sets itself beside rank,
    alpha and dropout (lr, layers, variant: a trial's note says nothing that depends on the
    other trials, `search.results.point_columns.own_parts`)."""
    if row["baseline"]:
        return f"baseline {row['model']} (head only)"
    extra = "".join(f" {part.replace(' ', '=', 1) if ' ' in part else part}"
                    for part in own_parts(point))
    return (f"LoRA r={row['rank']} alpha={row['alpha']:g} dropout={row['dropout']:g}{extra} on "
            f"{row['model']}")


def present(value: Any) -> bool:
    return value is not None and not pd.isna(value)


def trial_line(row: dict[str, Any], epochs: int | None, pruner: str | None,
               point: LoraParams | None = None) -> str:
    """One line: what the trial is and how it ended."""
    what = f"**{describe_row(row, point)}**"
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


def trial_notes(study: optuna.Study, frame: pd.DataFrame,
                points: dict[int, LoraParams | None] | None = None) -> dict[int, str]:
    """Each finished trial's note by trial number: what it is and how it ended, nothing that
    another trial's end would change. `points`: each trial's LoRA point by number, for what
    it sets beside rank, alpha and dropout."""
    record = StudyRecord(study)
    epochs, pruner = record.spec_epochs, record.tpe_pruner
    points = points or {}
    notes = {}
    for row in frame.to_dict("records"):
        if row["state"] not in FINISHED:
            continue
        parts = [baseline_note(row["model"])] if row["baseline"] else []
        parts += [trial_line(row, epochs, pruner, points.get(row["number"])), STANDING]
        notes[row["number"]] = "\n\n".join(parts)
    return notes


NOTE_COLUMNS = {"number": "#", "state": "state", "method": "method", "model": "model",
                "rank": "rank", "alpha": "alpha", "dropout": "dropout", "lr": "lr",
                "targets": "targets", "scaling": "scaling", "seed": "seed",
                "epochs": "epochs", "val_acc": "val_acc", "val_ci": "val 95%",
                "test_acc": "test_acc", "test_ci": "test 95%",
                "trainable_params": "trainable", "train_seconds": "seconds",
                "tied": "tied", "recommended": "recommended", "note": "note"}
# lr, targets, scaling: only where the board has them (`search.results.point_columns`).
CONFIGURATION_COLUMNS = {"baseline": "baseline", "rank": "rank", "alpha": "alpha",
                         "dropout": "dropout", "lr": "lr", "targets": "targets",
                         "scaling": "scaling", "seeds": "seeds", "race": "race",
                         "val_acc": "val_acc", "val_sd": "val sd", "val_ci": "val 95%",
                         "test_acc": "test_acc",
                         "test_ci": "test 95%", "tied": "tied", "recommended": "recommended",
                         "trainable_params": "trainable", "trials": "trials"}


def clip(text: str, limit: int) -> str:
    """One line of at most `limit` characters (an error message can be long)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def markdown_cell(column: str, value: Any) -> str:
    if isinstance(value, list):
        return format_interval(value)
    if isinstance(value, bool):
        return {"baseline": "yes", "tied": "yes", "recommended": "**yes**"}.get(column, "") \
            if value else ""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "-"
    if column in ("val_acc", "test_acc", "val_sd", "test_sd"):
        return f"{value:.4f}"
    if column == "alpha":
        return f"{value:g}"
    if column == "lr":
        return format_lr(value)
    if column == "dropout":
        return f"{value:.3g}"
    if column == "train_seconds":
        return f"{value:.1f}"
    if column == "trainable_params":
        return f"{value:,}"
    return clip(str(value), MAX_CELL)


def markdown_table(frame: pd.DataFrame, columns: dict[str, str]) -> list[str]:
    shown = [c for c in columns if c in frame]
    return markdown.table([columns[c] for c in shown],
                          [[markdown_cell(c, row[c]) for c in shown]
                           for row in frame.to_dict("records")]).splitlines()


def shown_rows(frame: pd.DataFrame, top: int) -> pd.DataFrame:
    """The best `top` rows, and below them every baseline and the recommended row, best
    first (the frame's order)."""
    keep = pd.Series(frame.index < top, index=frame.index) | frame["baseline"].astype(bool)
    if "recommended" in frame:
        keep |= frame["recommended"].fillna(False).astype(bool)
    return frame[keep]


STATE_WORDS = {"FAIL": "failed"}


def state_counts(frame: pd.DataFrame) -> str:
    """E.g. `1,204 trials: 1,180 complete, 20 pruned, 4 running`."""
    counts = frame["state"].value_counts()
    parts = [f"{counts[state]:,} {STATE_WORDS.get(state, state.lower())}"
             for state in STATE_ORDER if state in counts]
    if not len(frame):
        return "no trials yet"
    return f"{len(frame):,} trial{'' if len(frame) == 1 else 's'}: {', '.join(parts)}"


def tied_line(verdict: Verdict) -> str | None:
    """The LoRA configurations tied with the best, best first, the first NAMED_TIED named."""
    tied = [c for c in verdict.configurations if not c.baseline and verdict.tied(c)]
    if not tied:
        return None
    named = [f"{verdict.describe(c)} (trial{'s' if len(c.numbers) > 1 else ''} "
             f"{', '.join(map(str, c.numbers))})" for c in tied[:NAMED_TIED]]
    more = (f"; and {len(tied) - NAMED_TIED} more (the CSV's `tied` column)"
            if len(tied) > NAMED_TIED else "")
    return f"**Tied with the best** ({len(tied)}): {'; '.join(named)}{more}"


def recommended_line(verdict: Verdict) -> str:
    chosen = verdict.recommended
    return (f"**Recommended**: {verdict.describe(chosen)}, "
            f"trial{'s' if len(chosen.numbers) > 1 else ''}"
            f" {', '.join(map(str, chosen.numbers))} ({chosen.trainable_params:,} trainable "
            "parameters, the fewest among those tied with the best; `search export --pick "
            "recommended`)")


def verdict_lines(board: Board) -> list[str]:
    """The verdict's closing lines, the recommendation and the tied set, as list items."""
    lines = [clip(line, MAX_LINE) for line in board.lines]
    if board.verdict is not None and board.verdict.configurations:
        if not board.verdict.best.baseline:
            lines.append(recommended_line(board.verdict))
        lines.append(tied_line(board.verdict) or "")
    return [f"- {line}" for line in lines if line]


def leaderboard_note(study: optuna.Study, board: Board, chart: str | None, csv: str | None,
                     top: int = TOP_ROWS) -> str:
    """The study's note: the verdict's lines, the recommendation and the tied set; the best
    `top` rows (with seeds, of configurations first), every baseline and the recommended;
    a link to the full leaderboard; the chart. Fewer rows while it would exceed
    MAX_NOTE_BYTES."""
    while True:
        note = note_text(study, board, chart, csv, top)
        if len(note.encode()) <= MAX_NOTE_BYTES or top == 0:
            break
        top //= 2
    data = note.encode()
    return note if len(data) <= MAX_NOTE_BYTES else \
        data[:MAX_NOTE_BYTES].decode(errors="ignore").rsplit("\n", 1)[0] + "\n"


def note_text(study: optuna.Study, board: Board, chart: str | None, csv: str | None,
              top: int) -> str:
    frame = board.frame
    text = [f"## Leaderboard of study {study.study_name}", "",
            f"{state_counts(frame)}. Best validation accuracy first, the baseline marked; "
            "`tied`: not told apart from the best by a paired test on the validation images "
            "(Holm-corrected); intervals: 95% Wilson. Refreshed by the workers as trials "
            "finish (`search leaderboard --note` rewrites it).", ""]
    text += [*verdict_lines(board), ""]
    verdict = board.verdict
    if verdict is not None and verdict.seeds > 1:
        configurations = configuration_table(verdict, board.race).drop(
            columns=["model", "method"])
        configurations = configurations.assign(trials=configurations["trials"].map(
            lambda t: ", ".join(map(str, t))))
        shown = shown_rows(configurations, top)
        text += [f"### Configurations over their seeds ({len(shown)} of "
                 f"{len(configurations):,})", ""]
        text += [*markdown_table(shown, CONFIGURATION_COLUMNS), ""]
    shown = shown_rows(frame, top)
    text += [f"### Trials ({len(shown)} of {len(frame):,}: the best, every baseline and the "
             "recommended)" if len(shown) < len(frame) else "### Trials", ""]
    marked = shown.assign(method=shown["baseline"].map({True: "**baseline** (head)",
                                                        False: "LoRA"}))
    text += markdown_table(marked, NOTE_COLUMNS)
    if csv is not None:
        more = len(frame) - len(shown)
        text += ["", f"{more:,} more trials: [full leaderboard as CSV]({csv})" if more else
                 f"[The leaderboard as CSV]({csv})"]
    if chart is not None:
        text += ["", f"![test accuracy against trainable parameters]({chart})"]
    return "\n".join(text) + "\n"


def digest(*parts: str | bytes) -> str:
    hashed = hashlib.sha256()
    for part in parts:
        hashed.update(part.encode() if isinstance(part, str) else part)
    return hashed.hexdigest()[:16]


def artifact_link(study: optuna.Study, artifact_id: str, version: str) -> str:
    """The dashboard's address of a study artifact, with the version of its content in the
    query: one artifact id is overwritten in place, and the browser must not show a cached
    older copy (the dashboard's route ignores the query)."""
    return f"/artifacts/{study_id(study)}/{artifact_id}?v={version}"


def put_artifact(study: optuna.Study, store: optuna.artifacts.FileSystemArtifactStore,
                 attr: str, filename: str, mimetype: str, content: bytes) -> str:
    """Write `content` as the study's note artifact `attr` (`NOTE_ARTIFACTS`): in place
    of the last one (one artifact per study, not one per refresh), or, the first time or when
    its record is gone (a person deleted it in the dashboard), as a new one; its id."""
    known = StudyRecord(study).note_artifact(attr)
    # An id that is not one of ours (the database edited) gets a fresh artifact instead.
    if (is_artifact_id(known) and
            note_store.artifact_recorded(study_storage(study), study_id(study), known)):
        store.write(known, io.BytesIO(content))
        return known
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / filename
        path.write_bytes(content)
        made = optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(path),
                                                study_or_trial=study, mimetype=mimetype)
    StudyRecord(study).store_note_artifact(attr, made)
    return made


def current_link(study: optuna.Study, attr: str, version: str, note: str) -> str | None:
    """The link to the artifact `attr` at `version` if the study's note already shows it:
    that content is written, nothing to do."""
    known = StudyRecord(study).note_artifact(attr)
    link = artifact_link(study, known, version) if known else None
    return link if link is not None and link in note else None


def csv_link(study: optuna.Study, store: optuna.artifacts.FileSystemArtifactStore,
             board: Board, note: str) -> str | None:
    """The full leaderboard (every trial, as `search leaderboard --by trial --format csv`),
    written where its content changed; its link."""
    if board.frame.empty:
        return None
    content = render(board.frame, "csv").encode()
    version = digest(content)
    return current_link(study, LEADERBOARD_CSV, version, note) or artifact_link(
        study, put_artifact(study, store, LEADERBOARD_CSV, CSV_FILE, "text/csv", content),
        version)


def chart_link(study: optuna.Study, store: optuna.artifacts.FileSystemArtifactStore,
               board: Board, note: str) -> str | None:
    """The report's accuracy-versus-parameters chart of a study with a complete trial (from
    the board's rows and verdict: nothing computed again), drawn and written where what it
    draws changed; its link."""
    from search.results.report import plot_accuracy_vs_params, report_table  # matplotlib

    if not (board.frame["state"] == "COMPLETE").any():
        return None
    table, _ = report_table(study, board)
    title = f"study {study.study_name}: test accuracy against trainable parameters"
    version = digest(title, table.to_csv())
    link = current_link(study, LEADERBOARD_CHART, version, note)
    if link is not None:
        return link
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / CHART_FILE
        plot_accuracy_vs_params(table, path, title)
        content = path.read_bytes()
    return artifact_link(study, put_artifact(study, store, LEADERBOARD_CHART, CHART_FILE,
                                             "image/png", content), version)


def write_trial_notes(study: optuna.Study, trials: list[FrozenTrial], frame: pd.DataFrame,
                      memory: DashboardMemory) -> int:
    """Write the finished trials' notes whose text is not what is stored; how many."""
    trial_ids = {t.number: trial_id(t) for t in trials}
    points = {t.number: trial_point(t) for t in trials}
    texts = {trial_ids[number]: text
             for number, text in trial_notes(study, frame, points).items()}
    failed = [trial_ids[n] for n in frame.loc[frame["state"] == "FAIL", "number"]]
    recall_notes(study, memory, [trial_id for trial_id in texts if trial_id not in memory.notes],
                 failed)
    changed = [(trial_id, text) for trial_id, text in texts.items()
               if memory.notes[trial_id] != text]
    for start in range(0, len(changed), 500):  # short transactions: others write too
        batch = dict(changed[start:start + 500])
        note_store.write_notes(study_storage(study), study_id(study), batch)
        memory.notes.update(batch)
    return len(changed)


def recall_notes(study: optuna.Study, memory: DashboardMemory, unknown: list[int],
                 failed: list[int]) -> None:
    """Put in memory the stored notes of the trials it does not know (a few by their keys,
    many, as in a process's first refresh, all the study's notes in one query), and of the
    failed trials again: a failed trial's note changes with others (`retried as trial N`,
    `gave up after 3 tries`) and can change back when its point is queued again, so another
    process may have written it since."""
    wanted = list(dict.fromkeys(unknown + failed))
    if not wanted:
        return
    found = (note_store.read_all_notes(study_storage(study), study_id(study))
             if len(unknown) > BULK_READ else
             note_store.read_notes(study_storage(study), study_id(study), wanted))
    empty = note_store.StoredNote()
    memory.notes.update({trial_id: found.get(trial_id, empty).body for trial_id in wanted})


def write_study_note(study: optuna.Study, store: optuna.artifacts.FileSystemArtifactStore,
                     board: Board) -> int:
    """Write the study's note (and the artifacts it links) where it changed, read from the
    storage (by its own keys: other writers, or a person, may have changed it); 1 if
    written."""
    current = note_store.read_notes(study_storage(study), study_id(study), [None])[None].body
    csv = csv_link(study, store, board, current)
    chart = chart_link(study, store, board, current)
    note = leaderboard_note(study, board, chart, csv)
    if note == current:
        return 0
    note_store.write_notes(study_storage(study), study_id(study), {None: note})
    return 1


def write_dashboard(study: optuna.Study, store: optuna.artifacts.FileSystemArtifactStore,
                    memory: DashboardMemory) -> int:
    """One refresh, for the caller holding the notes lock: the board from a fresh read, then
    the notes that changed; how many were written."""
    trials = memory.read_trials(study)
    board = study_board(study, by="trial", cache=memory.verdicts, trials=trials)
    return (write_trial_notes(study, trials, board.frame, memory)
            + write_study_note(study, store, board))


def marks(study: optuna.Study) -> tuple[Any, Any]:
    """The dirty mark and the mark the last refresh showed (equal: the board is current)."""
    found = note_store.read_attrs(study_storage(study), study_id(study), [DIRTY_ATTR, CLEAN_ATTR])
    return found[DIRTY_ATTR], found[CLEAN_ATTR]


def mark_dirty(study: optuna.Study) -> None:
    """Say that a trial finished since the last refresh: a fresh token (one write)."""
    study_storage(study).set_study_system_attr(study_id(study), DIRTY_ATTR, uuid.uuid4().hex)


def is_clean(study: optuna.Study) -> bool:
    dirty, clean = marks(study)
    return dirty == clean


@dataclass
class Budget:
    left: int = MAX_REFRESHES


def refresh_rounds(study: optuna.Study, store: optuna.artifacts.FileSystemArtifactStore,
                   memory: DashboardMemory, budget: Budget, force: bool = False) -> int:
    """For the caller holding the notes lock: refresh while the board is dirty (once anyway
    with `force`) and the budget lasts, each time clearing the mark read before the trials
    were; how many notes were written."""
    written = 0
    while budget.left > 0:
        dirty, clean = marks(study)
        if dirty == clean and not force:
            break
        budget.left -= 1
        written += write_dashboard(study, store, memory)
        study_storage(study).set_study_system_attr(study_id(study), CLEAN_ATTR, dirty)
        force = False
    return written


def refresh_when_free(study: optuna.Study, store: optuna.artifacts.FileSystemArtifactStore,
                      url: str, memory: DashboardMemory, budget: Budget | None = None) -> int:
    """Refresh if no other process is refreshing (then it sees the mark when it looks again),
    and look once more after letting go of the lock: a mark set while this process held it,
    by a worker that then found the lock taken, is shown. How many notes were written."""
    budget = budget or Budget()
    written = 0
    while budget.left > 0:
        with try_study_lock(study_storage(study), url, study.study_name, "notes") as held:
            if not held:
                return written
            written += refresh_rounds(study, store, memory, budget)
        if is_clean(study):
            break
    return written


def after_finishing(study: optuna.Study, store: optuna.artifacts.FileSystemArtifactStore,
                    url: str, memory: DashboardMemory) -> int:
    """What a worker does for the dashboard after each trial or pack it finished: mark the
    board dirty and refresh it unless another process is refreshing; never waits."""
    mark_dirty(study)
    return refresh_when_free(study, store, url, memory)


def refresh_if_dirty(study: optuna.Study, store: optuna.artifacts.FileSystemArtifactStore,
                     url: str, memory: DashboardMemory) -> int:
    """A worker's last word, its queue empty: refresh, waiting for the lock, if the board
    does not show every finished trial yet."""
    if is_clean(study):
        return 0
    return refresh_dashboard(study, store, url, memory, force=False)


def refresh_dashboard(study: optuna.Study, store: optuna.artifacts.FileSystemArtifactStore,
                      url: str, memory: DashboardMemory | None = None,
                      force: bool = True) -> int:
    """Refresh the study's leaderboard note, its artifacts and every finished trial's note
    that changed, waiting for the notes lock (`search leaderboard --note`; once even if the
    board looks current, with `force`); how many notes were written."""
    memory = memory or DashboardMemory()
    budget = Budget()
    with study_lock(study_storage(study), url, study.study_name, "notes"):
        written = refresh_rounds(study, store, memory, budget, force)
    if budget.left > 0 and not is_clean(study):
        written += refresh_when_free(study, store, url, memory, budget)
    return written
