"""Seeds: every configuration trained N times, on the same splits; the real CLI on the demo."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import optuna
import pytest
import torch
from run_cli import FAST, search

from objectives.data import load_splits
from search.study.outcomes import trial_outcomes
from search.study.replicates import replicate_train_spec
from search.study.study_spec import load_spec


def test_a_replicate_trains_with_another_seed_on_the_same_splits():
    spec = dataclasses.replace(load_spec(FAST[1]).train, seed=5)
    other = replicate_train_spec(spec, 2)
    assert (other.seed, other.split_seed) == (7, 5)
    assert replicate_train_spec(spec, 0) is spec
    first, second = load_splits(spec), load_splits(other)
    assert torch.equal(first.val_labels, second.val_labels)
    assert torch.equal(first.val_images, second.val_images)
    assert torch.equal(first.test_images, second.test_images)
    moved = load_splits(dataclasses.replace(spec, seed=7))  # no split_seed: the split moves
    assert not torch.equal(first.val_images, moved.val_images)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> Path:
    """A demo grid (baseline + one point, one epoch) with 3 seeds, one local worker."""
    folder = tmp_path_factory.mktemp("seeds")
    result = search("grid", *FAST, "--ranks", "2", "--alphas", "4", "--seeds", "3",
                    "--workers", "1", cwd=folder)
    (folder / "grid.stderr").write_text(result.stderr)
    (folder / "grid.stdout").write_text(result.stdout)
    return folder


def demo_trials(folder: Path) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{folder / 'search.db'}")
    return study.get_trials()


def test_a_three_seed_grid_trains_each_configuration_exactly_three_times(seeded):
    trials = demo_trials(seeded)
    assert len(trials) == 6 and {t.state.name for t in trials} == {"COMPLETE"}
    configurations = {}
    for trial in trials:
        key = (trial.user_attrs["baseline"], trial.params.get("rank"), trial.params.get("alpha"))
        configurations.setdefault(key, []).append(trial.user_attrs["seed"])
    assert {key: sorted(seeds) for key, seeds in configurations.items()} == {
        (True, None, None): [0, 1, 2], (False, 2, 4.0): [0, 1, 2]}
    # Seeds train differently but score the same images.
    orders = {trial_outcomes(t, "val")[1] for t in trials}
    assert len(orders) == 1
    lora = [t for t in trials if not t.user_attrs["baseline"]]
    assert len({tuple(trial_outcomes(t, "val")[0]) for t in lora}) > 1


def test_the_workers_leave_the_leaderboard_in_the_studys_note(seeded):
    from optuna_dashboard._note import get_note_from_system_attrs

    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{seeded / 'search.db'}")
    board = get_note_from_system_attrs(
        study._storage.get_study_system_attrs(study._study_id), None)["body"]
    assert "### Configurations over their seeds" in board
    trial_rows = board.split("### Trials")[1]
    assert sum(line.startswith("| ") for line in trial_rows.splitlines()) == 6 + 1  # + header
    assert "bootstrap over 3 seeds x 216 validation images" in board


def test_the_configurations_of_one_seed_share_a_pack(seeded):
    packs = re.findall(r"pack of (\d+): trials ([\d, ]+)", (seeded / "grid.stderr").read_text())
    trials = {t.number: t.user_attrs["seed"] for t in demo_trials(seeded)}
    assert len(packs) == 3
    for size, numbers in packs:
        members = [int(n) for n in numbers.split(", ")]
        assert len(members) == int(size) == 2 and len({trials[n] for n in members}) == 1


def test_the_leaderboard_groups_replicates_and_closes_with_the_verdict(seeded):
    out = (seeded / "grid.stdout").read_text()
    assert "bootstrap over 3 seeds x 216 validation images" in out
    rows = json.loads(search("leaderboard", "--format", "json", cwd=seeded).stdout)
    assert len(rows) == 2 and [row["seeds"] for row in rows] == [3, 3]
    assert sum(row["recommended"] for row in rows) == 1
    for row in rows:
        assert row["val_ci"][0] <= row["val_acc"] <= row["val_ci"][1]
        assert row["val_sd"] > 0 or row["baseline"]
    per_trial = json.loads(search("leaderboard", "--format", "json", "--by", "trial",
                                  cwd=seeded).stdout)
    assert len(per_trial) == 6 and all(len(row["val_ci"]) == 2 for row in per_trial)


def test_queueing_seeds_again_adds_only_the_missing_replicates(seeded):
    again = search("grid", *FAST, "--ranks", "2", "--alphas", "4", "--workers", "0",
                   cwd=seeded)
    assert "queued 0 baselines and 0 grid point(s); 6 already there" in again.stderr
    wider = search("grid", *FAST, "--ranks", "2", "--alphas", "4", "--seeds", "4",
                   "--workers", "0", cwd=seeded)
    assert "queued 1 baseline and 1 grid point(s); 6 already there" in wider.stderr
    waiting = [t for t in demo_trials(seeded) if t.state.name == "WAITING"]
    assert sorted(t.user_attrs.get("replicate") for t in waiting) == [3, 3]


def test_a_tpe_trial_queues_its_point_with_the_other_seeds_when_it_completes(tmp_path):
    result = search("optuna", *FAST, "--trials", "2", "--seeds", "2", "--pruner", "none",
                    "--workers", "1", "--pack", "1", cwd=tmp_path)
    assert result.stderr.count("queued 1 more seed(s) of its point") == 2
    trials = demo_trials(tmp_path)
    assert {t.state.name for t in trials} == {"COMPLETE"}
    sampled = [t for t in trials if t.user_attrs.get("sampled")]
    replicates = [t for t in trials if not t.user_attrs["baseline"]
                  and not t.user_attrs.get("sampled")]
    assert len(sampled) == 2 and len(replicates) == 2  # --trials counts configurations
    assert sorted(t.params["rank"] for t in sampled) == sorted(
        t.params["rank"] for t in replicates)
    assert {t.user_attrs["seed"] for t in replicates} == {1}
    assert sorted(t.user_attrs["seed"] for t in trials if t.user_attrs["baseline"]) == [0, 1]
    topped = search("optuna", *FAST, "--trials", "2", "--pruner", "none", "--workers", "0",
                    cwd=tmp_path)
    assert "queued 0 TPE trial(s) to reach 2" in topped.stderr
