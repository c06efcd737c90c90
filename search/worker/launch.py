"""Starting N worker processes on this host and waiting for them.

Each local worker is the same `search worker` command a remote host would run, so one code
path serves one host and many. A single worker without chosen GPUs runs in this process (no
second start-up). Children run in their own session: a Ctrl-C or SIGTERM reaches them once,
forwarded from here, and each puts its trial back in the queue before it exits.

The storage URL reaches the children through their environment (`SEARCH_STORAGE`, which
their `--storage` defaults to), never their command line: `ps` shows every user the command
lines of every process, with any password in them. Each child appends what it claims and
finishes to a journal file (`claim_loop.Journal`); from those and the exit codes the parent
prints one summary line and returns one exit code (`summarize`), a child killed by signal N
counting as 128 + N.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from objectives.user_error import UserError
from search.study.storage import STORAGE_VARIABLE
from search.worker.claim_loop import (
    EXIT_TRIALS_FAILED,
    describe_failures,
    describe_report,
    run_worker,
)
from search.worker.options import WorkerOptions
from search.worker.signals import SIGNALS

LOG = logging.getLogger(__name__)


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


def worker_command(options: WorkerOptions) -> list[str]:
    """A child's command line; without the storage URL (`worker_environment` holds it)."""
    return [sys.executable, "-m", "search", "worker", *options.to_argv()]


def worker_environment(index: int, gpu_ids: list[int], storage_url: str) -> dict[str, str]:
    """The storage URL, and one GPU per worker process, round robin, when there are GPUs (K
    workers per GPU for K x len(gpu_ids) workers)."""
    env = dict(os.environ)
    env[STORAGE_VARIABLE] = storage_url
    if gpu_ids:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu_ids[index % len(gpu_ids)])
    return env


def run_local_workers(options: WorkerOptions, workers: int, gpu_ids: list[int]) -> int:
    """Run `workers` workers until the study has no work left; print one summary line and
    return the worst exit code (non-zero when a trial they ran failed, a point was given up
    or a worker died).

    A single worker runs in this process with `options` as they are (its threads, by default
    this host's cores; `options.journal` the file it reports to when it is the child of
    another `run_local_workers`). Children each get their GPU, their share of the CPU cores,
    their progress-bar row and journal, and know how many share the queue.
    """
    if workers == 1 and not gpu_ids:
        report = run_worker(dataclasses.replace(
            options, threads=options.threads or threads_per_worker(1)))
        LOG.log(logging.WARNING if report.exit_code else logging.INFO,
                describe_report(options.study_name, report))
        return report.exit_code
    threads = threads_per_worker(workers) if not gpu_ids else 1
    with tempfile.TemporaryDirectory(prefix="search-workers-") as folder:
        journals = [Path(folder) / f"worker-{index}.jsonl" for index in range(workers)]
        # Each child is one worker: how many and on which GPUs was this process's to say.
        children = [dataclasses.replace(options, workers=None, gpus=None, workers_per_gpu=None,
                                        threads=threads, position=index,
                                        journal=str(journals[index]), queue_share=workers)
                    for index in range(workers)]
        processes = [
            subprocess.Popen(worker_command(child), start_new_session=True,
                             env=worker_environment(index, gpu_ids, options.storage_url))
            for index, child in enumerate(children)
        ]

        def forward(number: int, _frame) -> None:
            for process in processes:
                if process.poll() is None:
                    process.send_signal(number)

        previous = {number: signal.signal(number, forward) for number in SIGNALS}
        try:
            codes = [process.wait() for process in processes]
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
        summary = summarize(codes, [read_journal(path) for path in journals])
    LOG.log(logging.WARNING if summary.exit_code else logging.INFO, summary.line)
    return summary.exit_code


@dataclass
class ChildJournal:
    """What one child wrote to its journal (`claim_loop.Journal`)."""
    claimed: list[int] = field(default_factory=list)
    finished: dict[int, str] = field(default_factory=dict)  # trial number -> state name
    report: dict[str, Any] | None = None  # its WorkerReport, once it ended normally

    @property
    def in_hand(self) -> list[int]:
        return [number for number in self.claimed if number not in self.finished]


def read_journal(path: Path) -> ChildJournal:
    journal = ChildJournal()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:  # the child died before it claimed anything
        return journal
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:  # a line cut short by a kill
            continue
        if "claimed" in entry:
            journal.claimed.append(entry["claimed"])
        elif "finished" in entry:
            journal.finished[entry["finished"]] = entry["state"]
        elif "report" in entry:
            journal.report = entry["report"]
    return journal


@dataclass
class Summary:
    line: str
    exit_code: int


def exit_status(code: int) -> int:
    """A child's return code as a shell shows it: killed by signal N -> 128 + N."""
    return 128 - code if code < 0 else code


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def summarize(codes: list[int], journals: list[ChildJournal]) -> Summary:
    """One line for all the children, e.g. `workers: 2 of 7 trials failed; worker 1 killed by
    SIGKILL (trial 4 in hand)`, and the exit code: the worst child's (a signal's 128 + N), at
    least EXIT_TRIALS_FAILED when a trial failed or a point was given up.

    A killed child's trial in hand counts as a failed trial: the heartbeat check fails it
    (and retries it, if retries are left)."""
    ran = failed = 0
    gave_up: dict[int, str] = {}
    workers: list[str] = []
    for index, (code, journal) in enumerate(zip(codes, journals, strict=True)):
        states = [state for state in journal.finished.values() if state != "WAITING"]
        ran += len(states)
        failed += states.count("FAIL")
        report = journal.report or {}
        gave_up.update({int(number): text for number, text in report.get("gave_up", {}).items()})
        if code < 0:
            in_hand = journal.in_hand
            ran, failed = ran + len(in_hand), failed + len(in_hand)
            held = f" (trial {', '.join(map(str, in_hand))} in hand)" if in_hand else ""
            workers.append(f"worker {index} killed by {signal_name(-code)}{held}")
        elif report.get("environment") or report.get("storage_lost"):
            workers.append(f"worker {index} stopped: "
                           f"{report.get('environment') or report['storage_lost']}")
        elif report.get("stopped_by"):
            workers.append(f"worker {index} stopped by {report['stopped_by']}")
        elif code != 0 and journal.report is None:  # it ended before its report
            workers.append(f"worker {index} exited with code {code}")
    failures = describe_failures(failed, ran, gave_up)
    parts = failures or [f"{ran} trial{'' if ran == 1 else 's'} run, none failed"]
    exit_code = max((exit_status(code) for code in codes), default=0)
    if exit_code == 0 and failures:
        exit_code = EXIT_TRIALS_FAILED
    return Summary("workers: " + "; ".join(parts + workers), exit_code)
