"""Packing trials on one backbone (`--pack K`) against one at a time and against processes.

    python benchmarks/packing.py --quick            # CPU demo, 1 epoch: solo, processes, K=10
    python benchmarks/packing.py                    # CPU demo: K = 2 5 10 + auto, 3 repeats
    python benchmarks/packing.py --device cuda --repeats 1 --ks 2 4 10 --write   # ViT-S/16
    python benchmarks/packing.py --quick --profile  # + where a packed epoch's time goes

The same study, on the same device, three ways, each through the real command (`search grid`)
in a subprocess on a fresh SQLite study in a temporary folder:

1. solo: one worker, `--pack 1` (one trial at a time);
2. processes: several worker processes, `--pack 1` (CPU: `--workers N`, each with its share of
   the cores; GPU: `--gpus 0 --workers-per-gpu N`, N the largest K of --ks that is <= 4);
3. packed: one worker, `--pack K` for each K of --ks, and `--pack auto` (the K that auto chose
   is read from the worker's `pack: auto chose N ...` and `pack of N: trials ...` lines).

Each way runs --repeats times (median reported): the wall time of the whole grid (start of the
command to its exit: start-up, data loading, queueing, every trial), trials per hour, training
images per second (trials x epochs x train images / wall), the peak memory (the sum of the
resident memory of the process tree, sampled every 0.2 s; the command runs under a small
wrapper that also reports `getrusage`'s max RSS of itself and of its largest child, and on
CUDA `torch.cuda.max_memory_allocated()` when the worker runs in the wrapper's process, and
the device's used memory by `nvidia-smi`), and the leaderboard (`search leaderboard --format
json`). Every way's val_acc, test_acc, f1, auc_micro and auc_macro are compared with solo's,
trial by trial: on the CPU they must agree within 1e-4 (the exit code is 1 otherwise); on CUDA
(bf16) the largest difference is only reported.

- CPU (default): the offline demo (`studies/demo.toml`: baseline + ranks 2 4 8 x alphas 2 4 8
  = 10 trials, 4 epochs; --quick: 1 epoch, 1 repeat, ways solo, processes, packed K=max).
- CUDA (`--device cuda`): the model card's grid (ViT-S/16 at 224 px, not pretrained, LoRA on
  q, k, v, batch 128, 1 epoch; baseline + ranks 2 4 8 x alphas 2 4 8) on synthetic CIFAR-shaped
  data: random 32 x 32 PNGs in 100 classes written as an `imagefolder:` dataset
  (--train-images, default 10,000, plus --held-out images each for val/ and test/). The solo and
  packed workers then run in the wrapper (`search grid --workers 0` queues, `search worker`
  trains), so that the wrapper sees CUDA's peak. MFU: the FLOPs of one packed training step of
  the study's ten members on the real model (`objectives.packed_model.PackedModel`, one
  augmented batch, forward + backward, counted by `torch.utils.flop_counter.FlopCounterMode`)
  per member, times every trial's steps, over the way's wall time and the GPU's peak dense bf16
  FLOP/s (H100 / H200 SXM: 989e12; other GPUs: MFU unknown). Evaluation is not counted.

`--profile` also trains one packed epoch of the demo's ten trials in this process
(`objectives.packed_train.run_pack`): once timed by small wrappers around its parts (batch
gather, augmentation, forward, backward, optimizer step, evaluation), once under
`torch.profiler` (the top 15 ops by self CPU time). It prints only.

`--write` puts the table into BENCHMARKS.md between the `packing` markers (the `--profile`
output is never written).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.markdown_section import write_section  # noqa: E402

DEMO = ROOT / "studies" / "demo.toml"
RANKS = ALPHAS = ("2", "4", "8")
METRICS = ("val_acc", "test_acc", "f1", "auc_micro", "auc_macro")
TOLERANCE = 1e-4  # on the CPU: packed and processes leaderboards vs solo's
CLASSES = 100  # of the synthetic CUDA study
# Peak dense bf16 FLOP/s (no sparsity) by GPU name; others: MFU unknown.
PEAK_BF16 = (("H200", 989e12), ("H100 80GB HBM3", 989e12), ("H100 SXM", 989e12))

# Runs `search` commands in this one process (the JSON list in argv[1]), then writes what the
# process tree used to argv[2]: getrusage of itself and of its largest waited-for child, and
# CUDA's peak when torch initialised CUDA here (a worker that ran in this process).
WRAPPER = r"""
import json, resource, sys, time
from search.cli.main import main
codes = []
for argv in json.loads(sys.argv[1]):
    try:
        codes.append(main(argv) or 0)
    except SystemExit as stop:
        codes.append(stop.code if isinstance(stop.code, int) else 1)
    if codes[-1]:
        break
