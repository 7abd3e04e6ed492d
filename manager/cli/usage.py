"""``moorage usage``: gateway requests and tokens grouped by day, model, key or user → ``GET /usage``."""

from __future__ import annotations

import argparse
import csv
import sys

from manager.cli.client import Client
from manager.cli.connection import connection_from_args, connection_parent
from manager.cli.output import print_json, print_table

GROUPS = ("day", "model", "key", "user")
COUNTS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "errors", "cost")


def cmd_usage(args: argparse.Namespace) -> int:
    by = [g for g in dict.fromkeys(args.by.split(",")) if g]
    params = {"by": ",".join(by), "since": args.since, "until": args.until}
    rows = Client(connection_from_args(args)).get("/usage", params)["rows"]
    if args.json:
        print_json(rows)
        return 0
    columns = [*by, *COUNTS]
    if args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows([[row.get(c) for c in columns] for row in rows])
        return 0
    if not rows:
        print("No usage in this period.")
        return 0
    print_table([c.upper() for c in columns], [[row.get(c) for c in columns] for row in rows])
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("usage", parents=[connection_parent()],
                                   help="gateway usage: requests and tokens (yours; admins: everyone's)")
    parser.add_argument("--by", default="day", help="comma-separated groups among day, model, key, user "
                                                    "(default: day)")
    parser.add_argument("--since", default="7d", help="how far back: 7d, 12h, or an ISO 8601 time (default 7d)")
    parser.add_argument("--until", help="end of the period (default: now)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON")
    output.add_argument("--csv", action="store_true", help="print CSV")
    parser.set_defaults(func=cmd_usage)
