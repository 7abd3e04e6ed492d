"""``moorage console login-link``: print a fresh one-time console login URL → ``POST /login-links``.

The link logs the browser in as the CLI's own keypair: the connection file's admin in embedded mode
(``moorage up``), or the keypair configured by ``--access-key`` / ``$MOORAGE_ACCESS_KEY`` in a cluster. It is
single-use and valid for ``[console] login_link_ttl`` (docs/console.md, "Security"). Only the URL goes to stdout
(``xdg-open "$(moorage console login-link)"`` works).
"""

from __future__ import annotations

import argparse
import sys

from manager.cli.client import Client
from manager.cli.connection import connection_from_args, connection_parent


def cmd_login_link(args: argparse.Namespace) -> int:
    link = Client(connection_from_args(args)).post("/login-links", {})
    print(link["url"])
    print(f"(single use, valid {float(link['expires_in']) / 60:g} minutes)", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("console", help="the web console (a one-time login link)")
    sub = parser.add_subparsers(dest="console_command", metavar="COMMAND", required=True)
    link = sub.add_parser("login-link", parents=[connection_parent()],
                          help="print a fresh one-time login URL for your keypair (nothing else on stdout)")
    link.set_defaults(func=cmd_login_link)
