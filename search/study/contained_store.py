"""An Optuna artifact store that never reaches outside its folder, whatever id it is given.

Artifact ids come from the database (a trial's `checkpoint` pointer, its `artifacts` and
`weights_artifact` attributes, the dashboard's notes), so whoever can write the database
chooses them. Optuna's `FileSystemArtifactStore` checks an id with `abspath`, which leaves
symbolic links alone: `dirlink/x.txt`, with `dirlink -> /elsewhere` in the folder, passes and
reads (or deletes) `/elsewhere/x.txt`. This store takes an id only as what it is here:

- every operation: a plain file name directly in the folder (no separator, no leading dot,
  so no `..`, no absolute path and not the folder's own marker file), whose real path, with
  every symbolic link resolved, is that same name in the folder's real path: a symbolic link
  is never followed, wherever it points. Files are opened with `O_NOFOLLOW`, so a link put
  there between the check and the open is refused too.
- writing and removing: besides, only the ids this tool writes (`is_artifact_id`): Optuna's
  `upload_artifact` (trial pictures and tables, weights, dashboard notes; optuna-dashboard's
  uploads) names each artifact `str(uuid.uuid4())`, and a checkpoint is
  `checkpoint-<32 hex digits>` (`search.worker.attempt_store`). Any other file in the folder
  is not one the store made, and no id from the database can overwrite or delete it.

A refused id is a ValueError (as Optuna's store raises), a missing artifact ArtifactNotFound.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from optuna.artifacts.exceptions import ArtifactNotFound

if TYPE_CHECKING:
    from search.study.optuna_private import ArtifactStore

# str(uuid.uuid4()), and a checkpoint's id (`Checkpoints.save`)
UPLOADED_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
CHECKPOINT_ID = re.compile(r"checkpoint-[0-9a-f]{32}")


def is_checkpoint_id(artifact_id: object) -> bool:
    """Whether `artifact_id` is a checkpoint's id as `Checkpoints.save` names one."""
    return isinstance(artifact_id, str) and CHECKPOINT_ID.fullmatch(artifact_id) is not None


def is_artifact_id(artifact_id: object) -> bool:
    """Whether `artifact_id` is of a form this tool writes: an upload's or a checkpoint's."""
    return isinstance(artifact_id, str) and (UPLOADED_ID.fullmatch(artifact_id) is not None
                                             or is_checkpoint_id(artifact_id))


def is_file_name(artifact_id: object) -> bool:
    """Whether `artifact_id` names a file directly in a folder, and not a hidden one."""
    return (isinstance(artifact_id, str) and artifact_id != "" and "\0" not in artifact_id
            and not artifact_id.startswith(".")
            and not any(sep in artifact_id for sep in ("/", os.sep, os.altsep) if sep))


class ContainedArtifactStore:
    """The artifacts in `folder` (an existing directory), by the rules of the module docstring.

    `folder` is the folder's real path, fixed when the store is made.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(os.path.realpath(folder))

    def open_reader(self, artifact_id: str) -> BinaryIO:
        """The artifact's bytes; ArtifactNotFound when there is no such file."""
        path = self._path(artifact_id)
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError as error:
            raise ArtifactNotFound("not found") from error
        return os.fdopen(descriptor, "rb")

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        """Create or replace the artifact with the rest of `content_body`."""
        path = self._path(artifact_id, writable=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666)
        with os.fdopen(descriptor, "wb") as file:
            shutil.copyfileobj(content_body, file)

    def remove(self, artifact_id: str) -> None:
        """Delete the artifact; ArtifactNotFound when there is no such file."""
        path = self._path(artifact_id, writable=True)
        try:
            os.remove(path)  # a link put there since the check: the link goes, not its target
        except FileNotFoundError as error:
            raise ArtifactNotFound("not found") from error

    def _path(self, artifact_id: str, writable: bool = False) -> str:
        if not is_file_name(artifact_id):
            raise ValueError(f"Invalid artifact_id: {artifact_id!r} is not a file name in the "
                             "artifact folder")
        if writable and not is_artifact_id(artifact_id):
            raise ValueError(f"Invalid artifact_id: {artifact_id!r} is not an id this tool "
                             "writes")
        path = os.path.join(self.folder, artifact_id)
        if os.path.realpath(path) != path:
            raise ValueError(f"Invalid artifact_id: {artifact_id!r} is a symbolic link in the "
                             "artifact folder")
        return path


if TYPE_CHECKING:  # a static check that the class implements Optuna's protocol
    _: ArtifactStore = ContainedArtifactStore("")
