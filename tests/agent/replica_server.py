"""A tiny stdlib HTTP server used as the "inference server" of test replicas (copied into model folders).

Usage: python3 replica_server.py PORT. ``/health`` answers ``HEALTH_STATUS`` (env, default 200), or 500
while the file ``$HOME/unhealthy`` exists; ``/info`` describes the replica's environment and sandbox;
``/read?path=P`` returns a file's text; ``/environ`` the whole environment.
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


def _can_write(directory):
    try:
        path = os.path.join(directory, ".write-probe")
        with open(path, "w") as fp:
            fp.write("x")
        os.remove(path)
        return True
    except OSError:
        return False


class Handler(BaseHTTPRequestHandler):
    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/health":
            status = int(os.environ.get("HEALTH_STATUS", "200"))
            if os.path.exists(os.path.join(os.environ.get("HOME", "/nonexistent"), "unhealthy")):
                status = 500
            self._send(status, {"ok": status == 200})
        elif url.path == "/info":
            env_keys = ("PORT", "HOME", "PATH", "BACKEND_MODEL_NAME", "BACKEND_MODEL_PATH", "MOORAGE_ENDPOINT_ID",
                        "MOORAGE_ROUTE_ID", "MOORAGE_MODELS_DIR", "MOORAGE_WORK_DIR", "MY_VAR",
                        "MOORAGE_AGENT__SECRETS__CLUSTER_SECRET")
            self._send(200, {
                "argv": sys.argv, "cwd": os.getcwd(), "pid": os.getpid(), "executable": sys.executable,
                "env": {k: os.environ.get(k) for k in env_keys},
                "models_writable": _can_write(os.environ["MOORAGE_MODELS_DIR"]),
                "work_writable": _can_write(os.environ["HOME"]),
                "tmp_writable": _can_write("/tmp"),
            })
        elif url.path == "/environ":
            self._send(200, dict(os.environ))
        elif url.path == "/read":
            path = parse_qs(url.query)["path"][0]
            try:
                with open(path) as fp:
                    self._send(200, {"text": fp.read(), "mode": oct(os.stat(path).st_mode & 0o777)})
            except OSError as exc:
                self._send(404, {"error": str(exc)})
        else:
            self._send(404, {"error": "not found"})

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
