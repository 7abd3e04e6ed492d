"""The ``filter`` / ``order`` mini-languages of Backend.AI's paginated GraphQL lists, compiled to SQLAlchemy.

Backend.AI clients send strings such as ``name == "demo"``, ``name ilike "%llm%" & open_to_public == true`` and
``-created_at``. This is a small, bounded recursive-descent parser over an explicit field whitelist: a field that
is not in the whitelist, a value of the wrong type or an oversized expression raises :class:`QueryParseError`
(reported to the client as a GraphQL error), and nothing of the input ever reaches SQL except as a bound parameter.

Grammar (case-insensitive keywords)::

    expr       := or_expr
    or_expr    := and_expr (("|" | "or") and_expr)*
    and_expr   := unary (("&" | "and") unary)*
    unary      := ("!" | "not") unary | "(" expr ")" | comparison
    comparison := FIELD OP value | FIELD ("isnull" | "notnull")
    OP         := "==" | "!=" | "<" | "<=" | ">" | ">=" | "like" | "ilike" | "contains" | "in" | "not" "in"
    value      := STRING | NUMBER | "true" | "false" | "null" | "[" value ("," value)* "]"

    order      := item ("," item)*        item := ["+" | "-"] FIELD

``== null`` / ``!= null`` mean IS NULL / IS NOT NULL. ``like``/``ilike`` take an SQL pattern (``%``, ``_``) as
Backend.AI does; ``contains`` matches a literal substring (wildcards escaped).
"""

from __future__ import annotations

import dataclasses
import operator
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import QueryableAttribute
from sqlalchemy.sql.elements import ColumnElement

MAX_FILTER_LENGTH = 2048
MAX_COMPARISONS = 32
MAX_NESTING = 16
MAX_IN_ITEMS = 100
MAX_ORDER_ITEMS = 8


class QueryParseError(ValueError):
    """A filter or order expression the server refuses (syntax, unknown field, wrong value type, too large)."""


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """One filterable/orderable field: its column and how to coerce a literal for it.

    ``kind``: ``str`` | ``uuid`` | ``int`` | ``float`` | ``bool`` | ``datetime`` | ``enum``. For ``enum``,
    ``normalize`` maps a client value to the stored value (raising ValueError for unknown ones)."""

    column: QueryableAttribute[Any]
    kind: str = "str"
    normalize: Callable[[str], Any] | None = None
    orderable: bool = True


_TOKEN_RE = re.compile(r"""
    (?P<ws>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
  | (?P<op>==|!=|<=|>=|<|>|&&|\|\||&|\||!|\(|\)|\[|\]|,)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
""", re.VERBOSE)
_KEYWORD_OPS = {"like", "ilike", "contains", "in"}
_COMPARE = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
            ">=": operator.ge}
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'"}


@dataclasses.dataclass(frozen=True)
class _Tok:
    kind: str  # string | number | op | word | end
    text: str
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if not match:
            raise QueryParseError(f"unexpected character {text[pos]!r} at position {pos}")
        kind = match.lastgroup or ""
        if kind != "ws":
            tokens.append(_Tok(kind, match.group(), pos))
        pos = match.end()
    tokens.append(_Tok("end", "", len(text)))
    return tokens


def _unquote(raw: str) -> str:
    body = raw[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body)


class _Null:
    def __repr__(self) -> str:
        return "null"


NULL = _Null()


