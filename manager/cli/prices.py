"""``moorage price set|list|rm``: model prices for the gateway's cost accounting → ``/prices`` (docs/gateway.md)."""

from __future__ import annotations

import argparse
import math
import urllib.parse

from manager.cli.client import Client
from manager.cli.connection import connection_from_args, connection_parent
from manager.cli.output import print_json, print_table


def _price(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise argparse.ArgumentTypeError(f"must be a number ≥ 0: {value!r}")
    return number


def _path(model: str) -> str:
    return "/prices/" + urllib.parse.quote(model, safe="")


def cmd_set(args: argparse.Namespace) -> int:
    info = Client(connection_from_args(args)).request(
        "PUT", _path(args.model), json_body={"input_per_1m": args.input, "output_per_1m": args.output})
    print(f"{info['model']}: input {info['input_per_1m']:g}, output {info['output_per_1m']:g} per 1M tokens")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    prices = Client(connection_from_args(args)).get("/prices")["prices"]
    if args.json:
        print_json(prices)
    elif not prices:
        print("No prices set.")
    else:
        print_table(["MODEL", "INPUT / 1M", "OUTPUT / 1M", "UPDATED"],
                    [[p["model"], f"{p['input_per_1m']:g}", f"{p['output_per_1m']:g}", p["updated_at"]]
                     for p in prices])
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    Client(connection_from_args(args)).delete(_path(args.model))
    print(f"{args.model}: price removed")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("price", help="model prices per 1M tokens (cost and budgets of gateway keys)")
    sub = parser.add_subparsers(dest="price_command", metavar="COMMAND", required=True)
    common = connection_parent()
    setting = sub.add_parser("set", parents=[common], help="set a model's price (superadmins)")
    setting.add_argument("model", metavar="MODEL")
    setting.add_argument("--input", type=_price, required=True, help="currency units per 1M input tokens")
    setting.add_argument("--output", type=_price, required=True, help="currency units per 1M output tokens")
    setting.set_defaults(func=cmd_set)
    listing = sub.add_parser("list", aliases=["ls"], parents=[common], help="list model prices")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=cmd_list)
    removing = sub.add_parser("rm", parents=[common], help="remove a model's price (superadmins)")
    removing.add_argument("model", metavar="MODEL")
    removing.set_defaults(func=cmd_rm)
