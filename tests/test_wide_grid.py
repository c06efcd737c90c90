"""A grid over learning rates, sets of adapted layers and LoRA variants, run by the real CLI
on the demo's tiny ViT: packed members that mix all three give the trials they give alone,
queueing stays idempotent, and DoRA points train alone and say why (issue 28)."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState
from run_cli import DEMO, search_in_process

from search.study.outcomes import stored_outcomes
from search.study.trials import configuration_key, is_baseline

WIDE = ["--ranks", "2", "4", "--alphas", "4", "--lrs", "1e-3", "3e-3",
        "--targets-sets", "qkv", "all", "--scalings", "lora", "rslora", "--epochs", "1"]


def grid(folder, capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    return search_in_process(["grid", "--spec", DEMO, "--storage",
                              f"sqlite:///{folder / 'search.db'}", *args],
                             folder, capsys, monkeypatch)


def configurations(folder) -> dict:
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{folder / 'search.db'}")
    trials = study.get_trials(deepcopy=False)
    assert all(t.state == TrialState.COMPLETE for t in trials)
    return {configuration_key(t): (t.value, stored_outcomes(t), t.params) for t in trials}


@pytest.fixture(scope="module")
def solo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("solo")
    with pytest.MonkeyPatch.context() as monkeypatch:
        from search.cli.main import main
        monkeypatch.chdir(folder)
        assert main(["grid", "--spec", DEMO, *WIDE, "--storage",
                     f"sqlite:///{folder / 'search.db'}", "--pack", "1"]) == 0
    return configurations(folder)


def test_a_pack_mixing_lrs_layers_and_scalings_gives_the_solo_trials(tmp_path, capsys,
                                                                       monkeypatch, solo):
    code, _, err = grid(tmp_path, capsys, monkeypatch, *WIDE, "--pack", "17")
    assert code == 0, err
    assert "pack of 17" in err
    packed = configurations(tmp_path)
    assert len(packed) == 1 + 2 * 2 * 2 * 2 and packed.keys() == solo.keys()
    lora = [key for key in packed if key[0] != "baseline"]
    assert {dict(key[3:]).get("targets") for key in lora} == {None, "all"}  # q,k,v: the spec's
    for key, (value, outcomes, params) in packed.items():
        assert value == pytest.approx(solo[key][0], abs=1e-4), key
        assert outcomes == solo[key][1], key  # each validation and test image alike
        assert params == solo[key][2]


def test_the_same_wide_grid_again_queues_nothing_and_the_specs_lr_is_the_old_point(
        tmp_path, capsys, monkeypatch):
    code, _, err = grid(tmp_path, capsys, monkeypatch, "--ranks", "2", "--alphas", "4",
                        "--epochs", "1", "--workers", "0")
    assert code == 0, err
    # The demo's lr is 3e-3 and its layers q,k,v: those points are the ones queued above.
    code, _, err = grid(tmp_path, capsys, monkeypatch, "--ranks", "2", "--alphas", "4",
                        "--lrs", "3e-3", "1e-3", "--targets-sets", "qkv", "--epochs", "1",
                        "--workers", "0")
    assert code == 0, err
    assert "queued 0 baselines and 1 grid point(s); 2 already there" in err
    code, _, err = grid(tmp_path, capsys, monkeypatch, "--ranks", "2", "--alphas", "4",
                        "--lrs", "3e-3", "1e-3", "--targets-sets", "qkv", "--epochs", "1",
                        "--workers", "0")
    assert "queued 0 baselines and 0 grid point(s); 3 already there" in err


def test_a_dora_point_trains_alone_and_the_worker_says_why(tmp_path, capsys, monkeypatch):
    code, _, err = grid(tmp_path, capsys, monkeypatch, "--ranks", "2", "--alphas", "4",
                        "--scalings", "lora", "dora", "--epochs", "1", "--pack", "3")
    assert code == 0, err
    assert "a DoRA point trains alone" in err
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{tmp_path / 'search.db'}")
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    dora = [t for t in trials if t.params.get("scaling") == "dora"]
    assert len(dora) == 1 and not is_baseline(dora[0])
    # DoRA trains a magnitude vector per adapted layer beside A and B.
    plain = next(t for t in trials if not is_baseline(t) and t is not dora[0])
    assert dora[0].user_attrs["trainable_params"] > plain.user_attrs["trainable_params"]


def test_a_set_of_layers_the_model_lacks_is_refused_before_anything_is_written(
        tmp_path, capsys, monkeypatch):
    spec = tmp_path / "cnn.toml"
    spec.write_text('[train]\nmodel = "resnet18"\npretrained = false\ntargets = "conv2"\n'
                    'dataset = "digits"\nimage_size = 32\n')
    code, _, err = search_in_process(
        ["grid", "--spec", str(spec), "--targets-sets", "all", "--workers", "0", "--storage",
         f"sqlite:///{tmp_path / 'search.db'}"], tmp_path, capsys, monkeypatch)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1
    assert "q" in err and "resnet18" in err, err
    assert not (tmp_path / "search.db").exists()


def test_tpe_draws_the_lr_on_its_log_range_and_layers_and_variants_from_their_sets(
        tmp_path, capsys, monkeypatch):
    code, _, err = search_in_process(
        ["optuna", "--spec", DEMO, "--trials", "4", "--lr-range", "1e-3", "1e-2",
         "--targets-sets", "qkv", "all", "--scalings", "lora", "rslora", "dora",
         "--epochs", "1", "--storage", f"sqlite:///{tmp_path / 'search.db'}"],
        tmp_path, capsys, monkeypatch)
    assert code == 0, err
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{tmp_path / 'search.db'}")
    sampled = [t for t in study.get_trials(deepcopy=False) if not is_baseline(t)]
    assert len(sampled) == 4 and all(t.state == TrialState.COMPLETE for t in sampled)
    for trial in sampled:
        assert {"lr", "targets", "scaling"} <= trial.params.keys()
        assert 1e-3 <= trial.params["lr"] <= 1e-2
        assert trial.params["targets"] in ("qkv", "all")
        assert trial.params["scaling"] in ("lora", "rslora", "dora")
    # The study keeps the search: a worker elsewhere draws from the same space.
    from search.study.study_record import StudyRecord
    assert StudyRecord(study).tpe_search.space.lr_range == (1e-3, 1e-2)
