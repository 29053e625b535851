"""The bare-endpoint baseline: FastAPI answering a constant integer, nothing else.

bench/harness.py serves it with the uvicorn settings `rewardpoints serve` uses (2 workers, no
access log, proxy headers, log level info), so GET balance can be compared with the cost of the
framework and the server alone.
"""

from __future__ import annotations

from fastapi import FastAPI

app = FastAPI()


@app.get("/value")
async def value() -> int:
    return 42
