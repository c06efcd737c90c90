"""Which of a LoRA point's params beside rank, alpha and dropout the results show, and how.

A point may set its learning rate, its adapted layers and its LoRA variant
(`search.study.space.EXTRA_PARAMS`). Every results surface (the leaderboard and its CSV and
JSON, the report, the dashboard's notes, the model card's leaderboard, the verdict's lines and
the export's selection) shows a column for one of them only where it tells the study's LoRA
trials apart: where some LoRA trial's effective value is not the spec's (the spec's lr, the
spec's targets, plain LoRA). Such a value then varies among the study's points, or all of them
left the spec's value, which the results would otherwise hide. A study made before these
params existed, and a grid or TPE search that does not search them, hold no point that sets
one, and show exactly what they always showed.

The values shown are the effective ones (`objectives.spec.trial_lr`, `trial_spec`):

    lr       the point's learning rate, else the spec's (a float; text: `format_lr`)
    targets  the point's named set of layers (`TARGET_SETS`: qkv, qv, attn, all), else (and
             where they are the spec's layers) the spec's targets as the spec writes them
             (e.g. "q,k,v")
    scaling  the point's variant (`VARIANTS`): lora, rslora or dora

A baseline trial has none of them (None, shown "-"), as it has no rank.

The spec's values are read as stored (`StudyRecord.stored_spec`), never validated: results
show on any host, and a read-only command needs no timm.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from objectives.spec import LoraParams, TrainSpec
from search.study.space import (
    EXTRA_PARAMS,
    SpaceError,
    same_targets,
    target_set_name,
    variant_of,
)

COLUMNS = EXTRA_PARAMS  # ("lr", "targets", "scaling"), the order they are shown in
AFTER = "dropout"  # the column they follow
# How a variant reads in a sentence ("rank 8, alpha 8, dropout 0.1, rsLoRA").
VARIANT_WORDS = {"lora": "LoRA", "rslora": "rsLoRA", "dora": "DoRA"}
SPEC_DEFAULTS = TrainSpec()


def format_lr(value: float) -> str:
    """A learning rate as text: 0.001, 0.0003, 3e-5 (no zero-padded exponent)."""
    text = f"{value:.3g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


def shown_targets(targets: str) -> str:
    """A point's layers by their set's name (how its trial param stores them), else as
    written."""
    try:
        return target_set_name(targets)
    except SpaceError:
        return targets


@dataclass(frozen=True)
class PointColumns:
    """The extra columns a study's results show (`shown`, in `COLUMNS` order; empty for a
    study whose points set none) and the spec's values they fall back to."""

    shown: tuple[str, ...] = ()
    spec_lr: float = SPEC_DEFAULTS.lr
    spec_targets: str = SPEC_DEFAULTS.targets

    def effective(self, point: LoraParams) -> dict[str, Any]:
        """Every extra column's value of `point` (`COLUMNS`), shown or not."""
        own = point.targets is not None and not same_targets(point.targets, self.spec_targets)
        return {"lr": point.lr if point.lr is not None else self.spec_lr,
                "targets": shown_targets(point.targets) if own else self.spec_targets,
                "scaling": variant_of(point)}

    def values(self, point: LoraParams | None) -> dict[str, Any]:
        """The shown columns' values of `point`; None each for a baseline (no point)."""
        if point is None:
            return dict.fromkeys(self.shown)
        effective = self.effective(point)
        return {column: effective[column] for column in self.shown}

    def parts(self, point: LoraParams | None) -> list[str]:
        """The shown columns of `point` as words: "lr 0.001", "targets all", "rsLoRA"."""
        if point is None:
            return []
        return [word(column, value) for column, value in self.values(point).items()]

    def with_columns(self, columns: list[str], after: str = AFTER) -> list[str]:
        """`columns` with the shown ones right after `after`."""
        at = columns.index(after) + 1
        return [*columns[:at], *self.shown, *columns[at:]]


def word(column: str, value: Any) -> str:
    if column == "lr":
        return f"lr {format_lr(value)}"
    if column == "targets":
        return f"targets {value}"
    return VARIANT_WORDS.get(value, value)


def stored_spec_values(spec: dict[str, Any]) -> tuple[float, str]:
    """The learning rate and targets of a spec as stored (a study's dict, never validated),
    each the `TrainSpec` default where it is missing or unusable: what a point that sets
    neither trains with."""
    lr, targets = spec.get("lr"), spec.get("targets")
    usable = isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) \
        and lr > 0
    return (float(lr) if usable else SPEC_DEFAULTS.lr,
            targets if isinstance(targets, str) and targets.strip() else SPEC_DEFAULTS.targets)


def point_columns(points: Iterable[LoraParams | None], spec: dict[str, Any] | None = None
                  ) -> PointColumns:
    """The columns of a study whose LoRA trials have `points` (None, a baseline's or one not
    sampled yet, is skipped) and whose spec, as stored, is `spec`: those where some point's
    effective value is not the spec's."""
    lr, targets = stored_spec_values(spec or {})
    base = PointColumns(spec_lr=lr, spec_targets=targets)
    default = {"lr": base.spec_lr, "targets": base.spec_targets, "scaling": "lora"}
    differ: set[str] = set()
    for point in points:
        if point is None:
            continue
        effective = base.effective(point)
        differ |= {column for column in COLUMNS if effective[column] != default[column]}
        if len(differ) == len(COLUMNS):
            break
    return PointColumns(tuple(column for column in COLUMNS if column in differ),
                        base.spec_lr, base.spec_targets)


def study_columns(study, trials) -> PointColumns:
    """`point_columns` of the study's LoRA trials `trials` (as the study stores its spec)."""
    from search.study.study_record import StudyRecord
    from search.study.trials import trial_point

    return point_columns((trial_point(t) for t in trials), StudyRecord(study).stored_spec)


def own_parts(point: LoraParams | None) -> list[str]:
    """What `point` sets itself beside rank, alpha and dropout, as words (its lr, its set of
    layers, a variant other than plain LoRA): what one trial's own description (its dashboard
    note, an export's configuration) adds, whatever the rest of the study holds."""
    if point is None:
        return []
    parts = []
    if point.lr is not None:
        parts.append(word("lr", point.lr))
    if point.targets is not None:
        parts.append(word("targets", shown_targets(point.targets)))
    if variant_of(point) != "lora":
        parts.append(word("scaling", variant_of(point)))
    return parts