usage = {"self_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
         "children_maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
         "cuda_peak_bytes": None}
torch = sys.modules.get("torch")
if torch is not None and torch.cuda.is_initialized():
    usage["cuda_peak_bytes"] = max(torch.cuda.max_memory_allocated(i)
                                   for i in range(torch.cuda.device_count()))
with open(sys.argv[2], "w") as out:
    json.dump({"codes": codes, **usage}, out)
sys.exit(max(codes))
"""


# ---------------------------------------------------------------- the machine


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU"


def machine(device: str) -> str:
    import torch

    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)} (GPU 0), {cpu_name()} host"
    return f"{cpu_name()} ({os.cpu_count()} cores)"


def peak_flops(device: str) -> tuple[float | None, str]:
    """The GPU's peak dense bf16 FLOP/s and what it is, or None: MFU unknown."""
    import torch

    name = torch.cuda.get_device_name(0) if device == "cuda" else "the CPU"
    for key, peak in PEAK_BF16:
        if key in name:
            return peak, f"{name}: peak dense bf16 {peak / 1e12:.0f} TFLOP/s (SXM)"
    return None, f"{name}: peak FLOP/s unknown, MFU unknown"


# ---------------------------------------------------------------- the study


def write_cuda_study(folder: Path, train_images: int, held_out: int, seed: int = 0) -> Path:
    """A spec TOML of the model card's grid on random 32 x 32 PNGs in CLASSES classes."""
    import numpy as np
    from PIL import Image

    data = folder / "synthetic-cifar"
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_images), ("val", held_out), ("test", held_out)):
        for c in range(CLASSES):
            (data / split / f"c{c:03d}").mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        for i in range(count):  # every class gets count / CLASSES images
            Image.fromarray(pixels[i]).save(data / split / f"c{i % CLASSES:03d}" / f"{i}.png",
                                            compress_level=1)
    spec = folder / "packing-vit-s.toml"
    spec.write_text(f"""\
# benchmarks/packing.py: the model card's grid on synthetic CIFAR-shaped images.
[study]
name = "packing-vit-s"

[grid]
ranks = [2, 4, 8]
alphas = [2, 4, 8]
dropouts = [0.1]

[train]
model = "vit_small_patch16_224"
pretrained = false
targets = "q,k,v"
dataset = "imagefolder:{data}"
image_size = 224
epochs = 1
batch_size = 128
eval_batch_size = 512
lr = 3e-4
weight_decay = 1e-4
seed = 0

[train.augment]
hflip = 0.5
crop_padding = 28
color_jitter = [0.3, 0.3, 0.3, 0.05]
mean = [0.5071, 0.4867, 0.4408]
std = [0.2675, 0.2565, 0.2761]
""")
    return spec


class Study:
    """What every way runs: the spec, its name, epochs and device."""

    def __init__(self, spec: Path, name: str, epochs: int | None, device: str) -> None:
        self.spec, self.name, self.epochs, self.device = spec, name, epochs, device

    def grid_args(self, url: str, artifacts: Path, *extra: str) -> list[str]:
        args = ["grid", "--spec", str(self.spec), "--ranks", *RANKS, "--alphas", *ALPHAS,
                "--storage", url, "--artifacts", str(artifacts), "--device", self.device]
        if self.epochs is not None:
            args += ["--epochs", str(self.epochs)]
        return args + list(extra)

    def commands(self, way: dict, url: str, artifacts: Path) -> list[list[str]]:
        """The `search` argument lists of one way, run one after the other in the wrapper."""
        pack = str(way["pack"])
        if way["kind"] == "processes":
            if self.device == "cuda":
                workers = ["--gpus", "0", "--workers-per-gpu", str(way["workers"])]
            else:
                workers = ["--workers", str(way["workers"])]
            return [self.grid_args(url, artifacts, *workers, "--pack", pack)]
        if self.device == "cuda":
            # `grid` would start its one worker as a child on the visible GPU; queue only,
            # then `search worker` trains in the wrapper's process (CUDA's peak readable).
            return [self.grid_args(url, artifacts, "--workers", "0"),
                    ["worker", "--study", self.name, "--storage", url, "--artifacts",
                     str(artifacts), "--device", self.device, "--pack", pack]]
        return [self.grid_args(url, artifacts, "--workers", "1", "--pack", pack)]


