"""`search report` on a study of many trials: every file written, report.md's table and the
charts bounded (the best rows, then the baselines and the recommended trial), report.csv
whole. No timing assertions: the sizes are what keeps the report fast."""

from __future__ import annotations

import csv
import struct
from types import SimpleNamespace

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from optuna.distributions import FloatDistribution, IntDistribution
from run_cli import search_in_process

from search.results.leaderboard import study_board
from search.results.report import (
    MAX_BARS,
    MAX_TABLE_ROWS,
    label_levels,
    report_table,
    top_rows,
)
from search.study.outcomes import ATTR, outcomes_attr

TRIALS, N_VAL, N_TEST = 1000, 216, 359
RANKS, ALPHAS = (2, 4, 8, 16), (2.0, 4.0, 8.0, 16.0)
DISTRIBUTIONS = {"rank": IntDistribution(2, 16), "alpha": FloatDistribution(2, 16),
                 "dropout": FloatDistribution(0.05, 0.3)}
SPEC = {"model": "vit_tiny_patch16_224", "pretrained": False, "weights": None,
        "model_kwargs": {}, "targets": "q,k,v", "head_hidden": 0, "dataset": "digits",
        "data_dir": "data", "download": False, "image_size": 32, "val_fraction": 0.15,
        "test_fraction": 0.2, "epochs": 4, "batch_size": 64, "eval_batch_size": 512,
        "lr": 0.003, "weight_decay": 0.0001, "seed": 0}
PNG = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG's header."""
    data = path.read_bytes()[:24]
    assert data.startswith(PNG)
    return struct.unpack(">II", data[16:24])


def add_trials(study: optuna.Study, count: int, seed: int = 0) -> None:
    """Trial 0 the baseline, the rest LoRA points (a TPE study's shape: few ranks and alphas,
    dropout from an interval) whose per-image outcomes share each image's difficulty; in
    one `add_trials` call, with the attributes the report reads."""
    rng = np.random.default_rng(seed)
    labels_val, labels_test = torch.arange(N_VAL) % 10, torch.arange(N_TEST) % 10
    hard_val, hard_test = rng.normal(0, 1.5, N_VAL), rng.normal(0, 1.5, N_TEST)
    trials = []
    for number in range(count):
        if number == 0:
            point, skill, params = {}, 2.2, 970
        else:
            rank = int(rng.choice(RANKS))
            point = {"rank": rank, "alpha": float(rng.choice(ALPHAS)),
                     "dropout": float(rng.uniform(0.05, 0.3))}
            skill, params = 2.4 + 0.3 * np.log2(rank) + rng.normal(0, 0.25), 970 + 2304 * rank
        val = rng.random(N_VAL) < 1 / (1 + np.exp(hard_val - skill))
        test = rng.random(N_TEST) < 1 / (1 + np.exp(hard_test - skill))
        test_acc = float(test.mean())
        attrs = {"baseline": number == 0, "trainable_params": params,
                 "trainable_pct": params / 4740, "test_acc": test_acc, "f1": test_acc - 0.002,
                 "auc_micro": 0.99, "auc_macro": 0.988, "seed": 0, "epochs_done": 4}
        if number == 0:
            attrs["method"] = "head"
        outcomes = outcomes_attr(torch.from_numpy(val), labels_val, torch.from_numpy(test),
                                 labels_test)
        trials.append(optuna.trial.create_trial(
            params=point, distributions={k: DISTRIBUTIONS[k] for k in point},
            value=float(val.mean()), user_attrs=attrs, system_attrs={ATTR: outcomes}))
    study.add_trials(trials)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    folder = tmp_path_factory.mktemp("big")
    url = f"sqlite:///{folder / 'big.db'}"
    study = optuna.create_study(storage=url, study_name="big", direction="maximize")
    study.set_user_attr("train_spec", SPEC)
    add_trials(study, TRIALS)
    return folder, url, study


