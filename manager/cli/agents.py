"""``moorage agents``: the agents the manager knows (superadmin only) → ``GET /agents``."""

from __future__ import annotations

import argparse

from manager.cli.client import Client
from manager.cli.connection import connection_from_args, connection_parent
from manager.cli.output import print_json, print_table


def cmd_list(args: argparse.Namespace) -> int:
    agents = Client(connection_from_args(args)).get("/agents") or []
    if args.json:
        print_json(agents)
        return 0
    if not agents:
        print("No agents.")
        return 0
    print_table(["ID", "STATUS", "GROUP", "REPLICAS", "AVAILABLE", "OCCUPIED", "LAST HEARTBEAT"], [
        [a["id"], a["status"], a["scaling_group"], a["replicas"],
         " ".join(f"{k}={v}" for k, v in a["available_slots"].items()),
         " ".join(f"{k}={v}" for k, v in a["occupied_slots"].items()), a["last_heartbeat"]] for a in agents])
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("agents", parents=[connection_parent()],
                                   help="list the agents, their slots and what they run (superadmin)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=cmd_list)
