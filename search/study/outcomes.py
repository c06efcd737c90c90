"""Per-example outcomes: which validation and test images a trial classified correctly.

They make every comparison of two trials paired (the same images, each right or wrong for
both), which is what tells a real difference from noise (`search.results.significance`). A
trial keeps them in its `outcomes` user attribute, one bit per image:

    {"val": "<base64 of numpy.packbits>", "n_val": 216, "val_order": "<crc32 of the labels>",
     "test": "...", "n_test": 359, "test_order": "..."}

A few hundred bytes for the demo, 0.6 / 1.2 KiB for CIFAR-100's 5,000 / 10,000 images: small
enough to live with the trial in the study (no artifact folder needed to read a leaderboard).
The `*_order` fingerprints say which examples in which order were scored: two trials are
compared only when theirs agree (the seeded splits give every trial of a study the same). A
pruned trial stores its validation outcomes at the epoch it reached, and no test outcomes.
"""

from __future__ import annotations

import base64
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # read-only commands (the leaderboard) decode outcomes without torch
    import torch

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


def trial_outcomes(attrs: dict[str, Any], split: str) -> tuple[np.ndarray, str] | None:
    """(the [N] bool outcomes, the order fingerprint) of a trial's `split` ("val" or "test"),
    or None when the trial has none (made before they were stored, pruned, unreadable)."""
    value = attrs.get(ATTR)
    if not isinstance(value, dict) or not isinstance(value.get(split), str):
        return None
    try:
        return decode_bits(value[split], int(value[f"n_{split}"])), str(value[f"{split}_order"])
    except (KeyError, TypeError, ValueError):
        return None
