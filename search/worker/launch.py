"""Starting N worker processes on this host and waiting for them.

Each local worker is the same `search worker` command a remote host would run, so one code
path serves one host and many. A single worker without chosen GPUs runs in this process (no
second start-up). Children run in their own session: a Ctrl-C or SIGTERM reaches them once,
forwarded from here, and each puts its trial back in the queue before it exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

from objectives.user_error import UserError
from search.study.heartbeat_settings import HEARTBEAT_FLAGS
from search.worker.claim_loop import describe_report, run_worker
from search.worker.signals import SIGNALS


class WorkerCountError(UserError):
    """Flags that do not say how many workers to start; one line for the user."""


def worker_count(workers: int | None, workers_per_gpu: int | None, gpu_ids: list[int]) -> int:
    """--workers N, or K per GPU with --workers-per-gpu K, or one per GPU, or 1."""
    if workers_per_gpu is None:
        return workers if workers is not None else max(1, len(gpu_ids))
    if workers is not None:
        raise WorkerCountError("give --workers N or --workers-per-gpu K, not both")
    if not gpu_ids:
        raise WorkerCountError("--workers-per-gpu: no GPU is visible here and none was named "
                               "with --gpus; use --workers N on a CPU host")
    return workers_per_gpu * len(gpu_ids)


def threads_per_worker(workers: int) -> int:
    """Split this host's cores between CPU workers so they do not oversubscribe them."""
    return max(1, (os.cpu_count() or 1) // workers)


def worker_command(storage_url: str, study_name: str, artifacts: str | None, position: int,
                   threads: int, local_overrides: dict[str, Any],
                   heartbeat_overrides: dict[str, int | None]) -> list[str]:
    command = [sys.executable, "-m", "search", "worker", "--study", study_name,
               "--storage", storage_url, "--position", str(position), "--threads", str(threads)]
    if artifacts:
        command += ["--artifacts", artifacts]
    for field_name, value in local_overrides.items():
        flag = field_name.replace("_", "-")
        if isinstance(value, bool):
            command.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            command += [f"--{flag}", str(value)]
    for key, value in heartbeat_overrides.items():
        if value is not None:
            command += [HEARTBEAT_FLAGS[key], str(value)]
    return command


def worker_environment(index: int, gpu_ids: list[int]) -> dict[str, str]:
    """One GPU per worker process, round robin, when there are GPUs (K workers per GPU for
    K x len(gpu_ids) workers)."""
    env = dict(os.environ)
    if gpu_ids:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu_ids[index % len(gpu_ids)])
    return env


def run_local_workers(storage_url: str, study_name: str, artifacts: str | None, workers: int,
                      gpu_ids: list[int], local_overrides: dict[str, Any],
                      heartbeat_overrides: dict[str, int | None], threads: int | None = None,
                      position: int = 0) -> int:
    """Run `workers` workers until the study has no work left; the worst exit code.

    `threads` (default: this host's cores split between CPU workers) and `position` (the
    progress-bar row) are for a single worker running in this process.
    """
    if workers == 1 and not gpu_ids:
        report = run_worker(storage_url, study_name, artifacts, position,
                            threads or threads_per_worker(1), local_overrides,
                            heartbeat_overrides)
        print(describe_report(study_name, report), file=sys.stderr)
        return report.exit_code
    threads = threads_per_worker(workers) if not gpu_ids else 1
    processes = [
        subprocess.Popen(worker_command(storage_url, study_name, artifacts, index, threads,
                                        local_overrides, heartbeat_overrides),
                         env=worker_environment(index, gpu_ids), start_new_session=True)
        for index in range(workers)
    ]

    def forward(number: int, _frame) -> None:
        for process in processes:
            if process.poll() is None:
                process.send_signal(number)

    previous = {number: signal.signal(number, forward) for number in SIGNALS}
    try:
        return max(process.wait() for process in processes)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
