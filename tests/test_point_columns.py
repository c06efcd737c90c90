"""The lr, targets and scaling columns of the results (`search.results.point_columns`): shown
where a study's LoRA points set them, in every surface, and nowhere in a study whose points
set none (a study made before they existed reads as it always did)."""

from __future__ import annotations

import json

import optuna
import pandas as pd
import pytest
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from objectives.spec import TARGET_SETS, LoraParams
from search.results.card_sections import configuration, leaderboard_table
from search.results.dashboard_notes import leaderboard_note, trial_notes
from search.results.export import export_document, recommended_trial
from search.results.leaderboard import render_board, study_board
from search.results.point_columns import PointColumns, format_lr, own_parts, point_columns
from search.results.report import label, report_table, verdict_text
from search.results.verdict import assess, closing_lines
from search.study.outcomes import outcomes_attr
from search.study.space import VARIANTS

N_VAL = 200
LABELS = torch.arange(N_VAL) % 10
DISTRIBUTIONS = {"rank": IntDistribution(1, 64), "alpha": FloatDistribution(1, 64),
                 "dropout": FloatDistribution(0, 0.9),
                 "lr": FloatDistribution(1e-5, 1e-1, log=True),
                 "targets": CategoricalDistribution(tuple(TARGET_SETS)),
                 "scaling": CategoricalDistribution(tuple(VARIANTS))}
SPEC = {"model": "vit_tiny_patch16_224", "lr": 3e-4, "targets": "q,k,v"}
EXTRAS = ["lr", "targets", "scaling"]


def add_trial(study: optuna.Study, wrong: int, params: dict | None, trainable: int = 1000
              ) -> None:
    """A complete trial as a worker stores it: `wrong` of N_VAL validation images wrong;
    `params` None: the baseline."""
    correct = torch.ones(N_VAL, dtype=torch.bool)
    correct[:wrong] = False
    params = params or {}
    study.add_trial(optuna.trial.create_trial(
        params=params, distributions={k: DISTRIBUTIONS[k] for k in params},
        value=correct.float().mean().item(),
        user_attrs={"baseline": not params, "trainable_params": trainable, "seed": 0,
                    "test_acc": 0.9},
        system_attrs={"outcomes": outcomes_attr(correct, LABELS)}))


def make_study(tmp_path, points: list[dict], name: str = "p") -> optuna.Study:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'p.db'}", study_name=name,
                                direction="maximize")
    study.set_user_attr("train_spec", SPEC)
    add_trial(study, 60, None, trainable=100)  # the baseline, well below
    for index, params in enumerate(points):
        add_trial(study, index, params, trainable=1000 + index)
    return study


# A grid over learning rates and target sets, plain LoRA: the spec's lr and targets are left
# unset (`GridSpace.points`), the others are the trial's params.
VARYING = [{"rank": 8, "alpha": 8.0, "dropout": 0.1},
           {"rank": 8, "alpha": 8.0, "dropout": 0.1, "lr": 1e-3, "targets": "all"},
           {"rank": 4, "alpha": 8.0, "dropout": 0.1, "lr": 1e-3},
           {"rank": 4, "alpha": 8.0, "dropout": 0.1, "targets": "all"}]
OLD = [{"rank": 8, "alpha": 8.0, "dropout": 0.1}, {"rank": 4, "alpha": 8.0, "dropout": 0.1},
       {"rank": 2, "alpha": 4.0, "dropout": 0.1}]


@pytest.fixture
def varying(tmp_path) -> optuna.Study:
    return make_study(tmp_path, VARYING)


@pytest.fixture
def old(tmp_path) -> optuna.Study:
    return make_study(tmp_path, OLD)


