"""End to end: the real `search` command on the offline demo spec, in a temporary folder."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from run_cli import FAST, ROOT, board, search, search_in_process


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A demo study (baseline + 1 x 2 grid, one epoch) finished by two local workers, both
    given GPU 0 (on a host without CUDA they train on the CPU)."""
    folder = tmp_path_factory.mktemp("study")
    result = search("grid", *FAST, "--ranks", "2", "--alphas", "2", "4", "--gpus", "0",
                    "--workers-per-gpu", "2", cwd=folder)
    (folder / "grid.stderr").write_text(result.stderr)
    return folder


def test_grid_runs_every_trial_once_and_prints_a_leaderboard(finished):
    rows = board(finished)
    assert len(rows) == 3
    assert {row["state"] for row in rows} == {"COMPLETE"}
    assert [row["baseline"] for row in rows].count(True) == 1
    points = {(row["rank"], row["alpha"], row["dropout"]) for row in rows if not row["baseline"]}
    assert points == {(2, 2.0, 0.1), (2, 4.0, 0.1)}
    values = [row["val_acc"] for row in rows]
    assert values == sorted(values, reverse=True)
    for row in rows:
        assert 0 <= row["test_acc"] <= 1 and 0 <= row["auc_macro"] <= 1
        assert row["trainable_params"] > 0 and row["train_seconds"] > 0
    # Each worker says how many trials it completed: together exactly the three, none twice.
    stderr = (finished / "grid.stderr").read_text()
    workers = re.findall(r"worker: no queued trial left in 'demo' \(([^)]*)\)", stderr)
    assert len(workers) == 2
    assert sum(int(n) for report in workers for n in re.findall(r"(\d+) complete", report)) == 3
    assert (finished / "search.db").is_file() and (finished / "search-artifacts").is_dir()


def test_trial_counts_match_the_dry_run(finished):
    plan = json.loads(search("grid", *FAST, "--ranks", "2", "--alphas", "2", "4", "--dry-run",
                             "--format", "json", cwd=finished).stdout)
    assert [p["baseline"] for p in plan] == [True, False, False]
    assert set(plan[0]) >= {"baseline", "rank", "alpha", "dropout", "trainable_params",
                            "total_params"}
    by_point = {(p["rank"], p["alpha"]): p["trainable_params"] for p in plan}
    for row in board(finished):
        assert row["trainable_params"] == by_point[(row["rank"], row["alpha"])]


def test_grid_is_idempotent_and_a_wider_grid_adds_only_new_points(finished):
    again = search("grid", *FAST, "--ranks", "2", "--alphas", "2", "4", "--workers", "0",
                   cwd=finished)
    assert "queued 0 baselines and 0 grid point(s); 3 already there" in again.stderr
    assert "(train 1,222 / val 216 / test 359 images, 10 classes)" in again.stderr
    assert len(board(finished)) == 3
    wider = search("grid", *FAST, "--ranks", "2", "4", "--alphas", "2", "4", "--workers", "0",
                   "--study", "demo", cwd=finished)
    assert "queued 0 baselines and 2 grid point(s); 3 already there" in wider.stderr
    rows = board(finished)
    assert sorted(row["state"] for row in rows) == ["COMPLETE"] * 3 + ["WAITING"] * 2


