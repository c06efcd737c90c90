"""Where a trial stands after a finished epoch, so that a re-run continues instead of starting
over: the trained weights (adapters and head), optimizer and scheduler state, the random
number generators, and the epochs so far.

Restoring every generator makes a resumed trial compute exactly what an uninterrupted one
would have on the CPU (the batch order, augmentation and dropout masks all continue).
A checkpoint is a plain `torch.save` of tensors, numbers, strings and lists, so it loads with
`weights_only=True` (no pickled code runs when a shared artifact folder is read).
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from typing import Any, BinaryIO

import torch

from objectives.spec import LoraParams
from objectives.user_error import UserError, first_line

# 2: seeded adapters and the dropout generator (format 1 resumed would draw other masks).
FORMAT = 2


class CheckpointError(UserError):
    """A checkpoint that cannot be read or belongs to another trial; one line for the user."""


@dataclass(frozen=True)
class EpochStats:
    epoch: int  # 1-based
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    images_per_second: float
    # Which validation images this epoch's model classified correctly ([N] bool, CPU): what
    # pairs two trials' accuracies. Checkpoints keep only the last epoch's: a trial resumed
    # after its final epoch reports it without training again.
    val_correct: torch.Tensor | None = dataclasses.field(default=None, repr=False,
                                                         compare=False)


@dataclass
class TrainingState:
    """A trial after `epoch` finished epochs (everything on the CPU); after the last one, it
    holds all a trial's result needs but the test pass (which is cheap to redo)."""

    epoch: int
    lora: LoraParams | None
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    batch_generator: torch.Tensor  # batch order and augmentation
    cpu_generator: torch.Tensor  # torch's default generator (any other layer's randomness)
    cuda_generator: torch.Tensor | None
    history: list[EpochStats]
    train_seconds: float
    step_seconds: float
    dropout_generator: torch.Tensor | None = None  # the adapters' dropout masks

    def check_matches(self, lora: LoraParams | None, epochs: int) -> None:
        if self.lora != lora:
            raise CheckpointError(f"the checkpoint is of {self.lora}, not of {lora}")
        if self.epoch > epochs:
            raise CheckpointError(f"the checkpoint is after epoch {self.epoch}; the trial has "
                                  f"only {epochs}")


def write_training_state(state: TrainingState, stream: BinaryIO) -> None:
    values = dataclasses.asdict(state)
    values["lora"] = dataclasses.asdict(state.lora) if state.lora is not None else None
    values["history"] = [{**epoch, "val_correct": None} for epoch in values["history"][:-1]] \
        + values["history"][-1:]
    torch.save({"format": FORMAT, **values}, stream)


def training_state_bytes(state: TrainingState) -> bytes:
    buffer = io.BytesIO()
    write_training_state(state, buffer)
    return buffer.getvalue()


def read_training_state(stream: BinaryIO) -> TrainingState:
    try:
        values = torch.load(stream, map_location="cpu", weights_only=True)
        if values.pop("format") != FORMAT:
            raise CheckpointError("checkpoint of an unknown format")
        values["lora"] = LoraParams(**values["lora"]) if values["lora"] is not None else None
        values["history"] = [EpochStats(**epoch) for epoch in values["history"]]
        return TrainingState(**values)
    except CheckpointError:
        raise
    except Exception as error:  # truncated file, not a torch file, missing keys
        raise CheckpointError(f"unreadable checkpoint ({type(error).__name__}: "
                              f"{first_line(error)})") from None
