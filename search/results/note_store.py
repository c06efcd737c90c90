"""optuna-dashboard's notes, read and written in its stored format at a cost that does not grow
with the study: the one place that knows that format (and Optuna's tables behind it).

optuna-dashboard keeps a note (Markdown) as study system attributes: `dashboard:note_ver`
(the study's note) or `dashboard:{trial_id}:note_ver` holds its version, and the text is cut
into chunks of 2,045 characters under `...note_str:0`, `...note_str:1`, ...; a shorter text
blanks the chunks it no longer fills (they stay, so the chunk keys are always 0..m-1), and
every write bumps the version (the dashboard refuses an edit whose version is not the stored
one plus one, so a person editing a note sees that it moved). Its own `save_note` and
`get_note` read every system attribute of the study for each note: O(study) per note, which
at thousands of trials made a refresh of the dashboard cost minutes. Here a note is read and
written by its exact keys, straight on Optuna's `study_system_attributes` table; many notes
at once in one transaction; and all the notes of a study in one query for a cold start.

Private APIs (optuna-dashboard's `_note` key functions and chunk size; Optuna's RDB model,
its artifact records' key prefix and the storage a `_CachedStorage` wraps) are used here
only, and tests/test_note_store.py fails when the stored format moves (pyproject.toml bounds
optuna-dashboard's version for the same reason).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import optuna
import sqlalchemy

from search.study.optuna_private import (
    ARTIFACTS_ATTR_PREFIX,
    SYSTEM_ATTR_MAX_LENGTH,
    note_str_key_prefix,
    note_ver_key,
    rdb_models,
)

TABLE = rdb_models.StudySystemAttributeModel.__table__
CHUNK = SYSTEM_ATTR_MAX_LENGTH
# Keys of one query (SQLite allows 32,766 bound parameters; PostgreSQL 65,535).
KEYS_PER_QUERY = 500
# dashboard:note_ver, dashboard:note_str:3, dashboard:17:note_ver, dashboard:17:note_str:0
NOTE_KEY = re.compile(r"dashboard:(?:(\d+):)?note_(?:ver|str:(\d+))")
NoteId = int | None  # a trial's id, or None for the study's note


@dataclass(frozen=True)
class StoredNote:
    """A note as stored: its version (0: never written), how many chunk keys it has (blanked
    ones included: a rewrite must blank those it does not fill) and its text."""

    version: int = 0
    chunks: int = 0
    body: str = ""


def rdb_storage(storage: optuna.storages.BaseStorage) -> optuna.storages.RDBStorage:
    """The RDBStorage under a study's storage (Optuna wraps it in a `_CachedStorage`)."""
    backend = getattr(storage, "_backend", storage)
    if not isinstance(backend, optuna.storages.RDBStorage):
        raise TypeError(f"dashboard notes need an RDB storage, not {type(backend).__name__}")
    return backend


def engine_of(storage: optuna.storages.BaseStorage) -> sqlalchemy.engine.Engine:
    return rdb_storage(storage).engine


def chunk_key(note: NoteId, index: int) -> str:
    return f"{note_str_key_prefix(note)}{index}"


def split(body: str) -> list[str]:
    """The chunks optuna-dashboard cuts a text into (none for an empty text)."""
    return [body[start:start + CHUNK] for start in range(0, len(body), CHUNK)]


def select_keys(connection: sqlalchemy.Connection, study_id: int, keys: list[str]
                ) -> dict[str, tuple[int, str]]:
    """Stored rows of `keys` (key -> (row id, JSON value)), by exact key through the
    (study_id, key) unique index, a few hundred keys a query."""
    found: dict[str, tuple[int, str]] = {}
    for start in range(0, len(keys), KEYS_PER_QUERY):
        some = keys[start:start + KEYS_PER_QUERY]
        rows = connection.execute(
            sqlalchemy.select(TABLE.c.key, TABLE.c.study_system_attribute_id, TABLE.c.value_json)
            .where(TABLE.c.study_id == study_id, TABLE.c.key.in_(some)))
        found.update((key, (row_id, value)) for key, row_id, value in rows)
    return found


def probe(connection: sqlalchemy.Connection, study_id: int, notes: dict[NoteId, int]
          ) -> dict[NoteId, dict[str, tuple[int, str]]]:
    """The stored rows of each note (its version key and every chunk key), by exact keys:
    chunks 0..n-1 first (`notes` gives n, a guess), then twice as many while the last one
    asked for exists. Chunk keys run from 0 without a gap, so the first missing one ends
    them."""
    rows: dict[NoteId, dict[str, tuple[int, str]]] = {note: {} for note in notes}
    asked = {note: (0, max(count, 1)) for note, count in notes.items()}
    first = True
    while asked:
        keys = [note_ver_key(note) for note in asked] if first else []
        keys += [chunk_key(note, i) for note, (low, high) in asked.items()
                 for i in range(low, high)]
        found = select_keys(connection, study_id, keys)
        for key, row in found.items():
            match = NOTE_KEY.fullmatch(key)
            rows[None if match[1] is None else int(match[1])][key] = row
        asked = {note: (high, 2 * high) for note, (_, high) in asked.items()
                 if chunk_key(note, high - 1) in found}
        first = False
    return rows