def test_a_column_shows_where_some_point_is_not_the_specs():
    plain = LoraParams(8, 8.0, 0.1)
    assert point_columns([plain, None, LoraParams(4, 8.0, 0.1)], SPEC).shown == ()
    assert point_columns([], SPEC).shown == ()
    assert point_columns([plain, LoraParams(8, 8.0, 0.1, lr=1e-3)], SPEC).shown == ("lr",)
    # Every point off the spec's value: the same value for all, but not the spec's.
    assert point_columns([LoraParams(8, 8.0, 0.1, targets=TARGET_SETS["all"])],
                         SPEC).shown == ("targets",)
    # A point naming the spec's own value (lr, layers) is the spec's: no column.
    assert point_columns([LoraParams(8, 8.0, 0.1, lr=3e-4, targets="q, k, v")], SPEC).shown == ()
    assert point_columns([plain, LoraParams(8, 8.0, 0.1, dora=True)], SPEC).shown == ("scaling",)
    assert point_columns([LoraParams(8, 8.0, 0.1, scaling="rslora", lr=1e-2,
                                     targets=TARGET_SETS["qv"])], SPEC).shown == tuple(EXTRAS)


def test_the_values_are_the_effective_ones():
    columns = point_columns([LoraParams(8, 8.0, 0.1, lr=1e-3, targets=TARGET_SETS["all"],
                                        scaling="rslora")], {"lr": 5e-4, "targets": "qkv"})
    assert columns.values(LoraParams(2, 2.0, 0.0)) == {"lr": 5e-4, "targets": "qkv",
                                                       "scaling": "lora"}
    rs = LoraParams(2, 2.0, 0.0, lr=1e-3, targets=TARGET_SETS["attn"], scaling="rslora")
    assert columns.values(rs) == {"lr": 1e-3, "targets": "attn", "scaling": "rslora"}
    assert columns.values(None) == {"lr": None, "targets": None, "scaling": None}
    assert columns.parts(rs) == ["lr 0.001", "targets attn", "rsLoRA"]
    assert columns.parts(LoraParams(2, 2.0, 0.0, dora=True))[-1] == "DoRA"
    # A spec stored without lr or targets (made before they were stored): TrainSpec's.
    assert point_columns([LoraParams(8, 8.0, 0.1, lr=1e-3)], {}).spec_lr == 3e-4
    assert own_parts(rs) == ["lr 0.001", "targets attn", "rsLoRA"]
    assert own_parts(LoraParams(2, 2.0, 0.0)) == []
    assert [format_lr(v) for v in (1e-3, 3e-4, 3e-5, 0.1)] == ["0.001", "0.0003", "3e-5", "0.1"]
    assert PointColumns(("lr",)).with_columns(["rank", "dropout", "seed"]) == \
        ["rank", "dropout", "lr", "seed"]


def test_the_leaderboard_shows_lr_and_targets_but_not_scaling(varying):
    board = study_board(varying, by="trial")
    columns = list(board.frame.columns)
    assert columns[columns.index("dropout") + 1:columns.index("dropout") + 3] == ["lr", "targets"]
    assert "scaling" not in columns
    rows = {row["number"]: row for row in board.frame.to_dict("records")}
    assert rows[0]["baseline"] and pd.isna(rows[0]["lr"]) and pd.isna(rows[0]["targets"])
    assert (rows[1]["lr"], rows[1]["targets"]) == (3e-4, "q,k,v")  # the spec's
    assert (rows[2]["lr"], rows[2]["targets"]) == (1e-3, "all")
    assert (rows[3]["lr"], rows[3]["targets"]) == (1e-3, "q,k,v")
    records = json.loads(render_board(board, "json"))
    assert {r["number"]: (r["lr"], r["targets"]) for r in records}[4] == (3e-4, "all")
    assert render_board(board, "csv").splitlines()[0].count(",dropout,lr,targets,") == 1
    table = render_board(board, "table")
    header = table.splitlines()[0].split()
    assert header[header.index("dropout") + 1:header.index("dropout") + 3] == ["lr", "targets"]
    assert "0.001" in table and " all " in table
    # The best (trial 1, no image wrong) keeps the spec's values; the best-LoRA line says so.
    configurations = study_board(varying, by="configuration").frame
    assert list(configurations.columns).count("lr") == 1 and "scaling" not in configurations


