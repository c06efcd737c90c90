"""The study's verdict on synthetic studies: ties, the recommendation, seeds, old studies, the
leaderboard, report, export and dashboard notes that show it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution, IntDistribution
from run_cli import search_in_process

from search.results.dashboard_notes import refresh_dashboard
from search.results.leaderboard import render_board, study_board
from search.results.verdict import NoVerdict, VerdictCache, assess, closing_lines
from search.study.artifacts import artifact_store
from search.study.outcomes import decode_bits, encode_bits, outcomes_attr, trial_outcomes

N_VAL, N_TEST = 200, 300
DISTRIBUTIONS = {"rank": IntDistribution(1, 64), "alpha": FloatDistribution(1, 64),
                 "dropout": FloatDistribution(0, 0.9)}
LABELS_VAL = torch.arange(N_VAL) % 10
LABELS_TEST = torch.arange(N_TEST) % 10


def outcomes(wrong: list[int] | range, n: int) -> torch.Tensor:
    correct = torch.ones(n, dtype=torch.bool)
    correct[list(wrong)] = False
    return correct


def add_trial(study: optuna.Study, val_wrong, rank: int | None = None, alpha: float = 8.0,
              params: int = 1000, replicate: int = 0, test_wrong=range(0),
              with_outcomes: bool = True, labels: torch.Tensor = LABELS_VAL,
              layout: str = "system") -> None:
    """A complete trial as a worker stores it; `layout="user"`: its outcomes where studies
    made before they moved to the system attributes kept them."""
    val, test = outcomes(val_wrong, N_VAL), outcomes(test_wrong, N_TEST)
    attrs = {"baseline": rank is None, "trainable_params": params,
             "test_acc": test.float().mean().item(), "seed": replicate}
    system = {}
    if replicate:
        attrs["replicate"] = replicate
    if with_outcomes:
        (system if layout == "system" else attrs)["outcomes"] = outcomes_attr(
            val, labels, test, LABELS_TEST)
    point = {} if rank is None else {"rank": rank, "alpha": alpha, "dropout": 0.1}
    study.add_trial(optuna.trial.create_trial(
        params=point, distributions={k: DISTRIBUTIONS[k] for k in point},
        value=val.float().mean().item(), user_attrs=attrs, system_attrs=system))


def url(folder) -> str:
    return f"sqlite:///{folder / 'v.db'}"


@pytest.fixture
def study(tmp_path) -> optuna.Study:
    created = optuna.create_study(storage=f"sqlite:///{tmp_path / 'v.db'}", study_name="v",
                                  direction="maximize")
    created.set_user_attr("train_spec", {"model": "vit_tiny_patch16_224"})
    return created


def test_outcomes_survive_their_encoding():
    correct = torch.rand(1001) > 0.3
    assert (decode_bits(encode_bits(correct), 1001) == correct.numpy()).all()
    with pytest.raises(ValueError, match="bits stored"):  # never padded with made-up zeros
        decode_bits(encode_bits(correct), 1009)
    value = outcomes_attr(correct, torch.arange(1001) % 7)
    for where in ("system_attrs", "user_attrs"):  # now; and in studies made before
        trial = optuna.trial.create_trial(value=0.5, **{where: {"outcomes": value}})
        values, order = trial_outcomes(trial, "val")
        assert (values == correct.numpy()).all() and len(order) == 8
        assert trial_outcomes(trial, "test") is None  # a pruned trial stores no test outcomes
    assert trial_outcomes(optuna.trial.create_trial(value=0.5), "val") is None


def test_one_example_apart_is_tied_forty_is_not_and_the_smaller_tied_one_is_recommended(study):
    add_trial(study, range(10), rank=8, params=8000)              # best: 190 of 200
    add_trial(study, range(11), rank=2, params=2000)              # 1 more wrong: tied
    add_trial(study, range(50), rank=4, params=4000)              # 40 more wrong: worse
    add_trial(study, range(60), rank=None, params=500)            # baseline, far below
    verdict = assess(study)
    tied = {c.numbers[0]: verdict.tied(c) for c in verdict.configurations}
    assert tied == {0: True, 1: True, 2: False, 3: False}
    assert verdict.best.numbers == [0] and verdict.recommended.numbers == [1]
    assert verdict.ties[verdict.best.key].p_value == 1.0
    baseline = next(c for c in verdict.configurations if c.baseline)
    assert verdict.ties[baseline.key].p_value < 1e-6

    board = study_board(study)
    assert board.by == "trial"
    rows = {row["number"]: row for row in board.frame.to_dict("records")}
    assert rows[1]["recommended"] and not rows[0]["recommended"]
    assert [rows[n]["tied"] for n in range(4)] == [True, True, False, False]
    low, high = rows[0]["val_ci"]
    assert low < 0.95 < high
    text = render_board(board, "table")
    assert ("2 of 3 LoRA configurations are tied with the best (exact McNemar on 200 "
            "validation images, Holm, p >= 0.05); recommended: rank 2, alpha 8, dropout 0.1 "
            "(2,000 trainable parameters, 0.25x the best's); baseline 25.0 pp below the best "
            "(p < 1e-6)") in text
    assert "on the test set (not used to choose)" in text


def test_among_equal_parameter_counts_the_higher_validation_accuracy_is_recommended(study):
    add_trial(study, range(10), rank=8, params=8000)
    add_trial(study, range(12), rank=4, alpha=2, params=4000)
    add_trial(study, range(11), rank=4, alpha=4, params=4000)
    assert assess(study).recommended.numbers == [2]


def test_replicates_group_by_configuration_with_mean_and_sd_over_seeds(study):
    for replicate, (a, b) in enumerate([(10, 30), (14, 34), (12, 32)]):
        add_trial(study, range(a), rank=8, params=8000, replicate=replicate)
        add_trial(study, range(b), rank=2, params=2000, replicate=replicate)
    board = study_board(study)
    assert board.by == "configuration"
    rows = board.frame.to_dict("records")
    assert [row["seeds"] for row in rows] == [3, 3]
    assert rows[0]["rank"] == 8 and sorted(rows[0]["trials"]) == [0, 2, 4]
    accuracies = np.array([190, 186, 188]) / 200
    assert rows[0]["val_acc"] == pytest.approx(accuracies.mean())
    assert rows[0]["val_sd"] == pytest.approx(accuracies.std(ddof=1))
    assert rows[0]["tied"] and not rows[1]["tied"] and rows[0]["recommended"]
    assert "bootstrap over 3 seeds x 200 validation images" in render_board(board, "table")
    per_trial = study_board(study, by="trial").frame
    assert len(per_trial) == 6 and per_trial["seed"].tolist().count(2) == 2


def test_a_study_without_per_example_outcomes_shows_its_board_and_says_why(study, tmp_path):
    add_trial(study, range(10), rank=8, with_outcomes=False)
    add_trial(study, range(20), rank=None, with_outcomes=False)
    with pytest.raises(NoVerdict):
        assess(study)
    board = study_board(study)
    assert not {"val_ci", "test_ci", "tied", "recommended"} & set(board.frame.columns)
    assert board.lines[-1] == ("no tie test: 2 of 2 complete trials carry no per-example "
                               "outcomes (made before they were stored); trials run from now "
                               "on do")
    written = refresh_dashboard(study, artifact_store(tmp_path / "a"), url(tmp_path))
    assert written == 3  # two trial notes and the study's leaderboard, without a verdict


def test_trials_scored_on_another_split_take_no_part(study):
    add_trial(study, range(10), rank=8)
    add_trial(study, range(12), rank=2)
    add_trial(study, range(5), rank=4, labels=LABELS_VAL.flip(0))
    verdict = assess(study)
    assert sorted(n for c in verdict.configurations for n in c.numbers) == [0, 1]
    assert verdict.left_out.startswith("trial 2 was scored on other validation images")


def test_dashboard_notes_say_the_baseline_gap_and_the_recommendation(study, tmp_path):
    """A trial's note says what it is and how it ended; where it stands (the baseline's gap,
    tied, recommended) is on the study's note, which moves as trials finish."""
    from optuna_dashboard import get_note

    add_trial(study, range(10), rank=8, params=8000)
    add_trial(study, range(11), rank=2, params=2000)
    add_trial(study, range(60), rank=None, params=500)
    store = artifact_store(tmp_path / "a")
    assert refresh_dashboard(study, store, url(tmp_path)) == 4  # 3 trials and the study
    assert refresh_dashboard(study, store, url(tmp_path)) == 0  # unchanged: not written again
    notes = [get_note(optuna.Trial(study, t._trial_id)) for t in study.trials]
    assert notes[0].startswith("**LoRA r=8 alpha=8 dropout=0.1 on vit_tiny_patch16_224**: "
                               "complete, val_acc 0.9500")
    assert notes[2].startswith("**Baseline**")
    assert all("Note page" in note and "p =" not in note for note in notes)
    board = get_note(study)
    rows = [line for line in board.splitlines() if line.startswith("| ")][1:]
    assert [row.split(" | ")[0] for row in rows] == ["| 0", "| 1", "| 2"]  # best first
    assert "recommended: rank 2, alpha 8, dropout 0.1" in board
    assert "**Recommended**: rank 2, alpha 8, dropout 0.1, trial 1 (2,000 trainable" in board
    assert "**Tied with the best** (2): rank 8, alpha 8, dropout 0.1 (trial 0); rank 2" in board
    assert "baseline 25.0 pp below the best (p < 1e-6)" in board
    chart = study.user_attrs["leaderboard_chart"]
    assert f"(/artifacts/{study._study_id}/{chart}?v=" in board
    assert (tmp_path / "a" / chart).stat().st_size > 10_000
    table = study.user_attrs["leaderboard_csv"]
    assert f"[The leaderboard as CSV](/artifacts/{study._study_id}/{table}?v=" in board
    assert (tmp_path / "a" / table).read_text().startswith("number,state,")

    add_trial(study, range(9), rank=4, params=4000)  # a new best: a new board and chart
    assert refresh_dashboard(study, store, url(tmp_path)) == 2  # its own note and the study's
    assert notes == [get_note(optuna.Trial(study, t._trial_id)) for t in study.trials[:3]]
    assert study.user_attrs["leaderboard_chart"] == chart  # overwritten in place
    assert get_note(study) != board and "| 3 | COMPLETE |" in get_note(study)
    assert sorted(path.name for path in (tmp_path / "a").iterdir()) == sorted([chart, table])


