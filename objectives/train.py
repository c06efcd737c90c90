"""One trial: train a baseline or LoRA model on uint8 data held on the device, then evaluate.

The loop is deliberately plain (nanoGPT-style): the dataset lives on the device as uint8,
each batch is gathered by index, augmented there, and losses/accuracies accumulate in device
tensors so the loop never waits on the host except once per epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from objectives import augment
from objectives.adapter_seeding import dropout_generator, use_dropout_generator
from objectives.checkpoint import CheckpointError, EpochStats, TrainingState
from objectives.data import ImageSplits, load_splits
from objectives.export_folder import describe_misfits
from objectives.metrics import ClassificationMetrics, classification_metrics, confusion_matrix
from objectives.model import (
    ParameterCount,
    build_model,
    count_parameters,
    load_trainable_state,
    trainable_state_dict,
)
from objectives.spec import LoraParams, TrainSpec, trial_lr


@dataclass
class TrialResult:
    val_acc: float
    test: ClassificationMetrics
    parameters: ParameterCount
    train_seconds: float
    images_per_second: float
    device: str
    epochs: list[EpochStats]
    confusion: torch.Tensor  # [C, C] on the CPU, rows = true class
    test_probabilities: torch.Tensor = field(repr=False)  # [N, C] float32 softmax, CPU
    test_labels: torch.Tensor = field(repr=False)  # [N] int64, CPU
    weights: dict[str, torch.Tensor] = field(repr=False)  # adapters + head, CPU

    @property
    def val_correct(self) -> torch.Tensor:
        """[N] bool: the validation images the final model classified correctly."""
        return self.epochs[-1].val_correct

    @property
    def test_correct(self) -> torch.Tensor:
        """[N] bool: the test images the final model classified correctly."""
        return self.test_probabilities.argmax(dim=1) == self.test_labels

    def summary(self) -> dict[str, float | int | str]:
        """The scalar results a study records for the trial."""
        return {
            "val_acc": self.val_acc,
            "test_acc": self.test.accuracy,
            "f1": self.test.weighted_f1,
            "auc_micro": self.test.auc_micro,
            "auc_macro": self.test.auc_macro,
            "trainable_params": self.parameters.trainable,
            "total_params": self.parameters.total,
            "trainable_pct": self.parameters.trainable_pct,
            "train_seconds": self.train_seconds,
            "images_per_second": self.images_per_second,
            "device": self.device,
        }


OnEpoch = Callable[[EpochStats], None]
OnStep = Callable[[int], None]
OnCheckpoint = Callable[[TrainingState], None]


def use_threads(count: int) -> None:
    """CPU threads for this process (several workers on one host share its cores)."""
    torch.set_num_threads(count)


def visible_gpus() -> int:
    return torch.cuda.device_count()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


Forward = Callable[[torch.Tensor], torch.Tensor]


def compile_full_batches(model: nn.Module, batch_sizes: set[int]) -> Forward:
    """`model`'s forward, compiled for batches of exactly `batch_sizes` images.

    Compiling with static shapes gives one graph per (size, train/eval mode); the last,
    smaller batch of an epoch or evaluation runs eagerly instead of costing another compile
    (or a slower dynamic-shape graph) for a single batch.
    """
    compiled = torch.compile(model, dynamic=False)

    def forward(images: torch.Tensor) -> torch.Tensor:
        return compiled(images) if len(images) in batch_sizes else model(images)

    return forward


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, spec: TrainSpec,
            forward: Forward | None = None, image_dim: int = 0) -> torch.Tensor:
    """Float32 logits for uint8 images already on the model's device; `forward` (default: the
    model's) is a compiled forward of the same model; `image_dim` is the logits' image
    dimension (1 for a pack's [members, images, classes])."""
    model.eval()
    forward = forward or model
    outputs = []
    for start in range(0, len(images), spec.eval_batch_size):
        batch = augment.eval_batch(images[start:start + spec.eval_batch_size], spec.augment,
                                   spec.image_size)
        with autocast(images.device, spec.bf16):
            outputs.append(forward(batch).float())
    return torch.cat(outputs, dim=image_dim)


def train_mode(model: nn.Module, lora: bool) -> None:
    """Put `model` in training mode for a trial's training steps: frozen means frozen.

    A LoRA trial trains in train mode (adapter dropout); a baseline's frozen backbone stays
    in eval mode, dropout included. In both, every normalisation layer with running statistics
    (BatchNorm, tracked InstanceNorm, ...) whose own parameters are frozen stays in eval mode:
    the checkpoint and the exported weights hold only what requires grad
    (`trainable_state_dict`), so statistics drifting in train mode would make the exported
    model, `search predict` and a resumed trial differ from the model that was evaluated.
    A trainable norm layer (one in a trained head) updates its statistics as usual.
    """
    model.train(lora)
    for module in model.modules():
        if getattr(module, "track_running_stats", False) or any(
                name.startswith("running_") for name, _ in module.named_buffers(recurse=False)):
            module.train(any(p.requires_grad for p in module.parameters(recurse=False)))


def autocast(device: torch.device, bf16: bool = True):
    # bf16 on CUDA keeps the frozen matmuls fast; the CPU stays in fp32 for exact repeatability.
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")


def run_trial(spec: TrainSpec, lora: LoraParams | None, data: ImageSplits | None = None,
              on_epoch: OnEpoch | None = None, on_step: OnStep | None = None,
              on_checkpoint: OnCheckpoint | None = None,
              resume: TrainingState | None = None) -> TrialResult:
    """Train `spec`'s model (baseline when `lora` is None) and evaluate it on val and test.

    `on_epoch` sees every epoch's statistics and may raise to stop the trial (pruning);
    `on_step` sees the number of images of every training step (progress bars) and may raise
    too; `on_checkpoint`, when given, receives the training state after every epoch, and
    `resume` continues from such a state instead of starting at epoch 1 (after the last
    epoch: only the test pass runs, for a trial whose end could not be recorded).
    """
    device = resolve_device(spec.device)
    data = data if data is not None else load_splits(spec)
    model = build_model(spec, data.num_classes, lora).to(device)
    parameters = count_parameters(model)
    forward = (compile_full_batches(model, {spec.batch_size, spec.eval_batch_size})
               if spec.compile else model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = ScheduledAdamW(trainable, spec, len(data.train_labels),
                               fused=device.type == "cuda", lr=trial_lr(spec, lora))
    generator = torch.Generator(device).manual_seed(spec.seed)
    masks = dropout_generator(spec.seed, device)
    use_dropout_generator(model, masks)

    train_x, train_y = data.train_images.to(device), data.train_labels.to(device)
    val_x, val_y = data.val_images.to(device), data.val_labels.to(device)
    history: list[EpochStats] = []
    train_seconds = step_seconds = 0.0
    if resume is not None:
        resume.check_matches(lora, spec.epochs)
        restore(resume, model, optimizer.optimizer, optimizer.scheduler, generator, masks)
        history = list(resume.history)
        train_seconds, step_seconds = resume.train_seconds, resume.step_seconds
    for epoch in range(len(history) + 1, spec.epochs + 1):
        epoch_start = time.perf_counter()
        train_mode(model, lora is not None)
        totals = train_epoch(lambda images: forward(images)[None], solo_loss, optimizer, 1,
                             train_x, train_y, spec, generator, on_step)
        step_seconds += totals.seconds
        (stats,) = totals.stats(epoch, predict(model, val_x, spec, forward)[None], val_y)
        history.append(stats)
        train_seconds += time.perf_counter() - epoch_start
        if on_checkpoint is not None:
            on_checkpoint(training_state(
                lora, trainable_state_dict(model), on_cpu(optimizer.optimizer.state_dict()),
                optimizer.scheduler.state_dict(), generator, masks, history, train_seconds,
                step_seconds))
        if on_epoch is not None:
            on_epoch(stats)

    test_y = data.test_labels.to(device)
    test_logits = predict(model, data.test_images.to(device), spec, forward)
    return trial_result(test_logits, test_y, data.num_classes, parameters, history,
                        train_seconds, step_seconds, spec.epochs * len(train_y),
                        trainable_state_dict(model))


class ScheduledAdamW:
    """A trial's optimiser: AdamW over `params` at `lr` (default: the spec's) and its cosine
    schedule down to the last of `spec.epochs` epochs of `train_size` images, stepped
    together once per batch."""

    def __init__(self, params: list[nn.Parameter], spec: TrainSpec, train_size: int,
                 fused: bool, lr: float | None = None) -> None:
        self.optimizer = torch.optim.AdamW(params, lr=spec.lr if lr is None else lr,
                                           weight_decay=spec.weight_decay, fused=fused)
        steps = spec.epochs * math.ceil(train_size / spec.batch_size)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=steps)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.optimizer.step()
        self.scheduler.step()


# `train_epoch` sees every model as a pack: logits [K, B, C] for K members (a trial alone is
# a pack of one) and their losses [K], whose sum it minimises.
PackForward = Callable[[torch.Tensor], torch.Tensor]
LossOf = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, labels) -> [K]