class _FilterParser:
    def __init__(self, text: str, fields: Mapping[str, FieldSpec]):
        self.tokens = _tokenize(text)
        self.i = 0
        self.fields = fields
        self.comparisons = 0
        self.fields_used: set[str] = set()

    def peek(self) -> _Tok:
        return self.tokens[self.i]

    def take(self) -> _Tok:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def expect(self, text: str) -> None:
        tok = self.take()
        if tok.text != text:
            raise QueryParseError(f"expected {text!r} at position {tok.pos}, found {tok.text or 'end of input'!r}")

    def _is(self, tok: _Tok, *words: str) -> bool:
        return tok.text.lower() in words if tok.kind == "word" else tok.text in words

    def parse(self) -> ColumnElement[bool]:
        expr = self.or_expr(0)
        tok = self.peek()
        if tok.kind != "end":
            raise QueryParseError(f"unexpected {tok.text!r} at position {tok.pos}")
        return expr

    def or_expr(self, depth: int) -> ColumnElement[bool]:
        parts = [self.and_expr(depth)]
        while self._is(self.peek(), "|", "||", "or"):
            self.take()
            parts.append(self.and_expr(depth))
        return parts[0] if len(parts) == 1 else sa.or_(*parts)

    def and_expr(self, depth: int) -> ColumnElement[bool]:
        parts = [self.unary(depth)]
        while self._is(self.peek(), "&", "&&", "and"):
            self.take()
            parts.append(self.unary(depth))
        return parts[0] if len(parts) == 1 else sa.and_(*parts)

    def unary(self, depth: int) -> ColumnElement[bool]:
        if depth > MAX_NESTING:
            raise QueryParseError(f"the expression nests deeper than {MAX_NESTING} levels")
        tok = self.peek()
        if self._is(tok, "!", "not"):
            self.take()
            return sa.not_(self.unary(depth + 1))
        if tok.text == "(":
            self.take()
            inner = self.or_expr(depth + 1)
            self.expect(")")
            return inner
        return self.comparison()

    def value(self) -> Any:
        tok = self.take()
        if tok.kind == "string":
            return _unquote(tok.text)
        if tok.kind == "number":
            return float(tok.text) if any(c in tok.text for c in ".eE") else int(tok.text)
        if tok.kind == "word" and tok.text.lower() in ("true", "false"):
            return tok.text.lower() == "true"
        if tok.kind == "word" and tok.text.lower() in ("null", "none"):
            return NULL
        raise QueryParseError(f"expected a value at position {tok.pos}, found {tok.text or 'end of input'!r}")

    def list_value(self) -> list[Any]:
        self.expect("[")
        items: list[Any] = []
        if self.peek().text != "]":
            items.append(self.value())
            while self.peek().text == ",":
                self.take()
                items.append(self.value())
                if len(items) > MAX_IN_ITEMS:
                    raise QueryParseError(f"an 'in' list holds at most {MAX_IN_ITEMS} values")
        self.expect("]")
        return items

    def comparison(self) -> ColumnElement[bool]:
        tok = self.take()
        if tok.kind != "word":
            raise QueryParseError(f"expected a field name at position {tok.pos}, found {tok.text or 'end of input'!r}")
        spec = field_spec(self.fields, tok.text)
        self.fields_used.add(tok.text)
        self.comparisons += 1
        if self.comparisons > MAX_COMPARISONS:
            raise QueryParseError(f"at most {MAX_COMPARISONS} comparisons per filter")
        op_tok = self.take()
        op = op_tok.text.lower() if op_tok.kind == "word" else op_tok.text
        if op_tok.kind == "word" and op in ("isnull", "notnull"):
            return spec.column.is_(None) if op == "isnull" else spec.column.is_not(None)
        if op_tok.kind == "word" and op == "not" and self._is(self.peek(), "in"):
            self.take()
            return sa.not_(spec.column.in_([_coerce(tok.text, spec, v) for v in self.list_value()]))
        if op == "in" and op_tok.kind == "word":
            return spec.column.in_([_coerce(tok.text, spec, v) for v in self.list_value()])
        if op_tok.kind == "word" and op in _KEYWORD_OPS:
            raw = self.value()
            if spec.kind != "str" or not isinstance(raw, str):
                raise QueryParseError(f"{tok.text}: '{op}' needs a string field and a string value")
            if op == "contains":
                escaped = raw.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                return spec.column.like(f"%{escaped}%", escape="\\")
            return spec.column.like(raw) if op == "like" else spec.column.ilike(raw)
        if op_tok.kind != "op" or op not in ("==", "!=", "<", "<=", ">", ">="):
            raise QueryParseError(f"expected an operator after {tok.text!r} at position {op_tok.pos}, "
                                  f"found {op_tok.text or 'end of input'!r}")
        raw = self.value()
        if raw is NULL:
            if op == "==":
                return spec.column.is_(None)
            if op == "!=":
                return spec.column.is_not(None)
            raise QueryParseError(f"{tok.text}: null only compares with == or !=")
        value = _coerce(tok.text, spec, raw)
        if op in ("<", "<=", ">", ">=") and spec.kind in ("bool", "uuid", "enum"):
            raise QueryParseError(f"{tok.text}: '{op}' does not apply to a {spec.kind} field")
        compared: ColumnElement[bool] = _COMPARE[op](spec.column, value)  # operator.* return Any
        return compared