def test_concurrent_refreshes_never_leave_an_older_leaderboard(study, tmp_path, monkeypatch):
    check_concurrent_refreshes(study, artifact_store(tmp_path / "a"), url(tmp_path),
                               monkeypatch)


def check_concurrent_refreshes(study, store, storage_url: str, monkeypatch) -> None:
    """Two workers refresh at once: the first computed its board before the second trial
    finished and is slow to write it. Under the notes lock the second waits and writes last,
    from a fresh read; without it the slow one would overwrite the newer board."""
    import threading
    import time

    from optuna_dashboard._note import get_note_from_system_attrs

    from search.results import dashboard_notes

    add_trial(study, range(10), rank=8, params=8000)
    real = dashboard_notes.leaderboard_note
    first = threading.Event()

    def slow_note(*args, **kwargs):
        note = real(*args, **kwargs)
        if threading.current_thread().name == "slow":
            first.set()
            time.sleep(1.0)
        return note

    monkeypatch.setattr(dashboard_notes, "leaderboard_note", slow_note)
    slow = threading.Thread(name="slow", target=refresh_dashboard,
                            args=(study, store, storage_url))
    slow.start()
    assert first.wait(30)
    add_trial(study, range(11), rank=2, params=2000)  # finished while the slow one writes
    refresh_dashboard(study, store, storage_url)
    slow.join()
    attrs = study._storage.get_study_system_attrs(study._study_id)
    board = get_note_from_system_attrs(attrs, None)["body"]
    assert "| 0 | COMPLETE |" in board and "| 1 | COMPLETE |" in board


