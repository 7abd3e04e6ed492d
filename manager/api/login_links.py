"""``POST /login-links`` (our extension): a fresh one-time console login URL for the caller's own keypair, what
``moorage console login-link`` prints (docs/console.md, "Security"). Registered on the manager's own API only,
never under the console's ``/api/`` (a link is minted with a keypair's signature, not with a console session)."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, Field

from common.errors import Conflict
from manager.api.auth import caller_of
from manager.api.util import json_response
from manager.console.links import login_link_url
from manager.context import CTX

routes = web.RouteTableDef()


class LoginLink(BaseModel):
    url: str = Field(description="the console URL with a single-use login token; it sets a session cookie")
    expires_in: float = Field(description="seconds the link stays valid ([console] login_link_ttl)")


@routes.post("/login-links")
async def create_login_link(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    if not ctx.config.console.enabled:
        raise Conflict("console: the web console is not enabled on this manager ([console] enabled = false)")
    url = await login_link_url(ctx, caller_of(request).access_key)
    response = json_response(LoginLink(url=url, expires_in=ctx.config.console.login_link_ttl).model_dump(),
                             status=201)
    response.headers["Cache-Control"] = "no-store"  # the answer holds a login secret
    return response
