"""`search dashboard` and the artifacts each trial leaves for it, on a finished demo study."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import time
import urllib.request

import optuna
import pytest
from postgres_cluster import free_port
from run_cli import FAST, ROOT, SEARCH, search, search_in_process

PNG = b"\x89PNG\r\n\x1a\n"
FILES = {"confusion_matrix.png", "learning_curves.png", "roc_curves.png",
         "classification_report.csv", "top_confusions.csv"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dashboard")
    search("grid", *FAST, "--epochs", "2", "--ranks", "2", "--alphas", "4", "--workers", "1",
           cwd=folder)
    return folder


def stored_study(folder) -> optuna.Study:
    return optuna.load_study(study_name="demo", storage=f"sqlite:///{folder / 'search.db'}")


def test_every_trial_uploads_its_pictures_and_tables(finished):
    store = optuna.artifacts.FileSystemArtifactStore(str(finished / "search-artifacts"))
    classes = stored_study(finished).user_attrs["classes"]
    for trial in stored_study(finished).trials:
        uploaded = trial.user_attrs["artifacts"]
        assert set(uploaded) == FILES
        # Registered with Optuna, so the dashboard lists them on the trial's page.
        listed = {a.filename for a in optuna.artifacts.get_all_artifact_meta(
            trial, storage=stored_study(finished)._storage)}
        assert FILES | {"trained_weights.safetensors"} <= listed
        content = {name: store.open_reader(artifact).read() for name, artifact in
                   uploaded.items()}
        for name in ("confusion_matrix.png", "learning_curves.png", "roc_curves.png"):
            assert content[name].startswith(PNG) and len(content[name]) > 10_000
        report = list(csv.DictReader(io.StringIO(content["classification_report.csv"].decode())))
        assert [row["class"] for row in report] == classes
        support = sum(int(row["support"]) for row in report)
        recall = sum(float(row["recall"]) * int(row["support"]) for row in report) / support
        assert recall == pytest.approx(trial.user_attrs["test_acc"], abs=1e-3)
        mistakes = list(csv.DictReader(io.StringIO(content["top_confusions.csv"].decode())))
        counts = [int(row["count"]) for row in mistakes]
        assert counts == sorted(counts, reverse=True) and all(c > 0 for c in counts)
        assert all(row["true"] != row["predicted"] for row in mistakes)


def test_the_value_is_named_val_acc(finished):
    assert stored_study(finished).metric_names == ["val_acc"]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_the_dashboard_serves_the_study_and_its_artifacts(finished):
    port = free_port()
    server = subprocess.Popen([*SEARCH, "dashboard", "--port", str(port)], cwd=finished,
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                studies = get_json(f"{base}/api/studies")["study_summaries"]
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "no dashboard"
                time.sleep(0.5)
        assert [s["study_name"] for s in studies] == ["demo"]
        detail = get_json(f"{base}/api/studies/{studies[0]['study_id']}")
        assert len(detail["trials"]) == 2
        best = max(detail["trials"], key=lambda t: t["values"][0])
        names = {a["filename"]: a["artifact_id"] for a in best["artifacts"]}
        assert FILES <= set(names)
        image = f"{base}/artifacts/{studies[0]['study_id']}/{best['trial_id']}/" \
                f"{names['confusion_matrix.png']}"
        with urllib.request.urlopen(image, timeout=10) as response:
            assert response.read().startswith(PNG)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "at http://127.0.0.1:" in server.stderr.read()


def test_a_public_address_warns_and_a_taken_port_exits_2(finished, capsys, monkeypatch):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = search_in_process(["dashboard", "--port", str(port)], finished, capsys,
                                         monkeypatch)
    assert code == 2 and "cannot listen on 127.0.0.1" in err and len(err.splitlines()) == 1

    from search.results import dashboard

    served = []
    monkeypatch.setattr("optuna_dashboard.run_server", lambda *a, **k: served.append(k))
    code, _, err = search_in_process(["dashboard", "--host", "0.0.0.0", "--port",
                                      str(free_port())], finished, capsys, monkeypatch)
    assert code == 0 and "warning: listening on 0.0.0.0" in err and "no login" in err
    assert served and served[0]["host"] == "0.0.0.0"
    assert dashboard.is_loopback("::1") and not dashboard.is_loopback("10.0.0.5")


def test_report_writes_the_comparison_table_and_charts(finished, tmp_path):
    result = search("report", "--out", str(tmp_path / "report"), cwd=finished)
    assert "wrote" in result.stderr
    folder = tmp_path / "report"
    rows = list(csv.DictReader((folder / "report.csv").open()))
    board_rows = json.loads(search("leaderboard", "--format", "json", cwd=finished).stdout)
    assert [int(row["trial"]) for row in rows] == [row["number"] for row in board_rows]
    assert [row["method"] for row in rows].count("baseline (head only)") == 1
    assert {row["method"] for row in rows} == {"baseline (head only)", "LoRA on q,k,v"}
    for row, expected in zip(rows, board_rows, strict=True):
        assert float(row["test_acc"]) == pytest.approx(expected["test_acc"])
        assert float(row["trainable_pct"]) == pytest.approx(expected["trainable_pct"])
    for name in ("metrics.png", "accuracy_vs_params.png", "best_confusion_matrix.png"):
        assert (folder / name).read_bytes().startswith(PNG)
    markdown = (folder / "report.md").read_text()
    header = "| trial | method | model | rank | alpha | dropout | val_acc | test_acc | f1 |"
    assert header in markdown
    assert "![best trial's confusion matrix](best_confusion_matrix.png)" in markdown


def test_report_of_a_study_without_completed_trials_exits_2(tmp_path, capsys, monkeypatch):
    search("grid", *FAST, "--workers", "0", cwd=tmp_path)
    code, _, err = search_in_process(["report", "--out", "r"], tmp_path, capsys, monkeypatch)
    assert code == 2 and "no completed trial" in err and not (tmp_path / "r").exists()


def test_the_baseline_carries_a_note_the_dashboard_shows(finished):
    from optuna_dashboard._note import get_note_from_system_attrs

    study = stored_study(finished)
    system_attrs = study._storage.get_study_system_attrs(study._study_id)
    for trial in study.trials:
        note = get_note_from_system_attrs(system_attrs, trial._trial_id)
        assert ("**Baseline**" in note["body"]) == trial.user_attrs["baseline"]
