"""Pretrain the demo's tiny ViT backbone on the MNIST test set (`../shared/data/mnist`).

No pretrained ViT weights are reachable offline, and LoRA on a random backbone is a poor
demonstration of transfer. This script trains the demo architecture (all weights) on the
10,000 real MNIST test digits and writes a timm-format checkpoint; the demo study then
adapts it to scikit-learn's 8x8 digits, a different rendering of the same classes.

    python studies/make_demo_backbone.py [--mnist ../shared/data/mnist] [--epochs 6]
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from objectives import augment
from search.study.study_spec import load_spec

HERE = Path(__file__).resolve().parent


def read_idx(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=HERE.parent.parent / "shared/data/mnist")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", type=Path,
                        default=HERE / "weights/demo-vit-tiny-mnist.safetensors")
    args = parser.parse_args()

    spec = load_spec(HERE / "demo.toml").train
    images = torch.from_numpy(read_idx(args.mnist / "t10k-images-idx3-ubyte.gz").copy())[:, None]
    labels = torch.from_numpy(read_idx(args.mnist / "t10k-labels-idx1-ubyte.gz").astype(np.int64))
    torch.manual_seed(0)
    model = timm.create_model(spec.model, pretrained=False, num_classes=10, **spec.model_kwargs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    steps = args.epochs * (len(labels) // 128)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(0)
    for epoch in range(args.epochs):
        start, correct = time.time(), 0
        order = torch.randperm(len(labels), generator=generator)
        for i in range(len(labels) // 128):
            index = order[i * 128:(i + 1) * 128]
            x = augment.train_batch(images[index], spec.augment, spec.image_size, generator)
            logits = model(x)
            loss = F.cross_entropy(logits, labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            correct += (logits.argmax(1) == labels[index]).sum().item()
        print(f"epoch {epoch + 1}: train acc {correct / (len(labels) // 128 * 128):.4f} "
              f"({time.time() - start:.0f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
