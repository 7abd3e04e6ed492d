"""``moorage service``: model services (Backend.AI "endpoints"), over the ``/services`` REST API.

- ``service create MODEL_FOLDER COUNT --name NAME ...`` → ``POST /services`` (Backend.AI's create body; plus
  ``cors_allowed_origins`` / ``network_outbound`` only with ``--cors-origin`` / ``--allow-outbound``)
- ``service list``                                   → ``GET /services``
- ``service info NAME_OR_ID [--json]``                → ``GET /services/{id}``
- ``service scale NAME_OR_ID COUNT``                  → ``POST /services/{id}/scale {"to": COUNT}``
- ``service token NAME_OR_ID --duration 1h``          → ``POST /services/{id}/token`` (prints only the token)
- ``service rm NAME_OR_ID``                           → ``DELETE /services/{id}``

``NAME_OR_ID``: a UUID is used as is; anything else is looked up with ``GET /services?name=NAME`` and must
match exactly one service.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from manager.cli.client import Client, quote_segment
from manager.cli.connection import CLIError, connection_from_args, connection_parent
from manager.cli.output import cell, print_fields, print_json, print_table
from manager.cli.service_args import _service_path, key_value, non_negative_int
from manager.cli.service_update import register_update

_DURATION_RE = re.compile(r"^\d+(\.\d+)?(s|m|h|d|w|mo|yr)?$")


# -- argument types -----------------------------------------------------------------------------------------


def duration(text: str) -> str:
    if not _DURATION_RE.match(text.strip()):
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use seconds or a number with s/m/h/d/w/mo/yr, e.g. 1h or 3d")
    return text.strip()


# -- helpers --------------------------------------------------------------------------------------------------


def drop_none(mapping: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if v is not None}


def build_create_body(args: argparse.Namespace) -> dict[str, Any]:
    """The exact body Backend.AI's client sends for ``service create`` (docs/backendai-compat.md)."""
    config = drop_none({
        "model": args.model_folder,
        "model_mount_destination": "/models",
        "environ": dict(args.env or []),
        "scaling_group": args.scaling_group or "default",
        "resources": dict(args.resources or []),
        "resource_opts": {},
        "extra_mounts": {},
        "model_definition_path": args.model_definition_path,
    })
    extensions: dict[str, Any] = {}  # only when asked for: otherwise the body stays Backend.AI's exactly
    if args.cors_origins:
        extensions["cors_allowed_origins"] = list(args.cors_origins)
    if args.allow_outbound:
        extensions["network_outbound"] = True
    if args.route_capacity is not None:
        extensions["route_capacity"] = args.route_capacity
    if args.aliases:
        extensions["model_aliases"] = list(args.aliases)
    if args.engine_model_name:
        extensions["engine_model_name"] = args.engine_model_name
    return drop_none({
        "name": args.name,
        "replicas": args.count,
        "image": args.image,
        "runtime_variant": args.runtime_variant,
        "open_to_public": bool(args.public),
        "group": "default",
        "domain": "default",
        "cluster_size": 1,
        "cluster_mode": "single-node",
        "config": config,
        **extensions,
    })


def _render_value(key: str | None, value: Any, indent: str, out: list[str]) -> None:
    label = f"{key}: " if key is not None else ""
    if isinstance(value, dict):
        if key is not None:
            out.append(f"{indent}{key}:")
            indent += "  "
        for k, v in value.items():
            _render_value(str(k), v, indent, out)
    elif isinstance(value, list):
        if not value:
            out.append(f"{indent}{label}[]")
            return
        if key is not None:
            out.append(f"{indent}{key}:")
        for item in value:
            sub: list[str] = []
            _render_value(None, item, "", sub)
            for i, line in enumerate(sub):
                out.append(f"{indent}  {'- ' if i == 0 else '  '}{line}")
    elif isinstance(value, str) and ("\n" in value.rstrip("\n") or len(value) > 100
                                     or any(word in (key or "") for word in _BLOCK_KEY_WORDS)):
        out.append(f"{indent}{key}:" if key is not None else f"{indent}|")
        for line in value.rstrip("\n").splitlines() or [""]:
            out.append(f"{indent}  | {line}")
    elif isinstance(value, str):
        out.append(f"{indent}{label}{value.rstrip()}")
    else:
        out.append(f"{indent}{label}{cell(value)}")


