"""Training throughput of our trial pipeline against the model card's, with MFU.

    python benchmarks/throughput.py --quick                 # tiny ViT at 32 px, CPU, < 3 min
    python benchmarks/throughput.py --device cuda           # ViT-S/16 at 224, batch 128
    python benchmarks/throughput.py --device cuda --ablation --write
    python benchmarks/throughput.py --device cuda --full-trial   # 50,000 images x 10 epochs

Both pipelines train the same model with the same LoRA config (the model card's: q, k, v,
r = 8, alpha = 8, dropout 0.1), batch size, optimizer and augmentation, on the same device:

- ours: `objectives.train.run_trial` itself on uint8 CIFAR-shaped images (32 px RGB, random
  pixels: throughput does not depend on content) held on the device; images/s of the last
  epoch's training steps (the first carries warm-up and any compilation).
- peer: the pipeline the model card describes: a DataLoader with one worker per core running
  torchvision's PIL transforms per image (Resize to the model's input, flip, padded crop,
  colour jitter, ToTensor, Normalize), pinned memory, fp32, `loss.item()` every step.

MFU is achieved FLOP/s (one training step's FLOPs, counted by `torch.utils.flop_counter`,
times steps per second) over the peak of a large matmul measured in the same run, in the
dtype the trial computes in: bf16 on CUDA, fp32 on the CPU. `--ablation` adds the steps in
between (peer with bf16; ours in fp32; ours compiled) to show what each change buys.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from torchvision import transforms  # noqa: E402

from benchmarks.markdown_section import write_section  # noqa: E402
from objectives.data import ImageSplits  # noqa: E402
from objectives.model import build_model  # noqa: E402
from objectives.spec import AugmentSpec, LoraParams, TrainSpec  # noqa: E402
from objectives.train import autocast, run_trial  # noqa: E402

LORA = LoraParams(rank=8, alpha=8, dropout=0.1)
CLASSES = 100
# The model card's trial: ViT-S/16 at 224 px, batch 128, CIFAR-100 upscaled from 32 px.
FULL = TrainSpec(model="vit_small_patch16_224", pretrained=False, batch_size=128,
                 eval_batch_size=512, epochs=2, device="cuda")
# The offline demo's tiny ViT at 32 px (the same architecture `studies/demo.toml` trains).
QUICK = dataclasses.replace(
    FULL, model="vit_tiny_patch16_224", image_size=32, batch_size=64, device="cpu",
    model_kwargs={"img_size": 32, "patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3},
    augment=AugmentSpec(crop_padding=4))


def synthetic_splits(train: int, held_out: int, seed: int = 0) -> ImageSplits:
    generator = torch.Generator().manual_seed(seed)

    def split(size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.randint(256, (size, 3, 32, 32), dtype=torch.uint8, generator=generator),
                torch.randint(CLASSES, (size,), generator=generator))

    return ImageSplits(*split(train), *split(held_out), *split(held_out),
                       classes=[f"class {i}" for i in range(CLASSES)])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device) -> float:
    """FLOP/s of a large square matmul in the dtype trials compute in on `device`."""
    size, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    repeats, start = 20, time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def flops_per_image(spec: TrainSpec, device: torch.device) -> float:
    """FLOPs of one training step (forward and backward) divided by the batch size."""
    model = build_model(spec, CLASSES, LORA).to(device).train()
    images = torch.randn(spec.batch_size, 3, spec.image_size, spec.image_size, device=device)
    labels = torch.zeros(spec.batch_size, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as counter:
        with autocast(device, spec.bf16):
            loss = F.cross_entropy(model(images).float(), labels)
        loss.backward()
    return counter.get_total_flops() / spec.batch_size


def measure_ours(spec: TrainSpec, data: ImageSplits) -> dict:
    """run_trial's last-epoch training images/s, counting host synchronisations on CUDA."""
    device = torch.device(spec.device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            torch.cuda.set_sync_debug_mode("warn")
        try:
            result = run_trial(spec, LORA, data)
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    steps = spec.epochs * -(-len(data.train_labels) // spec.batch_size)
    first, last = result.epochs[0], result.epochs[-1]
    n = len(data.train_labels)
    return {"img_s": last.images_per_second,
            # The first epoch's extra seconds over a steady one: warm-up plus compilation.
            "first_epoch_extra_s": n / first.images_per_second - n / last.images_per_second,
            "host_syncs_per_step": syncs / steps if device.type == "cuda" else None,
            "cuda_peak_mib": (torch.cuda.max_memory_allocated(device) / 2**20
                              if device.type == "cuda" else None)}


class PeerDataset(Dataset):
    """PIL images and per-image torchvision transforms, as the model card's notebook has."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, spec: TrainSpec):
        self.images = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images]
        self.labels = labels.tolist()
        a = spec.augment
        self.transform = transforms.Compose([
            transforms.Resize(spec.image_size),
            transforms.RandomHorizontalFlip(a.hflip),
            transforms.RandomCrop(spec.image_size, padding=a.crop_padding),
            transforms.ColorJitter(*a.color_jitter),
            transforms.ToTensor(),
            transforms.Normalize(a.mean, a.std),
        ])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), self.labels[index]


def measure_peer(spec: TrainSpec, data: ImageSplits, workers: int, bf16: bool = False,
                 warmup_steps: int = 5) -> dict:
    device = torch.device(spec.device)
    torch.manual_seed(spec.seed)
    model = build_model(spec, CLASSES, LORA).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=spec.lr, weight_decay=spec.weight_decay)
    loader = DataLoader(PeerDataset(data.train_images, data.train_labels, spec),
                        batch_size=spec.batch_size, shuffle=True, num_workers=workers,
                        pin_memory=device.type == "cuda", drop_last=True,
                        persistent_workers=workers > 0)
    images_seen, start, running_loss = 0, None, 0.0
    for epoch in range(spec.epochs):
        for step, (images, labels) in enumerate(loader):
            if epoch == 0 and step == warmup_steps:
                synchronize(device)
                images_seen, start = 0, time.perf_counter()
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with autocast(device, bf16):
                loss = F.cross_entropy(model(images).float(), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            images_seen += len(labels)
    synchronize(device)
    return {"img_s": images_seen / (time.perf_counter() - start)}


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cores = os.cpu_count()
    return f"CPU, {cores} cores, {torch.get_num_threads()} torch threads"


def run(args: argparse.Namespace) -> dict:
    spec = dataclasses.replace(QUICK if args.quick else FULL,
                               device=args.device or ("cpu" if args.quick else "cuda"))
    if args.batch_size:
        spec = dataclasses.replace(spec, batch_size=args.batch_size)
    device = torch.device(spec.device)
    train_images = args.train_images or (2048 if args.quick else 40 * spec.batch_size)
    data = synthetic_splits(train_images, held_out=spec.eval_batch_size)
    workers = args.peer_workers if args.peer_workers is not None else os.cpu_count() or 1
    peak = matmul_peak(device)
    flops = flops_per_image(spec, device)

    rows = {}

    def add(name: str, measured: dict) -> None:
        measured["mfu"] = measured["img_s"] * flops / peak
        rows[name] = measured
        print(f"{name:<24} {measured['img_s']:10.0f} img/s  MFU {measured['mfu']:6.1%}",
              file=sys.stderr, flush=True)

    add("peer", measure_peer(spec, data, workers))
    if args.ablation and device.type == "cuda":
        add("peer + bf16", measure_peer(spec, data, workers, bf16=True))
        add("ours, fp32", measure_ours(dataclasses.replace(spec, bf16=False), data))
    add("ours", measure_ours(spec, data))
    if args.ablation or args.compile:
        add("ours + compile", measure_ours(dataclasses.replace(spec, compile=True), data))
    return {
        "ours_img_s": rows["ours"]["img_s"],
        "peer_img_s": rows["peer"]["img_s"],
        "ratio": rows["ours"]["img_s"] / rows["peer"]["img_s"],
        "mfu": rows["ours"]["mfu"],
        "peer_mfu": rows["peer"]["mfu"],
        "peak_tflops": peak / 1e12,
        "gflops_per_image": flops / 1e9,
        "device": describe(device),
        "device_type": device.type,
        "model": spec.model,
        "image_size": spec.image_size,
        "batch_size": spec.batch_size,
        "train_images": train_images,
        "peer_workers": workers,
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "rows": rows,
        "spec": spec,
    }


def full_trial(report: dict, epochs: int, compile: bool) -> None:
    """The model card's whole trial (50,000 training images, CIFAR-100's; 10,000 val and
    10,000 test), timed by the wall clock around `run_trial` and by its own training time."""
    spec = dataclasses.replace(report["spec"], epochs=epochs, compile=compile)
    device = torch.device(spec.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    data = synthetic_splits(50_000, 10_000)
    start = time.perf_counter()
    result = run_trial(spec, LORA, data)
    synchronize(device)
    report["rows"]["full trial"] = {
        "epochs": epochs, "compile": compile, "wall_s": time.perf_counter() - start,
        "train_seconds": result.train_seconds, "img_s": result.images_per_second,
        "cuda_peak_mib": (torch.cuda.max_memory_allocated(device) / 2**20
                          if device.type == "cuda" else None)}
    print(f"full trial: {result.train_seconds:.1f} s of training", file=sys.stderr)


def table(report: dict) -> str:
    lines = ["| pipeline | train img/s | ms/step | MFU | vs peer | first-epoch extra s | "
             "CUDA peak MiB |", "|---|---|---|---|---|---|---|"]
    for name, row in report["rows"].items():
        if name == "full trial":
            continue
        extra, peak = row.get("first_epoch_extra_s"), row.get("cuda_peak_mib")
        lines.append(
            f"| {name} | {row['img_s']:,.0f} | {1000 * report['batch_size'] / row['img_s']:.1f}"
            f" | {row['mfu']:.1%} | {row['img_s'] / report['peer_img_s']:.2f}x | "
            f"{'-' if extra is None else f'{extra:.1f}'} | "
            f"{'-' if peak is None else f'{peak:,.0f}'} |")
    return "\n".join(lines)


def section(report: dict, command: str) -> str:
    syncs = report["rows"]["ours"].get("host_syncs_per_step")
    text = [f"Measured {report['date']} on {report['device']}, torch {report['torch']}; "
            f"`{command}`. {report['model']} at {report['image_size']} px, batch "
            f"{report['batch_size']}, LoRA q,k,v r=8 alpha=8; {report['train_images']:,} "
            f"training images per epoch; peer DataLoader workers: {report['peer_workers']}. "
            f"Peak matmul {report['peak_tflops']:.2f} TFLOP/s; "
            f"{report['gflops_per_image']:.2f} GFLOP per training image.",
            "", table(report)]
    if syncs is not None:
        text += ["", f"Host synchronisations per training step of ours: {syncs:.3f}."]
    if "full trial" in report["rows"]:
        full = report["rows"]["full trial"]
        peak = full.get("cuda_peak_mib")
        text += ["", f"The model card's trial (50,000 training images x {full['epochs']} epochs, "
                     f"10,000 val + 10,000 test{', compiled' if full['compile'] else ''}): "
                     f"{full['wall_s']:.1f} s wall from `run_trial`'s call to its return, "
                     f"{full['train_seconds']:.1f} s of it training ({full['img_s']:,.0f} img/s)"
                     + (f", CUDA peak {peak:,.0f} MiB" if peak is not None else "") + "."]
    return "\n".join(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        help="default: cuda, or cpu with --quick")
    parser.add_argument("--quick", action="store_true",
                        help="the demo's tiny ViT at 32 px on 2,048 images (minutes on a CPU)")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--ablation", action="store_true",
                        help="also peer + bf16, ours in fp32 and ours compiled")
    parser.add_argument("--compile", action="store_true", help="also ours with torch.compile")
    parser.add_argument("--full-trial", action="store_true",
                        help="also time the model card's whole trial (50,000 x 10 epochs)")
    parser.add_argument("--full-epochs", type=int, default=10,
                        help="epochs of --full-trial (default 10, the model card's)")
    parser.add_argument("--train-images", type=int, help="images per epoch")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--peer-workers", type=int, help="default: one per CPU core")
    parser.add_argument("--write", action="store_true",
                        help="put the table into BENCHMARKS.md (section throughput_DEVICE)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("throughput.py: error: --device cuda but no CUDA device is visible",
              file=sys.stderr)
        return 2
    report = run(args)
    command = ("python benchmarks/throughput.py " + " ".join(sys.argv[1:])).strip()
    if args.write:  # before the long full trial: a run stopped during it keeps the table
        write_section(f"throughput_{report['device_type']}", section(report, command))
    if args.full_trial:
        full_trial(report, args.full_epochs, args.compile)
        if args.write:
            write_section(f"throughput_{report['device_type']}", section(report, command))
    if args.format == "json":
        print(json.dumps({k: v for k, v in report.items() if k != "spec"}))
    else:
        print(section(report, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
