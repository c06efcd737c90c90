"""Per-example outcomes: which validation and test images a trial classified correctly.

They make every comparison of two trials paired (the same images, each right or wrong for
both), which is what tells a real difference from noise (`search.results.significance`). A
trial keeps them in its `outcomes` system attribute, one bit per image:

    {"val": "<base64 of numpy.packbits>", "n_val": 216, "val_order": "<crc32 of the labels>",
     "test": "...", "n_test": 359, "test_order": "..."}

A few hundred bytes for the demo, 0.8 / 1.7 KiB a split for CIFAR-100's 5,000 / 10,000 images:
small enough to live with the trial in the study (no artifact folder needed to read a
leaderboard), too large for its user attributes, which optuna-dashboard sends with every trial
each time it polls a study (3.4 KiB a trial at 10,000 images: 17 MB at 5,000 trials). System
attributes stay on the server. Studies made before this kept them in the user attribute of the
same name; both are read.
The `*_order` fingerprints say which examples in which order were scored: two trials are
compared only when theirs agree (the seeded splits give every trial of a study the same). A
pruned trial stores its validation outcomes at the epoch it reached, and no test outcomes.
"""

from __future__ import annotations

import base64
import zlib
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from search.study.optuna_private import trial_id

if TYPE_CHECKING:  # read-only commands (the leaderboard) decode outcomes without torch
    import optuna
    import torch
    from optuna.trial import FrozenTrial

ATTR = "outcomes"


def order_fingerprint(labels: torch.Tensor) -> str:
    """The crc32 of a split's labels in order: equal for the same examples in the same order
    (and, for a different split, equal only by a 1-in-4-billion accident)."""
    data = labels.cpu().numpy().astype(np.int64).tobytes()
    return f"{zlib.crc32(data):08x}"


def encode_bits(correct: torch.Tensor) -> str:
    return base64.b64encode(np.packbits(correct.cpu().numpy().astype(bool)).tobytes()).decode()


def decode_bits(text: str, count: int) -> np.ndarray:
    packed = np.frombuffer(base64.b64decode(text), dtype=np.uint8)
    if packed.size * 8 < count:  # unpackbits would pad with zeros: wrong answers made up
        raise ValueError(f"{packed.size * 8} bits stored, {count} expected")
    return np.unpackbits(packed, count=count).astype(bool)


def outcomes_attr(val_correct: torch.Tensor, val_labels: torch.Tensor,
                  test_correct: torch.Tensor | None = None,
                  test_labels: torch.Tensor | None = None) -> dict[str, Any]:
    """The `outcomes` attribute of a trial from its [N] bool correctness tensors."""
    value: dict[str, Any] = {"val": encode_bits(val_correct), "n_val": len(val_correct),
                             "val_order": order_fingerprint(val_labels)}
    if test_correct is not None and test_labels is not None:
        value.update(test=encode_bits(test_correct), n_test=len(test_correct),
                     test_order=order_fingerprint(test_labels))
    return value


def record_outcomes(trial: optuna.Trial, value: dict[str, Any] | None) -> None:
    """Store (or, with None, clear) a trial's outcomes as a system attribute."""
    trial.storage.set_trial_system_attr(trial_id(trial), ATTR, value)


def stored_outcomes(trial: FrozenTrial) -> dict[str, Any] | None:
    """A trial's outcomes attribute: its system attribute, or in a study made before they
    moved there, its user attribute; None when it has none."""
    value = trial.system_attrs.get(ATTR)
    if value is None:
        value = trial.user_attrs.get(ATTR)
    return value if isinstance(value, dict) else None


class EncodedOutcomes(NamedTuple):
    """One split's outcomes as stored: the packed bits in base64, how many, in which order."""

    text: str
    count: int
    order: str


def encoded_outcomes(value: dict[str, Any] | None, split: str) -> EncodedOutcomes | None:
    """The `split` ("val" or "test") of an outcomes attribute, still encoded (the text is a
    cheap key for a cache of decoded rows); None when it has none or is malformed."""
    if not isinstance(value, dict) or not isinstance(value.get(split), str):
        return None
    try:
        count = int(value[f"n_{split}"])
        order = str(value[f"{split}_order"])
    except (KeyError, TypeError, ValueError):
        return None
    return EncodedOutcomes(value[split], count, order) if count > 0 else None


def trial_outcomes(trial: FrozenTrial, split: str) -> tuple[np.ndarray, str] | None:
    """(the [N] bool outcomes, the order fingerprint) of a trial's `split` ("val" or "test"),
    or None when the trial has none (made before they were stored, pruned, unreadable)."""
    encoded = encoded_outcomes(stored_outcomes(trial), split)
    if encoded is None:
        return None
    try:
        return decode_bits(encoded.text, encoded.count), encoded.order
    except ValueError:
        return None
