"""Starting N worker processes on this host and waiting for them.

Each local worker is the same `search worker` command a remote host would run, so one code
path serves one host and many. A single worker runs in this process (no second start-up).
"""

from __future__ import annotations

import os
import subprocess
import sys

from search.worker import run_worker, worker_environment


def threads_per_worker(workers: int) -> int:
    """Split this host's cores between CPU workers so they do not oversubscribe them."""
    return max(1, (os.cpu_count() or 1) // workers)


def worker_command(storage_url: str, study_name: str, artifacts: str, position: int,
                   threads: int, local_overrides: dict[str, str | bool]) -> list[str]:
    command = [sys.executable, "-m", "search", "worker", "--study", study_name,
               "--storage", storage_url, "--artifacts", artifacts,
               "--position", str(position), "--threads", str(threads)]
    for field_name, value in local_overrides.items():
        command += ["--" + field_name.replace("_", "-"), str(value)]
    return command


def run_local_workers(storage_url: str, study_name: str, artifacts: str, workers: int,
                      gpus: int, local_overrides: dict[str, str | bool]) -> int:
    """Run `workers` workers until the study's queue is empty; the worst exit code."""
    threads = threads_per_worker(workers) if not gpus else 1
    if workers == 1:
        run_worker(storage_url, study_name, artifacts, threads=threads,
                   local_overrides=local_overrides)
        return 0
    processes = [
        subprocess.Popen(worker_command(storage_url, study_name, artifacts, index, threads,
                                        local_overrides),
                         env=worker_environment(index, gpus))
        for index in range(workers)
    ]
    try:
        return max(process.wait() for process in processes)
    except KeyboardInterrupt:
        # The children got the same Ctrl-C from the terminal; wait for their clean exit.
        for process in processes:
            process.wait()
        raise
