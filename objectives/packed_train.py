"""A pack: K trials trained together on one frozen backbone, each as it would be alone.

The epoch is `objectives.train.train_epoch`, the one a trial alone runs as a pack of one: one
batch order, one augmented batch per step (members see the same images in the same order, as
each would alone with the same seed), one forward of the `PackedModel` on K x B activations,
the members' mean losses summed (each member's parameters get exactly its own loss's
gradient), one AdamW over the member-stacked parameters (elementwise, so the same as one
optimiser per member) and one cosine schedule; members with their own learning rates
(`LoraParams.lr`) share it too, `PackOptimizer.step` scaling each member's step. Every member
reports its own epochs; a member whose `on_epoch` says stop (pruned) leaves at once, its
slices and optimiser state dropped, and the rest go on.

Checkpoints are per member and in the solo format (`TrainingState` of the member's peft model),
so a member's retry resumes alone or in another pack at the same epoch. Members of one pack
must start at the same epoch: their batch generators are then in the same state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from objectives.adapter_seeding import dropout_generator
from objectives.checkpoint import CheckpointError, EpochStats, TrainingState
from objectives.data import ImageSplits
from objectives.export_folder import describe_misfits
from objectives.model import planned_parameters
from objectives.packed_model import PackedModel
from objectives.spec import LoraParams, TrainSpec, trial_lr
from objectives.train import (
    ScheduledAdamW,
    TrialResult,
    on_cpu,
    predict,
    resolve_device,
    restore_generators,
    train_epoch,
    train_mode,
    training_state,
    trial_result,
)


@dataclass
class PackMember:
    lora: LoraParams | None  # None: the head-only baseline
    resume: TrainingState | None = None


# on_epoch(member, stats) -> whether the member goes on (False: pruned, it leaves the pack).
OnMemberEpoch = Callable[[int, EpochStats], bool]
OnMemberCheckpoint = Callable[[int, TrainingState], None]
OnStep = Callable[[int], None]


class PackError(ValueError):
    """Members that cannot train together (they start at different epochs)."""


def start_epoch(members: list[PackMember]) -> int:
    """The finished epochs every member resumes after; PackError when they differ."""
    epochs = {member.resume.epoch if member.resume else 0 for member in members}
    if len(epochs) != 1:
        raise PackError(f"a pack's members must resume after the same epoch, not {epochs}")
    return epochs.pop()


class PackOptimizer(ScheduledAdamW):
    """A trial's AdamW + cosine schedule over the pack's stacked parameters, with each
    member's share in the solo optimizer's format and back.

    Members may have their own learning rates (`trial_lr`). AdamW's step is linear in its
    learning rate once the moments are updated (the decoupled weight decay, lr * wd * p, and
    the Adam step, lr * m / (sqrt(v) + eps), both scale with it; the moments do not depend on
    it), and a cosine schedule scales every rate by the same factor. So the optimiser runs at
    the largest member rate, `reference_lr`, and `step` scales each member's change by its
    rate over that: exactly its solo step, up to float rounding (the factors are at most 1,
    so the rounding is not magnified). Checkpoints carry each member's own rate
    (`member_state`, `member_schedule`), so a member resumes alone or in another pack.
    """

    def __init__(self, model: PackedModel, spec: TrainSpec, train_size: int,
                 fused: bool) -> None:
        self.model, self.spec, self.train_size, self.fused = model, spec, train_size, fused
        self.reference_lr = max(self.member_lrs())
        self._build()

    def _build(self) -> None:
        # Over the parameters the model has now: `keep_members` replaces them.
        super().__init__(self.model.trained_parameters(), self.spec, self.train_size,
                         self.fused, lr=self.reference_lr)
        # Made once per set of members, not per step (a host-to-device copy on the hot path);
        # None: one rate, the plain step.
        factors = self.lr_factors()
        first = self.model.trained_parameters()[0]
        self._step_scale = (None if all(factor == 1.0 for factor in factors) else
                            torch.tensor(factors, device=first.device, dtype=first.dtype))

    def member_lrs(self) -> list[float]:
        return [trial_lr(self.spec, member) for member in self.model.members]

    def lr_factors(self) -> list[float]:
        """Each member's learning rate over the optimiser's, in pack order."""
        return [lr / self.reference_lr for lr in self.member_lrs()]

    def step(self) -> None:
        scale = self._step_scale
        if scale is None:
            super().step()  # one rate: the plain step, bit for bit what it always was
            return
        params = self.model.trained_parameters()
        before = [param.detach().clone() for param in params]
        self.optimizer.step()
        with torch.no_grad():
            for param, start in zip(params, before, strict=True):
                param.sub_(start).mul_(scale.view(-1, *[1] * (param.dim() - 1))).add_(start)
        self.scheduler.step()

    def keep_members(self, keep: list[int]) -> None:
        """Drop the other members' slices of the model and of the optimiser state."""
        state, schedule = self.optimizer.state_dict(), self.scheduler.state_dict()
        index = torch.tensor(keep)
        for values in state["state"].values():
            for key in ("exp_avg", "exp_avg_sq"):
                values[key] = values[key].index_select(0, index.to(values[key].device))
        self.model.keep_members(keep)
        self._build()
        self.scheduler.load_state_dict(schedule)
        self.optimizer.load_state_dict(state)  # after the scheduler: its lr, not the first

    def member_state(self, k: int) -> dict:
        """Member k's optimizer state dict as its solo AdamW's (one tensor per solo param)."""
        state = self.optimizer.state_dict()
        position = {id(p): i for i, p in enumerate(self.model.trained_parameters())}
        member = {}
        for i, (_, param, index) in enumerate(self.model.member_slices(k)):
            packed = state["state"].get(position[id(param)])
            if packed is not None:
                member[i] = {key: on_cpu(value if key == "step" else value[index])
                             for key, value in packed.items()}
        (group,) = state["param_groups"]
        count = len(self.model.member_slices(k))
        group = rescaled_group(group, self.lr_factors()[k])
        return {"state": member, "param_groups": [{**group, "params": list(range(count))}]}

    def member_schedule(self, k: int) -> dict:
        """Member k's scheduler state dict as its solo schedule's (at its own rate)."""
        return rescaled_schedule(self.scheduler.state_dict(), self.lr_factors()[k])

    def load_member_state(self, k: int, solo: dict) -> None:
        """Put member k's solo optimizer state in its slices (the schedule is the pack's)."""
        for i, (_, param, index) in enumerate(self.model.member_slices(k)):
            values = solo["state"].get(i)
            if values is None:
                continue
            packed = self.optimizer.state.setdefault(param, {})  # keyed by the parameter
            for key, value in values.items():
                if key == "step":
                    packed[key] = value.clone().to(param.device if self.fused else "cpu")
                    continue
                if key not in packed:
                    packed[key] = torch.zeros_like(param, memory_format=torch.preserve_format)
                packed[key][index] = value.to(param.device, packed[key].dtype)


