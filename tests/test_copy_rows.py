"""Summaries come from PostgreSQL as ``COPY ... (FORMAT binary)`` (documents.py): the values are
read back whole and unchanged, NULLs as None, however the driver's reads cut the data."""

from __future__ import annotations

import pytest

from rewardpoints.documents import _BinaryRows

from .support import connect

QUERY = """
SELECT v FROM (VALUES
    (1, 'a'), (2, NULL), (3, ''), (4, repeat('x', 70000)),
    (5, E'quote " backslash \\\\ newline \\n tab \\t ü € 😀'), (6, NULL), (7, 'z')
) AS t (n, v) ORDER BY n
"""
EXPECTED = [
    b"a",
    None,
    b"",
    b"x" * 70000,
    'quote " backslash \\ newline \n tab \t ü € 😀'.encode(),
    None,
    b"z",
]


async def _copy_data(pg_url: str) -> bytes:
    conn = await connect(pg_url)
    chunks: list[bytes] = []

    async def sink(chunk: bytes) -> None:
        chunks.append(bytes(chunk))

    try:
        await conn.copy_from_query(QUERY, output=sink, format="binary")
    finally:
        await conn.close()
    return b"".join(chunks)


def _read(pieces: list[bytes]) -> list[bytes | None]:
    rows = _BinaryRows()
    values: list[bytes | None] = []
    for piece in pieces:
        values += [None if v is None else bytes(v) for v in rows.feed(piece)]
    rows.end()
    return values


async def test_values_are_read_whole_wherever_the_reads_end(pg_url: str) -> None:
    data = await _copy_data(pg_url)
    assert _read([data]) == EXPECTED
    # Every cut of the data in two, and the data a byte at a time.
    for cut in [*range(0, 200), *range(len(data) - 200, len(data) + 1)]:
        assert _read([data[:cut], data[cut:]]) == EXPECTED, cut
    assert _read([data[i : i + 1] for i in range(len(data))]) == EXPECTED


async def test_data_that_ends_within_a_row_or_is_not_binary_is_refused(pg_url: str) -> None:
    data = await _copy_data(pg_url)
    for cut in (5, 25, len(data) - 3):
        rows = _BinaryRows()
        rows.feed(data[:cut])
        with pytest.raises(RuntimeError, match="ended within a row"):
            rows.end()
    with pytest.raises(RuntimeError, match="not in the binary format"):
        _BinaryRows().feed(b'{"customerId":"c","activePoints":0}\n' * 2)
