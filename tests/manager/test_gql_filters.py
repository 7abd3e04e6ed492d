"""The filter/order mini-language of the GraphQL lists: parse results, refusals, and that arbitrary input only
ever raises QueryParseError (never an SQLAlchemy or Python error that would become a 500)."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from manager.api.gql.filters import QueryParseError, parse_filter, parse_order
from manager.api.gql.resolvers import ENDPOINT_FIELDS, RULE_FIELDS
from manager.db.models import Endpoint


def sql(expr: object) -> str:
    return str(sa.select(Endpoint.id).where(expr).compile(compile_kwargs={"literal_binds": False}))  # type: ignore[arg-type]  # any clause


def test_parses_the_clients_name_filter() -> None:
    cond, used = parse_filter('name == "demo"', ENDPOINT_FIELDS)
    assert used == {"name"}
    text = sql(cond)
    assert "endpoints.name = :name_1" in text and "demo" not in text  # a bound parameter


@pytest.mark.parametrize("expr", [
    'name == "a" & replicas > 1',
    'name == "a" and (replicas <= 2 or open_to_public == true)',
    '!(name ilike "%x%")',
    "not name like 'a_%'",
    'name in ["a", "b"] | name not in ["c"]',
    "tag == null",
    "tag != null",
    "tag isnull",
    "url notnull",
    'created_at > "2024-01-01T00:00:00"',
    'lifecycle_stage == "DESTROYED"',
    'session_owner == "00000000-0000-0000-0000-000000000001"',
    'name contains "50%_off"',
    'name == "quote \\" inside"',
])
def test_accepted_filters(expr: str) -> None:
    cond, _ = parse_filter(expr, ENDPOINT_FIELDS)
    assert sql(cond)


@pytest.mark.parametrize(("expr", "message"), [
    ('password == "x"', "unknown field 'password'"),
    ('name = "x"', "unexpected character"),
    ('name == "x" &', "expected a field name"),
    ('name == "x" "y"', "unexpected"),
    ("(name == 'x'", "expected ')'"),
    ("replicas == 1.5", "expected an integer"),
    ("replicas like '1'", "needs a string field"),
    ("open_to_public > true", "does not apply"),
    ("session_owner == 'nope'", "session_owner"),
    ("lifecycle_stage == 'zombie'", "lifecycle_stage"),
    ("created_at > 'yesterday'", "created_at"),
    ("name < null", "null only compares"),
    ("name in 'x'", "expected '['"),
    ("name in [" + ", ".join(["'a'"] * 101) + "]", "at most 100"),
    ("x" * 3000, "longer than"),
])
def test_refused_filters(expr: str, message: str) -> None:
    with pytest.raises(QueryParseError, match=re.escape(message)):
        parse_filter(expr, ENDPOINT_FIELDS)


def test_order() -> None:
    clauses = parse_order("-created_at, +name,replicas", ENDPOINT_FIELDS)
    assert [str(c) for c in clauses] == ["endpoints.created_at DESC", "endpoints.name ASC", "endpoints.replicas ASC"]
    assert len(parse_order("-cooldown_seconds", RULE_FIELDS)) == 1
    for bad, message in (("-secret", "unknown field"), ("name,", "empty item"), ("na me", "invalid order item"),
                         (",".join(["name"] * 9), "at most 8")):
        with pytest.raises(QueryParseError, match=message):
            parse_order(bad, ENDPOINT_FIELDS)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('namereplicas_ ()&|!=<>"\'[],.-%0123456789tuefl')), max_size=60))
def test_fuzz_only_parse_errors(text: str) -> None:
    try:
        cond, _ = parse_filter(text, ENDPOINT_FIELDS)
    except QueryParseError:
        return
    sql(cond)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_fuzz_unicode(text: str) -> None:
    for parse in (lambda t: parse_filter(t, RULE_FIELDS), lambda t: parse_order(t, RULE_FIELDS)):
        try:
            parse(text)
        except QueryParseError:
            pass