def solo_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A pack of one's loss: its mean cross-entropy, [1]. Not the pack's per-image reduction,
    whose mean can differ in the last bit: a trial's numbers stay those it always had."""
    return F.cross_entropy(logits[0].float(), labels)[None]


@dataclass
class EpochTotals:
    """What one epoch's training steps summed, per member, read back once."""
    loss_sums: list[float]  # the mean losses of the steps, each times its batch size
    corrects: list[int]
    images: int  # per member
    seconds: float  # the training steps, finished on the device

    def stats(self, epoch: int, val_logits: torch.Tensor,
              val_y: torch.Tensor) -> list[EpochStats]:
        """Each member's statistics, with the members' validation logits [K, N, C]."""
        return [epoch_stats(epoch, loss_sum, correct, self.images, logits, val_y, self.seconds)
                for loss_sum, correct, logits in zip(self.loss_sums, self.corrects, val_logits,
                                                     strict=True)]


def train_epoch(forward: PackForward, loss_of: LossOf, optimizer: ScheduledAdamW,
                members: int, train_x: torch.Tensor, train_y: torch.Tensor, spec: TrainSpec,
                generator: torch.Generator, on_step: OnStep | None) -> EpochTotals:
    """One epoch of `members` models' training on the uint8 images `train_x`, the model
    already in training mode.

    Every member sees the same batches in the same order, drawn (order and augmentation) from
    `generator`. The sums stay on the device until the epoch ends, so the loop never waits for
    it; `on_step` sees each step's images per member.
    """
    device = train_x.device
    start = time.perf_counter()
    loss_sums = torch.zeros(members, device=device)
    corrects = torch.zeros(members, device=device, dtype=torch.long)
    order = torch.randperm(len(train_y), generator=generator, device=device)
    for first in range(0, len(order), spec.batch_size):
        index = order[first:first + spec.batch_size]
        images = augment.train_batch(train_x[index], spec.augment, spec.image_size, generator)
        labels = train_y[index]
        with autocast(device, spec.bf16):
            logits = forward(images)
            losses = loss_of(logits, labels)
        optimizer.zero_grad()
        # A member's parameters appear only in its own loss: the sum's gradient is, for each,
        # its loss's gradient alone.
        losses.sum().backward()
        optimizer.step()
        loss_sums += losses.detach() * len(index)
        corrects += (logits.argmax(dim=2) == labels).sum(dim=1)
        if on_step is not None:
            on_step(len(index))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return EpochTotals(loss_sums.tolist(), corrects.tolist(), len(train_y), seconds)


