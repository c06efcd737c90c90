"""`search dashboard`: optuna-dashboard on the study storage, with the trials' artifacts.

The dashboard shows what the studies already hold: the objective value is the validation
accuracy (named `val_acc`), the metrics, baseline flag and notes are user attributes, the
per-epoch validation accuracy are intermediate values (learning curves), and the artifacts
(weights, and the pictures a trial uploads) are served from the artifact store.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

import optuna

from objectives.user_error import UserError
from search.study.artifacts import ArtifactsFolderError, artifact_store, stored_artifacts_folder
from search.study.names import quoted
from search.study.storage import default_artifacts_dir, open_storage, shown
from search.study.study_record import StudyRecord

LOG = logging.getLogger(__name__)

MAX_NOTE_LINES = 10  # studies whose note page `search dashboard` names


class DashboardError(UserError):
    """A dashboard that cannot start (port taken, unknown host); one line for the user."""


def dashboard_artifacts(storage: optuna.storages.BaseStorage, url: str,
                        override: str | None) -> str:
    """The folder to serve: `override`, else the one the studies were created with (when
    they agree, and this host trusts it: `search.study.artifacts`), else the default beside
    the storage."""
    if override:
        return override
    named = [record for record in map(StudyRecord, optuna.get_all_study_summaries(storage))
             if record.artifacts_folder is not None]
    if named and all(r.artifacts_folder == named[0].artifacts_folder for r in named):
        refusals = []
        for record in named:  # any study's token that matches the folder's marker will do
            try:
                return stored_artifacts_folder(record, url)
            except ArtifactsFolderError as refused:
                refusals.append(refused)
        raise refusals[0]
    return str(default_artifacts_dir(url))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port_free(host: str, port: int) -> None:
    """Refuse a taken port up front, as one line, rather than as a server traceback."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        raise DashboardError(f"cannot listen on {host}:{port}: {error.strerror}") from None


def note_url(base: str, study_id: int) -> str:
    """The study's Note page: optuna-dashboard's client route `/dashboard/studies/<id>/note`
    (0.21's bundle), where the study's note shows the leaderboard and recommendation
    (`search.results.dashboard_notes`); its home page shows only the stock charts."""
    return f"{base}/dashboard/studies/{study_id}/note"


def note_lines(storage: optuna.storages.BaseStorage, base: str) -> list[str]:
    """One line per study (at most MAX_NOTE_LINES) with its note page's URL: the first thing
    `search dashboard` prints, as that page is what to open."""
    names = sorted(optuna.get_all_study_names(storage))
    lines = [f"study {quoted(name)}: leaderboard and recommendation at "
             f"{note_url(base, storage.get_study_id_from_name(name))}"
             for name in names[:MAX_NOTE_LINES]]
    if len(names) > MAX_NOTE_LINES:
        lines.append(f"{len(names) - MAX_NOTE_LINES} more studies: {base}/dashboard lists them")
    return lines


def serve_dashboard(url: str, artifacts: str | None, host: str, port: int) -> None:
    """Serve until Ctrl-C."""
    import optuna_dashboard

    storage = open_storage(url, must_exist=True)
    folder = dashboard_artifacts(storage, url, artifacts)
    check_port_free(host, port)
    base = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    for line in note_lines(storage, base):
        LOG.info(line)
    if not is_loopback(host):
        LOG.warning(f"search dashboard: warning: listening on {host}, reachable from other "
                    "machines; the dashboard has no login, anyone who reaches it can read and "
                    "change the studies")
    LOG.info(f"dashboard of {shown(url)} (artifacts in {folder}) at {base}/ ; Ctrl-C to stop")
    optuna_dashboard.run_server(storage, host=host, port=port,
                                artifact_store=artifact_store(folder))
