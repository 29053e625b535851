"""The process log as an operator reads it: a request id on every line and in every answer,
one JSON object a line with ``REWARDPOINTS_LOG_FORMAT=json`` (the access log included), and the
reason of each 401, never the token."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import httpx
import pytest

from .conftest import TEST_SECRET, bearer, token
from .support import server_process

GENERATED = re.compile(r"[0-9a-f]{32}")


@pytest.mark.parametrize(
    "path", ["/reward-points/customer/c1", "/health/live", "/reward-points/summaryBatch"]
)
async def test_every_answer_carries_the_request_id_sent_or_a_new_one(
    client: httpx.AsyncClient, headers: dict[str, str], path: str
) -> None:
    sent = await client.get(path, headers={**headers, "X-Request-ID": "order-42:retry.1"})
    assert sent.headers["X-Request-ID"] == "order-42:retry.1"

    first = await client.get(path, headers=headers)
    second = await client.get(path, headers=headers)
    assert GENERATED.fullmatch(first.headers["X-Request-ID"])
    assert GENERATED.fullmatch(second.headers["X-Request-ID"])
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]

    for unfit in ("x" * 129, "two words", "<script>"):
        answered = await client.get(path, headers={**headers, "X-Request-ID": unfit})
        assert GENERATED.fullmatch(answered.headers["X-Request-ID"]), unfit


def _lines(output: str) -> list[dict[str, Any]]:
    records = []
    for line in output.splitlines():
        if line.strip():
            records.append(json.loads(line))  # every line is one JSON object
    return records


@pytest.mark.slow
def test_json_log_lines_carry_the_request_id_and_each_401s_reason(pg_url: str) -> None:
    tenant = "logs"
    expired = token(tenant, ttl_seconds=-3600)
    forged = token(tenant, secret="another-secret-of-at-least-thirty-two-bytes")
    env = {
        "REWARDPOINTS_DATABASE_URL": pg_url,
        "REWARDPOINTS_JWT_SECRET": TEST_SECRET,
        "REWARDPOINTS_LOG_FORMAT": "json",
    }
    with server_process(env, args=("--access-log", "--log-level", "info")) as server:
        url = f"{server.base}/reward-points/customer/c1"
        for ident, credential in (("r-expired", expired), ("r-forged", forged)):
            answer = httpx.get(url, headers={**bearer(credential), "X-Request-ID": ident})
            assert answer.status_code == 401
            assert answer.headers["X-Request-ID"] == ident
        served = httpx.get(url, headers={**bearer(token(tenant)), "X-Request-ID": "r-ok"})
        assert served.status_code == 404  # no such customer: answered, not refused
        deadline = time.monotonic() + 10
        while '"r-ok"' not in server.output() and time.monotonic() < deadline:
            time.sleep(0.1)
        output = server.output()
    records = _lines(output)
    assert expired not in output and forged not in output
    by_id: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        assert {"time", "level", "logger", "message", "request_id"} <= set(record)
        by_id.setdefault(record["request_id"], []).append(record)

    def reason(ident: str) -> str:
        [line] = [r for r in by_id[ident] if r["logger"] == "rewardpoints"]
        assert line["level"] == "INFO"
        message: str = line["message"]
        return message

    assert "expired" in reason("r-expired")
    assert "Signature verification failed" in reason("r-forged")
    for ident, status in (("r-expired", 401), ("r-forged", 401), ("r-ok", 404)):
        [access] = [r for r in by_id[ident] if r["logger"] == "uvicorn.access"]
        assert access["status"] == status
        assert access["method"] == "GET"
        assert access["path"] == "/reward-points/customer/c1"
    assert by_id["-"]  # start-up lines, outside any request, are JSON too
