"""docs/reference/cli.md from the argparse parser that `lockgate` runs (`cli.build_parser`).

The parser's defaults are read where the command line reads them: some come from LOCKGATE_*
variables and some from the machine (its host name, its cores). The page must not depend on
either, so the parser is built with no LOCKGATE_* variable set, twice, on two made-up machines;
a default that differs between the two is printed as machine-dependent, never as this
machine's value.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from docgen.markdown import code, header, link, table, wrap

ENV = re.compile(r"\s*\[env (LOCKGATE_[A-Z0-9_]+)\]")
# What a machine-dependent default is, where we know; others say only that it depends.
MACHINE_DEFAULTS = {
    "--replica-id": "the host name",
    "--intra-op-threads": "cores - 1, at least 1 and at most 4",
}
MACHINES = ((2, "host-a"), (64, "host-b"))  # (cores, host name) of the two made-up machines
USAGE_WIDTH = 96


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]
    parser: argparse.ArgumentParser
    help: str


def build_parsers() -> list[argparse.ArgumentParser]:
    """The CLI's parser as built on each made-up machine, with no LOCKGATE_* variable set."""
    from lockgate.cli import build_parser

    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCKGATE_")}
    parsers = []
    for cores, host in MACHINES:
        with ExitStack() as stack:
            stack.enter_context(mock.patch.dict(os.environ, env, clear=True))
            stack.enter_context(mock.patch.object(socket, "gethostname", return_value=host))
            stack.enter_context(mock.patch.object(os, "cpu_count", return_value=cores))
            for name in ("process_cpu_count", "sched_getaffinity"):
                if hasattr(os, name):
                    value = cores if name == "process_cpu_count" else set(range(cores))
                    stack.enter_context(mock.patch.object(os, name, return_value=value))
            parsers.append(build_parser())
    return parsers


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...], help: str = ""
) -> Iterator[Command]:
    """`parser` and every subcommand under it, depth first."""
    yield Command(path, parser, help)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                sub = action.choices[choice.dest]
                yield from commands(sub, (*path, choice.dest), choice.help or "")


def _visible(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if a.help != argparse.SUPPRESS
        and not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
    ]


def _metavar(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    if action.metavar is not None:
        name = action.metavar if isinstance(action.metavar, str) else " ".join(action.metavar)
    elif action.choices is not None:
        name = "{" + ",".join(str(c) for c in action.choices) + "}"
    else:
        name = action.dest if not action.option_strings else action.dest.upper()
    if action.nargs == "?":
        return f"[{name}]"
    if action.nargs == "*":
        return f"[{name} ...]"
    if action.nargs == "+":
        return f"{name} [{name} ...]"
    if isinstance(action.nargs, int) and action.nargs > 1:
        return " ".join([name] * action.nargs)
    return name


def _spelling(action: argparse.Action) -> str:
    if not action.option_strings:
        return _metavar(action)
    return " ".join(filter(None, [", ".join(action.option_strings), _metavar(action)]))


def usage(command: Command) -> list[str]:
    """The command's synopsis (argparse's own usage line varies between Python versions)."""
    parser = command.parser
    grouped = {id(a): g for g in parser._mutually_exclusive_groups for a in g._group_actions}
    words, seen = list(command.path), set()
    for action in _visible(parser):
        group = grouped.get(id(action))
        if group is not None:
            if id(group) not in seen:
                seen.add(id(group))
                inner = " | ".join(_spelling(a).split(", ")[-1] for a in group._group_actions)
                words.append(f"({inner})" if group.required else f"[{inner}]")
        elif action.option_strings:
            first = action.option_strings[-1]
            spelled = " ".join(filter(None, [first, _metavar(action)]))
            words.append(spelled if action.required else f"[{spelled}]")
    words += [_metavar(a) for a in _visible(parser) if not a.option_strings]
    if any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
        words.append("COMMAND ...")
    return wrap(words, USAGE_WIDTH, "    ")


def _shown(value: Any) -> str:
    if value is None or value == []:
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):  # a parsed HOST:PORT default
        return ":".join(str(v) for v in value)
    return str(value)


def _help(action: argparse.Action, default: Any) -> str:
    text = action.help or ""
    if "%" in text:
        text = text % {**vars(action), "default": default, "prog": ""}
    text = ENV.sub("", text)
    for shown in {str(default), _shown(default)}:
        text = text.replace(f" (default: {shown})", "")
    return text


def _repeatable(action: argparse.Action) -> str:
    if not isinstance(action, argparse._AppendAction | argparse._AppendConstAction):
        return ""
    return " (repeatable)" if action.help else "(repeatable)"


def _default(action: argparse.Action, other: argparse.Action | None) -> str:
    if isinstance(action, argparse._VersionAction) or action.default is argparse.SUPPRESS:
        return ""
    if action.required:
        return "required"
    if other is not None and _shown(other.default) != _shown(action.default):
        name = action.option_strings[-1] if action.option_strings else action.dest
        return "machine-dependent: " + MACHINE_DEFAULTS.get(name, "differs between machines")
    return code(_shown(action.default))


def _option_rows(command: Command, twin: Command | None) -> list[list[str]]:
    others = {a.dest: a for a in _visible(twin.parser)} if twin is not None else {}
    rows = []
    actions = _visible(command.parser)  # positionals first, as in --help
    for action in sorted(actions, key=lambda a: bool(a.option_strings)):
        env = ENV.search(action.help or "")
        rows.append(
            [
                code(_spelling(action)),
                _default(action, others.get(action.dest)),
                code(env.group(1)) if env else "",
                _help(action, action.default) + _repeatable(action),
            ]
        )
    return rows


def _section(command: Command, twin: Command | None, children: list[Command]) -> list[str]:
    title = " ".join(command.path)
    lines = [f"## {title}", ""]
    about = command.parser.description or command.help
    if about:
        lines += [about, ""]
    lines += ["```", *usage(command), "```", ""]
    if children:
        rows = [[link(" ".join(c.path), c.path[-1]), c.help] for c in children]
        lines += table(["command", "does"], rows)
    rows = _option_rows(command, twin)
    if rows:
        lines += table(["argument", "default", "environment", "description"], rows)
    return lines


INTRO = """\
Every command and option of `lockgate`, read from the parser the command runs. Every command
also takes `-h`/`--help`. An option with an environment variable takes its default from that
variable when it is set; a flag given on the command line wins over both."""


def cli_page() -> str:
    """The page's Markdown."""
    main, other = build_parsers()
    found = sorted(commands(main, ("lockgate",)), key=lambda c: c.path)
    twins = {c.path: c for c in commands(other, ("lockgate",))}
    lines = header("Command-line reference", "`lockgate.cli.build_parser`", INTRO)
    lines += table(["command", "does"], [[link(" ".join(c.path)), c.help] for c in found[1:]])
    for command in found:
        children = [c for c in found if c.path[:-1] == command.path]
        lines += _section(command, twins.get(command.path), children)
    return "\n".join(lines).rstrip() + "\n"
