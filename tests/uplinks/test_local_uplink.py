"""LocalUplink: envelopes into a real SQLite record; outcomes per envelope."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.uplinks.base import Envelope, OutcomeStatus, Uplink
from gateway.uplinks.local import LocalUplink
from gateway.uplinks.record_store import RecordStore
from tests.uplinks.fhir_samples import dumps, reading_body, reading_bundle


def envelope(envelope_id: int, body: bytes, key: str = "") -> Envelope:
    return Envelope(
        id=envelope_id, destination="local", idem_key=key or f"key-{envelope_id}", body=body
    )


@pytest.fixture
async def uplink(tmp_path: Path):
    local = LocalUplink("local", tmp_path / "record.db")
    await local.start()
    yield local
    await local.close()


def test_implements_the_uplink_protocol(tmp_path: Path) -> None:
    local: Uplink = LocalUplink("local", tmp_path / "record.db")
    assert local.name == "local"


async def test_bad_bundle_rejected_while_the_rest_of_the_batch_is_delivered(
    uplink: LocalUplink,
) -> None:
    no_identifier = reading_bundle("obs-bad")
    del no_identifier["entry"][2]["resource"]["identifier"]
    del no_identifier["entry"][2]["request"]["ifNoneExist"]
    batch = [
        envelope(1, reading_body("obs-1")),
        envelope(2, b"\x00 not json"),
        envelope(3, dumps(no_identifier)),
        envelope(4, reading_body("obs-2", Decimal("66.0"))),
    ]

    outcomes = await uplink.send(batch)

    assert [o.envelope_id for o in outcomes] == [1, 2, 3, 4]
    assert [o.status for o in outcomes] == [
        OutcomeStatus.DELIVERED,
        OutcomeStatus.REJECTED,
        OutcomeStatus.REJECTED,
        OutcomeStatus.DELIVERED,
    ]
    assert "not valid JSON" in outcomes[1].reason
    assert "entry 2 (Observation)" in outcomes[2].reason
    assert "no identifier" in outcomes[2].reason
    assert await uplink.store.count(resource_type="Observation") == 2
    assert await uplink.store.count(resource_type="Device") == 2


async def test_retried_and_replayed_envelopes_never_duplicate(uplink: LocalUplink) -> None:
    body = reading_body("obs-1")
    first = await uplink.send([envelope(1, body)])
    retried = await uplink.send([envelope(1, body)])
    # Same reading mapped again after a crash: new urn:uuids, same identifiers.
    replayed = await uplink.send([envelope(7, reading_body("obs-1"))])
    same_batch = await uplink.send([envelope(8, body), envelope(9, body)])

    for outcomes in (first, retried, replayed, same_batch):
        assert {o.status for o in outcomes} == {OutcomeStatus.DELIVERED}
    assert await uplink.store.count(resource_type="Observation") == 1
    assert await uplink.store.count() == 3


async def test_store_full_gives_retry_and_commits_nothing(tmp_path: Path) -> None:
    path = tmp_path / "record.db"
    async with RecordStore(path):
        pass  # create the schema
    with sqlite3.connect(path) as db:
        pages = db.execute("PRAGMA page_count").fetchone()[0]

    # A quota of exactly the current size: the first new page gives SQLITE_FULL.
    full = LocalUplink("local", path, max_pages=pages)
    await full.start()
    big = reading_bundle("obs-big")
    big["entry"][2]["resource"]["note"] = [{"text": "x" * 20_000}]
    try:
        outcomes = await full.send([envelope(1, reading_body("obs-1")), envelope(2, dumps(big))])
        assert [o.status for o in outcomes] == [OutcomeStatus.RETRY, OutcomeStatus.RETRY]
        assert "full" in outcomes[0].reason
        # The whole batch was rolled back, the small reading included.
        assert await full.store.count() == 0
    finally:
        await full.close()

    # Space freed (no quota): the same envelopes go through, nothing was left half-written.
    roomy = LocalUplink("local", path)
    await roomy.start()
    try:
        outcomes = await roomy.send([envelope(1, reading_body("obs-1")), envelope(2, dumps(big))])
        assert [o.status for o in outcomes] == [OutcomeStatus.DELIVERED] * 2
        assert await roomy.store.count(resource_type="Observation") == 2
    finally:
        await roomy.close()


async def test_send_needs_start_and_accepts_an_empty_batch(tmp_path: Path) -> None:
    local = LocalUplink("local", tmp_path / "record.db")
    with pytest.raises(RuntimeError):
        await local.send([envelope(1, reading_body("obs-1"))])
    await local.start()
    try:
        assert await local.send([]) == []
    finally:
        await local.close()