@pytest.fixture(scope="module")
def written(big):
    folder, url, _ = big
    with pytest.MonkeyPatch.context() as monkeypatch:
        capsys = _Capture()
        code, _, err = search_in_process(["report", "--storage", url, "--out", "r"], folder,
                                         capsys, monkeypatch)
    assert code == 0, err
    return folder / "r"


class _Capture:
    """What `search_in_process` reads of pytest's capsys, which a module-scoped fixture
    cannot have: the command's output stays in pytest's own capture."""

    def readouterr(self) -> SimpleNamespace:
        return SimpleNamespace(out="", err="")


def markdown_rows(text: str, header: str) -> list[list[str]]:
    """The cells of the Markdown table whose header line starts with `header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_every_file_is_written_and_the_csv_has_every_trial(written):
    for name in ("report.md", "report.csv", "metrics.png", "accuracy_vs_params.png"):
        assert (written / name).is_file(), name
    rows = list(csv.DictReader((written / "report.csv").open()))
    assert len(rows) == TRIALS
    assert sorted(int(row["trial"]) for row in rows) == list(range(TRIALS))
    accuracies = [float(row["val_acc"]) for row in rows]
    assert accuracies == sorted(accuracies, reverse=True)


def test_the_markdown_table_holds_the_best_rows_then_the_baseline_and_the_recommended(written):
    text = (written / "report.md").read_text()
    table = markdown_rows(text, "| trial | method |")
    csv_rows = list(csv.DictReader((written / "report.csv").open()))
    marked = [row for row in csv_rows[MAX_TABLE_ROWS:]
              if row["method"].startswith("baseline") or row["recommended"] == "True"]
    assert len(table) == MAX_TABLE_ROWS + len(marked)
    assert [row[0] for row in table[:MAX_TABLE_ROWS]] == \
        [row["trial"] for row in csv_rows[:MAX_TABLE_ROWS]]
    assert [row[0] for row in table[MAX_TABLE_ROWS:]] == [row["trial"] for row in marked]
    assert any(row["recommended"] == "True" for row in marked)  # this study's ranks low
    shown = {row[0] for row in table}
    assert "0" in shown  # the baseline
    recommended = {row["trial"] for row in csv_rows if row["recommended"] == "True"}
    assert recommended and recommended <= shown
    assert f"The table shows the best {MAX_TABLE_ROWS} of {TRIALS:,} trials by validation " \
           "accuracy" in text
    assert "report.csv has every trial" in text
    assert f"{TRIALS:,} completed trials" in text


def test_the_charts_stay_the_size_of_a_small_studys(written):
    width, height = png_size(written / "metrics.png")
    # one bar group per shown row: the best MAX_BARS, the baseline, the recommended
    assert height < 110 * (0.9 * (MAX_BARS + 3) + 2.5)
    width, height = png_size(written / "accuracy_vs_params.png")
    assert width < 1000 and height < 700


def test_a_board_already_computed_gives_the_same_table(big):
    _, _, study = big
    table, verdict = report_table(study)
    again, verdict_again = report_table(study, study_board(study, by="trial"))
    pd.testing.assert_frame_equal(table, again)
    assert verdict.recommended.key == verdict_again.recommended.key


def test_top_rows_keeps_the_best_then_the_baselines_and_the_recommended_below_them():
    table = pd.DataFrame({"trial": range(10), "rank": [4] * 7 + [None] + [4] * 2,
                          "recommended": [False] * 5 + [True] + [False] * 4})
    shown, left_out = top_rows(table, 3)
    assert shown["trial"].tolist() == [0, 1, 2, 5, 7] and left_out == 5
    shown, left_out = top_rows(table, 10)
    assert len(shown) == 10 and left_out == 0


def test_labels_that_would_overlap_go_to_another_row():
    assert label_levels([0.0, 1.0, 2.0], [0.5, 0.5, 0.5]) == [0, 0, 0]
    assert label_levels([0.0, 0.2, 0.6, 1.0], [0.5, 0.5, 0.5, 0.5]) == [0, 1, 0, 1]
