"""``moorage service autoscale``: autoscaling rules of a service and the autoscaler's decisions.

- ``service autoscale add NAME_OR_ID --source proxy --metric rps --comparator greater_than --threshold 5
  --step 1 [--min N] [--max N] [--cooldown SECONDS] [--disabled]``
                                             → GraphQL ``create_endpoint_auto_scaling_rule_node``
- ``service autoscale list NAME_OR_ID``      → GraphQL ``endpoint_auto_scaling_rule_nodes``
- ``service autoscale rm RULE_ID``           → GraphQL ``delete_endpoint_auto_scaling_rule_node``
- ``service autoscale enable|disable RULE_ID`` → GraphQL ``modify_endpoint_auto_scaling_rule_node``
- ``service autoscale decisions NAME_OR_ID [--limit N] [--applied-only]``
                                             → ``GET /services/{id}/autoscaling-decisions``

Rules use Backend.AI's GraphQL operations (the same the official ``backend.ai service auto-scaling-rule``
commands send), so rules made by either client are the same rows. A rule fires when ``metric <comparator>
threshold``; a positive ``--step`` scales out, a negative one scales in (two rules for both directions).
Metrics: ``--source proxy`` (``rps``, ``in_flight`` per replica), ``kernel`` (``cpu_util``, ``mem_util``),
``inference_framework`` (an engine metric such as ``vllm:num_requests_running``). See docs/operations.md.
"""

from __future__ import annotations

import argparse
from typing import Any

from manager.cli.client import Client
from manager.cli.connection import CLIError, connection_from_args, connection_parent
from manager.cli.output import print_json, print_table
from manager.cli.service_args import _service_path, non_negative_int, resolve_service_id

SOURCES = ("kernel", "proxy", "inference_framework")
COMPARATORS = ("greater_than", "greater_than_or_equal", "less_than", "less_than_or_equal")
COMPARATOR_SYMBOLS = {"greater_than": ">", "greater_than_or_equal": ">=", "less_than": "<", "less_than_or_equal": "<="}
RULE_FIELDS = ("id row_id metric_source metric_name threshold comparator step_size cooldown_seconds min_replicas "
               "max_replicas enabled created_at last_triggered_at")

CREATE = f"""mutation($endpoint: String!, $props: EndpointAutoScalingRuleInput!) {{
  create_endpoint_auto_scaling_rule_node(endpoint: $endpoint, props: $props) {{ ok msg rule {{ {RULE_FIELDS} }} }}
}}"""
LIST = f"""query($endpoint: String!) {{
  endpoint_auto_scaling_rule_nodes(endpoint: $endpoint) {{ count edges {{ node {{ {RULE_FIELDS} }} }} }}
}}"""
DELETE = """mutation($id: String!) { delete_endpoint_auto_scaling_rule_node(id: $id) { ok msg } }"""
MODIFY = f"""mutation($id: String!, $props: ModifyEndpointAutoScalingRuleInput!) {{
  modify_endpoint_auto_scaling_rule_node(id: $id, props: $props) {{ ok msg rule {{ {RULE_FIELDS} }} }}
}}"""


