"""The leaderboard: every trial of a study, best first, as a pandas DataFrame; or, for a study
with seeds, one row per configuration (its replicates grouped). With the study's verdict
(`search.results.verdict`) the rows say which are tied with the best and which is recommended;
the lines that close the table end with what mattered (`search.results.importance`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from search.results import significance
from search.results.importance import Importances, importance_lines, study_importances
from search.results.intervals import format_interval
from search.results.point_columns import COLUMNS as EXTRA_COLUMNS
from search.results.point_columns import format_lr, point_columns, word
from search.results.race import RaceInputs, dropped_lora, study_race
from search.results.race_rules import RaceState
from search.results.verdict import NoVerdict, Verdict, VerdictCache, assess, closing_lines
from search.study.study_record import StudyRecord
from search.study.trials import (
    gave_up_points,
    is_baseline,
    retried_as,
    study_max_retries,
    trial_history,
    trial_method,
    trial_model,
    trial_point,
    tries,
)

METRICS = ["test_acc", "f1", "auc_micro", "auc_macro", "trainable_params", "trainable_pct",
           "train_seconds"]
COLUMNS = ["number", "state", "model", "method", "baseline", "rank", "alpha", "dropout",
           "seed", "epochs", "val_acc", *METRICS, "note"]
# With a verdict: after val_acc, its interval; after test_acc, its interval; then the tie.
VERDICT_COLUMNS = ("val_ci", "test_ci", "tied", "recommended")
CONFIGURATION_COLUMNS = ["model", "method", "baseline", "rank", "alpha", "dropout", "seeds",
                         "val_acc", "val_sd", "val_ci", "test_acc", "test_sd", "test_ci", "tied",
                         "recommended", "trainable_params", "trials"]
BY = ("auto", "trial", "configuration")
# Finished trials first: a trial pruned early is not better than a complete one that beat it.
STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "FAIL": 4}
FORMATS = ("table", "json", "csv")


def leaderboard(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> pd.DataFrame:
    """One row per trial: complete, then pruned trials by validation accuracy (a pruned
    trial's at the epoch it reached, `epochs`), then the rest by number. After dropout, the
    columns lr, targets and scaling where the study's points set them
    (`search.results.point_columns`).

    Only a complete trial shows test metrics. Any other shows what it reached itself: its
    epochs and the validation accuracy of its last one (a retry inherits its dead trial's
    user attributes, and those are not its results)."""
    rows = []
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    retries = retried_as(trials)
    gave_up = {t.number for t in gave_up_points(study, study_max_retries(study), trials)}
    # The stored dict, not a validated spec: a leaderboard must show on any host.
    stored_spec = StudyRecord(study).stored_spec
    study_model = stored_spec.get("model")
    points = [trial_point(trial) for trial in trials]
    extra = point_columns(points, stored_spec)
    for trial, point in zip(trials, points, strict=True):
        attrs = trial.user_attrs
        complete = trial.state == TrialState.COMPLETE
        rows.append({
            "number": trial.number,
            "state": trial.state.name,
            "model": trial_model(trial, study_model),
            "method": trial_method(trial),
            "baseline": is_baseline(trial),
            "rank": point.rank if point else None,
            "alpha": point.alpha if point else None,
            "dropout": point.dropout if point else None,
            **extra.values(point),
            "seed": attrs.get("seed"),
            "epochs": attrs.get("epochs_done"),
            "val_acc": trial.value if complete else reached_val_acc(trial),
            **{key: attrs.get(key) if complete else None for key in METRICS},
            "note": trial_note(trial, retries, trial.number in gave_up),
        })
    frame = pd.DataFrame(rows, columns=extra.with_columns(COLUMNS)).astype(
        {"rank": "Int64", "seed": "Int64", "epochs": "Int64", "trainable_params": "Int64"})
    order = frame["state"].map(STATE_ORDER)
    frame = frame.assign(_order=order).sort_values(
        ["_order", "val_acc", "number"], ascending=[True, False, True], na_position="last",
        kind="stable")
    return frame.drop(columns="_order").reset_index(drop=True)


@dataclass
class Board:
    """What `search leaderboard` shows: the rows and the lines that close them."""

    frame: pd.DataFrame
    lines: list[str]
    by: str  # "trial" or "configuration"
    verdict: Verdict | None = None  # None: the study has none (`lines` says why)
    importances: Importances | None = None  # what mattered; its line is among `lines`
    race: tuple[RaceState, RaceInputs] | None = None  # a racing study's race; in `lines` too


def study_board(study: optuna.Study, by: str = "auto", cache: VerdictCache | None = None,
                trials: list[FrozenTrial] | None = None) -> Board:
    """The leaderboard with the study's verdict: per trial, or per configuration (`auto`:
    per configuration when one has several complete replicates). `cache` keeps the verdict's
    work for the next board (a worker's refreshes); `trials`, the study's trials if the
    caller has read them (`search.study.trial_reader`)."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    frame = leaderboard(study, trials)
    # From the trials' values alone: a study whose trials carry no outcomes has it too.
    mattered = study_importances(study, trials)
    race = study_race(study, trials, cache)
    try:
        verdict = assess(study, trials, cache, dropped=dropped_lora(race))
    except NoVerdict as why:
        complete = (frame["state"] == "COMPLETE").any()
        return Board(frame, [best_versus_baseline(frame), *([str(why)] if complete else []),
                             *importance_lines(mattered)], "trial", importances=mattered)
    if by == "auto":
        by = "configuration" if verdict.seeds > 1 else "trial"
    lines = [*closing_lines(verdict), *race_lines(race, verdict), *importance_lines(mattered)]
    if by == "configuration":
        unfinished = int((frame["state"] != "COMPLETE").sum())
        if unfinished:
            lines.append(f"{unfinished} trial(s) not complete: `--by trial` lists every trial")
        return Board(configuration_table(verdict, race), lines, by, verdict, mattered, race)
    return Board(with_verdict(frame, verdict), lines, by, verdict, mattered, race)


def configuration_table(verdict: Verdict,
                        race: tuple[RaceState, RaceInputs] | None = None) -> pd.DataFrame:
    """`configuration_frame`, with each configuration's place in the race where it races."""
    return with_race(configuration_frame(verdict), verdict, race)


def race_lines(race: tuple[RaceState, RaceInputs] | None, verdict: Verdict) -> list[str]:
    """Where a racing study stands: why its race ended (or the round under way), the trials
    it used and what fixed seeds at its depth would have used; the configurations it lost."""
    if race is None:
        return []
    state, inputs = race
    by_key = {c.key: c for c in verdict.configurations}

    def name(key) -> str:
        return verdict.describe(by_key[key]) if key in by_key else repr(key)

    lines = [f"race: {line}" for line in state.describe(name)]
    if inputs.left:
        lines.append(f"race: {len(inputs.left)} configuration(s) left it, given up after a "
                     f"failed trial: {'; '.join(name(key) for key in inputs.left)}")
    return lines


def with_race(frame: pd.DataFrame, verdict: Verdict,
              race: tuple[RaceState, RaceInputs] | None) -> pd.DataFrame:
    """The per-configuration rows with the round each left the race in ("dropped after 2
    seeds"), or "racing" / "survived" (a race that has ended); unchanged without a race."""
    if race is None:
        return frame
    state, inputs = race
    dropped = state.dropped_after
    left = set(inputs.left)
    words = []
    for c in verdict.configurations:
        if c.key in dropped:
            words.append(f"dropped after {dropped[c.key]}")
        elif c.key in left:
            words.append("given up")
        else:
            words.append("survived" if state.finished else "racing")
    out = frame.copy()
    out.insert(out.columns.get_loc("seeds") + 1, "race", words)
    return out


def with_verdict(frame: pd.DataFrame, verdict: Verdict) -> pd.DataFrame:
    """The per-trial rows with their own 95% Wilson intervals (a row is one trial) and their
    configuration's tie and recommendation; rows outside the verdict (not complete) get none.
    The intervals of all rows come from one call per split."""
    by_number = {t.number: (c, index) for c in verdict.configurations
                 for index, t in enumerate(c.trials)}
    val_ci = trial_intervals(frame["number"], by_number, "val")
    test_ci = trial_intervals(frame["number"], by_number, "test")
    placed = [by_number.get(number) for number in frame["number"]]
    extra = pd.DataFrame({
        "val_ci": val_ci, "test_ci": test_ci,
        "tied": [verdict.tied(p[0]) if p else None for p in placed],
        "recommended": [p[0] is verdict.recommended if p else None for p in placed]},
        index=frame.index)
    out = frame.copy()
    out.insert(out.columns.get_loc("val_acc") + 1, "val_ci", extra["val_ci"])
    out.insert(out.columns.get_loc("test_acc") + 1, "test_ci", extra["test_ci"])
    out.insert(out.columns.get_loc("note"), "tied", extra["tied"])
    out.insert(out.columns.get_loc("note"), "recommended", extra["recommended"])
    return out


def trial_intervals(numbers: pd.Series, by_number: dict, split: str) -> list[list[float] | None]:
    """Each trial's own 95% Wilson interval on `split`, in the order of `numbers` (None for a
    trial outside the verdict or without outcomes of that split)."""
    counts = {}
    for number in numbers:
        configuration, index = by_number.get(number, (None, 0))
        outcomes = getattr(configuration, split) if configuration is not None else None
        if outcomes is not None:
            counts[number] = (int(outcomes[index].sum()), outcomes.shape[1])
    if not counts:
        return [None] * len(numbers)
    low, high = significance.wilson_intervals(np.array([c for c, _ in counts.values()]),
                                              np.array([n for _, n in counts.values()]))
    found = {number: rounded((lo, hi))
             for number, lo, hi in zip(counts, low.tolist(), high.tolist(), strict=True)}
    return [found.get(number) for number in numbers]


def configuration_frame(verdict: Verdict) -> pd.DataFrame:
    """One row per configuration with complete replicates: mean and sd over seeds, the
    interval over seeds x examples, the tie and the recommendation; best first."""
    rows = []
    for c in verdict.configurations:
        point = c.point
        tests = c.test_accs
        rows.append({
            "model": c.model, "method": "head" if c.baseline else "lora",
            "baseline": c.baseline,
            "rank": point.rank if point else None, "alpha": point.alpha if point else None,
            "dropout": point.dropout if point else None,
            **verdict.columns.values(point), "seeds": len(c.trials),
            "val_acc": float(c.val_accs.mean()), "val_sd": standard_deviation(c.val_accs),
            "val_ci": rounded(verdict.val_ci[c.key]),
            "test_acc": float(tests.mean()) if tests is not None else None,
            "test_sd": standard_deviation(tests) if tests is not None else None,
            "test_ci": rounded(verdict.test_ci[c.key]) if c.key in verdict.test_ci else None,
            "tied": verdict.tied(c), "recommended": c is verdict.recommended,
            "trainable_params": c.trainable_params, "trials": c.numbers})
    return pd.DataFrame(rows, columns=verdict.columns.with_columns(CONFIGURATION_COLUMNS)).astype(
        {"rank": "Int64", "trainable_params": "Int64"})


def standard_deviation(values) -> float | None:
    """Over seeds (n - 1 in the denominator); None for a single seed."""
    return float(values.std(ddof=1)) if len(values) > 1 else None


def rounded(interval: tuple[float, float]) -> list[float]:
    return [round(interval[0], 6), round(interval[1], 6)]


def reached_val_acc(trial: optuna.trial.FrozenTrial) -> float | None:
    """The validation accuracy at the last epoch the trial reached: a pruned trial records
    it; any other's comes from its own per-epoch history."""
    if trial.state == TrialState.PRUNED:
        return trial.user_attrs.get("val_acc")
    history = trial_history(trial)
    last = history[-1] if history else None
    return last.get("val_acc") if isinstance(last, dict) else None


def trial_note(trial: optuna.trial.FrozenTrial, retried_as: dict[int, int],
               gave_up: bool = False) -> str:
    """What happened to a trial beyond its state: errors, retries, resumptions, and for the
    last failed try of a point the study gave up on, after how many tries."""
    notes = []
    if "failed_trial" in trial.system_attrs:
        notes.append(f"retry of trial {trial.system_attrs['retry_history'][-1]}")
    if trial.user_attrs.get("resumed_from_epoch"):
        notes.append(f"resumed after epoch {trial.user_attrs['resumed_from_epoch']}")
    if trial.state == TrialState.FAIL:
        if trial.user_attrs.get("error"):
            notes.append(trial.user_attrs["error"])
        elif trial.number in retried_as:
            notes.append(f"worker lost (no heartbeat); retried as trial {retried_as[trial.number]}")
        else:
            notes.append("worker lost (no heartbeat)")
        if gave_up:
            count = tries(trial)
            notes.append(f"gave up after {count} {'try' if count == 1 else 'tries'}")
    checkpoint = trial.user_attrs.get("checkpoint")
    if (trial.state in (TrialState.WAITING, TrialState.RUNNING) and isinstance(checkpoint, dict)
            and checkpoint.get("epoch") is not None):
        notes.append(f"checkpoint after epoch {checkpoint['epoch']}")
    return "; ".join(notes)


def best_versus_baseline(frame: pd.DataFrame) -> str:
    """One line: the best LoRA trial against the baselines, as the model card reports them."""
    done = frame[frame["state"] == "COMPLETE"]
    lora, baseline = done[~done["baseline"]], done[done["baseline"]]
    if lora.empty:
        return "no LoRA trial has completed yet"
    best = lora.iloc[0]
    line = (f"best LoRA: trial {best['number']} (rank {best['rank']}, alpha {best['alpha']:g}, "
            f"dropout {best['dropout']:.3g}{extra_words(best)}) val_acc {best['val_acc']:.4f}, "
            f"test_acc {best['test_acc']:.4f}")
    several = baseline["model"].nunique() > 1
    for _, base in baseline.iterrows():
        name = f"baseline {base['model']}" if several else "baseline"
        line += f"; {name} val_acc {base['val_acc']:.4f}, test_acc {base['test_acc']:.4f}"
    return line


def extra_words(row: pd.Series) -> str:
    """", lr 0.001, targets all, rsLoRA": the row's extra columns, where the board has them."""
    return "".join(f", {word(column, row[column])}" for column in EXTRA_COLUMNS if column in row)


TABLE_FORMATS = {"alpha": "{:g}", "dropout": "{:.3g}", "val_acc": "{:.4f}", "test_acc": "{:.4f}",
                 "val_sd": "{:.4f}", "test_sd": "{:.4f}",
                 "f1": "{:.4f}", "auc_micro": "{:.4f}", "auc_macro": "{:.4f}",
                 "trainable_pct": "{:.3f}", "train_seconds": "{:.1f}"}
YES = {True: "yes", False: ""}


def render(frame: pd.DataFrame, fmt: str) -> str:
    if fmt == "json":
        return frame.to_json(orient="records", indent=1)
    if fmt == "csv":
        return frame.to_csv(index=False)
    shown = frame.astype(object)
    for column, pattern in TABLE_FORMATS.items():
        if column in frame:
            shown[column] = frame[column].map(
                lambda x, p=pattern: "-" if pd.isna(x) else p.format(x))
    if "lr" in frame:
        shown["lr"] = frame["lr"].map(lambda x: "-" if pd.isna(x) else format_lr(x))
    for column in ("targets", "scaling"):
        if column in frame:
            shown[column] = frame[column].map(lambda x: "-" if pd.isna(x) else x)
    for column in ("rank", "seed", "seeds", "epochs", "trainable_params"):
        if column in frame:
            shown[column] = frame[column].map(lambda x: "-" if pd.isna(x) else str(x))
    for column in ("val_ci", "test_ci"):
        if column in frame:
            shown[column] = frame[column].map(format_interval)
    for column in ("baseline", "tied", "recommended"):
        if column in frame:
            shown[column] = frame[column].map(lambda x: YES.get(x, ""))
    if "trials" in frame:
        shown["trials"] = frame["trials"].map(lambda x: ",".join(map(str, x)))
    return shown.to_string(index=False)


def render_board(board: Board, fmt: str) -> str:
    """The table followed by its closing lines; JSON and CSV carry the rows' fields only."""
    text = render(board.frame, fmt)
    return "\n".join([text, *board.lines]) if fmt == "table" else text
