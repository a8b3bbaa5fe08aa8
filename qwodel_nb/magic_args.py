"""Parsing for the ``%%qwodel`` / ``%qwodel`` magics: the magic line and the YAML cell body.

Nothing here imports IPython, so it is testable on its own and the notebook layer stays thin:

* :func:`parse_cell_line` reads ``[VAR] [--dry-run] [--no-plot] [--evaluate] [--yes]``;
* :func:`parse_line_command` reads ``vram | plan | preview [n] | run | plot [kind] | stats | status | panel | help``;
* :func:`parse_body` reads the YAML body: Quantizer/Session option names (aliases such as
  ``model``, ``output``, ``calibration`` too), ``{name}`` expanded from the notebook's variables.

Every mistake raises :class:`MagicError`, a :class:`~qwodel_nb.engine.errors.QwodelError` with a
one-line message that the magic shows as a message block.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Mapping

from .engine.errors import QwodelError
from .engine.secrets import _TOKEN_PATTERN, redact
from .engine.settings import ALIASES, field_names

#: keys the magic understands in a cell body besides the Session settings
MAGIC_KEYS = ("eval_text",)
TOKEN_KEYS = ("token", "hf_token")
LINE_COMMANDS = ("vram", "plan", "preview", "run", "plot", "stats", "status", "panel", "help")

CELL_USAGE = "%%qwodel [VAR] [--dry-run] [--no-plot] [--evaluate] [--yes]"
TOKEN_WARNING = (
    "A Hugging Face token is written in this cell: it will be saved in the notebook file and in "
    "IPython's history. Remove it and set the HF_TOKEN environment variable (Colab: the Secrets "
    "panel) or run `huggingface-cli login` once; qwodel finds the token there by itself."
)


class MagicError(QwodelError):
    """A mistake in a ``%%qwodel`` line or body."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises :class:`MagicError` instead of printing and exiting."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise MagicError(f"{message}. Usage: {self.usage}")

    def exit(self, status: int = 0, message: str | None = None):  # pragma: no cover - add_help=False
        raise MagicError(message or f"Usage: {self.usage}")


@dataclass
class CellArgs:
    var: str | None = None
    dry_run: bool = False
    no_plot: bool = False
    evaluate: bool = False
    yes: bool = False


def _split(line: str) -> list[str]:
    try:
        return shlex.split(line or "")
    except ValueError as exc:
        raise MagicError(f"Cannot read the magic line: {exc}.") from None


def parse_cell_line(line: str) -> CellArgs:
    """``%%qwodel [VAR] [--dry-run] [--no-plot] [--evaluate] [--yes]``."""
    parser = _Parser(prog="%%qwodel", usage=CELL_USAGE, add_help=False)
    parser.add_argument("var", nargs="?", default=None)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--evaluate", action="store_true")
    parser.add_argument("--yes", "-y", action="store_true")
    ns = parser.parse_args(_split(line))
    if ns.var is not None and not ns.var.isidentifier():
        raise MagicError(f"{ns.var!r} is not a Python variable name to bind the session to. Usage: {CELL_USAGE}")
    return CellArgs(var=ns.var, dry_run=ns.dry_run, no_plot=ns.no_plot, evaluate=ns.evaluate, yes=ns.yes)


@dataclass
class LineCommand:
    command: str
    n: int | None = None          # preview
    kind: str = "overview"        # plot
    yes: bool = False             # run
    evaluate: bool = False        # run
    no_plot: bool = False         # run


