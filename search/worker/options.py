"""What the user asked a worker for: the flags of `search worker`, as one value.

`search worker` reads them from its command line (`WorkerOptions.from_args`); the commands
that start workers on this host (`search grid`, `search optuna`, `search worker --workers N`)
write a child's command line from them (`to_argv`), and the child reads them back the same
way. One pair, so that a flag added to one side and forgotten on the other fails the
round-trip test (tests/test_worker_structure.py).

Three numbers are named apart, all "pack" once:
- `pack_setting`: the user's --pack, `auto` or K (`search.worker.pack_plan`);
- `queue_share`: how many local workers share the queue, so that `auto` claims this worker's
  part of it, not all of it;
- the pack size, the number of trials a claim actually trains together, is decided per claim
  by `PackPlanner` and is no option.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from search.study.heartbeat_settings import HEARTBEAT_FLAGS
from search.worker.pack_plan import AUTO, PackSetting

DEFAULT_STORAGE_TIMEOUT_S = 600

# Each option's flag of `search worker`; heartbeat settings as the study commands name them.
FLAGS = {"study_name": "--study", "artifacts": "--artifacts", "workers": "--workers",
         "gpus": "--gpus", "workers_per_gpu": "--workers-per-gpu", "threads": "--threads",
         "position": "--position", "journal": "--journal", "queue_share": "--queue-share",
         "pack_setting": "--pack", "storage_timeout": "--storage-timeout",
         "heartbeat_interval": HEARTBEAT_FLAGS["interval"],
         "grace_period": HEARTBEAT_FLAGS["grace_period"],
         "max_retries": HEARTBEAT_FLAGS["max_retries"],
         "data_dir": "--data-dir", "device": "--device", "compile": "--compile"}


@dataclass(frozen=True)
class WorkerOptions:
    """The flags of one `search worker` (None: not given, the study's or spec's value holds).

    `storage_url` has no flag in `to_argv`: a child reads it from its environment
    (`search.worker.launch.worker_environment`), because `ps` shows every user the command
    line of every process, with any password in the URL.
    """

    study_name: str
    storage_url: str
    artifacts: str | None = None  # artifact folder; None: the one the study was created with
    workers: int | None = None  # worker processes on this host; None: one per GPU, else 1
    gpus: tuple[int, ...] | None = None
    workers_per_gpu: int | None = None
    threads: int | None = None  # CPU threads of this worker
    position: int = 0  # progress-bar row among this host's workers
    journal: str | None = None  # where a local child reports what it claims and finishes
    queue_share: int = 1  # local workers sharing the queue (1: alone, or unknown)
    pack_setting: PackSetting = AUTO
    storage_timeout: int = DEFAULT_STORAGE_TIMEOUT_S  # seconds a database outage is waited out
    heartbeat_interval: int | None = None
    grace_period: int | None = None
    max_retries: int | None = None
    data_dir: str | None = None  # host-local spec fields (`search.study.study_spec.LOCAL_FIELDS`)
    device: str | None = None
    compile: bool | None = None
    verbosity: int = 0  # -q: -1, -v: 1 (`search.cli.console_log`)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> WorkerOptions:
        """The options of a parsed `search worker` command line."""
        return cls(study_name=args.study, storage_url=args.storage, artifacts=args.artifacts,
                   workers=args.workers, gpus=tuple(args.gpus) if args.gpus else None,
                   workers_per_gpu=args.workers_per_gpu, threads=args.threads,
                   position=args.position, journal=args.journal, queue_share=args.queue_share,
                   pack_setting=args.pack, storage_timeout=args.storage_timeout,
                   heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period,
                   max_retries=args.max_retries, data_dir=args.data_dir, device=args.device,
                   compile=args.compile, verbosity=args.verbosity)

    def to_argv(self) -> list[str]:
        """The flags after `search worker` that `from_args` reads back as these options; all
        but the storage URL (see the class)."""
        argv: list[str] = {-1: ["-q"], 0: [], 1: ["-v"]}[self.verbosity]
        for name, flag in FLAGS.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool):
                argv.append(flag if value else flag.replace("--", "--no-", 1))
            elif isinstance(value, tuple):
                argv += [flag, *map(str, value)]
            else:
                argv += [flag, str(value)]
        return argv

    @property
    def heartbeat_overrides(self) -> dict[str, int | None]:
        """This worker's own heartbeat settings (None: the study's), by setting name."""
        return {"interval": self.heartbeat_interval, "grace_period": self.grace_period,
                "max_retries": self.max_retries}

    @property
    def local_overrides(self) -> dict[str, Any]:
        """The host-local spec fields given: where the data lives, which device, compiling;
        they do not change what a trial computes."""
        given = {"data_dir": self.data_dir, "device": self.device, "compile": self.compile}
        return {name: value for name, value in given.items() if value is not None}
