"""``/metrics``: off by default; when on, the counts of a real server with two workers add up
to the requests it was sent, the fast lane's included."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import TEST_SECRET, bearer, token
from .support import server_process

ADD = "/reward-points/customer/{customerId}/addPoints"
REDEEM = "/reward-points/customer/{customerId}/redeemPoints"
BALANCE = "/reward-points/customer/{customerId}"
SUMMARY = "/reward-points/customer/{customerId}/summary"


async def test_metrics_are_off_unless_enabled(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 404
    assert response.json()["status"] == 404


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def _value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.mark.slow
def test_counts_of_two_workers_add_up_to_the_requests_sent(pg_url: str) -> None:
    tenant = "metrics"
    headers = bearer(token(tenant))
    env = {
        "REWARDPOINTS_DATABASE_URL": pg_url,
        "REWARDPOINTS_JWT_SECRET": TEST_SECRET,
        "REWARDPOINTS_METRICS_ENABLED": "true",
    }
    # A new connection per request, so both workers answer some.
    fresh = httpx.Limits(max_keepalive_connections=0)
    with server_process(env, workers=2) as server, httpx.Client(limits=fresh, timeout=30) as http:
        base = f"{server.base}/reward-points/customer"
        for n in range(40):
            added = http.post(f"{base}/c{n % 4}/addPoints", json={"points": 5}, headers=headers)
            assert added.status_code == 201, added.text
        for n in range(10):
            spent = http.post(f"{base}/c{n % 4}/redeemPoints", json={"points": 2}, headers=headers)
            assert spent.status_code == 201, spent.text
        refused = http.post(f"{base}/c0/redeemPoints", json={"points": 10**6}, headers=headers)
        assert refused.status_code == 400
        for n in range(6):
            assert http.get(f"{base}/c{n % 4}", headers=headers).status_code == 200
        assert http.get(f"{base}/c1/summary", headers=headers).status_code == 200
        assert http.get(f"{base}/nobody/summary", headers=headers).status_code == 404
        assert http.get(f"{server.base}/no/such/path").status_code == 404
        batch = http.get(f"{server.base}/reward-points/summaryBatch", headers=headers)
        assert batch.status_code == 200
        scraped = [http.get(f"{server.base}/metrics") for _ in range(4)]
    for response in scraped:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
    samples = _samples(scraped[-1].text)
    requests = "rewardpoints_http_requests_total"
    assert _value(samples, requests, route=ADD, method="POST", status="201") == 40
    assert _value(samples, requests, route=REDEEM, method="POST", status="201") == 10
    assert _value(samples, requests, route=REDEEM, method="POST", status="400") == 1
    assert _value(samples, requests, route=BALANCE, method="GET", status="200") == 6
    assert _value(samples, requests, route=SUMMARY, method="GET", status="200") == 1
    assert _value(samples, requests, route=SUMMARY, method="GET", status="404") == 1
    assert _value(samples, requests, route="unmatched", method="GET", status="404") == 1
    latency = "rewardpoints_http_request_duration_seconds_count"
    assert _value(samples, latency, route=ADD, method="POST") == 40
    assert _value(samples, "rewardpoints_points_total", kind="added") == 200
    assert _value(samples, "rewardpoints_points_total", kind="redeemed") == 20
    refusals = "rewardpoints_ledger_refusals_total"
    assert _value(samples, refusals, kind="InsufficientPoints") == 1
    assert _value(samples, refusals, kind="CustomerNotFound") == 1
    assert _value(samples, "rewardpoints_summary_batch_exports_in_flight") == 0
    assert ("rewardpoints_db_pool_connections_in_use", frozenset()) in samples
    assert ("rewardpoints_db_pool_waiting", frozenset()) in samples
