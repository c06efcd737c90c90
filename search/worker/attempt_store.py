"""What one attempt at a trial writes to the artifact store, and its checkpoints there.

After every epoch but the last, the training state goes to the artifact store and the trial's
`checkpoint` user attribute points to it; a trial that starts with such a pointer (put back
in the queue, or the retry of a dead worker's trial, which inherits its user attributes)
continues after that epoch. Each checkpoint is a new artifact, written before the pointer
moves to it, so a worker killed while writing leaves the previous one whole; a write that fails
leaves no partial file. A pointer that cannot be used (its artifact is missing from this
host's store, damaged, or not an artifact id at all) is dropped and the trial starts over.
The pointer comes from the database: only a damaged file named as `Checkpoints.save` names one
is deleted, and the store itself refuses ids that lead out of its folder
(`search.study.contained_store`).
"""

from __future__ import annotations

import io
import logging
import uuid
from typing import TYPE_CHECKING, BinaryIO

import optuna
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial

from objectives.checkpoint import (
    CheckpointError,
    TrainingState,
    read_training_state,
    training_state_bytes,
)
from objectives.spec import LoraParams
from objectives.user_error import first_line
from search.study.contained_store import is_checkpoint_id
from search.worker.faults import environment_fault

if TYPE_CHECKING:
    from search.study.optuna_private import ArtifactStore

LOG = logging.getLogger(__name__)


class AttemptStore:
    """The artifact store as one attempt at a trial writes to it: a write that fails takes its
    partial file away, and every artifact written is remembered, so that an attempt stopped by
    its environment can take back all it wrote but its last good checkpoint."""

    def __init__(self, store: ArtifactStore) -> None:
        self._store = store
        # a ContainedArtifactStore's folder, or an Optuna FileSystemArtifactStore's
        base = getattr(store, "folder", None) or getattr(store, "_base_path", None)
        self.folder: str | None = str(base) if base is not None else None
        self.written: list[str] = []
        self.failed: BaseException | None = None  # the error of the last write that failed

    @property
    def store(self) -> ArtifactStore:
        """The artifact store itself."""
        return self._store

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self._store.open_reader(artifact_id)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.written.append(artifact_id)
        try:
            self._store.write(artifact_id, content_body)
        except BaseException as error:
            self.failed = error
            self.remove_quietly(artifact_id)
            raise

    def remove(self, artifact_id: str) -> None:
        self._store.remove(artifact_id)

    def remove_quietly(self, artifact_id: str) -> None:
        try:
            self._store.remove(artifact_id)
        except (ArtifactNotFound, OSError, ValueError):
            pass

    def take_back(self, keep: str | None) -> None:
        """Remove what this attempt wrote (weights, pictures, checkpoints), except `keep`."""
        for artifact_id in self.written:
            if artifact_id != keep:
                self.remove_quietly(artifact_id)


class Checkpoints:
    """The trial's checkpoint in the artifact store: the one it starts from, and each new one.

    The `checkpoint` user attribute points to the last good one. A new one is written under a
    new artifact id and the pointer moves to it only after the write succeeded, so a failed
    write (a full disk) leaves the previous checkpoint and pointer as they were.
    """

    def __init__(self, trial: optuna.Trial, frozen: FrozenTrial, store: AttemptStore) -> None:
        self._trial, self._store = trial, store
        self._pointer = frozen.user_attrs.get("checkpoint")
        self.current: str | None = None  # the artifact the pointer names, once it proved good
        self.epoch = 0  # the finished epochs it holds

    def load(self, point: LoraParams | None, epochs: int) -> TrainingState | None:
        """The state to resume from; None when there is none, or (with a message, and the
        pointer dropped) when it is unusable: missing from this host's artifact folder,
        damaged, of other params, or a pointer that names no artifact. The trial then starts
        over. An environment fault reading the store (permission denied) is raised."""
        if not self._pointer:
            return None
        pointer = self._pointer
        artifact = pointer.get("artifact") if isinstance(pointer, dict) else None
        try:
            if not isinstance(artifact, str):
                raise CheckpointError(f"not a checkpoint pointer: {pointer!r}")
            with self._store.open_reader(artifact) as reader:
                content = reader.read()
        except OSError as error:
            if environment_fault(error, self._store.folder) is not None:
                raise
            return self._start_over(artifact, error)
        except (ArtifactNotFound, CheckpointError, ValueError) as error:  # ValueError: the
            return self._start_over(artifact, error)  # store refuses the id (`../x`)
        try:
            state = read_training_state(io.BytesIO(content))
        except CheckpointError as error:
            # Damaged: no use to any worker. A file not named as a checkpoint (a trial's
            # weights, named by a bad pointer) is not ours to delete.
            if is_checkpoint_id(artifact):
                self._store.remove_quietly(artifact)
            return self._start_over(artifact, error)
        try:
            state.check_matches(point, epochs)
        except CheckpointError as error:
            return self._start_over(artifact, error)
        self.current, self.epoch = artifact, state.epoch
        self._trial.set_user_attr("resumed_from_epoch", state.epoch)
        return state

    def _start_over(self, artifact: str | None, error: Exception) -> None:
        named = artifact if artifact is not None else repr(self._pointer)
        LOG.warning(f"trial {self._trial.number}: checkpoint {named} not "
                    f"usable ({first_line(error)}); "
                    "starting over")
        self._trial.set_user_attr("checkpoint", None)
        return None

    def save(self, state: TrainingState) -> None:
        artifact_id = f"checkpoint-{uuid.uuid4().hex}"
        # A failed write leaves no partial file (AttemptStore) and the pointer unmoved.
        self._store.write(artifact_id, io.BytesIO(training_state_bytes(state)))
        try:
            self._trial.set_user_attr("checkpoint", {"artifact": artifact_id,
                                                     "epoch": state.epoch})
        except BaseException:
            self._store.remove_quietly(artifact_id)
            raise
        previous, self.current, self.epoch = self.current, artifact_id, state.epoch
        if previous is not None:
            try:
                self._store.remove(previous)
            except ArtifactNotFound:
                pass  # already gone; nothing points to it any more

    def discard(self) -> None:
        """A finished trial needs no checkpoint: the pointer goes first, then the file."""
        if self.current is None:
            return
        artifact, self.current = self.current, None
        self._trial.set_user_attr("checkpoint", None)
        try:
            self._store.remove(artifact)
        except ArtifactNotFound:
            pass
        except (OSError, ValueError) as error:  # the trial's outcome stands
            LOG.warning(f"trial {self._trial.number}: could not remove checkpoint {artifact} "
                        f"({first_line(error)})")
