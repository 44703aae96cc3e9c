"""The daemon's drain loop on a real outbox, with an uplink slower than the lease: two batches
on their way at once, never the same envelope twice, no busy polling while they travel."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from gateway.daemon import Daemon
from gateway.outbox import EnvelopeState, NewEnvelope
from gateway.uplinks.base import Envelope, Outcome, OutcomeStatus
from tests.e2e.helpers import PATIENT, config, grant, wait_for


class SlowDestination:
    """A destination that takes longer than a lease to answer, counting what it is handed."""

    name = "record"

    def __init__(self, *seconds: float) -> None:
        self.seconds = itertools.cycle(seconds)  # uneven: one batch outlives the other
        self.sent: Counter[int] = Counter()
        self.in_flight = 0
        self.most_in_flight = 0

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def send(self, batch: Sequence[Envelope]) -> list[Outcome]:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.sent.update(e.id for e in batch)
        await asyncio.sleep(next(self.seconds))
        self.in_flight -= 1
        return [Outcome(envelope_id=e.id, status=OutcomeStatus.DELIVERED) for e in batch]


@asynccontextmanager
async def _opened(daemon: Daemon) -> AsyncIterator[Daemon]:
    """The daemon with its outbox open, closed (with its consent store) at the end."""
    await daemon.outbox.open()
    try:
        yield daemon
    finally:
        await daemon.outbox.close()
        daemon.consent.close()


async def test_a_destination_slower_than_the_lease_gets_each_envelope_once(tmp_path):
    cfg = config(
        tmp_path,
        outbox={"batch": 4, "lease_seconds": 0.1, "consent_poll": 0.05, "retry_base": 0.05},
    )
    grant(cfg)
    daemon = Daemon(cfg)
    slow = SlowDestination(0.2, 0.6)
    daemon.uplinks["record"] = slow
    await daemon.outbox.open()
    leases = 0
    lease = daemon.outbox.lease_consented

    async def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal leases
        leases += 1
        return await lease(*args, **kwargs)

    daemon.outbox.lease_consented = counted  # type: ignore[method-assign]
    try:
        await _queue(daemon, 16)
        await _drain_until_done(daemon, 16, timeout=20)
    finally:
        await daemon.outbox.close()
        daemon.consent.close()
    assert sorted(slow.sent) == list(range(1, 17)) and set(slow.sent.values()) == {1}
    assert slow.most_in_flight == 2  # the next batch travels while the first is answered
    # 4 batches of 4, 2 at a time: ~1 s of sending; a loop polling every 10 ms would lease ~100x
    assert leases < 30, leases


async def _drain_until_done(daemon: Daemon, count: int, *, timeout: float) -> None:
    """The daemon's drain loop, until ``count`` envelopes for the record are done."""
    stop = asyncio.Event()
    drain = asyncio.create_task(daemon.drain_loop("record", stop))

    async def all_done() -> bool:
        return (await daemon.outbox.status()).by_destination["record"] == {"done": count}

    try:
        await wait_for(all_done, timeout=timeout)
    finally:
        stop.set()
        await drain


async def _queue(daemon: Daemon, count: int) -> None:
    for n in range(count):
        await daemon.outbox.ingest(
            key=f"r{n}",
            device="DEV",
            kind="weight",
            category="vital-signs",
            patient=PATIENT,
            received_at="2026-11-25T08:00:00+00:00",
            payload=b"{}",
            envelopes=[NewEnvelope(destination="record", idem_key=f"k{n}", body=b"{}")],
        )


