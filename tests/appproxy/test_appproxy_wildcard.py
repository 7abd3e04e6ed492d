"""Wildcard-subdomain frontend: one listener, endpoint from the Host header."""

from __future__ import annotations

import time

from tests.appproxy.appproxy_testkit import auth, eventually, free_port, make_table, publish, unpublish


async def test_host_header_picks_the_endpoint(make_proxy, upstreams, store, http):
    a, b = await upstreams("a"), await upstreams("b")
    port = free_port()
    proxy = await make_proxy(proxy={"frontend": "wildcard", "wildcard_domain": ".apps.example.com",
                                    "wildcard_port": port})
    chat = make_table(port=None, subdomain="chat", routes=[a.target()])
    embed = make_table(port=None, subdomain="embed", routes=[b.target()], open_to_public=True)
    for table in (chat, embed):
        await publish(store, table)
    await eventually(lambda: len(proxy.frontend.hosts) == 2, what="both hosts served")
    url = f"http://127.0.0.1:{port}/echo"
    for host in ("chat.apps.example.com", "CHAT.Apps.Example.COM:443", "chat.apps.example.com."):
        async with http.get(url, headers={"Host": host, **auth(chat.endpoint_id)}) as resp:
            assert resp.status == 200, host
            assert (await resp.json())["name"] == "a"
    async with http.get(url, headers={"Host": "embed.apps.example.com"}) as resp:
        assert (await resp.json())["name"] == "b"
    async with http.get(url, headers={"Host": "chat.apps.example.com"}) as resp:
        assert resp.status == 401  # tokens still apply
    for host in ("nope.apps.example.com", "chat.other.com", "apps.example.com", "127.0.0.1", "x.chat.apps.example.com"):
        async with http.get(url, headers={"Host": host}) as resp:
            assert resp.status == 404, host
            assert resp.headers["Content-Type"].startswith("application/problem+json")
    assert a.hits == 3 and b.hits == 1

    # the manager moves the endpoint to a new subdomain: the old name stops, the new one serves
    renamed = chat.model_copy(update={"subdomain": "chat2", "updated_at": time.time() + 1})
    await publish(store, renamed)
    await eventually(lambda: "chat2.apps.example.com" in proxy.frontend.hosts, what="rename applied")
    async with http.get(url, headers={"Host": "chat2.apps.example.com", **auth(chat.endpoint_id)}) as resp:
        assert resp.status == 200
    async with http.get(url, headers={"Host": "chat.apps.example.com", **auth(chat.endpoint_id)}) as resp:
        assert resp.status == 404

    await unpublish(store, embed.endpoint_id)
    await eventually(lambda: "embed.apps.example.com" not in proxy.frontend.hosts, what="deletion applied")
    async with http.get(url, headers={"Host": "embed.apps.example.com"}) as resp:
        assert resp.status == 404


def test_wildcard_domain_is_validated():
    import pytest
    from pydantic import ValidationError

    from appproxy.config import ProxySection

    for bad in ("", "apps.example.com", ".", ".a b.com"):
        with pytest.raises(ValidationError):
            ProxySection(frontend="wildcard", wildcard_domain=bad)
    assert ProxySection(frontend="wildcard", wildcard_domain=".apps.example.com").wildcard_port == 8080
