"""Exit codes and summary lines that do not hide failures, and a storage password that stays
out of command lines and messages.

Real faults only: trials that fail because the weights file they load was damaged after
queueing, workers killed with SIGKILL mid-trial, a PostgreSQL cluster with a password.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time

import psutil
import pytest
from postgres_cluster import free_port, running_cluster
from run_cli import DEMO, FAST, ROOT, SEARCH, board, search, search_in_process
from sqlalchemy.engine import make_url

from search.study.open_study import open_study
from search.study.storage import open_storage, shown

DEMO_WEIGHTS = ROOT / "studies" / "weights" / "demo-vit-tiny-mnist.safetensors"
BEATS = ["--heartbeat-interval", "1", "--grace-period", "3"]
EPOCH_LINE = re.compile(r"trial (\d+) .*epoch=(\d+)/(\d+)")


def environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def summary_lines(stderr: str, prefix: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(prefix)]


def descendants(pid: int) -> list[psutil.Process]:
    """Every process below `pid`: its children, theirs, and so on."""
    return psutil.Process(pid).children(recursive=True)


def worker_at(parent: int, position: int) -> int:
    """The pid of the worker process under `parent` started with `--position N`."""
    for process in descendants(parent):
        try:
            argv = process.cmdline()
        except psutil.NoSuchProcess:
            continue  # ended meanwhile
        if "--position" in argv and argv[argv.index("--position") + 1] == str(position):
            return process.pid
    raise AssertionError(f"no worker at position {position} under {parent}")


def test_a_worker_whose_trials_all_fail_exits_1_and_says_how_many(tmp_path):
    """The weights file the study names is damaged after queueing: every trial fails with
    the real loading error (the worker used to exit 0)."""
    weights = tmp_path / "backbone.safetensors"
    shutil.copy(DEMO_WEIGHTS, weights)
    search("grid", *FAST, "--ranks", "2", "--alphas", "2", "--weights", str(weights),
           "--workers", "0", cwd=tmp_path)
    weights.write_bytes(os.urandom(20_000))  # still a file: the worker starts, each trial fails

    result = search("worker", "--study", "demo", cwd=tmp_path, check=False)
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("failed: SafetensorError") == 2
    [line] = summary_lines(result.stderr, "worker: ")
    assert line.startswith("worker: no queued trial left in 'demo' (2 failed); "
                           "2 of 2 trials failed; gave up on 2 points: trial 0 baseline"), line
    assert "trial 1 r=2 alpha=2 dropout=0.1 after 1 try" in line
    assert {row["state"] for row in board(tmp_path)} == {"FAIL"}


def test_a_sigkilled_child_of_grid_makes_it_exit_137_while_the_others_finish_the_study(
        tmp_path):
    """`search grid --workers 2`, one worker killed with SIGKILL mid-trial: the other runs the
    rest and the dead worker's retry; the command says so and exits 128 + 9 (it used to
    exit 0, the max of 0 and -9, and print nothing)."""
    # --pack 1: one trial in hand per worker (a killed pack: test_pack_worker).
    command = [*SEARCH, "grid", "--spec", DEMO, "--epochs", "3", "--ranks", "2", "4", "8",
               "--alphas", "8", "--workers", "2", "--pack", "1", *BEATS]
    process = subprocess.Popen(command, cwd=tmp_path, env=environment(),
                               stderr=subprocess.PIPE, text=True)
    try:
        reached: dict[int, tuple[int, int]] = {}
        seen = []
        for line in process.stderr:  # one line per epoch: stderr is not a terminal
            seen.append(line)
            if match := EPOCH_LINE.match(line):
                reached[int(match[1])] = (int(match[2]), int(match[3]))
            # Both workers mid-trial (each runs one trial at a time).
            if sum(1 for epoch, total in reached.values() if epoch < total) == 2:
                break
        else:  # the command ended first: say what it printed (a worker that never ran?)
            raise AssertionError("never saw both workers mid-trial:\n" + "".join(seen))
        os.kill(worker_at(process.pid, 1), signal.SIGKILL)
        rest = process.stderr.read()
        process.wait(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGKILL, rest
    [line] = summary_lines(rest, "workers: ")
    assert re.fullmatch(r"workers: 1 of 5 trials failed; worker 1 killed by SIGKILL "
                        r"\(trial \d in hand\)", line), line
    rows = board(tmp_path)
    assert sorted(row["state"] for row in rows) == ["COMPLETE"] * 4 + ["FAIL"]
    done = sorted(row["rank"] or 0 for row in rows if row["state"] == "COMPLETE")
    assert done == [0, 2, 4, 8]  # every point, the killed one by its retry


def test_a_point_whose_retries_are_used_up_makes_the_last_worker_exit_1_and_name_it(tmp_path):
    """--max-retries 0: a worker killed mid-trial leaves a point nobody will run. The worker
    that finds it dead says it gave up on it and exits 1 (it used to print 'ran none' and
    exit 0)."""
    search("grid", "--spec", DEMO, "--epochs", "3", "--ranks", "2", "--alphas", "8",
           "--workers", "0", *BEATS, "--max-retries", "0", cwd=tmp_path)
    victim = subprocess.Popen([*SEARCH, "worker", "--study", "demo", "--pack", "1"], cwd=tmp_path,
                              env=environment(), stderr=subprocess.PIPE, text=True)
    try:
        for line in victim.stderr:
            if mid_trial := re.match(r"trial (\d+) r=2 .*epoch=1/3", line):
                break
        victim.kill()
        victim.wait(timeout=60)
    finally:
        if victim.poll() is None:
            victim.kill()
    killed = int(mid_trial[1])

    last = search("worker", "--study", "demo", cwd=tmp_path, check=False)
    assert last.returncode == 1, last.stderr
    [line] = summary_lines(last.stderr, "worker: no queued trial")
    assert line == (f"worker: no queued trial left in 'demo' (ran none); gave up on 1 point: "
                    f"trial {killed} r=2 alpha=8 dropout=0.1 after 1 try"), line
    states = {row["number"]: row["state"] for row in board(tmp_path)}
    assert states == {0: "COMPLETE", killed: "FAIL"}


# --- the password --------------------------------------------------------------------------

@pytest.mark.parametrize("url, secret, parsed_as", [
    ("postgresql://u:S3cret@h/db", "S3cret", "postgresql://u:S3cret@h/db"),
    ("postgresql://u:S3cret@h:5432/db", "S3cret", "postgresql://u:S3cret@h:5432/db"),
    # An unencoded "@" in the password: the user info ends at the last "@".
    ("postgresql://u:p@ss@h/db", "p@ss", "postgresql://u:p%40ss@h/db"),
    ("postgresql://u:p@ss@h:5432/db", "p@ss", "postgresql://u:p%40ss@h:5432/db"),
    ("postgresql://u:p%40ss@h/db", "p@ss", "postgresql://u:p%40ss@h/db"),
    ("postgresql://u@h/db?password=S3cret", "S3cret", "postgresql://u@h/db?password=S3cret"),
    ("postgresql://u@h/db?sslmode=require&sslpassword=S3cret", "S3cret",
     "postgresql://u@h/db?sslmode=require&sslpassword=S3cret"),
])
def test_shown_hides_every_password_form_and_keeps_the_rest(url, secret, parsed_as):
    text = shown(url)
    assert secret not in text and secret.split("@")[-1] + "@" not in text
    ours, theirs = make_url(text), make_url(parsed_as)  # SQLAlchemy's parse of both
    assert (ours.drivername, ours.username, ours.host, ours.port, ours.database) == \
        (theirs.drivername, theirs.username, theirs.host, theirs.port, theirs.database)
    assert ours.password in (None, "***") and (ours.password is None) == (theirs.password is None)
    assert {key: ("***" if "password" in key else value) for key, value in theirs.query.items()} \
        == dict(ours.query)
    if "@" not in secret and not theirs.query:  # what SQLAlchemy itself shows
        assert text == theirs.render_as_string(hide_password=True)


@pytest.mark.parametrize("url, secret", [
    ("postgresql://u:S3cret@h:abc/db", "S3cret"),
    ("postgresql://u@h:abc/db?password=S3cret", "S3cret"),
    ("postgresql://u:p@ss@h:abc/db", "p@ss"),
])
def test_shown_hides_the_password_of_a_url_that_does_not_parse(url, secret):
    with pytest.raises(ValueError):  # SQLAlchemy parses the port with int()
        make_url(url)
    text = shown(url)
    assert secret not in text and "ss@" not in text and "h:abc/db" in text


@pytest.mark.parametrize("url", [
    "postgresql://u@127.0.0.1:{port}/db?password=S3cret",  # refused: the message names it
    "postgresql://u:S3cret@127.0.0.1:abc/db",
    "postgresql://u:p@S3cret@127.0.0.1:{port}/db",
])
def test_storage_errors_never_print_the_password(url, tmp_path, capsys, monkeypatch):
    code, out, err = search_in_process(["leaderboard", "--storage",
                                        url.format(port=free_port())],
                                       tmp_path, capsys, monkeypatch)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "S3cret" not in out + err and "***" in err


@pytest.fixture(scope="module")
def postgres_url():
    with running_cluster() as cluster:
        yield cluster.url


def test_worker_children_get_the_storage_password_through_the_environment(postgres_url,
                                                                          tmp_path):
    """`search worker --workers 2` with the URL in SEARCH_STORAGE: neither it nor any process
    under it shows the password on its command line (what `ps` shows every user); the
    workers get the URL in their environment (readable by their owner only) and reach the
    study."""
    password = make_url(postgres_url).password
    env = environment(SEARCH_STORAGE=postgres_url)
    subprocess.run([*SEARCH, "grid", *FAST, "--study", "cmdline", "--ranks", "2", "--alphas",
                    "2", "--workers", "0"], cwd=tmp_path, env=env, check=True,
                   capture_output=True, timeout=300)
    parent = subprocess.Popen([*SEARCH, "worker", "--study", "cmdline", "--workers", "2"],
                              cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        # It and each process under it, as last read: argv and SEARCH_STORAGE, read again
        # until both workers have exec'd (a process read before its exec shows its parent's).
        seen: dict[int, tuple[list[str], str | None]] = {}
        deadline = time.monotonic() + 120
        while (sum("--position" in argv for argv, _ in seen.values()) < 2
               and parent.poll() is None and time.monotonic() < deadline):
            try:
                processes = [psutil.Process(parent.pid), *descendants(parent.pid)]
            except psutil.NoSuchProcess:
                break  # it ended meanwhile
            for process in processes:
                try:
                    seen[process.pid] = (process.cmdline(),
                                         process.environ().get("SEARCH_STORAGE"))
                except psutil.NoSuchProcess:
                    pass  # ended meanwhile
            time.sleep(0.05)
        err = parent.communicate(timeout=300)[1]
    finally:
        if parent.poll() is None:
            parent.kill()
    assert len(seen) == 3 and seen[parent.pid][0][-4:] == ["--study", "cmdline", "--workers",
                                                           "2"], (seen, err)
    for argv, storage in seen.values():
        assert "worker" in argv and "--storage" not in argv
        assert not any(password in arg for arg in argv), argv
        assert storage == postgres_url  # how the workers got it instead
    assert parent.returncode == 0, err
    assert password not in err
    assert summary_lines(err, "workers: ") == ["workers: 2 trials run, none failed"]
    study = open_study(open_storage(postgres_url, must_exist=True), "cmdline")
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "COMPLETE"]


def test_a_short_password_is_hidden_without_garbling_the_message():
    from search.study.storage import without_secrets

    message = "psycopg.OperationalError: connection to postgresql://u:p@h/db refused"
    assert without_secrets(message, "postgresql://u:p@h/db") == \
        "psycopg.OperationalError: connection to postgresql://u:***@h/db refused"