def stored(note: NoteId, rows: dict[str, tuple[int, str]]) -> StoredNote:
    """A note from its rows, read as optuna-dashboard reads it (no version key: no note)."""
    chunks = 0
    while chunk_key(note, chunks) in rows:
        chunks += 1
    version = rows.get(note_ver_key(note))
    if version is None:
        return StoredNote(0, chunks, "")
    body = "".join(json.loads(rows[chunk_key(note, i)][1]) for i in range(chunks))
    return StoredNote(int(json.loads(version[1])), chunks, body)


def read_notes(storage: optuna.storages.BaseStorage, study_id: int, notes: Iterable[NoteId]
               ) -> dict[NoteId, StoredNote]:
    """The notes of these trials (by trial id; None: the study's), each by its own keys."""
    wanted = dict.fromkeys(notes, 2)
    with engine_of(storage).connect() as connection:
        rows = probe(connection, study_id, wanted)
    return {note: stored(note, rows[note]) for note in wanted}


def read_all_notes(storage: optuna.storages.BaseStorage, study_id: int
                   ) -> dict[NoteId, StoredNote]:
    """Every note of the study in one query (a process's first look at a study it has no
    memory of): the keys under `dashboard:` (LIKE, escaped), sorted out here."""
    rows: dict[NoteId, dict[str, tuple[int, str]]] = {}
    with engine_of(storage).connect() as connection:
        result = connection.execute(
            sqlalchemy.select(TABLE.c.key, TABLE.c.study_system_attribute_id, TABLE.c.value_json)
            .where(TABLE.c.study_id == study_id,
                   TABLE.c.key.startswith("dashboard:", autoescape=True)))
        for key, row_id, value in result:
            match = NOTE_KEY.fullmatch(key)
            if match is not None:
                note = None if match[1] is None else int(match[1])
                rows.setdefault(note, {})[key] = (row_id, value)
    return {note: stored(note, note_rows) for note, note_rows in rows.items()}


def write_notes(storage: optuna.storages.BaseStorage, study_id: int, bodies: dict[NoteId, str]
                ) -> dict[NoteId, StoredNote]:
    """Write these notes (by trial id; None: the study's) in one transaction, each as
    optuna-dashboard's `save_note` would: version + 1, the text's chunks, the chunks it no
    longer fills blanked. Reads only these notes' own keys. What is now stored."""
    written: dict[NoteId, StoredNote] = {}
    with engine_of(storage).begin() as connection:
        rows = probe(connection, study_id, {note: len(split(body)) + 1
                                            for note, body in bodies.items()})
        updates: list[dict[str, Any]] = []
        inserts: list[dict[str, Any]] = []
        for note, body in bodies.items():
            before = stored(note, rows[note])
            chunks = split(body)
            values = {note_ver_key(note): before.version + 1,
                      **{chunk_key(note, i): text for i, text in enumerate(chunks)},
                      **{chunk_key(note, i): "" for i in range(len(chunks), before.chunks)}}
            for key, value in values.items():
                if key in rows[note]:
                    updates.append({"row": rows[note][key][0], "value": json.dumps(value)})
                else:
                    inserts.append({"study_id": study_id, "key": key,
                                    "value_json": json.dumps(value)})
            written[note] = StoredNote(before.version + 1, max(len(chunks), before.chunks), body)
        if updates:
            connection.execute(
                TABLE.update().where(TABLE.c.study_system_attribute_id
                                     == sqlalchemy.bindparam("row"))
                .values(value_json=sqlalchemy.bindparam("value")), updates)
        if inserts:
            connection.execute(TABLE.insert(), inserts)
    return written


def read_attrs(storage: optuna.storages.BaseStorage, study_id: int, keys: list[str]
               ) -> dict[str, Any]:
    """These study system attributes (None where unset) by their keys, without reading the
    others (Optuna's `get_study_system_attrs` reads them all, every note included)."""
    with engine_of(storage).connect() as connection:
        found = select_keys(connection, study_id, keys)
    return {key: json.loads(found[key][1]) if key in found else None for key in keys}


def artifact_recorded(storage: optuna.storages.BaseStorage, study_id: int,
                      artifact_id: str) -> bool:
    """Whether the study's artifact `artifact_id` has its record (Optuna's
    `upload_artifact` writes one, a JSON text; the dashboard sets that text to "null" when a
    person deletes the artifact, and then serves it no more)."""
    key = f"{ARTIFACTS_ATTR_PREFIX}{artifact_id}"
    record = read_attrs(storage, study_id, [key])[key]
    return isinstance(record, str) and json.loads(record) is not None
