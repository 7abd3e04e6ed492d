"""``python -m tests.bai.manager_gql manager --config ...``: the `moorage` CLI with two test-only additions to the
manager app:

* ``POST /admin/gql`` when ``manager/server.py`` does not wire it yet (:func:`manager.api.gql.install` is
  idempotent, so this is a pass-through once it does);
* a wire log: one ``WIRE`` line per request (method, path with query, Content-Type, status) and, for 4xx/5xx
  answers, the start of the response body, so a failing official-CLI step shows exactly what went over the wire.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from aiohttp import web

import manager.server as server
from manager.api import gql

log = logging.getLogger("moorage.wire")
_build = server.build_manager_app


@web.middleware
async def wire_log(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        log.info("WIRE %s %s ct=%r -> %s (HTTPException)", request.method, request.raw_path,
                 request.headers.get("Content-Type"), exc.status)
        raise
    body = ""
    if response.status >= 400 and isinstance(response, web.Response) and response.body is not None:
        raw = response.body if isinstance(response.body, bytes) else b""
        body = " body=" + raw[:600].decode(errors="replace")
    log.info("WIRE %s %s ct=%r -> %s%s", request.method, request.raw_path, request.headers.get("Content-Type"),
             response.status, body)
    return response


def _build_with_gql(*args, **kwargs):
    app = _build(*args, **kwargs)
    gql.install(app)
    app.middlewares.insert(0, wire_log)
    return app


server.build_manager_app = _build_with_gql

if __name__ == "__main__":
    from manager.cli.main import main

    sys.exit(main())
