"""`search`, the entry point: parse the flags, run the command, turn a user error into one line
and exit code 2.

Nothing here imports torch, timm or peft: the commands that train, predict or count parameters
import them when they start (`search.cli.commands`), so a bad flag, a malformed spec or a
read-only command answers at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from objectives.user_error import UserError
from search.cli.console_log import console_logging
from search.cli.parser import EXIT_USAGE, build_parser
from search.study.study_spec import LOCAL_FIELDS


def local_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Host-local spec fields given on the command line (`LOCAL_FIELDS`)."""
    values = {key: getattr(args, key, None) for key in LOCAL_FIELDS}
    return {key: value for key, value in values.items() if value is not None}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from search.cli import commands

    commands.quiet_optuna()
    try:
        with console_logging(args.verbosity):
            return commands.run(args, local_overrides(args))
    except UserError as error:
        print(f"search {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"search {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
