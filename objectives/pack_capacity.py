"""How many trials fit in one pack on this device: measured, not guessed.

One training step of a pack of 1 and of 2 members on a real batch tells the memory a member
adds and what the pack needs whatever its size (backbone, data, optimizer of one member). On a
GPU the measure is CUDA's peak allocated memory; on the CPU, where no allocator keeps count,
it is the bytes autograd saves for the backward pass (the activations, which dominate and grow
with the pack), measured with `torch.autograd.graph.saved_tensors_hooks`. The pack size is what
fits in `margin` of the memory free now, capped by `limit`.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil
import torch
import torch.nn.functional as F

from objectives import augment
from objectives.data import ImageSplits
from objectives.packed_model import PackedModel
from objectives.spec import LoraParams, TrainSpec
from objectives.train import autocast, resolve_device, train_mode

# Of the memory free when the worker starts, the share a pack may take: the rest is for
# evaluation batches, the allocator's fragmentation and the host's other processes.
MARGIN = {"cuda": 0.8, "cpu": 0.5}
# No more than this many members even where memory allows: beyond it a step's matmuls are
# large enough that packing buys little more, and one pack holds the queue up longer.
LIMIT = 16


@dataclass(frozen=True)
class PackCapacity:
    members: int  # the pack size that fits (>= 1)
    per_member_bytes: int
    fixed_bytes: int
    free_bytes: int
    measure: str  # what was measured: "cuda peak" or "saved activations"

    def describe(self) -> str:
        return (f"{self.members} (a member needs {self.per_member_bytes / 2**20:.0f} MiB by "
                f"{self.measure}, {self.free_bytes / 2**30:.1f} GiB free)")


def step_memory(spec: TrainSpec, data: ImageSplits, member: LoraParams, count: int,
                device: torch.device) -> int:
    """Bytes one training step of a pack of `count` copies of `member` needs on `device`."""
    model = PackedModel(spec, data.num_classes, [member] * count).to(device)
    train_mode(model, True)
    size = min(spec.batch_size, len(data.train_labels))
    generator = torch.Generator(device).manual_seed(spec.seed)
    images = augment.train_batch(data.train_images[:size].to(device), spec.augment,
                                 spec.image_size, generator)
    labels = data.train_labels[:size].to(device).repeat(count)
    saved = 0

    def pack_hook(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
    with torch.autograd.graph.saved_tensors_hooks(pack_hook, lambda tensor: tensor):
        with autocast(device, spec.bf16):
            logits = model(images).flatten(0, 1)
            loss = F.cross_entropy(logits.float(), labels)
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    return saved


def measure_capacity(spec: TrainSpec, data: ImageSplits, member: LoraParams,
                     limit: int = LIMIT) -> PackCapacity:
    """The pack size for trials like `member` of `spec` on the spec's device."""
    device = resolve_device(spec.device)
    one = step_memory(spec, data, member, 1, device)
    two = step_memory(spec, data, member, 2, device)
    per_member = max(two - one, 1)
    fixed = max(one - per_member, 0)
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        measure = "cuda peak"
    else:
        free = psutil.virtual_memory().available
        measure = "saved activations"
    budget = MARGIN[device.type] * free - fixed
    members = int(max(1, min(limit, budget // per_member)))
    return PackCapacity(members, per_member, fixed, free, measure)
