"""``moorage key create|list|update|revoke``: gateway API keys → ``/api-keys`` (docs/gateway.md).

``key create`` prints the key and nothing else on stdout (``KEY=$(moorage key create ci)`` works); the key is
never shown again. A key is named on the command line by its id or by its name (among the caller's keys).
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any

from manager.cli.client import Client
from manager.cli.connection import CLIError, connection_from_args, connection_parent
from manager.cli.output import print_json, print_table

PRIORITIES = ("low", "standard", "high")


def _models(value: str) -> list[str]:
    return [m.strip() for m in value.split(",") if m.strip()]


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    """The body fields the options set (``--rpm 0`` etc. clears a limit on update: unlimited)."""
    body: dict[str, Any] = {}
    if args.models is not None:
        body["allowed_models"] = _models(args.models)
    for name in ("rpm", "tpm", "max_parallel"):
        value = getattr(args, name)
        if value is not None:
            body[name] = value or None
    if args.budget is not None:
        body["budget"] = args.budget
    if args.expires is not None:
        body["expires_in"] = None if args.expires in ("never", "") else args.expires
    if args.priority is not None:
        body["priority"] = args.priority
    for item in args.meta or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise CLIError(f"--meta {item!r}: expected KEY=VALUE")
        body.setdefault("metadata", {})[name] = value
    return body


def _resolve(client: Client, ref: str) -> str:
    try:
        return str(uuid.UUID(ref))
    except ValueError:
        pass
    keys = [k for k in client.get("/api-keys")["api_keys"] if k["name"] == ref and not k["revoked_at"]]
    if not keys:
        raise CLIError(f"no active API key named {ref!r}")
    if len(keys) > 1:
        raise CLIError(f"{len(keys)} active API keys are named {ref!r}; use the id (moorage key list)")
    return str(keys[0]["id"])


def cmd_create(args: argparse.Namespace) -> int:
    body = {"name": args.name, **_limits(args)}
    if args.owner:
        body["owner_id"] = args.owner
    created = Client(connection_from_args(args)).post("/api-keys", body)
    print(created["key"])
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    keys = Client(connection_from_args(args)).get("/api-keys", {"all": "true" if args.all else None})["api_keys"]
    if args.json:
        print_json(keys)
        return 0
    if not keys:
        print("No API keys.")
        return 0
    print_table(["ID", "NAME", "KEY", "MODELS", "RPM", "TPM", "PARALLEL", "PRIORITY", "EXPIRES", "STATE"], [
        [k["id"], k["name"], k["hint"], ",".join(k["allowed_models"]) or "(all)", k["rpm"] or "-",
         k["tpm"] or "-", k["max_parallel"] or "-", k["priority"], k["expires_at"] or "never",
         "revoked" if k["revoked_at"] else "active"] for k in keys])
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    body = _limits(args)
    if args.rename:
        body["name"] = args.rename
    if not body:
        raise CLIError("nothing to change: give at least one option (see moorage key update --help)")
    client = Client(connection_from_args(args))
    updated = client.request("PATCH", f"/api-keys/{_resolve(client, args.key)}", json_body=body)
    print(f"Updated API key {updated['name']} ({updated['id']}).")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    client = Client(connection_from_args(args))
    revoked = client.delete(f"/api-keys/{_resolve(client, args.key)}")
    print(f"Revoked API key {revoked['name']} ({revoked['id']}).")
    return 0


DEFAULT_FIELDS = ("rpm", "tpm", "max_parallel", "budget", "priority")


def cmd_defaults(args: argparse.Namespace) -> int:
    """Show a user's key defaults, or (any option given) replace them: options left out have no default."""
    client = Client(connection_from_args(args))
    path = f"/users/{args.user}/key-defaults"
    given = {f: getattr(args, f) for f in DEFAULT_FIELDS if getattr(args, f) is not None}
    if given or args.clear:
        info = client.request("PUT", path, json_body={f: (v or None) for f, v in given.items()})
    else:
        info = client.get(path)
    if args.json:
        print_json(info)
        return 0
    print_table(["USER", *(f.upper() for f in DEFAULT_FIELDS)],
                [[info["user_id"], *(info.get(f) if info.get(f) is not None else "-" for f in DEFAULT_FIELDS)]])
    return 0


def _limit_options(parser: argparse.ArgumentParser, update: bool) -> None:
    clear = " (0: unlimited)" if update else ""
    parser.add_argument("--models", help="comma-separated model names the key may use (default: all the owner may"
                                         " use)" + ("; '' for all" if update else ""))
    parser.add_argument("--rpm", type=int, help="requests per minute" + clear)
    parser.add_argument("--tpm", type=int, help="tokens per minute" + clear)
    parser.add_argument("--max-parallel", dest="max_parallel", type=int, help="requests in flight at once" + clear)
    parser.add_argument("--budget", type=float, help="currency units per month")
    parser.add_argument("--expires", help="lifetime from now: 3600, 12h, 30d, 1yr" + (" or 'never'" if update else ""))
    parser.add_argument("--priority", choices=PRIORITIES)
    parser.add_argument("--meta", action="append", metavar="KEY=VALUE", help="metadata entry (repeatable)")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("key", help="gateway API keys (create, list, update, revoke)")
    sub = parser.add_subparsers(dest="key_command", metavar="COMMAND", required=True)
    create = sub.add_parser("create", parents=[connection_parent()],
                            help="create a key; prints the key (only this once) and nothing else")
    create.add_argument("name")
    _limit_options(create, update=False)
    create.add_argument("--owner", help="admins: user id to create the key for")
    create.set_defaults(func=cmd_create)
    listing = sub.add_parser("list", parents=[connection_parent()], help="list keys (never the keys themselves)")
    listing.add_argument("--all", action="store_true", help="admins: every user's keys")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=cmd_list)
    update = sub.add_parser("update", parents=[connection_parent()], help="change a key's models, limits, expiry")
    update.add_argument("key", help="key id or name")
    update.add_argument("--rename", help="new name")
    _limit_options(update, update=True)
    update.set_defaults(func=cmd_update)
    revoke = sub.add_parser("revoke", parents=[connection_parent()],
                            help="revoke a key: every app proxy refuses it within a second")
    revoke.add_argument("key", help="key id or name")
    revoke.set_defaults(func=cmd_revoke)
    defaults = sub.add_parser("defaults", parents=[connection_parent()],
                              help="show a user's key defaults, or (admins, with options) replace them: keys without "
                                   "their own value inherit these")
    defaults.add_argument("user", help="user id")
    defaults.add_argument("--rpm", type=int, help="requests per minute (0: none)")
    defaults.add_argument("--tpm", type=int, help="tokens per minute (0: none)")
    defaults.add_argument("--max-parallel", dest="max_parallel", type=int, help="requests in flight at once (0: none)")
    defaults.add_argument("--budget", type=float, help="currency units per calendar month, per key (0: none)")
    defaults.add_argument("--priority", choices=PRIORITIES)
    defaults.add_argument("--clear", action="store_true", help="remove every default")
    defaults.add_argument("--json", action="store_true", help="print JSON")
    defaults.set_defaults(func=cmd_defaults)
