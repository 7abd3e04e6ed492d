"""``POST /admin/gql``: the GraphQL subset the official Backend.AI client uses (``service list``/``info`` name
resolution, auto-scaling rules), served by graphql-core from an SDL schema (see :mod:`manager.api.gql.schema`).

HTTP contract (as Backend.AI's manager, and GraphQL-over-HTTP):

* the request passes the normal keypair auth middleware; resolvers see ``caller_of(request)``;
* body ``{"query": str, "variables": object|null, "operationName": str|null}``, at most 64 KiB; a body that is
  not such a JSON object is a 400 RFC 7807 problem (413 when too large), because it is not a GraphQL request;
* everything GraphQL-level (syntax, validation, variable coercion, resolver errors) is HTTP 200 with
  ``{"data": ..., "errors": [{message, locations, path, extensions: {code}}]}``; unexpected exceptions are logged
  and reported as ``internal server error`` without details;
* documents are bounded: at most ``MAX_TOKENS`` lexical tokens and ``MAX_DEPTH`` nested selections.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from graphql import (
    ASTValidationRule,
    ExecutionResult,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    execute,
    parse,
    specified_rules,
    validate,
)
from graphql.pyutils import is_awaitable

from common.errors import InvalidAPIParameters, ProblemError
from manager.api.auth import caller_of
from manager.api.gql import resolvers as r
from manager.api.gql.schema import bind, build
from manager.api.util import json_response, read_json
from manager.context import CTX

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
MAX_TOKENS = 10_000
MAX_DEPTH = 15  # the deepest client query nests 4 levels; the standard introspection query fits

routes = web.RouteTableDef()


def _build_schema() -> GraphQLSchema:
    schema = build()
    bind(schema, "Query", "endpoint", r.resolve_endpoint)
    bind(schema, "Query", "endpoint_list", r.resolve_endpoint_list)
    bind(schema, "Query", "endpoint_auto_scaling_rule_node", r.resolve_rule_node)
    bind(schema, "Query", "endpoint_auto_scaling_rule_nodes", r.resolve_rule_nodes)
    bind(schema, "Mutation", "create_endpoint_auto_scaling_rule_node", r.resolve_create_rule)
    bind(schema, "Mutation", "modify_endpoint_auto_scaling_rule_node", r.resolve_modify_rule)
    bind(schema, "Mutation", "delete_endpoint_auto_scaling_rule_node", r.resolve_delete_rule)
    return schema


SCHEMA = _build_schema()


class DepthLimitRule(ASTValidationRule):
    """Rejects operations whose selections nest deeper than MAX_DEPTH (fragments are followed, once each)."""

    def enter_operation_definition(self, node: OperationDefinitionNode, *_args: Any) -> None:
        fragments = {f.name.value: f for f in self.context.document.definitions
                     if isinstance(f, FragmentDefinitionNode)}
        depth = self._depth(node.selection_set, fragments, frozenset())
        if depth > MAX_DEPTH:
            self.report_error(GraphQLError(f"the query nests {depth} levels deep; at most {MAX_DEPTH} are allowed",
                                           node))

    def _depth(self, selection_set: SelectionSetNode | None, fragments: dict[str, Any],
               seen: frozenset[str]) -> int:
        if selection_set is None:
            return 0
        deepest = 0
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                deepest = max(deepest, 1 + self._depth(selection.selection_set, fragments, seen))
            elif isinstance(selection, InlineFragmentNode):
                deepest = max(deepest, self._depth(selection.selection_set, fragments, seen))
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                if name in seen or name not in fragments:
                    continue  # cycles and unknown fragments are reported by the standard rules
                deepest = max(deepest, self._depth(fragments[name].selection_set, fragments, seen | {name}))
            if deepest > MAX_DEPTH:
                break
        return deepest


VALIDATION_RULES = [*specified_rules, DepthLimitRule]


def format_error(error: GraphQLError) -> dict[str, Any]:
    original = error.original_error
    if original is None or isinstance(original, GraphQLError):
        out: dict[str, Any] = dict(error.formatted)
        if isinstance(original, GraphQLError) and original.extensions:
            out["extensions"] = {**original.extensions, **(out.get("extensions") or {})}
        return out
    formatted = dict(error.formatted)
    if isinstance(original, ProblemError):
        formatted["message"] = original.detail
        formatted["extensions"] = {"code": original.slug}
        return formatted
    log.error("GraphQL resolver failed at %s", error.path, exc_info=original)
    formatted["message"] = "internal server error"
    formatted["extensions"] = {"code": "internal-server-error"}
    return formatted


async def run_query(context: dict[str, Any], query: str, variables: dict[str, Any] | None = None,
                    operation_name: str | None = None) -> dict[str, Any]:
    """Parse, validate and execute one document; returns the response body ``{data, errors?}``."""
    try:
        document = parse(query, max_tokens=MAX_TOKENS)
    except GraphQLError as exc:
        return {"data": None, "errors": [format_error(exc)]}
    errors = validate(SCHEMA, document, VALIDATION_RULES)
    if errors:
        return {"data": None, "errors": [format_error(e) for e in errors]}
    result = execute(SCHEMA, document, context_value=context, variable_values=variables,
                     operation_name=operation_name)
    if is_awaitable(result):
        result = await result
    assert isinstance(result, ExecutionResult)
    body: dict[str, Any] = {"data": result.data}
    if result.errors:
        body["errors"] = [format_error(e) for e in result.errors]
    return body


@routes.post("/admin/gql")
async def graphql_handler(request: web.Request) -> web.Response:
    caller = caller_of(request)
    payload = await read_json(request, MAX_BODY_BYTES)
    if not isinstance(payload, dict):
        raise InvalidAPIParameters("body: must be a JSON object with a 'query' string")
    query = payload.get("query")
    variables = payload.get("variables")
    operation_name = payload.get("operationName")
    if not isinstance(query, str) or not query.strip():
        raise InvalidAPIParameters("query: a non-empty GraphQL document string is required")
    if variables is not None and not isinstance(variables, dict):
        raise InvalidAPIParameters("variables: must be a JSON object or null")
    if operation_name is not None and not isinstance(operation_name, str):
        raise InvalidAPIParameters("operationName: must be a string or null")
    body = await run_query({"ctx": request.app[CTX], "caller": caller, "request": request}, query, variables,
                           operation_name)
    return json_response(body)


def install(app: web.Application) -> None:
    """Add ``POST /admin/gql`` to ``app`` unless it is already there (idempotent; for server.py and tests)."""
    for route in app.router.routes():
        if route.method == "POST" and route.resource is not None and route.resource.canonical == "/admin/gql":
            return
    app.add_routes(routes)


__all__ = ["routes", "graphql_handler", "install", "run_query", "SCHEMA"]
