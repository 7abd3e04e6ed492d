"""The GraphQL schema (SDL) of the Backend.AI subset the official client 26.9.6 sends, built with graphql-core.

Names, argument names and variable types follow what ``backend.ai-client`` puts on the wire (docs/backendai-compat.md;
its ``func/service.py``, ``func/service_auto_scaling_rule.py``, ``pagination.py``), so its queries validate as-is:

* ``endpoint_list(limit: Int!, offset: Int!, filter: String, order: String)`` → ``{items, total_count}``;
* ``endpoint(endpoint_id: UUID!)``;
* ``endpoint_auto_scaling_rule_nodes(endpoint: String!, filter, order, first, offset, after, before, last)``
  → a relay connection ``{edges{node cursor}, count, pageInfo}``; ``endpoint_auto_scaling_rule_node(id: String!)``;
* mutations ``create_endpoint_auto_scaling_rule_node(endpoint: String!, props: {...})``,
  ``modify_endpoint_auto_scaling_rule_node(id: String!, props: ModifyEndpointAutoScalingRuleInput!)`` and
  ``delete_endpoint_auto_scaling_rule_node(id: String!)``.

``AutoScalingMetricSource`` and ``AutoScalingMetricComparator`` are declared as *scalars* rather than enums: the
client sends its Python enum values (``"kernel"``, ``"greater_than"``: lower case) as variables, which a strict
GraphQL enum (whose names are ``KERNEL``, ``GREATER_THAN``) would reject. The scalars accept either case, and
enum-style literals (``metric_source: KERNEL``) too, and answer in Backend.AI's upper-case names.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from graphql import (
    BooleanValueNode,
    EnumValueNode,
    FloatValueNode,
    GraphQLError,
    GraphQLScalarType,
    GraphQLSchema,
    IntValueNode,
    ListValueNode,
    NullValueNode,
    ObjectValueNode,
    StringValueNode,
    ValueNode,
    build_schema,
)

SDL = '''
"A UUID in its canonical text form."
scalar UUID
"An ISO-8601 date-time with time zone."
scalar DateTime
"A JSON value, serialised as a JSON-encoded string (graphene's JSONString)."
scalar JSONString
"Where a rule's metric comes from: KERNEL, INFERENCE_FRAMEWORK or PROXY (case-insensitive on input)."
scalar AutoScalingMetricSource
"LESS_THAN, LESS_THAN_OR_EQUAL, GREATER_THAN or GREATER_THAN_OR_EQUAL (case-insensitive on input)."
scalar AutoScalingMetricComparator

type Query {
  "One endpoint (service) of the caller; superadmins may read any, domain admins those of their domain."
  endpoint(endpoint_id: UUID!): Endpoint
  "The caller's live endpoints (destroyed ones only when the filter names lifecycle_stage)."
  endpoint_list(limit: Int!, offset: Int!, filter: String, order: String, domain_name: String,
                group_id: UUID, project: UUID, user_uuid: UUID): EndpointList
  endpoint_auto_scaling_rule_node(id: String!): EndpointAutoScalingRuleNode
  endpoint_auto_scaling_rule_nodes(endpoint: String!, filter: String, order: String, offset: Int,
                                   before: String, after: String, first: Int, last: Int):
    EndpointAutoScalingRuleConnection
}

type Mutation {
  create_endpoint_auto_scaling_rule_node(endpoint: String!, props: EndpointAutoScalingRuleInput!):
    CreateEndpointAutoScalingRuleNode
  modify_endpoint_auto_scaling_rule_node(id: String!, props: ModifyEndpointAutoScalingRuleInput!):
    ModifyEndpointAutoScalingRuleNode
  delete_endpoint_auto_scaling_rule_node(id: String!): DeleteEndpointAutoScalingRuleNode
}

type ImageNode {
  name: String
  humanized_name: String
  tag: String
  registry: String
  architecture: String
}

type InferenceSessionErrorInfo {
  src: String
  name: String
  repr: String
}

type InferenceSessionError {
  session_id: UUID
  errors: [InferenceSessionErrorInfo!]!
}

type Routing {
  routing_id: UUID!
  endpoint: UUID!
  session: UUID
  "Backend.AI route status: provisioning, healthy, unhealthy, degraded, terminating or failed_to_start."
  status: String!
  traffic_ratio: Float!
  created_at: DateTime
  error_data: JSONString
  live_stat: JSONString
  "Moorage's orthogonal axes behind status."
  lifecycle: String!
  health: String!
  traffic: String!
}

type Endpoint {
  id: ID!
  endpoint_id: UUID!
  name: String!
  image: String
  image_object: ImageNode
  domain: String
  project: String
  resource_group: String
  resource_slots: JSONString
  resource_opts: JSONString
  url: String
  model: UUID
  model_definition_path: String
  model_mount_destination: String
  created_user: UUID
  created_user_email: String
  session_owner: UUID
  session_owner_email: String
  tag: String
  startup_command: String
  bootstrap_script: String
  callback_url: String
  environ: JSONString
  replicas: Int!
  desired_session_count: Int!
  cluster_mode: String
  cluster_size: Int
  open_to_public: Boolean!
  runtime_variant: String
  created_at: DateTime
  destroyed_at: DateTime
  routings: [Routing!]!
  retries: Int!
  next_retry_at: DateTime
  "HEALTHY, DEGRADED, UNHEALTHY, PROVISIONING, READY, DESTROYING or DESTROYED."
  status: String!
  lifecycle_stage: String!
  errors: [InferenceSessionError!]!
  live_stat: JSONString
}

type EndpointList {
  items: [Endpoint!]!
  total_count: Int!
}

type EndpointAutoScalingRuleNode {
  "Relay global id (base64 of EndpointAutoScalingRuleNode:<uuid>)."
  id: ID!
  row_id: UUID!
  endpoint: UUID!
  metric_source: AutoScalingMetricSource!
  metric_name: String!
  threshold: String!
  comparator: AutoScalingMetricComparator!
  step_size: Int!
  cooldown_seconds: Int!
  min_replicas: Int
  max_replicas: Int
  enabled: Boolean!
  created_at: DateTime!
  last_triggered_at: DateTime
}

type PageInfo {
  hasNextPage: Boolean!
  hasPreviousPage: Boolean!
  startCursor: String
  endCursor: String
}

type EndpointAutoScalingRuleEdge {
  node: EndpointAutoScalingRuleNode!
  cursor: String!
}

type EndpointAutoScalingRuleConnection {
  pageInfo: PageInfo!
  edges: [EndpointAutoScalingRuleEdge!]!
  count: Int!
}

input EndpointAutoScalingRuleInput {
  metric_source: AutoScalingMetricSource!
  metric_name: String!
  "A decimal number, as a string."
  threshold: String!
  comparator: AutoScalingMetricComparator!
  "Replicas added (positive) or removed (negative) when the rule fires."
  step_size: Int!
  cooldown_seconds: Int!
  min_replicas: Int
  max_replicas: Int
  enabled: Boolean
}

input ModifyEndpointAutoScalingRuleInput {
  metric_source: AutoScalingMetricSource
  metric_name: String
  threshold: String
  comparator: AutoScalingMetricComparator
  step_size: Int
  cooldown_seconds: Int
  "null removes the bound."
  min_replicas: Int
  "null removes the bound."
  max_replicas: Int
  enabled: Boolean
}

type CreateEndpointAutoScalingRuleNode {
  ok: Boolean!
  msg: String
  rule: EndpointAutoScalingRuleNode
}

type ModifyEndpointAutoScalingRuleNode {
  ok: Boolean!
  msg: String
  rule: EndpointAutoScalingRuleNode
}

type DeleteEndpointAutoScalingRuleNode {
  ok: Boolean!
  msg: String
}
'''

METRIC_SOURCES = {"KERNEL": "kernel", "INFERENCE_FRAMEWORK": "inference_framework", "PROXY": "proxy"}
COMPARATORS = {"LESS_THAN": "less_than", "LESS_THAN_OR_EQUAL": "less_than_or_equal",
               "GREATER_THAN": "greater_than", "GREATER_THAN_OR_EQUAL": "greater_than_or_equal"}
_UNSUPPORTED_SOURCES = {"PROMETHEUS": "PROMETHEUS metric rules are not supported by Moorage "
                                      "(use KERNEL, INFERENCE_FRAMEWORK or PROXY)"}


def _literal_to_python(node: ValueNode, variables: dict[str, Any] | None) -> Any:
    if isinstance(node, (StringValueNode, EnumValueNode)):
        return node.value
    if isinstance(node, IntValueNode):
        return int(node.value)
    if isinstance(node, FloatValueNode):
        return float(node.value)
    if isinstance(node, BooleanValueNode):
        return node.value
    if isinstance(node, NullValueNode):
        return None
    if isinstance(node, ListValueNode):
        return [_literal_to_python(v, variables) for v in node.values]
    if isinstance(node, ObjectValueNode):
        return {f.name.value: _literal_to_python(f.value, variables) for f in node.fields}
    name = getattr(getattr(node, "name", None), "value", None)
    if name is not None and variables is not None:  # a VariableNode inside a literal
        return variables.get(name)
    raise GraphQLError("unsupported literal")


def _parse_uuid(value: Any) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str):
        raise GraphQLError(f"UUID cannot represent a non-string value: {value!r}")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise GraphQLError(f"not a valid UUID: {value[:64]!r}") from None


def _serialize_uuid(value: Any) -> str:
    return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))


def _serialize_datetime(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _parse_datetime(value: Any) -> datetime:
    if not isinstance(value, str):
        raise GraphQLError("DateTime must be an ISO-8601 string")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise GraphQLError(f"not an ISO-8601 date-time: {value[:64]!r}") from None


def _serialize_json(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _parse_json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise GraphQLError("JSONString must hold valid JSON") from None
    return value


def _enum_scalar(type_name: str, table: dict[str, str],
                 unsupported: dict[str, str] | None = None) -> tuple[Callable[[Any], str], Callable[[Any], str]]:
    """(serialize, parse) for a case-insensitive enum-like scalar: parse → stored value, serialize → NAME."""
    by_value = {v: k for k, v in table.items()}

    def parse(value: Any) -> str:
        if not isinstance(value, str):
            raise GraphQLError(f"{type_name} must be a string")
        key = value.strip().upper().replace("-", "_")
        if unsupported and key in unsupported:
            raise GraphQLError(unsupported[key])
        if key not in table:
            raise GraphQLError(f"{type_name} must be one of {', '.join(table)}; got {value[:64]!r}")
        return table[key]

    def serialize(value: Any) -> str:
        text = str(value)
        return by_value.get(text) or text.upper()

    return serialize, parse


def decimal_text(value: Any) -> str:
    if isinstance(value, float):
        value = Decimal(repr(value))
    elif not isinstance(value, Decimal):
        try:
            value = Decimal(str(value))
        except InvalidOperation:
            return str(value)
    text = format(value.normalize(), "f")
    return text


def _install_scalar(schema: GraphQLSchema, name: str, serialize: Callable[[Any], Any],
                    parse: Callable[[Any], Any]) -> None:
    """Attach coercion functions to a scalar built from SDL (graphql-core 3.2 and 3.3 attribute names)."""
    scalar = schema.type_map[name]
    assert isinstance(scalar, GraphQLScalarType)

    def parse_literal(node: ValueNode, variables: dict[str, Any] | None = None) -> Any:
        return parse(_literal_to_python(node, variables))

    scalar.serialize = serialize  # type: ignore[method-assign,assignment]  # graphql-core 3.2's coercion hooks
    scalar.parse_value = parse  # type: ignore[method-assign,assignment]  # are methods replaced per instance
    scalar.parse_literal = parse_literal  # type: ignore[method-assign]  # (the SDL scalar has none of its own)
    if hasattr(scalar, "coerce_output_value"):  # graphql-core >= 3.3
        scalar.coerce_output_value = serialize
        scalar.coerce_input_value = parse
        scalar.coerce_input_literal = lambda node: parse(_literal_to_python(node, None))


def build() -> GraphQLSchema:
    schema = build_schema(SDL)
    _install_scalar(schema, "UUID", _serialize_uuid, _parse_uuid)
    _install_scalar(schema, "DateTime", _serialize_datetime, _parse_datetime)
    _install_scalar(schema, "JSONString", _serialize_json, _parse_json)
    _install_scalar(schema, "AutoScalingMetricSource",
                    *_enum_scalar("AutoScalingMetricSource", METRIC_SOURCES, _UNSUPPORTED_SOURCES))
    _install_scalar(schema, "AutoScalingMetricComparator", *_enum_scalar("AutoScalingMetricComparator", COMPARATORS))
    return schema


def bind(schema: GraphQLSchema, type_name: str, field: str, resolver: Callable[..., Any]) -> None:
    type_ = schema.get_type(type_name)
    assert type_ is not None and hasattr(type_, "fields"), type_name
    type_.fields[field].resolve = resolver


__all__ = ["SDL", "build", "bind", "METRIC_SOURCES", "COMPARATORS", "decimal_text"]
