"""Study specs: the shipped TOML files, overrides, and every kind of malformed input."""

from __future__ import annotations

import pytest

from objectives.spec import TrainSpec
from search.study.study_spec import (
    DEFAULT_SPEC,
    SpecError,
    describe_differences,
    load_spec,
    train_spec_from_dict,
    with_overrides,
)

MODEL_CARD = {
    "model": "vit_small_patch16_224", "pretrained": True, "targets": "q,k,v",
    "dataset": "cifar100", "image_size": 224, "epochs": 10, "batch_size": 128, "lr": 3e-4,
    "weight_decay": 1e-4,
}


def test_default_spec_is_the_model_card():
    spec = load_spec()
    assert spec.name == "cifar100-vit-s"
    for key, value in MODEL_CARD.items():
        assert getattr(spec.train, key) == value, key
    augment = spec.train.augment
    assert augment.hflip == 0.5 and augment.crop_padding == 28
    assert augment.color_jitter == (0.3, 0.3, 0.3, 0.05)
    assert augment.mean == (0.5071, 0.4867, 0.4408)
    assert augment.std == (0.2675, 0.2565, 0.2761)
    assert spec.grid.ranks == (2, 4, 8) and spec.grid.alphas == (2.0, 4.0, 8.0)
    assert DEFAULT_SPEC.name == "cifar100-vit-s.toml"


def test_demo_spec_is_offline_and_small():
    spec = load_spec(DEFAULT_SPEC.with_name("demo.toml"))
    assert spec.train.dataset == "digits" and spec.train.weights.endswith(".safetensors")
    assert spec.train.epochs >= 3


def test_spec_round_trips_through_a_dict():
    spec = load_spec().train
    assert train_spec_from_dict(spec.to_dict(), "stored") == spec
    assert TrainSpec.from_dict(spec.to_dict()) == spec


def test_overrides_replace_single_fields():
    spec = with_overrides(load_spec(), epochs=3, lr=0.01, targets="q,v", model=None)
    assert (spec.train.epochs, spec.train.lr, spec.train.targets) == (3, 0.01, "q,v")
    assert spec.train.model == "vit_small_patch16_224"


@pytest.mark.parametrize("text, message", [
    ("[train]\nepochs = 0\n", "epochs must be >= 1"),
    ("[train]\nepochs = 'ten'\n", "epochs must be an integer"),
    ("[train]\nlr = -1\n", "lr must be > 0"),
    ("[train]\ntargets = 'out'\n", "no Linear or ungrouped Conv2d layer named 'out'"),
    ("[train]\ntargets = 'q;v'\n", "targets must be comma-separated layer names"),
    ("[train]\nmodel = 'not_a_model'\n", "unknown timm model"),
    ("[train]\ndataset = 'nope'\n", "unknown dataset"),
    ("[train]\nbogus = 1\n", "unknown key(s) ['bogus']"),
    ("[train.augment]\ncolor_jitter = [0.1]\n", "must be a list of 4 numbers"),
    ("[grid]\nranks = [0]\n", "rank must be a positive integer"),
    ("[grid]\ndropouts = [1.0]\n", "dropout must be a number in [0, 1)"),
    ("[grids]\n", "unknown table"),
    ("[train\n", "not valid TOML"),
    ("[optuna]\ntrials = 0\n", "optuna: trials must be an integer >= 1"),
    ("[optuna]\ndropout_range = [0.3, 0.1]\n", "optuna: dropout range must have LO < HI"),
    ("[optuna]\npruner = 'asha'\n", "optuna: pruner must be one of"),
    ("[optuna]\nsampler = 'cmaes'\n", "optuna: unknown key(s) ['sampler']"),
    ("[study]\nseeds = 0\n", 'study.seeds must be an integer from 1 to 20 or "auto", got 0'),
    ("[study]\nseeds = 2.5\n", 'study.seeds must be an integer from 1 to 20 or "auto", got 2.5'),
    ("[study]\nseeds = true\n", 'study.seeds must be an integer from 1 to 20 or "auto", got '
                                 "True"),
    ("[study]\nseeds = 'often'\n", 'study.seeds must be an integer from 1 to 20 or "auto"'),
    ("[study]\nseeds = 'auto'\nmax_seeds = 30\n", "study.max_seeds must be an integer from 1 "
                                                  "to 20"),
    ("[study]\nseeds = 'auto'\nmargin = 0\n", "study.margin must be a number of percentage "
                                               "points above 0"),
])
def test_malformed_specs_are_one_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "missing.toml")


def test_differences_ignore_host_local_fields():
    stored = load_spec().train
    asked = with_overrides(load_spec(), epochs=5, data_dir="/elsewhere", device="cpu").train
    assert describe_differences(stored, asked) == ["epochs: 10 -> 5"]


def test_the_model_card_tpe_search_is_the_default():
    search = load_spec().tpe
    assert search.trials == 10 and search.pruner == "median" and search.seed == 0
    assert search.space.ranks == (2, 4, 8) and search.space.alphas == (2.0, 4.0, 8.0)
    assert search.space.dropout_range == (0.05, 0.30)