def test_export_writes_params_metrics_spec_and_loadable_weights(finished):
    import timm
    from peft import PeftModel
    from safetensors.torch import load_file

    from objectives.model import create_backbone
    from search.study.study_spec import train_spec_from_dict

    search("export", "--study", "demo", "--out", "best.yaml", "--weights", "best", cwd=finished)
    search("export", "--study", "demo", "--out", "best.json", cwd=finished)
    document = json.loads((finished / "best.json").read_text())
    assert {"params", "value", "metrics", "spec"} <= set(document)
    best = max((r for r in board(finished) if r["state"] == "COMPLETE"),
               key=lambda r: r["val_acc"])
    assert document["value"] == pytest.approx(best["val_acc"])
    assert document["metrics"]["test_acc"] == pytest.approx(best["test_acc"])
    assert (finished / "best.yaml").read_text().startswith("study: demo")

    # The winner may be the baseline; the adapter folder is checked on the best LoRA trial.
    lora = max((r for r in board(finished) if not r["baseline"] and r["state"] == "COMPLETE"),
               key=lambda r: r["val_acc"])
    search("export", "--study", "demo", "--trial", str(lora["number"]), "--out", "lora.json",
           "--weights", "lora", cwd=finished)
    folder = finished / "lora"
    assert {"adapter_config.json", "adapter_model.safetensors", "model.safetensors"} <= \
        {p.name for p in folder.iterdir()}
    assert json.loads((finished / "lora.json").read_text())["params"]["rank"] == lora["rank"]

    spec = train_spec_from_dict(document["spec"], "export")
    x = torch.rand(4, 3, spec.image_size, spec.image_size)
    adapter = PeftModel.from_pretrained(create_backbone(spec, 10), str(folder)).eval()
    plain = timm.create_model(spec.model, num_classes=10, **spec.model_kwargs).eval()
    plain.load_state_dict(load_file(str(folder / "model.safetensors")))
    with torch.no_grad():
        torch.testing.assert_close(plain(x), adapter(x), rtol=1e-4, atol=1e-4)
        # The trained head is in the adapter folder: not the random head of a fresh model.
        fresh = create_backbone(spec, 10, pretrained=True).eval()
        assert not torch.allclose(fresh(x), adapter(x), atol=1e-3)


BAD_INPUT = [
    (["grid", "--ranks", "0"], "rank must be a positive integer"),
    (["grid", "--ranks", "two"], "rank must be a number"),
    (["grid", "--ranks", "2.5"], "rank must be a positive integer"),
    (["grid", "--alphas", "-1"], "alpha must be a number > 0"),
    (["grid", "--dropouts", "1"], "dropout must be a number in [0, 1)"),
    (["grid", "--dropouts", "-0.1"], "dropout must be a number in [0, 1)"),
    (["grid", "--dataset", "imagenet22k"], "unknown dataset"),
    (["grid", "--model", "vit_nope"], "unknown timm model"),
    (["grid", "--targets", "q,o"], "targets"),
    (["grid", "--spec", "missing.toml"], "does not exist"),
    (["grid", "--storage", "mysql://u@h/db"], "unsupported storage"),
    (["grid", "--storage", "not a url"], "not a storage URL"),
    (["grid", *FAST, "--epochs", "3", "--study", "demo", "--workers", "0"],
     "exists with another spec"),
    (["leaderboard", "--study", "nope"], "no study named 'nope'"),
    (["export", "--study", "nope"], "no study named 'nope'"),
    (["worker", "--study", "nope"], "no study named 'nope'"),
    (["grid", *FAST, "--heartbeat-interval", "60", "--grace-period", "30", "--workers", "0"],
     "must be longer than the heartbeat interval"),
    (["worker", "--study", "demo", "--grace-period", "1", "--heartbeat-interval", "5"],
     "must be longer than the heartbeat interval"),
    (["grid", "--heartbeat-interval", "0"], "must be a positive integer"),
    (["export", "--study", "demo", "--out", "best.txt"], "use a file ending in"),
    (["grid", *FAST, "--workers", "2", "--workers-per-gpu", "2"], "not both"),
    (["worker", "--study", "demo", "--workers", "2", "--workers-per-gpu", "2"], "not both"),
    # Output paths: one rule for every flag (the folder must exist; file and folder kept apart).
    (["report", "--out", "grid.stderr"], "grid.stderr is a file, not a folder"),
    (["export", "--weights", "grid.stderr"], "grid.stderr is a file, not a folder"),
    (["export", "--out", "search-artifacts"], "search-artifacts is a folder, not a file"),
    (["export", "--weights", "/nonexistent/dir/w"], "folder '/nonexistent/dir' does not exist"),
    (["report", "--out", "/nonexistent/dir/r"], "folder '/nonexistent/dir' does not exist"),
    (["export", "--out", "/nonexistent/dir/best.json"], "folder '/nonexistent/dir' does not"),
    (["grid", *FAST, "--study", "", "--workers", "0"], "--study: must not be empty"),
    (["leaderboard", "--study", " "], "--study: must not be empty"),
    (["leaderboard", "--storage", "postgresql://u:pw@host:abc/db"], "port that is not a number"),
    (["grid", *FAST, "--ranks", "99999999999", "--workers", "0"], "rank 99999999999 is larger"),
] + ([] if torch.cuda.is_available() else [
    (["grid", *FAST, "--workers-per-gpu", "2"], "no GPU is visible"),
])


