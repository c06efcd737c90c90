"""Baseline trials: the reference points a study trains without LoRA.

Every study holds the no-LoRA baseline of its own model (frozen backbone, new head trained).
A spec may list more under `[study] baselines`, to compare several models in one study, as the
paper compares ViT-B/16 + LoRA with head-only ResNet50 and EfficientNet-B0:

    baselines = ["head", "resnet50:head", "efficientnet_b0:head"]
    baselines = ["head", { model = "resnet50", head_hidden = 1024 }]

An entry is "head" (the study's model), "MODEL:head" (a timm model, ImageNet-pretrained from
the hub when the study's `pretrained` is true), or a table with `model` and optionally
`method` ("head"), `model_kwargs`, `weights` (a checkpoint file or export folder for that
model) and `head_hidden`. Another model starts from its own defaults, not the study model's
`model_kwargs`, `weights` or `head_hidden`; data, augmentation and optimisation are the study's.

Each baseline trial carries `baseline = True`, `model`, `method` and, for any but the study's
own, `train_overrides`: the `TrainSpec` fields it replaces, which is all a worker needs.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from objectives.spec import TrainSpec
from objectives.user_error import UserError

METHODS = ("head",)  # frozen backbone, new head trained
OWN_MODEL = "head"


class BaselineError(UserError):
    """A baseline entry that cannot be used; one line for the user."""


@dataclass(frozen=True)
class Baseline:
    """One no-LoRA reference trial; `model=None` is the study's own model."""

    model: str | None = field(default=None, metadata={
        "help": "timm model name (required in a table); ImageNet-pretrained from the hub when "
                "the study's pretrained is true",
        "default": "the study's model"})
    method: str = field(default="head", metadata={
        "help": "head: frozen backbone, new head trained (the only method)"})
    model_kwargs: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "keyword arguments for timm.create_model; not the study model's"})
    weights: str | None = field(default=None, metadata={
        "help": "a checkpoint file or export folder for this model, relative to the spec file"})
    head_hidden: int = field(default=0, metadata={
        "help": "> 0: a Linear -> ReLU -> Linear head with this many hidden units"})

    def train_overrides(self) -> dict[str, Any]:
        """The `TrainSpec` fields this baseline replaces; empty for the study's own model."""
        if self.model is None:
            return {}
        return {"model": self.model, "model_kwargs": dict(self.model_kwargs),
                "weights": self.weights, "head_hidden": self.head_hidden}

    def key(self) -> tuple:
        """What makes two baseline trials the same point of the study."""
        overrides = self.train_overrides()
        return ("baseline", json.dumps(overrides, sort_keys=True)) if overrides else ("baseline",)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DEFAULT_BASELINES = (Baseline(),)


def parse_baselines(values: Any, study: TrainSpec, relative_to: Path | None = None
                    ) -> tuple[Baseline, ...]:
    """Baselines from a spec's `[study] baselines` list (see the module docstring). The
    study's own head-only baseline is always included, first, whether listed or not, and an
    entry naming the study's model with nothing else is that one."""
    if not isinstance(values, list):
        raise BaselineError(f"baselines must be a list, got {values!r}")
    own = Baseline(model=study.model, head_hidden=study.head_hidden)
    parsed = [parse_entry(value, relative_to) for value in values]
    parsed = [Baseline() if entry == own else entry for entry in parsed]
    baselines = [Baseline(), *(b for b in parsed if b != Baseline())]
    keys = [b.key() for b in baselines]
    if len(set(keys)) != len(keys):
        raise BaselineError("baselines lists the same baseline twice")
    return tuple(baselines)


def parse_entry(value: Any, relative_to: Path | None) -> Baseline:
    if isinstance(value, str):
        model, _, method = value.rpartition(":")
        if value == OWN_MODEL:
            return Baseline()
        if not model:
            raise BaselineError(f"baseline {value!r}: write 'head' or 'MODEL:head'")
        return checked(Baseline(model=model, method=method))
    if isinstance(value, dict):
        unknown = set(value) - {f.name for f in dataclasses.fields(Baseline)}
        if unknown:
            raise BaselineError(f"baseline {value!r}: unknown key(s) {sorted(unknown)}")
        if not isinstance(value.get("model"), str):
            raise BaselineError(f"baseline {value!r}: needs model = \"TIMM_NAME\"")
        weights = value.get("weights")
        if isinstance(weights, str) and relative_to is not None:
            weights = str((relative_to / weights).resolve())
        return checked(Baseline(**{**value, "weights": weights}))
    raise BaselineError(f"baseline {value!r}: use a string or a table")


def checked(baseline: Baseline) -> Baseline:
    import timm

    if baseline.method not in METHODS:
        raise BaselineError(f"baseline {baseline.model}:{baseline.method}: unknown method; "
                            f"known: {', '.join(METHODS)}")
    if baseline.model is not None and not timm.is_model(baseline.model):
        raise BaselineError(f"baseline model {baseline.model!r} is not a timm model "
                            "(see timm.list_models())")
    if not isinstance(baseline.model_kwargs, dict):
        raise BaselineError(f"baseline {baseline.model}: model_kwargs must be a table")
    if not isinstance(baseline.head_hidden, int) or baseline.head_hidden < 0:
        raise BaselineError(f"baseline {baseline.model}: head_hidden must be an integer >= 0")
    if baseline.weights is not None and not Path(baseline.weights).exists():
        raise BaselineError(f"baseline {baseline.model}: weights {baseline.weights} "
                            "does not exist")
    return baseline


def baselines_from_dicts(values: list[dict[str, Any]]) -> tuple[Baseline, ...]:
    """Baselines as a study stores them (`Baseline.to_dict` each)."""
    return tuple(Baseline(**value) for value in values)


def baseline_train_spec(spec: TrainSpec, overrides: dict[str, Any] | None) -> TrainSpec:
    """The spec a baseline trial trains: the study's with the baseline's fields replaced."""
    return dataclasses.replace(spec, **overrides) if overrides else spec
