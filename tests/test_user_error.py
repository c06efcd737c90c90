"""The one rule for turning an exception into the line a user reads."""

from __future__ import annotations

from objectives.user_error import UserError, first_line


def test_a_header_line_gives_way_to_the_first_detail():
    error = RuntimeError("Error(s) in loading state_dict for VisionTransformer:\n"
                         "\tsize mismatch for head.weight: [10, 96] vs [3, 96].\n"
                         "\tMissing key(s): blocks.0.attn.qkv.weight")
    assert first_line(error) == "size mismatch for head.weight: [10, 96] vs [3, 96]."


def test_blank_lines_and_padding_are_skipped():
    assert first_line(OSError("\n  disk full  \nmore")) == "disk full"


def test_an_empty_message_names_the_error_type():
    assert first_line(KeyError()) == "KeyError"
    assert first_line(ValueError("")) == "ValueError"


def test_a_message_of_headers_only_keeps_the_first():
    assert first_line(ValueError("Problems:\nMore problems:")) == "Problems:"


def test_every_error_the_cli_reports_as_a_users_is_a_user_error():
    from objectives.checkpoint import CheckpointError
    from objectives.data import DatasetError
    from objectives.export_model import ExportError
    from objectives.inference import InferenceError
    from objectives.model import ModelError
    from search.results.dashboard import DashboardError
    from search.study.open_study import StudyError
    from search.study.space import SpaceError
    from search.study.storage import StorageError
    from search.study.study_spec import SpecError
    from search.worker.launch import WorkerCountError

    for cls in (CheckpointError, DatasetError, ExportError, InferenceError, ModelError,
                DashboardError, StudyError, SpaceError, StorageError, SpecError,
                WorkerCountError):
        assert issubclass(cls, UserError), cls
