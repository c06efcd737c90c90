"""Errors the user can act on, and how one is told in one line.

Every module's own error class (a bad spec, dataset, storage URL, ...) derives from
`UserError`; the command line prints its message as one line and exits 2. Any other exception
is a bug or a fault of the machine, and is not dressed up as the user's mistake.
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem with what the user asked for; the message is one line for the user."""


def first_line(error: BaseException) -> str:
    """The line of `error`'s message that says most: the first non-empty one that is not a
    header (torch's load_state_dict opens with "Error(s) in loading ...:" and lists the details
    below it), else the first non-empty one, else the error's type name."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    details = [line for line in lines if not line.endswith(":")]
    return (details or lines or [type(error).__name__])[0]
