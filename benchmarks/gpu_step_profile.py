"""Where a training step of ViT-S/16 + LoRA goes on a GPU: ms per step of variants, then the
top ops under torch.profiler (issue 30: ours ran at 5% MFU on an H200).

    python benchmarks/gpu_step_profile.py --device cuda
    python benchmarks/gpu_step_profile.py --device cpu --quick     # a check of the script
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.throughput import FULL, LORA, QUICK  # noqa: E402
from objectives import augment  # noqa: E402
from objectives.adapter_seeding import dropout_generator, use_dropout_generator  # noqa: E402
from objectives.model import build_model  # noqa: E402
from objectives.train import autocast, train_mode  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, device, warmup=3, steps=10) -> float:
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return 1000 * (time.perf_counter() - start) / steps


def stepper(model, spec, device, images, labels, lora: bool):
    train_mode(model, lora) if lora is not None else model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=device.type == "cuda")

    def step():
        with autocast(device, spec.bf16):
            loss = F.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    spec = dataclasses.replace(QUICK if args.quick else FULL, device=args.device)
    device = torch.device(args.device)
    b = spec.batch_size
    images = torch.randn(b, 3, spec.image_size, spec.image_size, device=device)
    labels = torch.randint(100, (b,), device=device)
    rows = []

    def add(name, ms):
        rows.append((name, ms))
        print(f"{name:<44} {ms:8.2f} ms/step  {b / ms * 1000:9.0f} img/s", flush=True)

    plain = timm.create_model(spec.model, pretrained=False, num_classes=100,
                              **spec.model_kwargs).to(device)
    add("timm plain, all weights train", time_steps(stepper(plain, spec, device, images,
                                                            labels, None), device))
    for p in plain.parameters():
        p.requires_grad_(False)
    plain.get_classifier().requires_grad_(True)
    add("timm plain, head only", time_steps(stepper(plain, spec, device, images, labels, None),
                                            device))
    del plain
    base = build_model(spec, 100, None).to(device)
    add("ours baseline (frozen, head)", time_steps(stepper(base, spec, device, images, labels,
                                                           False), device))
    del base
    for name, lora, seeded in (("ours LoRA r8 dropout 0", dataclasses.replace(LORA, dropout=0.0),
                                False),
                               ("ours LoRA r8 dropout 0.1", LORA, False),
                               ("ours LoRA r8 dropout 0.1 + seeded masks", LORA, True)):
        model = build_model(spec, 100, lora).to(device)
        if seeded:
            use_dropout_generator(model, dropout_generator(0, device))
        step = stepper(model, spec, device, images, labels, True)
        add(name, time_steps(step, device))
    generator = torch.Generator(device).manual_seed(0)
    uint8 = torch.randint(256, (b, 3, 32, 32), dtype=torch.uint8, device=device)
    add("augment.train_batch alone", time_steps(
        lambda: augment.train_batch(uint8, spec.augment, spec.image_size, generator), device))

    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    with profile(activities=activities) as prof:
        for _ in range(5):
            step()
        sync(device)
    averages = prof.key_averages()
    kernels = sum(e.count for e in averages if e.device_type.name == "CUDA")
    print(f"\nCUDA kernel launches per step: {kernels / 5:.0f}")
    print(averages.table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=50))
    if device.type == "cuda":
        print(averages.table(sort_by="self_cuda_time_total", row_limit=14,
                             max_name_column_width=50))
    return 0


if __name__ == "__main__":
    sys.exit(main())
