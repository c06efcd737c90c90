"""The documentation: the site builds with `mkdocs build --strict`, its reference pages list
every flag and spec key the code has, and the README stays a short introduction."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib

import pytest
from run_cli import ROOT

from objectives.spec import AugmentSpec, TrainSpec
from search.cli.parser import build_parser
from search.study.baselines import Baseline
from search.study.heartbeat_settings import HeartbeatSettings
from search.study.space import GridSpace, TpeSearch, TpeSpace
from search.study.study_spec import StudySpec

# Each spec table and the keys it holds, written out here rather than taken from the hook,
# so that a table or key the hook leaves out fails a test.
NESTED = {"train", "grid", "tpe", "heartbeat", "augment", "space"}
SPEC_TABLES = {
    "`[study]`": [StudySpec],
    "`[train]`": [TrainSpec],
    "`[train.augment]`": [AugmentSpec],
    "`[grid]`": [GridSpace],
    "`[optuna]`": [TpeSearch, TpeSpace],
    "`[heartbeat]`": [HeartbeatSettings],
    "A table in `[study] baselines`": [Baseline],
}


def build(config, out):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f",
                           str(config), "-d", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    result = build(ROOT / "mkdocs.yml", out)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def hook():
    spec = importlib.util.spec_from_file_location("docs_reference_hook",
                                                  ROOT / "docs" / "hooks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sections(markdown: str) -> dict[str, str]:
    """The text under each second-level heading, by heading."""
    parts = re.split(r"^## (.+)$", markdown, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def listed_names(text: str) -> set[str]:
    """The flag or key names in the first cell of a section's table rows: `--ranks R [R ...]`
    and `--compile, --no-compile` give --ranks, --compile and --no-compile."""
    cells = re.findall(r"^\| `([^`]+)` \|", text, flags=re.MULTILINE)
    return {part.split()[0] for cell in cells for part in cell.split(", ")}


def test_the_site_builds_strictly_with_the_generated_pages(site):
    commands = (site / "reference" / "commands" / "index.html").read_text()
    spec = (site / "reference" / "spec" / "index.html").read_text()
    assert "<!-- generated" not in commands + spec
    assert 'id="search-grid"' in commands and "--heartbeat-interval" in commands
    assert "crop_padding" in spec and "startup_trials" in spec
    for page in ("changelog", "benchmarks"):
        assert (site / page / "index.html").is_file()


def test_a_broken_anchor_fails_the_strict_build(tmp_path):
    # The validation settings in mkdocs.yml are what make a bad link fail, not mkdocs' defaults.
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    for name in ("mkdocs.yml", "CHANGELOG.md", "BENCHMARKS.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    page = tmp_path / "docs" / "how-to" / "faults.md"
    page.write_text(page.read_text() + "\n[gone](../reference/results.md#no-such-section)\n")
    result = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-section" in result.stderr


def test_the_commands_page_lists_every_flag_of_every_command(hook):
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    rendered = sections(hook.render_commands())
    assert set(rendered) == {f"`search {name}`" for name in commands.choices}
    for name, command in commands.choices.items():
        text = rendered[f"`search {name}`"]
        shown = listed_names(text)
        for action in command._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            for flag in action.option_strings or [action.metavar or action.dest]:
                assert flag in shown, f"search {name} {flag} missing"
            # The help of each flag, as --help prints it.
            assert " ".join((action.help % vars(action)).split()).replace("|", "\\|") in text


def test_the_commands_page_hides_what_help_hides(hook):
    text = hook.render_commands()
    for hidden in ("--journal", "--position", "--pack-share"):
        assert hidden not in text


def test_the_spec_page_lists_every_key_of_every_table(hook):
    rendered = sections(hook.render_spec())
    assert set(rendered) == set(SPEC_TABLES)
    for title, classes in SPEC_TABLES.items():
        shown = listed_names(rendered[title])
        for cls in classes:
            for field in dataclasses.fields(cls):
                if field.name in NESTED:
                    continue
                assert field.metadata.get("help"), f"{cls.__name__}.{field.name} has no help"
                assert field.name in shown, f"{title} {field.name} missing"


def test_every_key_of_the_shipped_specs_is_on_the_spec_page(hook):
    rendered = sections(hook.render_spec())
    for path in sorted((ROOT / "studies").glob("*.toml")):
        document = tomllib.loads(path.read_text())
        augment = document.get("train", {}).pop("augment", {})
        tables = {**document, "train.augment": augment}
        for table, values in tables.items():
            shown = listed_names(rendered[f"`[{table}]`"])
            for key in values:
                assert key in shown, f"{path.name}: [{table}] {key} missing"


def test_the_defaults_on_the_spec_page_are_the_code_s(hook):
    text = sections(hook.render_spec())["`[train]`"]
    assert '| `model` | string | `"vit_small_patch16_224"` |' in text
    assert "| `lr` | number | `0.0003` |" in text
    text = sections(hook.render_spec())["`[optuna]`"]
    assert "| `dropout_range` | list of 2 numbers | `[0.05, 0.3]` |" in text


def test_the_readme_is_short_and_starts_with_the_two_set_up_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 160
    assert lines[0].split("#")[0].strip() == "bash scripts/demo.sh"
    assert lines[1].split("#")[0].strip() == "bash scripts/test.sh"
    for script in ("demo.sh", "test.sh"):
        assert (ROOT / "scripts" / script).is_file()


def test_the_readme_links_to_files_that_exist():
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    assert local
    missing = [t for t in local if not (ROOT / t).exists()]
    assert missing == []


def test_the_readme_shows_the_demo_leaderboard_as_the_tutorial_does():
    def leaderboard(text):
        match = re.search(r"^    number    state.*?^    on the test set[^\n]*$", text,
                          re.MULTILINE | re.DOTALL)
        assert match
        return match.group(0)

    readme = leaderboard((ROOT / "README.md").read_text())
    assert readme == leaderboard((ROOT / "docs" / "tutorial" / "demo.md").read_text())


def documented_commands() -> list[tuple[str, str]]:
    """Every `search` command line in the README's and the docs' code blocks (indented or
    fenced), with the file it is in."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        fenced = False
        for line in path.read_text().splitlines():
            if line.startswith("```"):
                fenced = not fenced
                continue
            if not (fenced or line.startswith("    ")):
                continue
            words = line.split()
            if words and words[0] in ("search", ".venv/bin/search"):
                found.append((path.relative_to(ROOT).as_posix(), line.strip()))
    return found


def test_the_docs_show_search_commands():
    assert len(documented_commands()) > 40


@pytest.mark.parametrize("where, line", documented_commands())
def test_every_documented_search_command_parses(where, line, capsys):
    try:
        build_parser().parse_args(shlex.split(line, comments=True)[1:])
    except SystemExit:
        pytest.fail(f"{where}: {line}: {capsys.readouterr().err.strip()}")