# ---------------------------------------------------------------- measuring one run


class TreeMemory:
    """The peak over time of the summed RSS of a process and its descendants (and, with
    `gpu`, of the device's used memory by nvidia-smi), sampled in a thread."""

    def __init__(self, pid: int, gpu: bool, every: float = 0.2) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.gpu = gpu and shutil.which("nvidia-smi") is not None
        self.every, self.peak_rss, self.peak_gpu = every, 0, None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        import psutil

        ticks = 0
        while not self.stop.is_set():
            total = 0
            try:
                for process in [self.root, *self.root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        total += process.memory_info().rss
            except psutil.Error:
                pass
            self.peak_rss = max(self.peak_rss, total)
            if self.gpu and ticks % 5 == 0:  # nvidia-smi once a second
                with contextlib.suppress(Exception):
                    used = subprocess.run(
                        ["nvidia-smi", "--id=0", "--query-gpu=memory.used",
                         "--format=csv,noheader,nounits"], capture_output=True, text=True,
                        timeout=5).stdout.strip()
                    self.peak_gpu = max(self.peak_gpu or 0, int(used.splitlines()[0]))
            ticks += 1
            self.stop.wait(self.every)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join()


def pack_sizes(stderr: str) -> tuple[list[int], int | None]:
    """The sizes of the packs the workers trained, and the K `--pack auto`'s probe chose."""
    packs = [int(n) for n in re.findall(r"^(?:worker: )?pack of (\d+):", stderr, re.M)]
    probe = re.findall(r"auto chose (\d+)|--pack auto: (\d+)", stderr)
    chosen = int(next(n for n in probe[-1] if n)) if probe else None
    return packs, chosen


def run_once(study: Study, way: dict, folder: Path, tag: str) -> dict:
    url = f"sqlite:///{folder}/{tag}.db"
    artifacts = folder / f"artifacts-{tag}"
    usage_file = folder / f"{tag}.usage.json"
    commands = study.commands(way, url, artifacts)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]), PYTHONUNBUFFERED="1")
    env.pop("SEARCH_STORAGE", None)
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", WRAPPER, json.dumps(commands), str(usage_file)], cwd=folder,
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    memory = TreeMemory(process.pid, gpu=study.device == "cuda")
    try:
        _, stderr = process.communicate()
    except BaseException:  # Ctrl-C, or SIGTERM from `timeout`: no worker left on the device
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        raise
    finally:
        memory.finish()
    wall = time.perf_counter() - start
    if process.returncode != 0:
        shown = "\n".join(" ".join(["search", *argv]) for argv in commands)
        raise SystemExit(f"packing.py: {way['name']}: exit {process.returncode}:\n{shown}\n"
                         f"{stderr[-3000:]}")
    usage = json.loads(usage_file.read_text())
    board = json.loads(subprocess.run(
        [sys.executable, "-m", "search", "leaderboard", "--study", study.name, "--storage", url,
         "--format", "json"], cwd=folder, env=env, check=True, capture_output=True,
        text=True).stdout)
    complete = [row for row in board if row["state"] == "COMPLETE"]
    train_images = re.search(r"\(train ([\d,]+) /", stderr)
    packs, chosen = pack_sizes(stderr)
    shutil.rmtree(artifacts, ignore_errors=True)
    return {"wall_s": wall, "trials": len(complete), "board": board, "packs": packs,
            "probe_k": chosen,
            "train_images": int(train_images.group(1).replace(",", "")) if train_images else None,
            "tree_rss_mib": memory.peak_rss / 2**20,
            "self_maxrss_mib": usage["self_maxrss_kib"] / 1024,
            "children_maxrss_mib": usage["children_maxrss_kib"] / 1024,
            "cuda_peak_mib": (usage["cuda_peak_bytes"] / 2**20
                              if usage["cuda_peak_bytes"] is not None else None),
            "gpu_used_mib": memory.peak_gpu,
            "stderr_tail": stderr[-1500:]}


