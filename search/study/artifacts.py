"""Where a study's trained weights and pictures live: the folder chosen at creation, as an
artifact store that stays inside it (`ContainedArtifactStore`), and when a worker may trust
the folder the study names.

The study's `artifacts` attribute lets a worker join with only the storage URL and the study
name, but it comes from the database, and the folder decides where the worker writes and
deletes. So whoever can write the database must not choose it freely. A worker (and every
other command) uses, in this order:

1. `--artifacts DIR`: the host's own choice, always trusted (created when missing);
2. the default beside the storage (`default_artifacts_dir`), when the study names none or
   names that same folder: derived from the URL the host was given, not from the database.
   Studies made before the marker below existed keep working this way, with no flag;
3. the folder the study names, only when it exists on this host and holds the marker file
   `.search-artifact-store` with the study's token (`artifacts_token`). `search grid` and
   `search optuna` write both when they create the study, and again when they join it with
   the study's own folder (`--artifacts DIR`, or the default), so re-running the command that
   made an older study marks its folder.

Anything else is refused in one line (exit 2) that asks for `--artifacts DIR`; nothing is
created or written there. A marker alone would let the database point a worker at any
artifact folder on the host (another project's); the token binds the folder to the studies it
was created for: the database holds only its own studies' tokens. The token is no secret from
people who can read the folder, and is not meant to be: they are not the ones it guards
against.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import optuna

from objectives.user_error import UserError
from search.study.contained_store import ContainedArtifactStore
from search.study.names import quoted
from search.study.storage import default_artifacts_dir
from search.study.study_record import ARTIFACTS_TOKEN, StudyRecord

MARKER_FILE = ".search-artifact-store"
MARKER_HEADER = ("# search: this folder is the artifact store of the studies whose "
                 f"`{ARTIFACTS_TOKEN}` is the line below;\n# a worker trusts a study's stored "
                 "artifact folder only when it holds this file with the study's token.\n")


class ArtifactsFolderError(UserError):
    """A stored artifact folder this host does not trust; one line for the user."""


def artifact_store(folder: str | Path) -> ContainedArtifactStore:
    """The artifact store in `folder`, created when missing."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    return ContainedArtifactStore(folder)


def artifacts_folder(study: optuna.Study, storage_url: str, override: str | None) -> str:
    """The folder a command on this host uses for `study`'s artifacts: `override`, else the
    one the study names where this host trusts it (see the module docstring)."""
    if override:
        return override
    return stored_artifacts_folder(StudyRecord(study), storage_url)


def stored_artifacts_folder(record: StudyRecord, storage_url: str) -> str:
    """The folder the study names, if trusted here: the default beside the storage, or a
    marked folder (its real path); else ArtifactsFolderError."""
    study_name, default = record.name, str(default_artifacts_dir(storage_url))
    stored = record.artifacts_folder
    if stored is None or (isinstance(stored, str)
                          and os.path.realpath(stored) == os.path.realpath(default)):
        return default
    if not isinstance(stored, str) or not os.path.isabs(stored):
        raise ArtifactsFolderError(f"study {quoted(study_name)} names {stored!r} as its artifact "
                                   "folder, which is not an absolute path; pass --artifacts DIR")
    if not os.path.isdir(stored):
        raise ArtifactsFolderError(f"study {quoted(study_name)} keeps its artifacts in {stored}, "
                                   "which is no folder on this host; pass --artifacts DIR")
    token = record.artifacts_token
    if token is None or marker_token(stored) != token:
        raise ArtifactsFolderError(f"study {quoted(study_name)} names {stored} as its artifact "
                                   f"folder, but it holds no {MARKER_FILE} with the study's "
                                   "token; pass --artifacts DIR to choose the folder here")
    return os.path.realpath(stored)


def mark_artifacts_folder(study: optuna.Study, folder: str | Path) -> None:
    """Make `folder` trusted as `study`'s artifact folder: create it, write its marker unless
    it has one (whose token is then kept: studies may share a folder), and record the token in
    the study. For the command that creates or joins the study on the host's own choice."""
    path, record = Path(folder), StudyRecord(study)
    token = marker_token(path)
    if token is None:
        known = record.artifacts_token
        try:
            path.mkdir(parents=True, exist_ok=True)
            token = write_marker(path, known if known is not None else secrets.token_hex(16))
        except OSError as error:
            raise ArtifactsFolderError(f"cannot use {path} as the artifact folder: "
                                       f"{error.strerror or error}") from None
    if record.artifacts_token != token:
        record.store_artifacts_token(token)


def write_marker(folder: Path, token: str) -> str:
    """Write the marker with `token` unless another command wrote one first; the token the
    marker holds then."""
    try:
        descriptor = os.open(folder / MARKER_FILE,
                             os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        for _ in range(20):  # the other writer may not have written its line yet
            found = marker_token(folder)
            if found is not None:
                return found
            time.sleep(0.05)
        raise ArtifactsFolderError(f"{folder / MARKER_FILE} is not a marker this tool wrote; "
                                   "remove it") from None
    with os.fdopen(descriptor, "w") as marker:
        marker.write(f"{MARKER_HEADER}{token}\n")
    return token


def marker_token(folder: str | Path) -> str | None:
    """The token in `folder`'s marker file; None when it has no readable one."""
    try:
        descriptor = os.open(Path(folder) / MARKER_FILE, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(descriptor, "rb") as marker:
            text = marker.read(4096).decode("ascii")
    except (OSError, UnicodeDecodeError):
        return None
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.startswith("#")]
    return lines[0] if len(lines) == 1 and text.endswith("\n") else None
