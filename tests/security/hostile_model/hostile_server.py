"""A hostile replica (test fixture): GET /probe?read=PATH&connect=HOST:PORT&list=DIR... tries each and answers
what it got as JSON. It listens on 127.0.0.1 (the sandbox forwards the port there) and /health answers 200."""

import json
import os
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def try_read(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            return "READ:" + fh.read(64).hex()
    except OSError as exc:
        return f"denied:{type(exc).__name__}"


def try_list(path: str) -> list[str] | str:
    try:
        return sorted(os.listdir(path))
    except OSError as exc:
        return f"denied:{type(exc).__name__}"


def try_connect(target: str) -> str:
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.5):
            return "CONNECTED"
    except OSError as exc:
        return f"denied:{type(exc).__name__}"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/health":
            body = b"ok"
        else:
            query = parse_qs(url.query)
            body = json.dumps({
                "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
                "read": {p: try_read(p) for p in query.get("read", [])},
                "list": {p: try_list(p) for p in query.get("list", [])},
                "connect": {t: try_connect(t) for t in query.get("connect", [])},
            }).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
