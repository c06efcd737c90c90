"""Where a study's trained weights and pictures live: the folder chosen at creation, as an
Optuna artifact store."""

from __future__ import annotations

from pathlib import Path

import optuna

from search.study.storage import default_artifacts_dir


def artifact_store(folder: str | Path) -> optuna.artifacts.FileSystemArtifactStore:
    Path(folder).mkdir(parents=True, exist_ok=True)
    return optuna.artifacts.FileSystemArtifactStore(str(folder))


def artifacts_folder(study: optuna.Study, storage_url: str, override: str | None) -> str:
    return override or study.user_attrs.get("artifacts") or str(default_artifacts_dir(storage_url))
