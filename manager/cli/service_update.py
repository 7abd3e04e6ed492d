"""``moorage service update``: change a running service without downtime → ``PATCH /services/{id}``.

Changing the image, model folder, definition, runtime variant, environment, resources or outbound network
access (or ``--redeploy``) starts a rolling update: new replicas start (at most ``--max-surge`` extra at once)
and old ones retire only when enough new ones are healthy. ``--wait`` follows it until every replica runs the
new revision. CORS origins, visibility and the replica count change without one.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from manager.cli.client import Client
from manager.cli.connection import CLIError, connection_from_args
from manager.cli.output import print_json
from manager.cli.service_args import _service_path, key_value, non_negative_int


def build_update_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for field in ("replicas", "image", "runtime_variant", "model_definition_path", "max_surge"):
        if getattr(args, field) is not None:
            body[field] = getattr(args, field)
    if args.model_folder is not None:
        body["model"] = args.model_folder
    if args.env is not None or args.clear_env:
        body["environ"] = dict(args.env or [])
    if args.resources is not None:
        body["resources"] = dict(args.resources)
    if args.public is not None:
        body["open_to_public"] = args.public
    if args.cors_origins is not None or args.clear_cors_origins:
        body["cors_allowed_origins"] = list(args.cors_origins or [])
    if args.outbound is not None:
        body["network_outbound"] = args.outbound
    if args.route_capacity is not None:
        body["route_capacity"] = args.route_capacity or None  # 0: back to the proxies' default
    if args.aliases is not None or args.clear_aliases:
        body["model_aliases"] = list(args.aliases or [])
    if args.engine_model_name is not None:
        body["engine_model_name"] = args.engine_model_name or None  # '': pass the client's name through
    if args.redeploy:
        body["redeploy"] = True
    if not body:
        raise CLIError("nothing to update: give at least one option (see --help)")
    return body


def _progress(info: dict[str, Any]) -> str:
    rollout = info.get("rollout")
    if rollout:
        return (f"revision {rollout['revision']}: {rollout['current_serving']}/{info.get('replicas')} new replicas "
                f"serving, {rollout['outdated']} old left")
    return f"revision {info.get('revision')}: done"


def cmd_update(args: argparse.Namespace) -> int:
    client = Client(connection_from_args(args))
    path = _service_path(client, args.service)
    info = client.request("PATCH", path, json_body=build_update_body(args)) or {}
    if args.json and not args.wait:
        print_json(info)
        return 0
    changed = info.get("changed") or []
    print(f"Updated {info.get('name', args.service)}: revision {info.get('revision')}"
          + (f" (changed: {', '.join(changed)})" if changed else ""))
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout
    last = ""
    while True:
        info = client.get(path) or {}
        healthy = [r for r in info.get("routes", []) if r.get("revision") == info.get("revision")
                   and r.get("lifecycle") == "running" and r.get("health") == "healthy"]
        line = _progress(info)
        if line != last:
            print(line)
            last = line
        if not info.get("rollout") and len(healthy) >= int(info.get("replicas") or 0):
            break
        if time.monotonic() > deadline:
            raise CLIError(f"the rollout did not finish within {args.timeout:g}s ({line}); see `service info`")
        time.sleep(1.0)
    if args.json:
        print_json(info)
    return 0


def register_update(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    update = sub.add_parser("update", parents=[common], help="change a running service (rolling update)",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    update.add_argument("service", metavar="NAME_OR_ID")
    update.add_argument("--image", default=None, help="new container image")
    update.add_argument("--model-folder", default=None, help="serve another model folder (name or id)")
    update.add_argument("--model-definition-path", default=None, help="definition file inside the folder")
    update.add_argument("--runtime-variant", default=None, help="switch the runtime variant")
    update.add_argument("-e", "--env", action="append", type=key_value, metavar="KEY=VALUE",
                        help="environment variable (repeatable); REPLACES the whole environment")
    update.add_argument("--clear-env", action="store_true", help="remove every environment variable")
    update.add_argument("-r", "--resources", action="append", type=key_value, metavar="KEY=VALUE",
                        help="resource slot (repeatable), e.g. cpu=2 mem=8g cuda.shares=0.5; replaces all slots")
    update.add_argument("--replicas", type=non_negative_int, default=None, help="desired replica count")
    visibility = update.add_mutually_exclusive_group()
    visibility.add_argument("--public", dest="public", action="store_const", const=True, default=None,
                            help="no token needed")
    visibility.add_argument("--private", dest="public", action="store_const", const=False, help="tokens needed")
    cors = update.add_mutually_exclusive_group()
    cors.add_argument("--cors-origin", dest="cors_origins", action="append", metavar="URL",
                      help="origin whose browser pages may call the service (repeatable); REPLACES the whole list")
    cors.add_argument("--clear-cors-origins", action="store_true", help="allow no cross-origin browser requests")
    outbound = update.add_mutually_exclusive_group()
    outbound.add_argument("--allow-outbound", dest="outbound", action="store_const", const=True, default=None,
                          help="let replicas open outbound connections (rolling update)")
    outbound.add_argument("--deny-outbound", dest="outbound", action="store_const", const=False,
                          help="no outbound network for replicas (rolling update)")
    update.add_argument("--route-capacity", type=non_negative_int, default=None, metavar="N",
                        help="gateway requests one replica serves at once (0: the proxy's default)")
    aliases = update.add_mutually_exclusive_group()
    aliases.add_argument("--alias", dest="aliases", action="append", metavar="MODEL",
                         help="model name the gateway also serves the service under (repeatable); REPLACES the list")
    aliases.add_argument("--clear-aliases", action="store_true", help="no aliases")
    update.add_argument("--engine-model-name", default=None, metavar="NAME",
                        help="the model name the engine expects ('': pass the client's name through)")
    update.add_argument("--max-surge", type=int, default=None, help="extra replicas a rollout may start at once")
    update.add_argument("--redeploy", action="store_true", help="roll every replica even if nothing changed")
    update.add_argument("--wait", action="store_true", help="follow the rollout until it finishes")
    update.add_argument("--timeout", type=float, default=1800.0, help="seconds --wait waits (default 1800)")
    update.add_argument("--json", action="store_true", help="print the manager's JSON answer")
    update.set_defaults(func=cmd_update)