def field_spec(fields: Mapping[str, FieldSpec], name: str) -> FieldSpec:
    spec = fields.get(name)
    if spec is None:
        raise QueryParseError(f"unknown field {name!r} (known: {', '.join(sorted(fields))})")
    return spec


def _coerce(name: str, spec: FieldSpec, raw: Any) -> Any:
    try:
        if raw is NULL:
            raise ValueError("null is not allowed here")
        if spec.kind == "str":
            if not isinstance(raw, str):
                raise ValueError("expected a string")
            return raw
        if spec.kind == "uuid":
            if not isinstance(raw, str):
                raise ValueError("expected a UUID string")
            return uuid.UUID(raw)
        if spec.kind == "int":
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise ValueError("expected an integer")
            return raw
        if spec.kind == "float":
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                raise ValueError("expected a number")
            return float(raw)
        if spec.kind == "bool":
            if not isinstance(raw, bool):
                raise ValueError("expected true or false")
            return raw
        if spec.kind == "datetime":
            if not isinstance(raw, str):
                raise ValueError("expected an ISO-8601 date string")
            parsed = datetime.fromisoformat(raw)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        if spec.kind == "enum":
            if not isinstance(raw, str):
                raise ValueError("expected a string")
            return spec.normalize(raw) if spec.normalize else raw
    except ValueError as exc:
        raise QueryParseError(f"{name}: {exc}") from None
    raise QueryParseError(f"{name}: unsupported field kind {spec.kind}")


def parse_filter(text: str, fields: Mapping[str, FieldSpec]) -> tuple[ColumnElement[bool], set[str]]:
    """Compile a filter expression; returns the SQL condition and the set of field names it mentions."""
    if len(text) > MAX_FILTER_LENGTH:
        raise QueryParseError(f"the filter is longer than {MAX_FILTER_LENGTH} characters")
    if not text.strip():
        return sa.true(), set()
    parser = _FilterParser(text, fields)
    return parser.parse(), parser.fields_used


def parse_order(text: str, fields: Mapping[str, FieldSpec]) -> list[Any]:
    """Compile an order expression (``name``, ``-created_at``, ``+name,-replicas``) to ORDER BY clauses."""
    if len(text) > MAX_FILTER_LENGTH:
        raise QueryParseError(f"the order is longer than {MAX_FILTER_LENGTH} characters")
    clauses: list[Any] = []
    items = [item.strip() for item in text.split(",")]
    if len(items) > MAX_ORDER_ITEMS:
        raise QueryParseError(f"at most {MAX_ORDER_ITEMS} order fields")
    for item in items:
        if not item:
            raise QueryParseError("empty item in the order expression")
        desc = item.startswith("-")
        name = item[1:].strip() if item[0] in "+-" else item
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise QueryParseError(f"invalid order item {item!r}")
        spec = field_spec(fields, name)
        if not spec.orderable:
            raise QueryParseError(f"{name}: cannot order by this field")
        clauses.append(spec.column.desc() if desc else spec.column.asc())
    return clauses
