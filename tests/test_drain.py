"""The daemon's drain loop on a real outbox, with an uplink slower than the lease: two batches
on their way at once, never the same envelope twice, no busy polling while they travel."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Sequence

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
    lease = daemon.outbox.lease

    async def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal leases
        leases += 1
        return await lease(*args, **kwargs)

    daemon.outbox.lease = counted  # type: ignore[method-assign]
    try:
        for n in range(16):
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
        stop = asyncio.Event()
        drain = asyncio.create_task(daemon.drain_loop("record", stop))

        async def all_done() -> bool:
            return (await daemon.outbox.status()).by_destination["record"] == {"done": 16}

        await wait_for(all_done, timeout=20)
        stop.set()
        await drain
    finally:
        await daemon.outbox.close()
        daemon.consent.close()
    assert sorted(slow.sent) == list(range(1, 17)) and set(slow.sent.values()) == {1}
    assert slow.most_in_flight == 2  # the next batch travels while the first is answered
    # 4 batches of 4, 2 at a time: ~1 s of sending; a loop polling every 10 ms would lease ~100x
    assert leases < 30, leases


async def test_the_daemon_purges_what_waited_for_consent_past_the_retention(tmp_path):
    cfg = config(tmp_path, outbox={"consent_retention_days": 1e-6})  # ~0.09 s
    daemon = Daemon(cfg)  # no consent granted: everything waits
    await daemon.outbox.open()
    try:
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
    finally:
        await daemon.outbox.close()
        daemon.consent.close()
    assert status.by_destination["record"] == {"purged": 1}
