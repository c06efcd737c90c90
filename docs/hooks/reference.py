"""MkDocs hook: the reference pages written from the code, and the root's CHANGELOG.md and
BENCHMARKS.md as pages of the site.

A page marks where generated text goes with a line of its own:

    <!-- generated: commands -->     every `search` command and flag, from build_parser()
    <!-- generated: spec -->         every spec table and key, from the spec dataclasses

Flags come from the argparse parser the CLI runs and spec keys from the dataclasses the spec is
loaded into (each field's help is in its `metadata`), so the pages cannot drift from the code.
An unknown marker, or a field without help, fails the build.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
# This checkout's code, not whichever copy of the package is installed.
sys.path.insert(0, str(ROOT))
# Files kept at the repository root (where GitHub and the change history expect them) that
# the site shows as its own pages: the root name and the page it becomes.
ROOT_PAGES = {"CHANGELOG.md": "changelog.md", "BENCHMARKS.md": "benchmarks.md"}
MARKER = re.compile(r"^<!-- generated: (\w+) -->$", re.MULTILINE)


# Commands ---------------------------------------------------------------------------------


def subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    """The action that holds the parser's subcommands (`choices`: name -> parser, in the order
    `search --help` lists them)."""
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action


def cell(text: str) -> str:
    """Text for one cell of a Markdown table."""
    return " ".join(text.split()).replace("|", "\\|")


def action_help(action: argparse.Action) -> str:
    # As argparse expands it for --help (%% is a literal %).
    return action.help % {**vars(action), "prog": ""} if action.help else ""


def render_command(name: str, parser: argparse.ArgumentParser) -> str:
    formatter = parser._get_formatter()  # the one --help uses, so flags read as there
    lines = [f"## `search {name}`", "", cell(parser.description or ""), "",
             "```text", parser.format_usage().strip(), "```", ""]
    for group in parser._action_groups:
        shown = [a for a in group._group_actions
                 if a.help is not argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)]
        if not shown:
            continue
        lines += [f"**{group.title}**" + (f": {cell(group.description)}"
                                         if group.description else ""), "",
                  "| flag | what it does |", "|---|---|"]
        for action in shown:
            lines.append(f"| `{formatter._format_action_invocation(action)}` "
                         f"| {cell(action_help(action))} |")
        lines.append("")
    return "\n".join(lines)


def render_commands() -> str:
    from search.cli.parser import build_parser

    # argparse wraps usage lines to the terminal's width: fix it, so that every build of the
    # site gives the same page.
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        action = subcommands(build_parser())
        summary = {choice.dest: choice.help for choice in action._choices_actions}
        lines = ["| command | what it does |", "|---|---|"]
        lines += [f"| [`search {name}`](#search-{name}) | {cell(summary.get(name, ''))} |"
                  for name in action.choices]
        commands = [render_command(name, parser) for name, parser in action.choices.items()]
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    return "\n".join([*lines, "", *commands])


# Spec -------------------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    """A default as it would be written in the spec file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


TOML_TYPES = {str: "string", bool: "boolean", int: "integer", float: "number",
              dict: "table"}


def toml_type(hint: Any) -> str:
    """A field's annotation in the spec file's terms (TOML has no null: None is "not set")."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(toml_type(a) for a in args if a is not type(None))
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        inner = args[0]
        if dataclasses.is_dataclass(inner):
            return "list of strings or tables"
        return f"list of {toml_type(inner)}s"
    if origin is tuple:
        (kind,) = {toml_type(a) for a in args}
        return f"list of {len(args)} {kind}s"
    return TOML_TYPES.get(origin or hint, getattr(hint, "__name__", str(hint)))


def field_default(field: dataclasses.Field) -> str:
    if "default" in field.metadata:  # where the Python value is not what a spec file means
        text = field.metadata["default"]
        try:
            tomllib.loads(f"value = {text}")
        except tomllib.TOMLDecodeError:
            return text  # words, not a value
        return f"`{text}`"
    if field.default is not dataclasses.MISSING:
        return "not set" if field.default is None else f"`{toml_value(field.default)}`"
    if field.default_factory is not dataclasses.MISSING:
        return f"`{toml_value(field.default_factory())}`"
    return "required"


def field_help(cls: type, field: dataclasses.Field) -> str:
    text = field.metadata.get("help")
    if not text:
        raise ValueError(f"{cls.__name__}.{field.name} has no help in its metadata")
    return text


def spec_keys(cls: type) -> list[tuple[str, dataclasses.Field, type]]:
    """The keys one spec table holds: the class's fields, those of a `keys_inline` field's
    class in its place, none of those that are tables of their own."""
    keys = []
    for field in dataclasses.fields(cls):
        if "table" in field.metadata:
            continue
        if field.metadata.get("keys_inline"):
            keys += spec_keys(field_class(cls, field))
        else:
            keys.append((field.name, field, cls))
    return keys


def field_class(cls: type, field: dataclasses.Field) -> type:
    return typing.get_type_hints(cls)[field.name]


def spec_tables() -> list[tuple[str, type, str]]:
    """Every table of a spec file, the class it is loaded into and what it is, [study]
    first."""
    from search.study.study_spec import StudySpec

    return [("study", StudySpec, "the study's name, its baselines and its seeds"),
            *nested_tables(StudySpec)]


def nested_tables(cls: type) -> list[tuple[str, type, str]]:
    found = []
    for field in dataclasses.fields(cls):
        if "table" in field.metadata:
            inner = field_class(cls, field)
            found += [(field.metadata["table"], inner, field_help(cls, field)),
                      *nested_tables(inner)]
    return found


def render_table(title: str, cls: type, about: str) -> str:
    lines = [title, "", cell(about[:1].upper() + about[1:] + "."), "",
             "| key | type | default | what it is |", "|---|---|---|---|"]
    for name, field, owner in spec_keys(cls):
        kind = toml_type(typing.get_type_hints(owner)[name])
        lines.append(f"| `{name}` | {kind} | {cell(field_default(field))} "
                     f"| {cell(field_help(owner, field))} |")
    return "\n".join([*lines, ""])


def render_spec() -> str:
    from search.study.baselines import Baseline

    sections = [render_table(f"## `[{table}]`", cls, about)
                for table, cls, about in spec_tables()]
    sections.append(render_table(
        "## A table in `[study] baselines`", Baseline,
        "a baseline of another model than the study's (or with another head); data, "
        "augmentation and optimisation are the study's"))
    return "\n".join(sections)


GENERATORS = {"commands": render_commands, "spec": render_spec}


# Hooks ------------------------------------------------------------------------------------


LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


def site_link(match: re.Match) -> str:
    """A link of a root page, written for the repository, as the site has its target: a root
    page by its page name, a docs/ page by its place in the site. Other targets are left as
    they are, so that --strict reports them."""
    target, anchor = match.group(1), match.group(2) or ""
    if target in ROOT_PAGES:
        target = ROOT_PAGES[target]
    elif target.startswith("docs/"):
        target = target.removeprefix("docs/")
    return f"]({target}{anchor})"


def on_files(files, config):
    for root_name, page in ROOT_PAGES.items():
        text = (ROOT / root_name).read_text(encoding="utf-8")
        files.append(File.generated(config, page, content=LINK.sub(site_link, text)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    def expand(match: re.Match) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"{page.file.src_uri}: unknown generated section {name!r}")
        return GENERATORS[name]()

    return MARKER.sub(expand, markdown)


def on_serve(server, config, builder):
    for root_name in ROOT_PAGES:
        server.watch(str(ROOT / root_name))
    return server