_BLOCK_KEY_WORDS = ("stderr", "stdout", "log", "tail", "output", "traceback")
_ERROR_KEY_ORDER = ("message", "msg", "error", "reason", "type", "exit_code", "errors")


def format_error_data(error_data: Any, indent: str = "    ") -> list[str]:
    """Readable lines for a route's ``error_data`` (message first, then e.g. the replica's stderr tail)."""
    out: list[str] = []
    if isinstance(error_data, dict):
        ordered = sorted(error_data.items(),
                         key=lambda kv: _ERROR_KEY_ORDER.index(kv[0]) if kv[0] in _ERROR_KEY_ORDER
                         else len(_ERROR_KEY_ORDER))
        for key, value in ordered:
            _render_value(str(key), value, indent, out)
    else:
        _render_value(None, error_data, indent, out)
    return out


def _route_address(route: dict[str, Any]) -> str | None:
    host, port = route.get("host"), route.get("port")
    if host and port:
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return host or None


def print_service_info(info: dict[str, Any]) -> None:
    replicas = info.get("replicas", info.get("desired_session_count"))
    fields: list[tuple[str, Any]] = [
        ("Name", info.get("name")),
        ("ID", info.get("endpoint_id") or info.get("id")),
    ]
    if "status" in info:
        fields.append(("Status", info.get("status")))
    fields += [
        ("Replicas", replicas),
        ("Runtime variant", info.get("runtime_variant")),
        ("Model folder", info.get("model_id")),
        ("Definition", info.get("model_definition_path")),
        ("URL", info.get("service_endpoint") or "(not assigned yet)"),
        ("Public", info.get("is_public")),
    ]
    if "cors_allowed_origins" in info:
        fields.append(("CORS origins", ", ".join(info["cors_allowed_origins"] or []) or "(none)"))
    if "network_outbound" in info:
        fields.append(("Outbound network", "allowed" if info["network_outbound"] else "blocked"))
    if "route_capacity" in info:
        fields.append(("Route capacity", info["route_capacity"] or "(proxy default)"))
    if info.get("model_aliases"):
        fields.append(("Model aliases", ", ".join(info["model_aliases"])))
    if info.get("engine_model_name"):
        fields.append(("Engine model name", info["engine_model_name"]))
    if "retries" in info:
        fields.append(("Retries", info.get("retries")))
    if "revision" in info:
        rollout = info.get("rollout")
        fields.append(("Revision", f"{info['revision']}" + (
            f" (rolling out: {rollout['current_serving']} new serving, {rollout['outdated']} old left)"
            if rollout else "")))
    print_fields(fields)

    routes = info.get("routes")
    if routes is None:
        routes = info.get("active_routes") or []
    print(f"Routes ({len(routes)}):")
    if routes:
        print_table(
            ["  ROUTE", "SESSION", "LIFECYCLE", "HEALTH", "TRAFFIC", "RATIO", "REV", "ADDRESS", "AGENT"],
            [["  " + cell(r.get("route_id")), r.get("session_id"), r.get("lifecycle"), r.get("health"),
              r.get("traffic"), r.get("traffic_ratio"), r.get("revision"), _route_address(r), r.get("agent")]
             for r in routes],
        )
    for route in routes:
        if route.get("sandboxed") is False:
            print(f"WARNING: route {route.get('route_id')} runs WITHOUT a sandbox on agent {route.get('agent')} "
                  "(runtime local-nosandbox): the replica's code can reach everything the agent's user can.")
    failed = [r for r in routes if r.get("error_data")]
    for route in failed:
        print(f"Route {route.get('route_id')} ({route.get('lifecycle') or 'error'}):")
        for line in format_error_data(route["error_data"]):
            print(line)


# -- commands -------------------------------------------------------------------------------------------------