# ---------------------------------------------------------------- comparing leaderboards


def board_key(row: dict) -> tuple:
    return (bool(row["baseline"]), row["rank"], row["alpha"],
            None if row["dropout"] is None else round(row["dropout"], 6))


def max_difference(board: list[dict], reference: list[dict]) -> float:
    """The largest |difference| of METRICS between two leaderboards, trial by trial (inf when
    their complete trials differ)."""
    mine = {board_key(r): r for r in board if r["state"] == "COMPLETE"}
    theirs = {board_key(r): r for r in reference if r["state"] == "COMPLETE"}
    if mine.keys() != theirs.keys() or not mine:
        return math.inf
    return max(abs(mine[key][m] - theirs[key][m]) for key in mine for m in METRICS)


# ---------------------------------------------------------------- FLOPs (CUDA MFU)


def flops_per_member_step(study: Study) -> tuple[float, int]:
    """FLOPs of one training step of a pack of the study's members (baseline + grid) on the
    real model, one augmented batch, forward + backward, divided by the pack's size; and the
    batch size."""
    import dataclasses

    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from objectives import augment
    from objectives.packed_model import PackedModel
    from objectives.train import autocast, resolve_device, train_mode
    from search.study.study_spec import load_spec

    spec = load_spec(study.spec)
    train = dataclasses.replace(spec.train, device=study.device)
    device = resolve_device(train.device)
    members = [None, *spec.grid.points()]
    model = PackedModel(train, CLASSES, members).to(device)
    train_mode(model, True)
    generator = torch.Generator(device).manual_seed(0)
    uint8 = torch.randint(256, (train.batch_size, 3, 32, 32), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0)).to(device)
    images = augment.train_batch(uint8, train.augment, train.image_size, generator)
    labels = torch.zeros(train.batch_size, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as counter:
        with autocast(device, train.bf16):
            logits = model(images)
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.repeat(len(members)))
        loss.backward()
    flops = counter.get_total_flops() / len(members)
    del model, images, logits, loss
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return flops, train.batch_size


# ---------------------------------------------------------------- the ways


def plan_ways(args: argparse.Namespace) -> list[dict]:
    ks = sorted(set(args.ks))
    processes = args.processes or (2 if args.device == "cpu" else
                                   max([k for k in ks if k <= 4] or [2]))
    ways = [{"name": "solo", "kind": "solo", "pack": 1, "workers": 1},
            {"name": f"processes x{processes}", "kind": "processes", "pack": 1,
             "workers": processes}]
    packed = [max(ks)] if args.quick else ks
    ways += [{"name": f"packed K={k}", "kind": "packed", "pack": k, "workers": 1}
             for k in packed]
    if not args.quick:
        ways.append({"name": "packed auto", "kind": "auto", "pack": "auto", "workers": 1})
    return ways


def summarize(way: dict, runs: list[dict], reference: list[dict] | None, epochs: int) -> dict:
    def median(key: str):
        values = [run[key] for run in runs if run[key] is not None]
        return statistics.median(values) if values else None

    wall = median("wall_s")
    first = runs[0]
    trials, images = first["trials"], first["train_images"]
    row = {**way, "repeats": len(runs), "wall_s": wall, "walls_s": [r["wall_s"] for r in runs],
           "trials": trials, "trials_per_hour": trials / wall * 3600,
           "img_s": trials * epochs * images / wall if images else None,
           "train_images": images, "epochs": epochs,
           "tree_rss_mib": median("tree_rss_mib"), "self_maxrss_mib": median("self_maxrss_mib"),
           "children_maxrss_mib": median("children_maxrss_mib"),
           "cuda_peak_mib": median("cuda_peak_mib"), "gpu_used_mib": median("gpu_used_mib"),
           "packs": first["packs"], "probe_k": first["probe_k"]}
    reference = reference if reference is not None else first["board"]
    row["max_diff"] = max(max_difference(run["board"], reference) for run in runs)
    row["leaderboard"] = [{key: r.get(key) for key in ("number", "state", "baseline", "rank",
                                                      "alpha", "dropout", *METRICS)}
                          for r in first["board"]]
    return row


