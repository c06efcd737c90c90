"""The worker's shape: short parameter lists (what a worker runs with travels as one
`WorkerContext`, what the user asked for as one `WorkerOptions`), and options that reach a
local child whole (`to_argv`, then `from_args` in the child)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from search.cli.parser import build_parser
from search.study.storage import STORAGE_VARIABLE
from search.worker.options import WorkerOptions

WORKER = Path(__file__).resolve().parent.parent / "search" / "worker"
MOST_PARAMETERS = 6


def parameter_counts(path: Path) -> dict[str, int]:
    """Each function's parameters (self and cls aside) by `module.function` name; a nested
    function or method by its own name."""
    counts = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            given = node.args
            names = [a.arg for a in [*given.posonlyargs, *given.args, *given.kwonlyargs]]
            names += [a.arg for a in (given.vararg, given.kwarg) if a is not None]
            counts[f"{path.stem}.{node.name}"] = len([n for n in names
                                                      if n not in ("self", "cls")])
    return counts


def test_no_worker_function_takes_more_than_six_parameters():
    counts = {name: count for path in sorted(WORKER.glob("*.py"))
              for name, count in parameter_counts(path).items()}
    assert counts  # the walk found the worker's functions
    too_long = {name: count for name, count in counts.items() if count > MOST_PARAMETERS}
    assert not too_long, f"bundle them (WorkerContext, WorkerOptions): {too_long}"


OPTION_SETS = [
    WorkerOptions("demo", "sqlite:///elsewhere/search.db"),
    WorkerOptions("a study with spaces", "postgresql://user:secret@db/search",
                  artifacts="/shared/artifacts", workers=3, gpus=(0, 2),
                  workers_per_gpu=2, threads=4, position=2, journal="/tmp/worker-2.jsonl",
                  queue_share=3, pack_setting=4, storage_timeout=30, heartbeat_interval=5,
                  grace_period=20, max_retries=0, data_dir="/data", device="cuda:1",
                  compile=True, verbosity=1),
    WorkerOptions("demo", "sqlite:///search.db", pack_setting=1, compile=False,
                  device="cpu", verbosity=-1),
]


def test_every_option_differs_from_its_default_in_some_set():
    """Otherwise the round trip could not see that option dropped from `to_argv`."""
    default = WorkerOptions("", "")
    for option in dataclasses.fields(WorkerOptions):
        assert any(getattr(options, option.name) != getattr(default, option.name)
                   for options in OPTION_SETS), option.name


@pytest.mark.parametrize("options", OPTION_SETS)
def test_worker_options_reach_a_child_whole(options, monkeypatch):
    """What a child's command line and environment carry is read back as the same options;
    the storage URL only in the environment, where `ps` does not show it."""
    argv = options.to_argv()
    assert options.storage_url not in " ".join(argv)
    monkeypatch.setenv(STORAGE_VARIABLE, options.storage_url)  # as `worker_environment` sets it
    args = build_parser().parse_args(["worker", *argv])
    assert WorkerOptions.from_args(args) == options