def cmd_create(args: argparse.Namespace) -> int:
    client = Client(connection_from_args(args))
    info = client.post("/services", build_create_body(args)) or {}
    if args.json:
        print_json(info)
        return 0
    print("Service created.")
    print_fields([
        ("ID", info.get("endpoint_id") or info.get("id")),
        ("Name", info.get("name", args.name)),
        ("Replicas", info.get("replicas", args.count)),
        ("URL", info.get("service_endpoint") or "(not assigned yet; see `moorage service info`)"),
    ], indent="  ")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    client = Client(connection_from_args(args))
    items = client.get("/services") or []
    if args.json:
        print_json(items)
        return 0
    if not items:
        print("No services.")
        return 0
    print_table(
        ["ID", "NAME", "STATUS", "REPLICAS", "ACTIVE ROUTES", "URL", "PUBLIC"],
        [[s.get("id") or s.get("endpoint_id"), s.get("name"), s.get("status"),
          s.get("replicas", s.get("desired_session_count")), s.get("active_route_count"),
          s.get("service_endpoint"), s.get("is_public")] for s in items],
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    client = Client(connection_from_args(args))
    info = client.get(_service_path(client, args.service))
    if args.json:
        print_json(info)
        return 0
    print_service_info(info or {})
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    client = Client(connection_from_args(args))
    result = client.post(_service_path(client, args.service, "/scale"), {"to": args.count}) or {}
    if args.json:
        print_json(result)
        return 0
    print(f"Scaling {args.service} to {result.get('target_count', args.count)} replicas "
          f"(currently {cell(result.get('current_route_count'))} routes).")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    client = Client(connection_from_args(args))
    body = {"duration": args.duration} if args.duration is not None else {"valid_until": args.valid_until}
    result = client.post(_service_path(client, args.service, "/token"), body) or {}
    token = result.get("token")
    if not token:
        raise CLIError("the manager's answer holds no token")
    print(token)
    return 0


def cmd_tokens(args: argparse.Namespace) -> int:
    client = Client(connection_from_args(args))
    tokens = (client.get(_service_path(client, args.service, "/tokens")) or {}).get("tokens", [])
    if args.json:
        print_json(tokens)
        return 0
    rows = [[t.get("token_id"), t.get("created_at"), t.get("expires_at"),
             "revoked" if t.get("revoked") else ("expired" if t.get("expired") else "valid")] for t in tokens]
    print_table(["TOKEN ID", "CREATED", "EXPIRES", "STATE"], rows)
    return 0


def token_id_of(value: str) -> str:
    """A token id, or the id (``jti``) inside a token given whole."""
    if value.count(".") == 2:
        import base64
        import json

        try:
            payload = value.split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            return str(claims["jti"])
        except (ValueError, KeyError, TypeError):
            raise CLIError("that token is malformed; pass the token id from `moorage service tokens`") from None
    return value


def cmd_revoke_token(args: argparse.Namespace) -> int:
    client = Client(connection_from_args(args))
    token_id = token_id_of(args.token)
    client.delete(_service_path(client, args.service, f"/tokens/{quote_segment(token_id)}"))
    print(f"Token {token_id} revoked.")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    client = Client(connection_from_args(args))
    result = client.delete(_service_path(client, args.service))
    if isinstance(result, dict) and result.get("success") is False:
        raise CLIError(f"the manager did not remove {args.service}")
    print(f"Service {args.service} is being removed.")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = connection_parent()
    service = subparsers.add_parser("service", help="manage model services", description=__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = service.add_subparsers(dest="service_command", metavar="COMMAND", required=True)

    create = sub.add_parser("create", parents=[common], help="create a service serving a model folder")
    create.add_argument("model_folder", metavar="MODEL_FOLDER", help="model folder name or id")
    create.add_argument("count", metavar="COUNT", type=non_negative_int, help="number of replicas")
    create.add_argument("-t", "--name", required=True, help="service name (4-24 chars: letters, digits, _ -)")
    create.add_argument("--image", default=None, help="container image (optional for the local runtime)")
    create.add_argument("--runtime-variant", default="custom",
                        help="custom (model-definition.yaml, the default), vllm, sglang, llamacpp, ...")
    create.add_argument("--public", "--expose-to-public", dest="public", action="store_true",
                        help="serve without requiring a token")
    create.add_argument("-r", "--resources", action="append", type=key_value, metavar="KEY=VALUE",
                        help="resource slot, e.g. -r cpu=1 -r mem=2g -r cuda.shares=0.5 (repeatable)")
    create.add_argument("-e", "--env", action="append", type=key_value, metavar="KEY=VALUE",
                        help="environment variable for the replicas (repeatable)")
    create.add_argument("--scaling-group", "--sgroup", dest="scaling_group", default=None,
                        help="resource group (default: default)")
    create.add_argument("--model-definition-path", default=None,
                        help="definition file inside the folder (default: model-definition.yaml)")
    create.add_argument("--cors-origin", dest="cors_origins", action="append", metavar="URL",
                        help="let browser pages of this origin call the service, e.g. https://chat.example.com "
                             "or * for any (repeatable; default: none)")
    create.add_argument("--allow-outbound", action="store_true",
                        help="let replicas open outbound network connections (default: none)")
    create.add_argument("--route-capacity", type=int, default=None, metavar="N",
                        help="gateway requests one replica serves at once; more wait in the gateway's priority "
                             "queue (default: the proxy's [gateway] default_route_capacity)")
    create.add_argument("--alias", dest="aliases", action="append", metavar="MODEL",
                        help="another model name the gateway serves this service under (repeatable)")
    create.add_argument("--engine-model-name", default=None, metavar="NAME",
                        help="the model name the engine expects; the gateway writes it into requests (default: the "
                             "client's name, as sent)")
    create.add_argument("--json", action="store_true", help="print the manager's JSON answer")
    create.set_defaults(func=cmd_create)

    listing = sub.add_parser("list", aliases=["ls"], parents=[common], help="list services")
    listing.add_argument("--json", action="store_true", help="print the manager's JSON answer")
    listing.set_defaults(func=cmd_list)

    info = sub.add_parser("info", parents=[common], help="show a service, its routes and their errors")
    info.add_argument("service", metavar="NAME_OR_ID")
    info.add_argument("--json", action="store_true", help="print the manager's JSON answer as received")
    info.set_defaults(func=cmd_info)

    scale = sub.add_parser("scale", parents=[common], help="set the desired number of replicas")
    scale.add_argument("service", metavar="NAME_OR_ID")
    scale.add_argument("count", metavar="COUNT", type=non_negative_int)
    scale.add_argument("--json", action="store_true", help="print the manager's JSON answer")
    scale.set_defaults(func=cmd_scale)

    token = sub.add_parser("token", aliases=["generate-token"], parents=[common],
                           help="mint an API token for the service (prints only the token)")
    token.add_argument("service", metavar="NAME_OR_ID")
    validity = token.add_mutually_exclusive_group(required=True)
    validity.add_argument("--duration", type=duration, help="lifetime, e.g. 30m, 1h, 7d")
    validity.add_argument("--valid-until", type=int, metavar="UNIX_TS", help="expiry as a Unix timestamp")
    token.set_defaults(func=cmd_token)

    tokens = sub.add_parser("tokens", parents=[common], help="list the service's tokens (ids, expiry, state)")
    tokens.add_argument("service", metavar="NAME_OR_ID")
    tokens.add_argument("--json", action="store_true", help="print the raw JSON")
    tokens.set_defaults(func=cmd_tokens)
    revoke = sub.add_parser("revoke-token", parents=[common],
                            help="revoke a token (by id, or the token itself); proxies refuse it at once")
    revoke.add_argument("service", metavar="NAME_OR_ID")
    revoke.add_argument("token", metavar="TOKEN_OR_ID")
    revoke.set_defaults(func=cmd_revoke_token)

    register_update(sub, common)

    rm = sub.add_parser("rm", aliases=["delete"], parents=[common], help="destroy a service")
    rm.add_argument("service", metavar="NAME_OR_ID")
    rm.set_defaults(func=cmd_rm)