def run_ways(args: argparse.Namespace, study: Study, folder: Path, epochs: int) -> list[dict]:
    rows, reference = [], None
    for way in plan_ways(args):
        runs = []
        for repeat in range(args.repeats):
            tag = f"{way['kind']}-{way['pack']}-{repeat}"
            runs.append(run_once(study, way, folder, tag))
            run = runs[-1]
            print(f"{way['name']:<16} repeat {repeat + 1}/{args.repeats}: "
                  f"{run['wall_s']:.1f} s, {run['trials']} trials, packs {run['packs'] or '-'}"
                  f", tree RSS {mib(run['tree_rss_mib'])} MiB, CUDA peak "
                  f"{mib(run['cuda_peak_mib'])} MiB, GPU used {mib(run['gpu_used_mib'])} MiB",
                  file=sys.stderr, flush=True)
        row = summarize(way, runs, reference, epochs)
        if reference is None:  # solo: the others are compared with its first run
            reference = runs[0]["board"]
        rows.append(row)
    return rows


# ---------------------------------------------------------------- report


def mib(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def table(report: dict) -> str:
    cuda = report["device"] == "cuda"
    solo = report["ways"][0]["wall_s"]
    head = ["way", "--pack", "workers", "wall s", "trials/hour", "train img/s", "vs solo",
            "peak RSS MiB (tree)"]
    if cuda:
        head += ["CUDA peak MiB (worker)", "GPU used MiB (nvidia-smi)", "MFU"]
    head += ["packs trained", "max abs diff vs solo"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["ways"]:
        cells = [row["name"], str(row["pack"]), str(row["workers"]), f"{row['wall_s']:.1f}",
                 f"{row['trials_per_hour']:,.0f}",
                 "-" if row["img_s"] is None else f"{row['img_s']:,.0f}",
                 f"{solo / row['wall_s']:.2f}x", mib(row["tree_rss_mib"])]
        if cuda:
            cells += [mib(row["cuda_peak_mib"]), mib(row["gpu_used_mib"]),
                      "unknown" if row.get("mfu") is None else f"{row['mfu']:.1%}"]
        packs = row["packs"]
        cells += [(f"{len(packs)} of {'/'.join(str(p) for p in sorted(set(packs), reverse=True))}"
                   if packs else "-"),
                  "-" if row["kind"] == "solo" else f"{row['max_diff']:.2e}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def section(report: dict) -> str:
    what = report["study"]
    text = [f"Measured {report['date']} on {report['machine']}, torch {report['torch']}; "
            f"`{report['command']}`. {what}; median of {report['repeats']} run(s) per way, "
            "wall time of the whole `search grid` command (start-up, data, every trial). "
            "Packs trained: how many packs of which sizes (none: one trial at a time).",
            "", table(report), ""]
    check = ("within 1e-4 of solo's, as required" if report["leaderboards_match"]
             else "NOT within 1e-4 of solo's")
    if report["device"] == "cuda":
        check = "bf16: the largest difference of each way is reported, not checked"
    text.append(f"Leaderboards (val_acc, test_acc, f1, auc_micro, auc_macro per trial): {check}. "
                f"Fastest packing: K={report['k']}, {report['speedup']:.2f}x solo"
                + (f"; --pack auto packed {report['auto_k']}" if report["auto_k"] else "")
                + ".")
    if report.get("mfu_note"):
        text.append("")
        text.append(report["mfu_note"])
    return "\n".join(text)


def finite(value):
    """`value` with every non-finite float as None (JSON has no inf)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


# ---------------------------------------------------------------- --profile


@contextlib.contextmanager
def patched(target, name: str, replacement):
    original = getattr(target, name)
    setattr(target, name, replacement(original))
    try:
        yield
    finally:
        setattr(target, name, original)


def demo_pack(device: str):
    import dataclasses

    from objectives.data import load_splits
    from objectives.packed_train import PackMember
    from search.study.study_spec import load_spec

    spec = load_spec(DEMO)
    train = dataclasses.replace(spec.train, epochs=1, device=device)
    members = [PackMember(None), *(PackMember(point) for point in spec.grid.points())]
    return train, members, load_splits(train)


def profile(device: str) -> str:
    """One packed epoch of the demo's ten trials: a coarse split and the top 15 ops."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from objectives import augment, packed_train

    train, members, data = demo_pack(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    seconds = dict.fromkeys(("batch gather", "augmentation", "forward", "backward",
                             "optimizer step", "evaluation (val + test forward)"), 0.0)
    mark = [time.perf_counter()]  # end of the last step (or the epoch's start)

    def timed(part: str, when=lambda *a, **k: True):
        def wrap(original):
            def call(*a, **k):
                if not when(*a, **k):
                    return original(*a, **k)
                sync()
                start = time.perf_counter()
                result = original(*a, **k)
                sync()
                seconds[part] += time.perf_counter() - start
                return result
            return call
        return wrap

    def gather_then_augment(original):
        inner = timed("augmentation")(original)

        def call(*a, **k):
            sync()
            seconds["batch gather"] += time.perf_counter() - mark[0]
            return inner(*a, **k)
        return call

    def epoch_start(original):
        def call(*a, **k):
            result = original(*a, **k)
            mark[0] = time.perf_counter()
            return result
        return call

    def step_end(_images: int) -> None:
        sync()
        mark[0] = time.perf_counter()

    def training_forward(self, *a, **k) -> bool:
        return self.training and torch.is_grad_enabled()

    packed_class = packed_train.PackedModel
    with contextlib.ExitStack() as patches:
        patches.enter_context(patched(augment, "train_batch", gather_then_augment))
        patches.enter_context(patched(packed_train, "train_mode", epoch_start))
        patches.enter_context(patched(packed_class, "forward",
                                      timed("forward", training_forward)))
        patches.enter_context(patched(torch.Tensor, "backward", timed("backward")))
        patches.enter_context(patched(packed_train.PackOptimizer, "step",
                                      timed("optimizer step")))
        patches.enter_context(patched(packed_train, "predict",
                                      timed("evaluation (val + test forward)")))
        start = time.perf_counter()
        packed_train.run_pack(train, members, data, on_step=step_end)
        sync()
        total = time.perf_counter() - start
    seconds["other (model build, loss, bookkeeping, metrics)"] = total - sum(seconds.values())
    steps = math.ceil(len(data.train_labels) / train.batch_size)
    lines = [f"--profile: one packed epoch of the demo, {len(members)} members, "
             f"{len(data.train_labels):,} train images, {steps} steps of batch "
             f"{train.batch_size}, device {device}, {torch.get_num_threads()} threads: "
             f"{total:.2f} s", "", "| part | s | share |", "|---|---|---|"]
    lines += [f"| {part} | {value:.2f} | {value / total:.1%} |" for part, value in seconds.items()]

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        packed_train.run_pack(train, members, data)
    lines += ["", "Top 15 ops by self CPU time (a second run, under torch.profiler):", "",
              prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true",
                        help="1 epoch, 1 repeat; ways solo, processes and packed K=max(--ks)")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--write", action="store_true",
                        help="put the table into BENCHMARKS.md (section packing)")
    parser.add_argument("--repeats", type=int, help="runs per way, median reported "
                                                    "(default 3; --quick: 1)")
    parser.add_argument("--ks", type=int, nargs="+",
                        help="pack sizes of the packed ways (default: cpu 2 5 10, cuda 2 4 10)")
    parser.add_argument("--processes", type=int,
                        help="worker processes of the processes way (default: cpu 2; cuda the "
                             "largest K of --ks that is <= 4)")
    parser.add_argument("--epochs", type=int, help="epochs per trial (default: the spec's; "
                                                   "--quick: 1)")
    parser.add_argument("--train-images", type=int, default=10_000,
                        help="cuda: synthetic training images (default 10,000)")
    parser.add_argument("--held-out", type=int, default=1_000,
                        help="cuda: synthetic val and test images each (default 1,000)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one packed epoch of the demo in this process")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda number, _: sys.exit(128 + number))
    args.ks = args.ks or ([2, 4, 10] if args.device == "cuda" else [2, 5, 10])
    args.repeats = args.repeats or (1 if args.quick else 3)
    if min(args.ks) < 1 or args.repeats < 1:
        parser.error("--ks and --repeats must be positive")
    command = " ".join(["python benchmarks/packing.py", *sys.argv[1:]])

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("packing.py: error: --device cuda but no CUDA device is visible "
              f"(torch {torch.__version__}, CUDA build {torch.version.cuda})", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="packing-") as name:
        folder = Path(name)
        if args.device == "cuda":
            started = time.perf_counter()
            spec = write_cuda_study(folder, args.train_images, args.held_out)
            print(f"wrote {args.train_images:,} + 2 x {args.held_out:,} PNGs in "
                  f"{time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
            study = Study(spec, "packing-vit-s", args.epochs, "cuda")
            epochs = args.epochs or 1
            what = (f"ViT-S/16 at 224 px (not pretrained), LoRA q,k,v, batch 128, {epochs} "
                    f"epoch(s); baseline + ranks 2 4 8 x alphas 2 4 8 (10 trials) on "
                    f"{args.train_images:,} random 32 px PNGs in {CLASSES} classes (val and "
                    f"test {args.held_out:,} each)")
        else:
            epochs = args.epochs or (1 if args.quick else 4)
            study = Study(DEMO, "demo", epochs, "cpu")
            what = (f"Demo study (studies/demo.toml: tiny ViT at 32 px, digits), baseline + "
                    f"ranks 2 4 8 x alphas 2 4 8 (10 trials), {epochs} epoch(s)")
        ways = run_ways(args, study, folder, epochs)

        mfu_note = None
        if args.device == "cuda":
            peak, described = peak_flops("cuda")
            per_step, batch_size = flops_per_member_step(study)
            steps = math.ceil(ways[0]["train_images"] / batch_size) * epochs
            total = per_step * steps * ways[0]["trials"]
            for row in ways:
                row["mfu"] = total / row["wall_s"] / peak if peak else None
            mfu_note = (f"MFU: {per_step / 1e9:.1f} GFLOP per member per training step "
                        f"(FlopCounterMode, a pack of the 10 members, forward + backward) x "
                        f"{steps} steps x {ways[0]['trials']} trials over the whole wall time; "
                        f"{described}. Evaluation is not counted.")
            print(mfu_note, file=sys.stderr)

    fixed = [row for row in ways if row["kind"] == "packed"]
    best = min(fixed, key=lambda row: row["wall_s"])
    auto = next((row for row in ways if row["kind"] == "auto"), None)
    others = [row for row in ways if row["kind"] != "solo"]
    matches = all(row["max_diff"] <= TOLERANCE for row in others)
    report = {
        "solo_s": ways[0]["wall_s"], "processes_s": ways[1]["wall_s"],
        "packed_s": best["wall_s"], "speedup": ways[0]["wall_s"] / best["wall_s"],
        "k": best["pack"],
        "auto_k": (max(auto["packs"] or [1]) if auto else None),
        "auto_probe_k": auto["probe_k"] if auto else None,
        "max_diff": {row["name"]: row["max_diff"] for row in others},
        "leaderboards_match": matches,
        "device": args.device, "machine": machine(args.device), "torch": torch.__version__,
        "date": datetime.date.today().isoformat(), "command": command, "study": what,
        "epochs": epochs, "repeats": args.repeats, "mfu_note": mfu_note,
        "ways": ways,
    }
    for row in others:
        print(f"{row['name']}: max |diff| vs solo {row['max_diff']:.2e}"
              + ("" if args.device == "cuda" else
                 " ok" if row["max_diff"] <= TOLERANCE else " MISMATCH"), file=sys.stderr)
    if args.format == "json":
        print(json.dumps(finite(report)))
    else:
        print(section(report))
    if args.write:
        write_section("packing", section(report))
    if args.profile:
        print(profile(args.device))
    if args.device == "cpu" and not matches:
        print(f"packing.py: error: a leaderboard differs from solo's by more than {TOLERANCE}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
