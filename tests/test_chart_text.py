"""The text of the charts: the accuracy-against-parameters chart (the report's and the
dashboard note's) keeps its labels clear of each other and of the points; a study or class
name in any script is drawn without glyph warnings; `search dashboard` names the note page
that shows the chart first."""

from __future__ import annotations

import itertools
import re
import warnings
from pathlib import Path

import numpy as np
import optuna
import pytest
import test_report_scale
import torch
from matplotlib.collections import PathCollection
from matplotlib.text import Text
from matplotlib.transforms import Bbox
from postgres_cluster import free_port
from run_cli import search_in_process
from test_report_scale import SPEC, add_trials

from search.results import figures, report
from search.results.trial_artifacts import plot_confusion_matrix

CJK_STUDY = "研究-α"


def synthetic_study(trials: int, name: str = "demo", url: str | None = None) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=url, direction="maximize")
    study.set_user_attr("train_spec", SPEC)
    add_trials(study, trials)
    return study


def label_clashes(figure) -> list[str]:
    """Each label (annotation text) that overlaps another label or a plotted point."""
    figure.tight_layout()
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    axes = figure.axes[0]
    labels = [(t.get_text(), Text.get_window_extent(t, renderer)) for t in axes.texts]
    points = []
    for collection in axes.collections:
        if isinstance(collection, PathCollection) and len(collection.get_offsets()):
            centres = collection.get_offset_transform().transform(collection.get_offsets())
            sizes = collection.get_sizes()
            for index, (x, y) in enumerate(centres):
                radius = np.sqrt(sizes[index % len(sizes)]) / 2 * figure.dpi / 72
                points.append(Bbox([[x - radius, y - radius], [x + radius, y + radius]]))
    clashes = [f"{a} / {b}" for (a, box_a), (b, box_b) in itertools.combinations(labels, 2)
               if box_a.overlaps(box_b)]
    clashes += [text for text, box in labels if any(box.overlaps(p) for p in points)]
    return clashes


@pytest.mark.parametrize(("trials", "ranks"), [(10, (2, 4, 8, 16)), (30, (2, 4, 8, 16)),
                                                (30, (2, 3, 4))])
def test_chart_labels_clear_each_other_and_the_points(trials, ranks, tmp_path, monkeypatch):
    monkeypatch.setattr(test_report_scale, "RANKS", ranks)
    table, _ = report.report_table(synthetic_study(trials))
    clashes = []

    def measure_then_save(figure, path: Path) -> None:
        clashes.extend(label_clashes(figure))
        figures.save_figure(figure, path)

    monkeypatch.setattr(report, "save_figure", measure_then_save)
    report.plot_accuracy_vs_params(table, tmp_path / "chart.png", "study demo: test accuracy")
    assert clashes == []
    assert (tmp_path / "chart.png").stat().st_size > 0


def test_a_cjk_study_name_renders_without_glyph_warnings(tmp_path):
    study = synthetic_study(10, CJK_STUDY)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report.write_report(study, None, tmp_path)
        plot_confusion_matrix(torch.eye(3, dtype=torch.long), ["猫", "犬", "α"],
                              tmp_path / "confusion.png", CJK_STUDY)
    assert [str(w.message) for w in caught if "Glyph" in str(w.message)] == []
    text = (tmp_path / "report.md").read_text()
    assert f"# study {CJK_STUDY}" in text  # the text keeps the name as typed
    assert re.search(r"trainable parameters; trials? \d+(, \d+)*\)", text)
    assert "; trials 1)" not in text and not re.search(r"; trials \d+\)", text)


def test_characters_without_a_glyph_become_the_replacement_character():
    assert figures.drawable("study demo-α (x)") == "study demo-α (x)"
    cjk = figures.drawable(CJK_STUDY)
    assert cjk == CJK_STUDY or cjk == "\ufffd\ufffd-α"  # a CJK font installed, or none
    assert (cjk == CJK_STUDY) == (len(figures.chart_fonts()) > 1)


def test_the_dashboard_prints_the_studys_note_page_first(tmp_path, capsys, monkeypatch):
    url = f"sqlite:///{tmp_path / 'search.db'}"
    synthetic_study(2, CJK_STUDY, url)
    monkeypatch.setattr("optuna_dashboard.run_server", lambda *a, **k: None)
    port = free_port()
    code, _, err = search_in_process(["dashboard", "--storage", url, "--port", str(port)],
                                     tmp_path, capsys, monkeypatch)
    assert code == 0, err
    study_id = optuna.load_study(study_name=CJK_STUDY, storage=url)._study_id
    assert err.splitlines()[0] == (f"study '{CJK_STUDY}': leaderboard and recommendation at "
                                   f"http://127.0.0.1:{port}/dashboard/studies/{study_id}/note")


def test_the_note_page_is_a_route_of_the_installed_dashboard():
    import optuna_dashboard

    bundle = (Path(optuna_dashboard.__file__).parent / "public" / "bundle.js").read_text()
    assert 'url_prefix:"/dashboard"' in bundle and '"/studies/:studyId/note"' in bundle
