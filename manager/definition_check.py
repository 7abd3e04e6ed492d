"""Definition files checked for the editor: each error with its field path and the line it is on.

The schemas and parsers are :mod:`common.definitions`; this module only places their errors in the text. YAML
lines come from the composed node tree (PyYAML keeps marks); TOML has no such tree in the standard library, so
:func:`toml_key_lines` scans the text for table headers and keys. An error whose field cannot be placed gets
the line of the nearest enclosing key that can, or none.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from pathlib import PurePosixPath
from typing import Any

import yaml

from common.definitions import (
    DEFAULT_DEFINITION_FILES,
    SERVICE_DEFINITION_FILE,
    DefinitionError,
    parse_model_definition,
    parse_service_definition,
)


class DefinitionKind(enum.StrEnum):
    MODEL = "model"  # model-definition.yaml
    SERVICE = "service"  # service-definition.toml


@dataclasses.dataclass(frozen=True, slots=True)
class DefinitionProblem:
    field: str
    reason: str
    line: int | None

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, "reason": self.reason, "line": self.line}


def kind_of(path: str) -> DefinitionKind | None:
    """Which definition a file is, by its name (in any directory), or None for any other file."""
    name = PurePosixPath(path).name
    if name in DEFAULT_DEFINITION_FILES:
        return DefinitionKind.MODEL
    if name == SERVICE_DEFINITION_FILE:
        return DefinitionKind.SERVICE
    return None


_AT_LINE = re.compile(r"line (\d+)")


def _line_in_message(message: str) -> int | None:
    match = _AT_LINE.search(message)
    return int(match.group(1)) if match else None


def yaml_field_line(text: str, field: str) -> int | None:
    """The 1-based line of ``field`` (``models.0.service.port``) in a YAML text, or of its nearest ancestor."""
    try:
        node: Any = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line: int | None = None
    for part in field.split("."):
        if isinstance(node, yaml.MappingNode):
            found = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part), None)
            if found is None:
                break
            line = found[0].start_mark.line + 1
            node = found[1]
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
        else:
            break
    return line


_TABLE = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=""")
_KEY_PART = re.compile(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""")


def _key_parts(dotted: str) -> tuple[str, ...]:
    return tuple(p.strip("\"'") for p in _KEY_PART.findall(dotted))


def toml_key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Each table and key path of a TOML text with the 1-based line where it first appears (multi-line strings
    skipped). Inline tables are not entered: their keys take the line of the key holding them."""
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    in_string: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        if in_string is not None:
            if raw.count(in_string) % 2 == 1:
                in_string = None
            continue
        header = _TABLE.match(raw)
        if header:
            table = _key_parts(header.group(1))
            lines.setdefault(table, number)
            continue
        key = _KEY.match(raw)
        if key:
            path = table + _key_parts(key.group(1))
            for i in range(len(table) + 1, len(path) + 1):
                lines.setdefault(path[:i], number)
            rest = raw[key.end():]
            for quote in ('"""', "'''"):
                if rest.count(quote) % 2 == 1:
                    in_string = quote
    return lines


def toml_field_line(text: str, field: str) -> int | None:
    lines = toml_key_lines(text)
    parts = tuple(field.split("."))
    for i in range(len(parts), 0, -1):
        if parts[:i] in lines:
            return lines[parts[:i]]
    return None


def check_definition(kind: DefinitionKind, text: str) -> list[DefinitionProblem]:
    """Every error the manager would report for this definition when a service is created from it."""
    try:
        if kind == DefinitionKind.MODEL:
            parse_model_definition(text).serving_model()
        else:
            parse_service_definition(text)
    except DefinitionError as exc:
        return _placed(kind, text, exc)
    return []


def _placed(kind: DefinitionKind, text: str, exc: DefinitionError) -> list[DefinitionProblem]:
    errors = exc.errors or [{"field": "(root)", "reason": str(exc)}]
    out = []
    for err in errors:
        field, reason = err["field"], err["reason"]
        if field in ("(yaml)", "(toml)", "(root)"):
            line = _line_in_message(reason) or _line_in_message(str(exc))
        elif kind == DefinitionKind.MODEL:
            line = yaml_field_line(text, field)
        else:
            line = toml_field_line(text, field)
        out.append(DefinitionProblem(field, reason, line))
    return out