def test_export_pick_recommended_records_which_and_why(study, tmp_path, capsys, monkeypatch):
    add_trial(study, range(10), rank=8, params=8000)
    add_trial(study, range(11), rank=2, params=2000)
    url = f"sqlite:///{tmp_path / 'v.db'}"
    code, _, err = search_in_process(["export", "--storage", url, "--pick", "recommended",
                                      "--out", "rec.json"], tmp_path, capsys, monkeypatch)
    assert code == 0, err
    document = json.loads((tmp_path / "rec.json").read_text())
    assert document["trial"] == 1 and document["params"]["rank"] == 2
    assert document["selection"]["pick"] == "recommended"
    assert document["selection"]["tied"] == ["rank 8, alpha 8, dropout 0.1",
                                             "rank 2, alpha 8, dropout 0.1"]
    code, _, err = search_in_process(["export", "--storage", url, "--out", "best.json"],
                                     tmp_path, capsys, monkeypatch)
    assert code == 0 and json.loads((tmp_path / "best.json").read_text())["trial"] == 0
    assert "best trial 0" in err


def test_export_pick_recommended_of_an_old_study_is_one_line_exit_2(study, tmp_path, capsys,
                                                                    monkeypatch):
    add_trial(study, range(10), rank=8, with_outcomes=False)
    code, _, err = search_in_process(["export", "--storage", f"sqlite:///{tmp_path / 'v.db'}",
                                      "--pick", "recommended"], tmp_path, capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1
    assert "has no recommendation: no tie test" in err
    assert not (tmp_path / "best.json").exists()


def test_the_baseline_is_outside_holms_family_and_can_be_the_tied_one(study):
    add_trial(study, range(20), rank=8, params=8000)   # best LoRA: 180 of 200
    add_trial(study, range(60), rank=2, params=2000)   # far below: not tied
    add_trial(study, range(18), rank=None, params=500)  # baseline 2 right more than the best
    verdict = assess(study)
    assert verdict.best.numbers == [0] and verdict.recommended.numbers == [0]
    baseline = next(c for c in verdict.configurations if c.baseline)
    assert verdict.tied(baseline)  # unadjusted, its own question
    line = closing_lines(verdict)[0]
    assert line.startswith("1 of 2 LoRA configurations are tied with the best")
    assert "recommended: the best, rank 8, alpha 8, dropout 0.1" in line
    assert "baseline 1.0 pp above the best (p = 0.50: not told apart from the best, LoRA may " \
           "not pay here)" in line


def test_a_study_with_only_baselines_compares_them(study):
    add_trial(study, range(10), rank=None)
    verdict = assess(study)
    assert verdict.best.baseline and verdict.recommended is verdict.best
    assert closing_lines(verdict)[0].startswith("no LoRA trial has completed; 1 of 1 baselines")


def test_the_report_draws_the_verdict(study, tmp_path, capsys, monkeypatch):
    add_trial(study, range(10), rank=8, params=8000)
    add_trial(study, range(11), rank=2, params=2000)
    add_trial(study, range(60), rank=None, params=500)
    code, _, err = search_in_process(["report", "--storage", f"sqlite:///{tmp_path / 'v.db'}",
                                      "--out", "r"], tmp_path, capsys, monkeypatch)
    assert code == 0, err
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert "**Recommended: rank 2, alpha 8, dropout 0.1** (2,000 trainable parameters" in markdown
    assert "- 1 of 2 LoRA configurations are tied with the best" not in markdown
    assert "- 2 of 2 LoRA configurations are tied with the best" in markdown
    header = (tmp_path / "r" / "report.csv").read_text().splitlines()[0]
    assert header.endswith("val_ci,test_ci,tied,recommended")


def test_the_report_of_an_old_study_says_why_it_has_no_intervals(study, tmp_path, capsys,
                                                                 monkeypatch):
    add_trial(study, range(10), rank=8, with_outcomes=False)
    code, _, err = search_in_process(["report", "--storage", f"sqlite:///{tmp_path / 'v.db'}",
                                      "--out", "r"], tmp_path, capsys, monkeypatch)
    assert code == 0, err
    assert "No tie test or intervals: 1 of 1 complete trials carry no per-example outcomes" in \
        (tmp_path / "r" / "report.md").read_text()
    assert "tied" not in (tmp_path / "r" / "report.csv").read_text().splitlines()[0]


def test_leaderboard_note_rewrites_the_notes_of_a_study_made_before(study, tmp_path, capsys,
                                                                   monkeypatch):
    from optuna_dashboard._note import get_note_from_system_attrs

    add_trial(study, range(10), rank=8, params=8000)
    add_trial(study, range(30), rank=None, params=500)
    args = ["leaderboard", "--storage", url(tmp_path), "--artifacts", str(tmp_path / "a")]
    code, out, err = search_in_process([*args, "--note"], tmp_path, capsys, monkeypatch)
    assert code == 0 and "rewrote 3 dashboard notes of study 'v'" in err
    assert "1 of 1 LoRA configurations are tied with the best" in out
    board = get_note_from_system_attrs(
        study._storage.get_study_system_attrs(study._study_id), None)["body"]
    assert "| 1 | COMPLETE | **baseline** (head) |" in board
    code, _, err = search_in_process([*args, "--note"], tmp_path, capsys, monkeypatch)
    assert "rewrote 0 dashboard notes" in err  # nothing changed


# The verdict of the demo's 3-seed study (its stored outcomes, tests/fixtures/demo_seeds3.json)
# against what the verdict before the vectorised, cached one said of the same trials.

FIXTURE = Path(__file__).parent / "fixtures" / "demo_seeds3.json"


def p_tolerance(p: float, resamples: int = 4000) -> float:
    """How far two bootstrap p-values of the same comparison, from independent resamplings,
    may lie apart: p = 2 q with q a share of B resamples has Monte Carlo sd 2 sqrt(q (1 - q)
    / B); the difference of two has sqrt(2) times that; 4 of those, plus one step of 2 / B."""
    q = min(p, 1.0) / 2
    return 4 * 2 * math.sqrt(2 * q * (1 - q) / resamples) + 2 / resamples


INTERVAL_TOLERANCE = 0.005
"""A percentile bound of the mean accuracy from 4,000 resamples has Monte Carlo sd ~0.0009
at 216 images x 3 seeds (sqrt(0.025 x 0.975 / 4000) over the density of the means at the
tail), so two resamplings' bounds lie within ~0.005 (4 sd of the difference), plus the means'
grid step of 1 / (3 x 216) ~ 0.0015 that a quantile jumps by."""


def fixture_study(subset: str, layout: str) -> tuple[optuna.Study, dict]:
    fixture = json.loads(FIXTURE.read_text())
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("train_spec", fixture["train_spec"])
    for trial in fixture["trials"]:
        if subset == "seed0" and trial["user_attrs"].get("replicate"):
            continue
        where = {"system_attrs": {}, "user_attrs": dict(trial["user_attrs"])}
        where["system_attrs" if layout == "system" else "user_attrs"]["outcomes"] = \
            trial["outcomes"]
        study.add_trial(optuna.trial.create_trial(
            params=trial["params"], distributions={k: DISTRIBUTIONS[k] for k in trial["params"]},
            value=trial["value"], **where))
    return study, fixture["verdict_before"][subset]


def beside_the_one_before(subset: str, layout: str):
    """The fixture's verdict now, what was said before, and each configuration's tie test
    beside what was said of it; the configurations in the same order."""
    study, before = fixture_study(subset, layout)
    verdict = assess(study)
    assert [sorted(c.numbers) for c in verdict.configurations] == [
        c["trials"] for c in before["configurations"]]
    pairs = [(configuration, verdict.ties[configuration.key], expected) for configuration,
             expected in zip(verdict.configurations, before["configurations"], strict=True)]
    return verdict, before, pairs


@pytest.mark.parametrize("layout", ["system", "user"])
def test_one_seed_verdict_equals_the_one_before_to_the_last_digit(layout):
    verdict, before, pairs = beside_the_one_before("seed0", layout)
    for configuration, tie, expected in pairs:
        assert (tie.p_value, tie.p_holm, tie.tied) == (expected["p_value"], expected["p_holm"],
                                                       expected["tied"])  # McNemar, Holm
        assert list(verdict.val_ci[configuration.key]) == expected["val_ci"]  # Wilson
        assert list(verdict.test_ci[configuration.key]) == expected["test_ci"]
    assert sorted(verdict.recommended.numbers) == before["recommended"]
    assert verdict.test_pvalue == before["test_pvalue"]


def test_three_seed_verdict_equals_the_one_before_within_monte_carlo_error():
    verdict, before, pairs = beside_the_one_before("all", "system")
    for configuration, tie, expected in pairs:
        assert abs(tie.p_value - expected["p_value"]) <= p_tolerance(expected["p_value"])
        # Holm multiplies a p-value by at most the family's size.
        holm_tolerance = len(verdict.configurations) * p_tolerance(expected["p_value"])
        assert abs(tie.p_holm - expected["p_holm"]) <= holm_tolerance
        if abs(expected["p_holm"] - 0.05) > holm_tolerance:
            assert tie.tied == expected["tied"]  # a decision clear of the line stays put
        for split in ("val", "test"):
            new = getattr(verdict, f"{split}_ci")[configuration.key]
            assert np.allclose(new, expected[f"{split}_ci"], atol=INTERVAL_TOLERANCE, rtol=0)
    assert sorted(verdict.best.numbers) == before["best"]
    assert sorted(verdict.recommended.numbers) == before["recommended"]


def test_a_kept_cache_gives_the_verdict_a_fresh_one_gives():
    study, _ = fixture_study("all", "system")
    trials = study.get_trials(deepcopy=False)
    cache = VerdictCache()
    assess(study, trials[:20], cache)  # a worker's earlier refresh, fewer trials
    kept, fresh = assess(study, trials, cache), assess(study, trials)
    assert kept.ties == fresh.ties
    assert kept.val_ci == fresh.val_ci and kept.test_ci == fresh.test_ci
    assert kept.recommended.key == fresh.recommended.key


def test_a_study_made_before_outcomes_and_history_moved_reads_as_before(tmp_path):
    """Outcomes and the per-epoch history were user attributes before they moved to the
    system attributes (which optuna-dashboard does not send with every trial)."""
    url_ = f"sqlite:///{tmp_path / 'old.db'}"
    old = optuna.create_study(storage=url_, study_name="v", direction="maximize")
    old.set_user_attr("train_spec", {"model": "vit_tiny_patch16_224"})
    add_trial(old, range(10), rank=8, params=8000, layout="user")
    add_trial(old, range(60), rank=None, params=500, layout="user")
    running = old.ask()
    running.set_user_attr("history", [{"epoch": 1, "val_acc": 0.5},
                                      {"epoch": 2, "val_acc": 0.625}])
    board = study_board(old, by="trial")
    rows = {row["number"]: row for row in board.frame.to_dict("records")}
    assert rows[0]["tied"] and rows[0]["recommended"] and rows[0]["val_ci"] is not None
    assert rows[2]["state"] == "RUNNING" and rows[2]["val_acc"] == 0.625
    assert board.verdict is not None and "baseline 25.0 pp below the best" in board.lines[0]
