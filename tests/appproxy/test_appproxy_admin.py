"""The admin listener: Prometheus exposition, replica scraping and the signed JSON API."""

from __future__ import annotations

import time
import uuid

import pytest

from appproxy.scrape import parse_exposition
from common.signing import sign_headers
from tests.appproxy.appproxy_testkit import auth, eventually, free_port, make_table

CLUSTER_SECRET = "cluster-secret-for-the-appproxy-tests-0123"

VLLM_LIKE = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} %d
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m",engine="0"} 1
vllm:num_requests_waiting{model_name="m",engine="1"} 2
# TYPE vllm:prompt_tokens counter
vllm:prompt_tokens_total{model_name="m"} 100.0
vllm:prompt_tokens_created{model_name="m"} 1.7e9
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{le="1.0",model_name="m"} 3
vllm:e2e_request_latency_seconds_bucket{le="+Inf",model_name="m"} 4
vllm:e2e_request_latency_seconds_sum{model_name="m"} 6.5
vllm:e2e_request_latency_seconds_count{model_name="m"} 4
# TYPE rpc_duration summary
rpc_duration{quantile="0.5"} 0.2
rpc_duration_sum 10
weird{label="a } b"} 7 1700000000000
nan_metric NaN
"""


def test_exposition_parser():
    values = parse_exposition(VLLM_LIKE % 3)
    assert values == {
        "vllm:num_requests_running": 3.0, "vllm:num_requests_waiting": 3.0, "vllm:prompt_tokens_total": 100.0,
        "vllm:e2e_request_latency_seconds_sum": 6.5, "vllm:e2e_request_latency_seconds_count": 4.0,
        "rpc_duration_sum": 10.0, "weird": 7.0,
    }
    assert len(parse_exposition("\n".join(f"m{i} 1" for i in range(50)), max_series=10)) == 10


def admin_section(**extra):
    return {"proxy": {"admin_port": 0, "scrape_interval": 0.2, "scrape_timeout": 1.0, "scrape_max_bytes": 4096,
                      **extra},
            "secrets": {"cluster_secret": CLUSTER_SECRET}}


async def signed_get(http, base: str, path: str):
    return await http.get(base + path, headers=sign_headers(CLUSTER_SECRET, "GET", path, b""))


async def test_metrics_exposition_and_replica_aggregation(make_proxy, serve, upstreams, http):
    a, b, huge = await upstreams("a"), await upstreams("b"), await upstreams("huge")
    a.metrics_text, b.metrics_text = VLLM_LIKE % 3, VLLM_LIKE % 5
    huge.metrics_text = "x 1\n" * 5000  # over scrape_max_bytes: left out
    proxy = await make_proxy(**admin_section())
    table = make_table(port=free_port(), routes=[a.target(), b.target(), huge.target()])
    url = await serve(proxy, table)
    admin = f"http://127.0.0.1:{proxy.admin.port}"
    for _ in range(4):
        async with http.get(url + "/echo", headers=auth(table.endpoint_id)) as resp:
            assert resp.status == 200
    async with http.get(url + "/echo") as resp:
        assert resp.status == 401

    async with http.get(admin + "/metrics") as resp:  # open, Prometheus text
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    endpoint = str(table.endpoint_id)
    parsed = parse_exposition(text)
    assert "moorage_appproxy_request_duration_seconds_sum" in parsed
    assert f'moorage_appproxy_requests_total{{endpoint="{endpoint}",route="-",status_class="4xx"}} 1.0' in text
    assert 'le="0.001"' in text and 'le="+Inf"' in text  # float-second buckets, down to a millisecond
    assert parsed["moorage_appproxy_requests_total"] == 5
    assert parsed["moorage_appproxy_request_duration_seconds_count"] == 5
    assert "moorage_appproxy_in_flight_requests" in text and "moorage_appproxy_ejections_total" in text

    path = f"/endpoints/{endpoint}/metrics"
    async with http.get(admin + path) as resp:
        assert resp.status == 401  # the JSON API needs the cluster's signature
    async with http.get(admin + path, headers=sign_headers("x" * 40, "GET", path, b"")) as resp:
        assert resp.status == 401

    async def aggregated() -> bool:
        async with await signed_get(http, admin, path) as resp:
            assert resp.status == 200
            doc = await resp.json()
        return doc["replicas"] == 2 and doc["proxy"]["rps"] > 0

    await eventually(aggregated, what="two replicas scraped and a request rate")
    async with await signed_get(http, admin, path) as resp:
        doc = await resp.json()
    assert doc["endpoint_id"] == endpoint and doc["collected_at"] <= time.time()
    running = doc["metrics"]["vllm:num_requests_running"]
    route_a, route_b = str(table.routes[0].route_id), str(table.routes[1].route_id)
    assert running == {"sum": 8.0, "per_route": {route_a: 3.0, route_b: 5.0}}
    assert doc["metrics"]["vllm:num_requests_waiting"]["sum"] == 6.0
    assert doc["proxy"]["in_flight"] == 0
    assert "vllm:e2e_request_latency_seconds_bucket" not in doc["metrics"]
    latency = doc["proxy"]["latency"]  # the endpoint's durations over its routes (the console's percentiles)
    assert len(latency["counts"]) == len(latency["bounds"]) + 1 and sum(latency["counts"]) == 5
    assert latency["bounds"][0] == 0.001 and 0 < latency["sum"] < 5
    assert doc["proxy"]["tokens"] == {"prompt": 0, "completion": 0}  # only the gateway meters tokens

    missing = f"/endpoints/{uuid.uuid4()}/metrics"
    async with await signed_get(http, admin, missing) as resp:
        assert resp.status == 404


async def test_ejected_replicas_are_not_scraped(make_proxy, serve, upstreams, http):
    good, bad = await upstreams("good"), await upstreams("bad")
    bad.fail_status = 500  # also its /metrics: nothing to aggregate from it either way
    proxy = await make_proxy(**admin_section(), outlier={"consecutive_failures": 1})
    table = make_table(port=free_port(), routes=[good.target(), bad.target()], open_to_public=True)
    url = await serve(proxy, table)
    while not bad.hits:
        async with http.get(url + "/echo"):
            pass
    hits = bad.hits
    await proxy.scraper.tick()
    assert bad.hits == hits  # ejected: not even asked
    assert list(proxy.scraper.samples[table.endpoint_id].per_route) == [str(table.routes[0].route_id)]


def test_admin_needs_a_cluster_secret():
    from appproxy.config import ProxyConfig
    from common.config import ConfigError
    from tests.appproxy.appproxy_testkit import SECRET

    config = ProxyConfig.model_validate({"proxy": {"admin_port": 0}, "secrets": {"jwt_secret": SECRET}})
    with pytest.raises(ConfigError, match="cluster_secret"):
        config.cluster_secret()
    assert ProxyConfig.model_validate({"secrets": {"jwt_secret": SECRET}}).cluster_secret() is None