def test_the_verdict_describes_configurations_with_the_varying_columns(varying):
    verdict = assess(varying)
    assert verdict.columns.shown == ("lr", "targets")
    assert verdict.describe(verdict.best) == \
        "rank 8, alpha 8, dropout 0.1, lr 0.0003, targets q,k,v"
    described = [verdict.describe(c) for c in verdict.configurations if not c.baseline]
    assert "rank 8, alpha 8, dropout 0.1, lr 0.001, targets all" in described
    assert any("lr 0.001, targets all" in line or "lr 0.0003" in line
               for line in closing_lines(verdict))


def test_an_old_style_study_shows_no_extra_column(old):
    board = study_board(old, by="trial")
    assert not set(EXTRAS) & set(board.frame.columns)
    verdict = assess(old)
    assert verdict.columns.shown == ()
    assert verdict.describe(verdict.best) == "rank 8, alpha 8, dropout 0.1"
    assert "lr" not in render_board(board, "csv").splitlines()[0].split(",")
    table, _ = report_table(old)
    assert not set(EXTRAS) & set(table.columns)
    assert set(table.loc[~table["rank"].isna(), "method"]) == {"LoRA on q,k,v"}
    note = leaderboard_note(old, board, None, None)
    assert "| lr |" not in note and "targets" not in note


def test_the_report_and_the_notes_show_the_columns(varying, tmp_path):
    table, verdict = report_table(varying)
    columns = list(table.columns)
    assert columns[columns.index("dropout") + 1:columns.index("dropout") + 3] == ["lr", "targets"]
    lora = table[~table["rank"].isna()]
    assert set(lora["method"]) == {"LoRA"}  # the layers are the targets column's
    best = lora.iloc[0]
    assert label(best) == "#1 r8 a8 d0.1 lr0.0003 q,k,v"
    assert "lr 0.0003, targets q,k,v" in "\n".join(verdict_text(verdict))
    board = study_board(varying, by="trial")
    note = leaderboard_note(varying, board, None, None)
    header = next(line for line in note.splitlines() if line.startswith("| #"))
    assert "| dropout | lr | targets |" in header and "scaling" not in header
    assert "| 0.001 | all |" in note
    # A trial's own note says what its point sets, whatever the others set.
    points = {1: None, 2: LoraParams(8, 8.0, 0.1, lr=1e-3, targets=TARGET_SETS["all"])}
    notes = trial_notes(varying, board.frame, points)
    assert "LoRA r=8 alpha=8 dropout=0.1 lr=0.001 targets=all on" in notes[2]
    assert "LoRA r=8 alpha=8 dropout=0.1 on" in notes[1]


def test_the_export_carries_the_effective_lr_targets_and_variant(tmp_path):
    study = make_study(tmp_path, [
        {"rank": 4, "alpha": 8.0, "dropout": 0.1, "lr": 1e-3, "targets": "all",
         "scaling": "rslora"},
        {"rank": 8, "alpha": 8.0, "dropout": 0.1}])
    trial, selection = recommended_trial(study)
    assert trial.number == 1
    document = export_document(study, trial, selection)
    assert document["spec"]["lr"] == 1e-3
    assert document["spec"]["targets"] == TARGET_SETS["all"]
    assert document["params"]["scaling"] == "rslora" and document["params"]["targets"] == "all"
    assert selection["configuration"] == \
        "rank 4, alpha 8, dropout 0.1, lr 0.001, targets all, rsLoRA"
    assert configuration(document) == selection["configuration"]
    # The other point keeps the study's spec, and says nothing more about itself.
    plain = export_document(study, study.trials[2])
    assert (plain["spec"]["lr"], plain["spec"]["targets"]) == (3e-4, "q,k,v")
    assert configuration(plain) == "rank 8, alpha 8, dropout 0.1"
    card = leaderboard_table(document, study_board(study, by="trial"), {})
    assert "| dropout | lr | targets | scaling |" in card
    assert "| 0.001 | all | rslora |" in card
