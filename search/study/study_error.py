"""The error of a study that does not exist, does not match the command, or holds what this
version cannot read."""

from __future__ import annotations

from objectives.user_error import UserError


class StudyError(UserError):
    """A study that does not exist or does not match the command; one line for the user."""