def epoch_stats(epoch: int, loss_sum: float, correct: int, train_size: int,
                val_logits: torch.Tensor, val_y: torch.Tensor, seconds: float) -> EpochStats:
    """An epoch's statistics from its summed training loss, correct count and val logits."""
    val_correct = val_logits.argmax(dim=1) == val_y
    return EpochStats(
        epoch=epoch,
        train_loss=loss_sum / train_size,
        train_acc=correct / train_size,
        val_loss=F.cross_entropy(val_logits, val_y).item(),
        val_acc=val_correct.float().mean().item(),
        images_per_second=train_size / seconds,
        val_correct=val_correct.cpu(),
    )


def training_state(lora: LoraParams | None, weights: dict[str, torch.Tensor],
                   optimizer: dict, scheduler: dict, generator: torch.Generator,
                   masks: torch.Generator, history: list[EpochStats], train_seconds: float,
                   step_seconds: float) -> TrainingState:
    """A trial's checkpoint after `history[-1].epoch`, with every generator's state now."""
    device = generator.device
    return TrainingState(
        epoch=history[-1].epoch, lora=lora, weights=weights, optimizer=optimizer,
        scheduler=scheduler, batch_generator=generator.get_state(),
        cpu_generator=torch.get_rng_state(),
        cuda_generator=torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        history=list(history), train_seconds=train_seconds, step_seconds=step_seconds,
        dropout_generator=masks.get_state())


def trial_result(test_logits: torch.Tensor, test_y: torch.Tensor, num_classes: int,
                 parameters: ParameterCount, history: list[EpochStats], train_seconds: float,
                 step_seconds: float, images_trained: int,
                 weights: dict[str, torch.Tensor]) -> TrialResult:
    """A finished trial's result from its test logits and what its training recorded."""
    return TrialResult(
        val_acc=history[-1].val_acc,
        test=classification_metrics(test_logits, test_y),
        parameters=parameters,
        train_seconds=train_seconds,
        images_per_second=images_trained / step_seconds,
        device=describe_device(test_logits.device),
        epochs=history,
        confusion=confusion_matrix(test_logits.argmax(dim=1), test_y, num_classes).cpu(),
        test_probabilities=test_logits.float().softmax(dim=1).cpu(),
        test_labels=test_y.cpu(),
        weights=weights,
    )


def on_cpu(value):
    """A copy of a (nested) state dict with every tensor copied to the CPU: `state_dict()`
    hands out the live tensors, which the next steps would change under a checkpoint."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: on_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(on_cpu(item) for item in value)
    return value


def restore(state: TrainingState, model: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler, generator: torch.Generator,
            masks: torch.Generator) -> None:
    """Put a checkpoint's weights, optimizer, scheduler and generators back in place."""
    problems = load_trainable_state(model, state.weights)
    if problems:
        raise CheckpointError(f"the checkpoint does not fit the model: "
                              f"{describe_misfits(problems)}")
    optimizer.load_state_dict(state.optimizer)
    scheduler.load_state_dict(state.scheduler)
    restore_generators(state, generator, masks, state.dropout_generator)


def restore_generators(state: TrainingState, generator: torch.Generator,
                       masks: torch.Generator, dropout: torch.Tensor | None) -> None:
    """Put a checkpoint's batch, global and CUDA generators back, and `dropout` (a dropout
    generator's state, None: leave it) in `masks`."""
    generator.set_state(state.batch_generator)
    if dropout is not None:
        masks.set_state(dropout)
    torch.set_rng_state(state.cpu_generator)
    if state.cuda_generator is not None and generator.device.type == "cuda":
        torch.cuda.set_rng_state(state.cuda_generator, generator.device)