def parse_line_command(line: str) -> LineCommand:
    """``%qwodel vram | plan | preview [n] | run [--yes] [--evaluate] [--no-plot] | plot [kind] | ...``."""
    words = _split(line)
    if not words:
        return LineCommand("help")
    command, rest = words[0].lower(), words[1:]
    if command in ("-h", "--help"):
        command = "help"
    if command not in LINE_COMMANDS:
        close = difflib.get_close_matches(command, LINE_COMMANDS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise MagicError(f"Unknown %qwodel command '{command}'.{hint} Commands: {' | '.join(LINE_COMMANDS)}.")
    if command == "preview":
        if len(rest) > 1:
            raise MagicError("Usage: %qwodel preview [n]")
        n = None
        if rest:
            try:
                n = int(rest[0])
            except ValueError:
                raise MagicError(f"%qwodel preview takes a number of samples, not {rest[0]!r}.") from None
            if n < 0:
                raise MagicError(f"%qwodel preview takes a number of samples, not {n}.")
        return LineCommand(command, n=n)
    if command == "plot":
        if len(rest) > 1:
            raise MagicError("Usage: %qwodel plot [overview | scales | ratios | losses | grid]")
        return LineCommand(command, kind=rest[0] if rest else "overview")
    if command == "run":
        parser = _Parser(prog="%qwodel run", usage="%qwodel run [--yes] [--evaluate] [--no-plot]", add_help=False)
        parser.add_argument("--yes", "-y", action="store_true")
        parser.add_argument("--evaluate", action="store_true")
        parser.add_argument("--no-plot", action="store_true")
        ns = parser.parse_args(rest)
        return LineCommand(command, yes=ns.yes, evaluate=ns.evaluate, no_plot=ns.no_plot)
    if rest:
        raise MagicError(f"%qwodel {command} takes no arguments (got {' '.join(rest)!r}).")
    return LineCommand(command)


# -- the YAML body ------------------------------------------------------------------------------

_VARIABLE = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PLACEHOLDER = re.compile(r"__qwodel_var_(\d+)__")
_SCALARS = (str, int, float, bool, os.PathLike)


@dataclass
class CellBody:
    """What a cell body asks for: Session options, the magic's own keys, and warnings to show."""

    options: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    empty: bool = False


def _substitute(body: str) -> tuple[str, list[str]]:
    """``body`` with each ``{name}`` replaced by a placeholder; ``{{``/``}}`` give literal braces."""
    names: list[str] = []

    def repl(match: re.Match) -> str:
        text = match.group(0)
        if text == "{{":
            return "{"
        if text == "}}":
            return "}"
        names.append(match.group(1))
        return f"__qwodel_var_{len(names) - 1}__"

    return _VARIABLE.sub(repl, body), names


def _lookup(name: str, namespace: Mapping[str, Any]) -> Any:
    if name in namespace:
        return namespace[name]
    visible = [k for k in namespace if not k.startswith("_")]
    close = difflib.get_close_matches(name, visible, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise MagicError(
        f"{{{name}}} names no notebook variable: define {name} in a cell above, or write {{{{{name}}}}} "
        f"for literal braces.{hint}"
    )


def _expand(value: Any, names: list[str], namespace: Mapping[str, Any], key: str) -> Any:
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value)
        if whole:  # the whole value is one variable: pass the object itself (a list of texts, a number...)
            return _lookup(names[int(whole.group(1))], namespace)

        def repl(match: re.Match) -> str:
            name = names[int(match.group(1))]
            obj = _lookup(name, namespace)
            if not isinstance(obj, _SCALARS):
                raise MagicError(
                    f"'{key}': {{{name}}} holds a {type(obj).__name__}, which cannot be written into text; "
                    f"use it as the whole value ({key}: {{{name}}})."
                )
            return os.fspath(obj) if isinstance(obj, os.PathLike) else str(obj)

        return _PLACEHOLDER.sub(repl, value)
    if isinstance(value, list):
        return [_expand(v, names, namespace, key) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, names, namespace, key) for k, v in value.items()}
    return value


def _yaml_error(exc: Exception, body: str) -> MagicError:
    lines = body.splitlines()
    mark = getattr(exc, "problem_mark", None)
    context = getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is None and context is None:
        return MagicError(f"The cell body is not valid YAML: {problem}.")
    number = (mark or context).line

    def blank(i: int) -> bool:
        return i >= len(lines) or not lines[i].strip()

    if blank(number) and context is not None and not blank(context.line):
        number = context.line  # an unclosed quote: point at where it was opened
    while number > 0 and blank(number):
        number -= 1  # the end of the text: point at the last line written
    text = lines[number].strip() if number < len(lines) else ""
    shown = f" ({redact(text)!r})" if text else ""
    return MagicError(
        f"YAML syntax error on line {number + 1} of the cell body{shown}: {problem}. "
        "Write one 'key: value' per line, for example 'model: ./my-model'."
    )


def unknown_key_message(key: str) -> str:
    names = field_names()
    known = sorted(set(names) | set(ALIASES) | set(MAGIC_KEYS))
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"Unknown key '{key}' in the cell.{hint} Valid keys: {', '.join(sorted(set(names) | set(MAGIC_KEYS)))}."


def parse_body(body: str, namespace: Mapping[str, Any]) -> CellBody:
    """Read a ``%%qwodel`` cell body.

    An empty body (only blanks or comments) gives ``CellBody(empty=True)``. ``{name}`` is replaced
    by the notebook variable ``name``: a whole value passes the object itself, inside text it is
    formatted with ``str``. A token written literally draws :data:`TOKEN_WARNING`.
    """
    import yaml

    text, names = _substitute(body or "")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, body) from None
    if data is None:
        return CellBody(empty=True)
    if not isinstance(data, dict):
        raise MagicError(
            f"The cell body must be 'key: value' lines (YAML mapping), not a {type(data).__name__}; "
            "for example 'model: ./my-model' and 'output: ./my-model-awq' on two lines."
        )
    result = CellBody()
    literal_token = bool(_TOKEN_PATTERN.search(text))
    valid = set(field_names()) | set(ALIASES)
    for key, raw in data.items():
        if not isinstance(key, str):
            raise MagicError(f"Keys in the cell body are setting names (text), not {key!r}.")
        key = key.strip()
        if key not in valid and key not in MAGIC_KEYS:
            raise MagicError(unknown_key_message(key))
        if key in TOKEN_KEYS and raw is not None and not (isinstance(raw, str) and _PLACEHOLDER.fullmatch(raw)):
            literal_token = True
        value = _expand(raw, names, namespace, key)
        (result.extras if key in MAGIC_KEYS else result.options)[key] = value
    if literal_token:
        result.warnings.append(TOKEN_WARNING)
    return result


def model_name(model: str) -> str:
    """The last part of a model folder or hub id: ``Qwen/Qwen2.5-0.5B`` -> ``Qwen2.5-0.5B``."""
    return os.path.basename(os.path.normpath(os.path.expanduser(str(model)))) or "model"