def graphql(client: Client, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    """Run one GraphQL operation; its first error becomes a :class:`CLIError`."""
    body = client.post("/admin/gql", {"query": query, "variables": variables}) or {}
    errors = body.get("errors") or []
    if errors:
        first = errors[0] if isinstance(errors[0], dict) else {"message": str(errors[0])}
        raise CLIError(str(first.get("message") or first))
    return body.get("data") or {}


def step(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value == 0:
        raise argparse.ArgumentTypeError("must not be 0 (positive scales out, negative scales in)")
    return value


def rule_props(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "metric_source": args.source, "metric_name": args.metric, "comparator": args.comparator,
        "threshold": str(args.threshold), "step_size": args.step, "cooldown_seconds": args.cooldown,
        "min_replicas": args.min_replicas, "max_replicas": args.max_replicas, "enabled": not args.disabled,
    }


def _condition(rule: dict[str, Any]) -> str:
    comparator = str(rule.get("comparator") or "").lower()
    return (f"{str(rule.get('metric_source') or '').lower()}:{rule.get('metric_name')} "
            f"{COMPARATOR_SYMBOLS.get(comparator, comparator)} {rule.get('threshold')}")


def cmd_add(args: argparse.Namespace) -> int:
    client = Client(connection_from_args(args))
    endpoint = resolve_service_id(client, args.service)
    data = graphql(client, CREATE, {"endpoint": endpoint, "props": rule_props(args)})
    rule = (data.get("create_endpoint_auto_scaling_rule_node") or {}).get("rule") or {}
    if args.json:
        print_json(rule)
        return 0
    print(f"Rule {rule.get('row_id')} added: when {_condition(rule)}, step {int(rule.get('step_size') or 0):+d} "
          f"(replicas {rule.get('min_replicas') if rule.get('min_replicas') is not None else 0}.."
          f"{rule.get('max_replicas') if rule.get('max_replicas') is not None else 'limit'}, "
          f"cooldown {rule.get('cooldown_seconds')}s).")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    client = Client(connection_from_args(args))
    endpoint = resolve_service_id(client, args.service)
    data = graphql(client, LIST, {"endpoint": endpoint})
    rules = [e["node"] for e in (data.get("endpoint_auto_scaling_rule_nodes") or {}).get("edges", [])]
    if args.json:
        print_json(rules)
        return 0
    if not rules:
        print("No autoscaling rules.")
        return 0
    print_table(["RULE ID", "CONDITION", "STEP", "MIN", "MAX", "COOLDOWN", "ENABLED", "LAST TRIGGERED"],
                [[r.get("row_id"), _condition(r), f"{int(r.get('step_size') or 0):+d}", r.get("min_replicas"),
                  r.get("max_replicas"), r.get("cooldown_seconds"), r.get("enabled"), r.get("last_triggered_at")]
                 for r in rules])
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    client = Client(connection_from_args(args))
    graphql(client, DELETE, {"id": args.rule})
    print(f"Rule {args.rule} removed.")
    return 0


def cmd_toggle(args: argparse.Namespace) -> int:
    client = Client(connection_from_args(args))
    data = graphql(client, MODIFY, {"id": args.rule, "props": {"enabled": args.enable}})
    rule = (data.get("modify_endpoint_auto_scaling_rule_node") or {}).get("rule") or {}
    print(f"Rule {rule.get('row_id') or args.rule} {'enabled' if args.enable else 'disabled'}.")
    return 0


def cmd_decisions(args: argparse.Namespace) -> int:
    client = Client(connection_from_args(args))
    params: dict[str, Any] = {"limit": args.limit}
    if args.applied_only:
        params["applied_only"] = "true"
    data = client.get(_service_path(client, args.service, "/autoscaling-decisions"), params=params) or {}
    decisions = data.get("decisions", [])
    if args.json:
        print_json(decisions)
        return 0
    if not decisions:
        print("No autoscaling decisions yet.")
        return 0
    print_table(["TIME", "RULE", "OUTCOME", "REPLICAS", "OBSERVED", "REASON"],
                [[d.get("created_at"), d.get("rule_id"), d.get("outcome"),
                  f"{d.get('old_replicas')} → {d.get('new_replicas')}", d.get("observed"), d.get("reason")]
                 for d in decisions])
    return 0


def _subparsers_of(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise RuntimeError(f"{parser.prog} has no subcommands")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``autoscale`` under the ``service`` command (registered before this module)."""
    service = subparsers.choices.get("service")
    if service is None:
        raise RuntimeError("manager.cli.autoscale must be registered after manager.cli.service")
    common = connection_parent()
    group = _subparsers_of(service).add_parser(
        "autoscale", aliases=["auto-scaling-rule"], help="autoscaling rules and decisions", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = group.add_subparsers(dest="autoscale_command", metavar="COMMAND", required=True)

    add = sub.add_parser("add", aliases=["create"], parents=[common], help="add a rule to a service")
    add.add_argument("service", metavar="NAME_OR_ID")
    add.add_argument("--source", required=True, choices=SOURCES, help="where the metric comes from")
    add.add_argument("--metric", required=True, help="e.g. rps, in_flight, cpu_util, vllm:num_requests_running")
    add.add_argument("--comparator", required=True, choices=COMPARATORS)
    add.add_argument("--threshold", required=True, type=float)
    add.add_argument("--step", required=True, type=step, help="+N scales out, -N scales in")
    add.add_argument("--min", dest="min_replicas", type=non_negative_int, default=None,
                     help="lowest replica count this rule scales to (0 allows scale to zero)")
    add.add_argument("--max", dest="max_replicas", type=non_negative_int, default=None,
                     help="highest replica count this rule scales to")
    add.add_argument("--cooldown", type=non_negative_int, default=300,
                     help="seconds after an autoscaling change before this rule may fire (default 300)")
    add.add_argument("--disabled", action="store_true", help="create the rule disabled")
    add.add_argument("--json", action="store_true", help="print the created rule as JSON")
    add.set_defaults(func=cmd_add)

    listing = sub.add_parser("list", aliases=["ls"], parents=[common], help="list a service's rules")
    listing.add_argument("service", metavar="NAME_OR_ID")
    listing.add_argument("--json", action="store_true", help="print the rules as JSON")
    listing.set_defaults(func=cmd_list)

    rm = sub.add_parser("rm", aliases=["delete"], parents=[common], help="remove a rule")
    rm.add_argument("rule", metavar="RULE_ID")
    rm.set_defaults(func=cmd_rm)

    for name, enable in (("enable", True), ("disable", False)):
        toggle = sub.add_parser(name, parents=[common], help=f"{name} a rule")
        toggle.add_argument("rule", metavar="RULE_ID")
        toggle.set_defaults(func=cmd_toggle, enable=enable)

    decisions = sub.add_parser("decisions", parents=[common], help="show the autoscaler's decisions, newest first")
    decisions.add_argument("service", metavar="NAME_OR_ID")
    decisions.add_argument("--limit", type=int, default=50, help="at most this many (1..500, default 50)")
    decisions.add_argument("--applied-only", action="store_true", help="only decisions that changed replicas")
    decisions.add_argument("--json", action="store_true", help="print the decisions as JSON")
    decisions.set_defaults(func=cmd_decisions)