def run_pack(spec: TrainSpec, members: list[PackMember], data: ImageSplits,
             on_epoch: OnMemberEpoch | None = None, on_step: OnStep | None = None,
             on_checkpoint: OnMemberCheckpoint | None = None) -> list[TrialResult | None]:
    """Train `members` together; one result per member, in order (None: it left the pack).

    `on_epoch(k, stats)` sees member k's statistics after every epoch and returns whether it
    goes on; it may also raise, which stops the whole pack. `on_step` sees the images per
    member of every step; `on_checkpoint(k, state)` receives member k's solo-format training
    state after every epoch. `members[k].resume` continues from such a state.
    """
    device = resolve_device(spec.device)
    first_epoch = start_epoch(members)
    model = PackedModel(spec, data.num_classes, [m.lora for m in members]).to(device)
    optimizer = PackOptimizer(model, spec, len(data.train_labels), fused=device.type == "cuda")
    generator = torch.Generator(device).manual_seed(spec.seed)
    # One dropout stream per set of adapted layers, each as a member's alone.
    streams = [dropout_generator(spec.seed, device) for _ in range(model.stream_count)]
    model.use_dropout_generators(streams)
    histories: list[list[EpochStats]] = [[] for _ in members]
    train_seconds = step_seconds = 0.0
    if first_epoch:
        resume_pack(members, model, optimizer, generator, streams)
        histories = [list(m.resume.history) for m in members]
        train_seconds = max(m.resume.train_seconds for m in members)
        step_seconds = max(m.resume.step_seconds for m in members)
    active = list(range(len(members)))  # original index of each pack position
    train_x, train_y = data.train_images.to(device), data.train_labels.to(device)
    val_x, val_y = data.val_images.to(device), data.val_labels.to(device)
    for epoch in range(first_epoch + 1, spec.epochs + 1):
        epoch_start = time.perf_counter()
        # train_mode and predict are called from this module, not inside train_epoch:
        # benchmarks/packing.py --profile times a packed epoch's parts by patching them here.
        train_mode(model, model.has_lora)
        totals = train_epoch(model, pack_loss, optimizer, len(active), train_x, train_y, spec,
                             generator, on_step)
        step_seconds += totals.seconds
        members_stats = totals.stats(epoch, predict(model, val_x, spec, image_dim=1), val_y)
        train_seconds += time.perf_counter() - epoch_start
        leaving = []
        for position, (k, stats) in enumerate(zip(active, members_stats, strict=True)):
            histories[k].append(stats)
            if on_checkpoint is not None:
                on_checkpoint(k, training_state(
                    members[k].lora, model.member_weights(position),
                    optimizer.member_state(position), optimizer.member_schedule(position),
                    generator, streams[model.stream_of[position]], histories[k],
                    train_seconds, step_seconds))
            if on_epoch is not None and not on_epoch(k, stats):
                leaving.append(position)
        if leaving:
            keep = [p for p in range(len(active)) if p not in leaving]
            active = [active[p] for p in keep]
            if not active:
                return [None] * len(members)
            optimizer.keep_members(keep)

    test_y = data.test_labels.to(device)
    test_logits = predict(model, data.test_images.to(device), spec, image_dim=1)
    results: list[TrialResult | None] = [None] * len(members)
    for position, k in enumerate(active):
        results[k] = trial_result(
            test_logits[position], test_y, data.num_classes,
            planned_parameters(spec, data.num_classes, members[k].lora), histories[k],
            train_seconds, step_seconds, spec.epochs * len(train_y),
            model.member_weights(position))
    return results


