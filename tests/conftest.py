"""Fixtures shared by test files."""

import pytest

from search.cli.console_log import console_logging


@pytest.fixture
def shown_log(capsys):
    """The log lines a `search` command shows, on capsys's stderr, for tests that call the
    library (a worker's functions, a storage) directly rather than through `main`."""
    with console_logging(0):
        yield capsys