@pytest.mark.parametrize("args, message", BAD_INPUT)
def test_bad_input_exits_2_with_one_line_and_changes_nothing(finished, args, message, capsys,
                                                             monkeypatch):
    before = search_in_process(["leaderboard", "--format", "json"], finished, capsys,
                               monkeypatch)
    code, _, err = search_in_process(args, finished, capsys, monkeypatch)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert search_in_process(["leaderboard", "--format", "json"], finished, capsys,
                             monkeypatch) == before


@pytest.mark.parametrize("args, message", [BAD_INPUT[0], BAD_INPUT[7], BAD_INPUT[13]])
def test_the_installed_command_prints_no_traceback(finished, args, message):
    result = search(*args, cwd=finished, check=False)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


TRAINING_STACK = ("torch", "timm", "peft")


def modules_loaded_by(code: str, cwd: Path) -> set[str]:
    """Which of the training stack's modules a fresh Python has loaded after running `code`."""
    probe = (f"import sys\n{code}\n"
             f"print('loaded:' + ','.join(m for m in {TRAINING_STACK!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=cwd, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("loaded:")]
    return set(filter(None, line.removeprefix("loaded:").split(",")))


def test_the_cli_and_read_only_commands_do_not_import_the_training_stack(finished):
    assert modules_loaded_by("import search.cli.main, search.cli.commands", finished) == set()
    for args in (["leaderboard"], ["export", "--out", "probe.json"], ["grid", "--bogus"],
                 ["report", "--out", "probe-report"]):
        code = ("from search.cli.main import main\n"
                f"try:\n    main({args!r})\nexcept SystemExit:\n    pass")
        assert modules_loaded_by(code, finished) == set(), args
    # The commands that train do import it (the probe can see an import).
    assert "torch" in modules_loaded_by("import objectives.train", finished)


def test_a_malformed_port_hides_the_password(tmp_path, capsys, monkeypatch):
    code, _, err = search_in_process(["leaderboard", "--storage",
                                      "postgresql://u:S3cret@host:abc/db"], tmp_path, capsys,
                                     monkeypatch)
    assert code == 2 and "S3cret" not in err and "port" in err


def test_the_worker_hint_can_be_pasted_into_a_shell(tmp_path):
    name = "it's a study"
    result = search("grid", *FAST, "--ranks", "2", "--alphas", "2", "--study", name,
                    "--workers", "0", "--storage", f"sqlite:///{tmp_path}/my db.db", cwd=tmp_path)
    hint = result.stderr.strip().splitlines()[-1]
    words = shlex.split(hint.removeprefix("start workers with: "))
    assert words == ["search", "worker", "--study", name, "--storage",
                     f"sqlite:///{tmp_path}/my db.db"]


def test_malformed_spec_file_exits_2(tmp_path):
    (tmp_path / "bad.toml").write_text("[train]\nepochs = 'many'\n")
    result = search("grid", "--spec", "bad.toml", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "epochs must be an integer" in result.stderr
    assert not (tmp_path / "search.db").exists()


def test_read_commands_do_not_create_a_database(tmp_path):
    result = search("leaderboard", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "no database at search.db" in result.stderr
    assert not (tmp_path / "search.db").exists()