def pack_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each member's mean cross-entropy, [K], from the pack's logits [K, B, C]."""
    count = len(logits)
    return F.cross_entropy(logits.float().flatten(0, 1), labels.repeat(count),
                           reduction="none").view(count, -1).mean(dim=1)


def resume_pack(members: list[PackMember], model: PackedModel, optimizer: PackOptimizer,
                generator: torch.Generator, streams: list[torch.Generator]) -> None:
    """Put every member's checkpoint in its slices; the shared state (schedule, generators)
    from the first member's, which the others' must equal."""
    states = [member.resume for member in members]
    first = states[0]
    for k, (member, state) in enumerate(zip(members, states, strict=True)):
        state.check_matches(member.lora, optimizer.spec.epochs)
        if not torch.equal(state.batch_generator, first.batch_generator):
            raise PackError("a pack's members must have seen the same batches")
        problems = model.load_member_weights(k, state.weights)
        if problems:
            raise CheckpointError(f"the checkpoint does not fit the model: "
                                  f"{describe_misfits(problems)}")
    # The first member's schedule at its own rate, brought to the pack's reference rate.
    to_reference = 1 / optimizer.lr_factors()[0]
    optimizer.scheduler.load_state_dict(rescaled_schedule(first.scheduler, to_reference))
    optimizer.optimizer.load_state_dict(shared_optimizer_state(optimizer, first,
                                                               to_reference))
    for k, state in enumerate(states):
        optimizer.load_member_state(k, state.optimizer)
    # Every member with dropout drew at each of its layers at every step, so the members of a
    # stream are in one state; a member without (the baseline, p = 0) never drew alone: each
    # stream comes from one of its members with dropout.
    restore_generators(first, generator, streams[0], None)
    for k, (member, state) in enumerate(zip(members, states, strict=True)):
        if member.lora is not None and member.lora.dropout > 0:
            streams[model.stream_of[k]].set_state(state.dropout_generator)


def shared_optimizer_state(optimizer: PackOptimizer, state: TrainingState,
                           lr_factor: float = 1.0) -> dict:
    """The pack optimizer's state dict with a checkpoint's hyperparameters (its lr where the
    schedule stood, times `lr_factor`) and no per-parameter state yet (`load_member_state`
    adds it)."""
    (group,) = state.optimizer["param_groups"]
    current = optimizer.optimizer.state_dict()
    (own,) = current["param_groups"]
    group = rescaled_group(group, lr_factor)
    return {"state": {}, "param_groups": [{**group, "params": own["params"]}]}


def rescaled_group(group: dict, factor: float) -> dict:
    """An AdamW param group's state with its learning rates (where the schedule stands and
    where it started) times `factor`."""
    if factor == 1.0:
        return group
    return {**group, **{key: group[key] * factor for key in ("lr", "initial_lr")
                        if key in group}}


def rescaled_schedule(schedule: dict, factor: float) -> dict:
    """A cosine schedule's state dict with its learning rates times `factor` (its floor,
    eta_min, is 0: the schedule scales as a whole)."""
    if factor == 1.0:
        return schedule
    return {**schedule, **{key: [lr * factor for lr in schedule[key]]
                           for key in ("base_lrs", "_last_lr") if key in schedule}}