async def test_an_answer_not_yet_recorded_keeps_its_envelope_from_a_new_lease(tmp_path):
    """The answer comes while the loop is between its own awaits, after the lease expired:
    the envelope must not go a second time."""
    cfg = config(tmp_path, outbox={"batch": 4, "lease_seconds": 0.05, "consent_poll": 0.05})
    grant(cfg)
    daemon = Daemon(cfg)
    answer = asyncio.Event()
    sent: Counter[int] = Counter()

    class Held(SlowDestination):
        async def send(self, batch: Sequence[Envelope]) -> list[Outcome]:
            sent.update(e.id for e in batch)
            await answer.wait()
            return [Outcome(envelope_id=e.id, status=OutcomeStatus.DELIVERED) for e in batch]

    daemon.uplinks["record"] = Held(0)
    release = daemon._release_permitted

    async def slow_release(name: str) -> None:
        await release(name)
        if sent and not answer.is_set():
            await asyncio.sleep(0.1)  # the lease expires
            answer.set()  # and the answer arrives while the loop is here
            await asyncio.sleep(0.05)

    daemon._release_permitted = slow_release  # type: ignore[method-assign]
    async with _opened(daemon):
        await _queue(daemon, 4)
        await _drain_until_done(daemon, 4, timeout=10)
        delivered = [e.envelope for e in await daemon.outbox.audit_log() if e.action == "delivered"]
    assert dict(sent) == {1: 1, 2: 1, 3: 1, 4: 1}
    assert sorted(delivered) == [1, 2, 3, 4]


async def test_answers_recorded_twice_change_nothing(tmp_path):
    """A transaction may commit although its caller was cancelled, and be tried again."""
    cfg = config(tmp_path)
    async with _opened(Daemon(cfg)) as daemon:
        await _queue(daemon, 3)
        leased = await daemon.outbox.lease("record", 3)
        outcomes = [
            Outcome(envelope_id=leased[0].envelope.id, status=OutcomeStatus.DELIVERED),
            Outcome(envelope_id=leased[1].envelope.id, status=OutcomeStatus.RETRY, reason="x"),
            Outcome(envelope_id=leased[2].envelope.id, status=OutcomeStatus.REJECTED, reason="y"),
        ]
        assert await daemon.outbox.settle(outcomes) == outcomes
        assert await daemon.outbox.settle(outcomes) == []  # nothing out any more
        status = await daemon.outbox.status()
        entries = await daemon.outbox.audit_log()
    assert status.by_destination["record"] == {"done": 1, "pending": 1, "quarantined": 1}
    assert len(status.quarantined) == 1
    assert [e.action for e in entries if e.action in ("delivered", "retry", "rejected")] == [
        "delivered",
        "retry",
        "rejected",
    ]


async def test_a_delivery_counts_even_if_the_envelope_was_purged_meanwhile(tmp_path):
    """The send outlived its lease and a revocation purged it: it did arrive, the trail says so."""
    cfg = config(tmp_path)
    async with _opened(Daemon(cfg)) as daemon:
        await _queue(daemon, 1)
        [item] = await daemon.outbox.lease("record", 1, lease_seconds=0.0)
        assert await daemon.outbox.purge(patient=PATIENT, reason="consent withdrawn") == 1
        delivered = Outcome(envelope_id=item.envelope.id, status=OutcomeStatus.DELIVERED)
        retried = Outcome(envelope_id=item.envelope.id, status=OutcomeStatus.RETRY, reason="x")
        assert await daemon.outbox.settle([retried]) == []  # not out any more: nothing to retry
        assert await daemon.outbox.settle([delivered]) == [delivered]
        assert await daemon.outbox.settle([delivered]) == []  # once
        status = await daemon.outbox.status()
        actions = [e.action for e in await daemon.outbox.audit_log()]
    assert status.by_destination["record"] == {"done": 1}
    assert actions[-2:] == ["purge", "delivered"]


async def test_the_daemon_purges_what_waited_for_consent_past_the_retention(tmp_path):
    cfg = config(tmp_path, outbox={"consent_retention_days": 1e-6})  # ~0.09 s
    async with _opened(Daemon(cfg)) as daemon:  # no consent granted: everything waits
        await daemon.outbox.ingest(
            key="r1",
            device="DEV",
            kind="weight",
            category="vital-signs",
            patient=PATIENT,
            received_at="2026-11-25T08:00:00+00:00",
            payload=b"{}",
            envelopes=[
                NewEnvelope(
                    destination="record",
                    idem_key="k1",
                    body=b"{}",
                    state=EnvelopeState.CONSENT_MISSING,
                )
            ],
        )
        assert await daemon.purge_expired() == 0  # not yet past the limit
        await asyncio.sleep(0.2)
        assert await daemon.purge_expired() == 1
        status = await daemon.outbox.status()
    assert status.by_destination["record"] == {"purged": 1}
