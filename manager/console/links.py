"""The console's URL and its one-time login URLs (docs/console.md, "Security"): what `moorage up` prints and
``POST /login-links`` answers. No HTTP layer here, so that the API route and the console app can both use it."""

from __future__ import annotations

from manager.config import ManagerConfig
from manager.console import sessions
from manager.context import ManagerContext

LOGIN_LINK_PATH = "/console/login-link"


def console_url(config: ManagerConfig) -> str:
    c = config.console
    if c.public_url:
        return c.public_url.rstrip("/")
    scheme = "https" if config.manager.tls_cert_file else "http"
    return f"{scheme}://{c.listen_host}:{c.listen_port}"


async def login_link_url(ctx: ManagerContext, access_key: str) -> str:
    """A fresh one-time login URL for the keypair (what `moorage up` prints)."""
    secret = await sessions.mint_login_link(ctx.db, access_key, ctx.config.console.login_link_ttl)
    return f"{console_url(ctx.config)}{LOGIN_LINK_PATH}?token={secret}"
