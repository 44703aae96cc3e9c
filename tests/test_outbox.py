"""The outbox on a real SQLite file: durability settings, leases, outcomes, restarts."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from gateway.outbox import EnvelopeState, NewEnvelope, Outbox, OutboxError
from gateway.uplinks.base import EntryOutcome, Outcome, OutcomeStatus


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def envelope(
    dest: str = "record", key: str = "k", state: EnvelopeState = EnvelopeState.PENDING
) -> NewEnvelope:
    return NewEnvelope(
        destination=dest, idem_key=key, body=b'{"resourceType":"Bundle"}', state=state
    )


async def ingest(outbox: Outbox, key: str, *envelopes: NewEnvelope, patient: str | None = "sys|p1"):
    return await outbox.ingest(
        key=key,
        device="DEV",
        kind="weight",
        category="vital-signs",
        patient=patient,
        received_at="2026-11-23T08:00:00+00:00",
        payload=b"{}",
        envelopes=list(envelopes) or [envelope(key=key)],
    )


async def test_durability_is_wal_and_full_on_every_open(tmp_path):
    async with Outbox(tmp_path / "o.sqlite") as outbox:
        mode = await (await outbox.db.execute("PRAGMA journal_mode")).fetchone()
        sync = await (await outbox.db.execute("PRAGMA synchronous")).fetchone()
    assert mode[0] == "wal" and sync[0] == 2


async def test_a_reading_is_stored_once(tmp_path):
    async with Outbox(tmp_path / "o.sqlite") as outbox:
        first = await ingest(outbox, "r1")
        second = await ingest(outbox, "r1")
        assert not first.duplicate and second.duplicate and first.reading_id == second.reading_id
        status = await outbox.status()
        assert status.readings == 1 and status.by_destination == {"record": {"pending": 1}}


async def test_lease_hides_an_envelope_until_it_expires_or_the_process_restarts(tmp_path):
    clock = Clock()
    path = tmp_path / "o.sqlite"
    async with Outbox(path, clock=clock) as outbox:
        await ingest(outbox, "r1")
        assert len(await outbox.lease("record", 10, lease_seconds=30)) == 1
        assert await outbox.lease("record", 10) == []
        clock.now += 31
        assert len(await outbox.lease("record", 10, lease_seconds=30)) == 1
    # crash while leased: a new process releases the leases and resumes at once
    async with Outbox(path, clock=clock) as outbox:
        assert await outbox.lease("record", 10) == []
        await outbox.release_leases()
        leased = await outbox.lease("record", 10)
        assert [item.envelope.idem_key for item in leased] == ["r1"]


async def test_outcomes_done_retry_with_backoff_and_quarantine_that_does_not_block(tmp_path):
    clock = Clock()
    async with Outbox(tmp_path / "o.sqlite", clock=clock, retry_base=2.0, retry_max=60.0) as outbox:
        for key in ("a", "b", "c"):
            await ingest(outbox, key)
        leased = await outbox.lease("record", 10)
        ids = {item.envelope.idem_key: item.envelope.id for item in leased}
        await outbox.settle(
            [
                Outcome(envelope_id=ids["a"], status=OutcomeStatus.DELIVERED),
                Outcome(envelope_id=ids["b"], status=OutcomeStatus.RETRY, reason="503"),
                Outcome(envelope_id=ids["c"], status=OutcomeStatus.REJECTED, reason="422 invalid"),
            ]
        )
        status = await outbox.status()
        assert status.by_destination["record"] == {"done": 1, "pending": 1, "quarantined": 1}
        assert status.quarantined[0]["reason"] == "422 invalid"
        assert await outbox.lease("record", 10) == []  # b waits for its backoff (1..2 s)
        clock.now += 2.0
        again = await outbox.lease("record", 10)
        assert [item.envelope.idem_key for item in again] == ["b"]
        assert again[0].envelope.attempts == 1
        # a new reading behind the quarantined one flows normally
        await ingest(outbox, "d")
        await outbox.settle(
            [Outcome(envelope_id=again[0].envelope.id, status=OutcomeStatus.RETRY, retry_after=120)]
        )
        clock.now += 60
        assert [i.envelope.idem_key for i in await outbox.lease("record", 10)] == ["d"]
        assert await outbox.retry_quarantined(ids["c"])
        assert not await outbox.retry_quarantined(ids["a"])


async def test_backoff_grows_and_is_capped():
    outbox = Outbox(Path("unused"), retry_base=1.0, retry_max=30.0)
    for attempts in range(12):
        delay = outbox.backoff(attempts)
        ceiling = min(30.0, 2.0**attempts)
        assert ceiling / 2 <= delay <= ceiling


async def test_consent_hold_and_release_by_patient_and_destination(tmp_path):
    async with Outbox(tmp_path / "o.sqlite") as outbox:
        await ingest(
            outbox,
            "r1",
            envelope("record", "r1", EnvelopeState.CONSENT_MISSING),
            envelope("broker", "r1"),
        )
        await ingest(
            outbox, "r2", envelope("record", "r2", EnvelopeState.CONSENT_MISSING), patient="sys|p2"
        )
        assert sorted(await outbox.held_groups()) == [
            ("record", "sys|p1", "vital-signs"),
            ("record", "sys|p2", "vital-signs"),
        ]
        assert await outbox.lease("record", 10) == []
        assert await outbox.release_held("record", "sys|p1", "vital-signs", "permit:1:x") == 1
        leased = await outbox.lease("record", 10)
        assert [i.envelope.idem_key for i in leased] == ["r1"] and leased[0].patient == "sys|p1"
        await outbox.hold_for_consent(leased[0].envelope.id, "deny:-:revoked")
        assert (await outbox.status()).by_destination["record"] == {"consent_missing": 2}


async def test_unattributed_readings_are_counted_and_have_no_envelope(tmp_path):
    async with Outbox(tmp_path / "o.sqlite") as outbox:
        await outbox.ingest(
            key="u1",
            device="DEV",
            kind="weight",
            category="vital-signs",
            patient=None,
            received_at="2026-11-23T08:00:00+00:00",
            payload=b"{}",
            envelopes=[],
        )
        status = await outbox.status()
        assert status.unattributed == 1 and status.by_destination == {}


async def test_committed_rows_survive_a_reopen_by_another_connection(tmp_path):
    path = tmp_path / "o.sqlite"
    async with Outbox(path) as outbox:
        await ingest(outbox, "r1")
    db = sqlite3.connect(path)
    assert db.execute("SELECT key FROM readings").fetchall() == [("r1",)]
    db.close()


async def test_concurrent_ingest_and_drain_never_interleave_transactions(tmp_path):
    async with Outbox(tmp_path / "o.sqlite") as outbox:

        async def producer() -> None:
            for i in range(200):
                await ingest(outbox, f"r{i}")

        async def consumer() -> int:
            done = 0
            while done < 200:
                leased = await outbox.lease("record", 7)
                await outbox.settle(
                    [
                        Outcome(envelope_id=i.envelope.id, status=OutcomeStatus.DELIVERED)
                        for i in leased
                    ]
                )
                done += len(leased)
                await asyncio.sleep(0)
            return done

        _, delivered = await asyncio.gather(producer(), consumer())
        assert delivered == 200
        assert (await outbox.status()).by_destination == {"record": {"done": 200}}


def item(key: str, *envelopes: NewEnvelope):
    return (
        key, "DEV", "weight", "vital-signs", "sys|p1", "2026-11-23T08:00:00+00:00", b"{}",
        list(envelopes) or [envelope(key=key)],
    )  # fmt: skip


async def test_group_commit_merges_submitters_and_answers_each_with_its_own_results(tmp_path):
    async with Outbox(tmp_path / "o.sqlite") as outbox:
        futures = [outbox.submit([item(f"r{i}")]) for i in range(10)]
        futures.append(outbox.submit([item("r3")]))  # a duplicate merged into the same commit
        results = await asyncio.gather(*futures)
        assert outbox.commits == 1  # one fsync for eleven submitters
        ids = [r[0].reading_id for r in results]
        assert len(set(ids[:10])) == 10 and ids[10] == ids[3]
        assert [r[0].duplicate for r in results] == [False] * 10 + [True]
        assert (await outbox.status()).readings == 10


async def test_group_commit_respects_max_batch_and_never_splits_a_group(tmp_path):
    async with Outbox(tmp_path / "o.sqlite", max_batch=3) as outbox:
        singles = [outbox.submit([item(f"s{i}")]) for i in range(7)]
        big = outbox.submit([item(f"b{i}") for i in range(5)])
        await asyncio.gather(*singles, big)
        # 7 singles in groups of 3, 3, 1; the 5-reading group alone (never split)
        assert outbox.commits == 4
        assert len(big.result()) == 5


async def test_a_failing_submitter_fails_alone_in_a_merged_commit(tmp_path):
    bad = NewEnvelope(destination="record", idem_key=None, body=b"{}")  # type: ignore[arg-type]
    async with Outbox(tmp_path / "o.sqlite") as outbox:
        before = outbox.submit([item("r1")])
        broken = outbox.submit([item("r2", bad)])  # NOT NULL idem_key: the transaction fails
        after = outbox.submit([item("r3")])
        done = await asyncio.gather(before, broken, after, return_exceptions=True)
        assert isinstance(done[1], sqlite3.IntegrityError)
        assert not done[0][0].duplicate and not done[2][0].duplicate
        status = await outbox.status()
        assert status.readings == 2  # r2 rolled back entirely: no reading without its envelope
        assert status.by_destination == {"record": {"pending": 2}}


async def test_a_cancelled_submitter_still_gets_its_reading_stored(tmp_path):
    path = tmp_path / "o.sqlite"
    async with Outbox(path) as outbox:
        task = asyncio.create_task(outbox.ingest_many([item("r1")]))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # close() flushed the write the cancelled caller had handed over
    db = sqlite3.connect(path)
    assert db.execute("SELECT key FROM readings").fetchall() == [("r1",)]
    db.close()


async def test_close_answers_every_pending_submitter(tmp_path):
    outbox = await Outbox(tmp_path / "o.sqlite").open()
    futures = [outbox.submit([item(f"r{i}")]) for i in range(5)]
    await outbox.close()
    assert all(f.done() and not f.exception() for f in futures)
    with pytest.raises(OutboxError):
        outbox.submit([item("late")])


class OutboxMachine(RuleBasedStateMachine):
    """ingest / lease / outcome / crash-restart in any order: nothing is lost or delivered twice."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = tempfile.TemporaryDirectory()
        self.clock = Clock()
        self.path = Path(self.tmp.name) / "o.sqlite"
        self.outbox = self._open()
        self.ingested: set[str] = set()
        self.delivered: list[str] = []
        self.rejected: set[str] = set()
        self.leased: dict[int, str] = {}

    def _open(self) -> Outbox:
        outbox = Outbox(self.path, clock=self.clock, retry_base=1.0, retry_max=4.0)
        self.loop.run_until_complete(outbox.open())
        self.loop.run_until_complete(outbox.release_leases())
        return outbox

    def teardown(self) -> None:
        self.loop.run_until_complete(self.outbox.close())
        self.loop.close()
        self.tmp.cleanup()

    @rule(key=st.integers(0, 30))
    def ingest(self, key: int) -> None:
        self.loop.run_until_complete(ingest(self.outbox, f"k{key}"))
        self.ingested.add(f"k{key}")

    @rule(n=st.integers(1, 5))
    def lease(self, n: int) -> None:
        for item in self.loop.run_until_complete(self.outbox.lease("record", n, lease_seconds=10)):
            self.leased[item.envelope.id] = item.envelope.idem_key

    @rule(status=st.sampled_from(list(OutcomeStatus)), data=st.data())
    def answer(self, status: OutcomeStatus, data: st.DataObject) -> None:
        if not self.leased:
            return
        envelope_id = data.draw(st.sampled_from(sorted(self.leased)))
        key = self.leased.pop(envelope_id)
        self.loop.run_until_complete(
            self.outbox.settle([Outcome(envelope_id=envelope_id, status=status)])
        )
        if status is OutcomeStatus.DELIVERED:
            self.delivered.append(key)
        elif status is OutcomeStatus.REJECTED:
            self.rejected.add(key)

    @rule(seconds=st.floats(0, 20))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule()
    def crash_and_restart(self) -> None:
        self.loop.run_until_complete(self.outbox.close())
        self.leased.clear()  # whatever was in flight is forgotten by the sender
        self.outbox = self._open()

    @invariant()
    def nothing_lost_nothing_twice(self) -> None:
        assert len(self.delivered) == len(set(self.delivered))
        status = self.loop.run_until_complete(self.outbox.status())
        states = status.by_destination.get("record", {})
        assert sum(states.values()) == len(self.ingested)
        assert states.get("done", 0) == len(self.delivered)
        assert states.get("quarantined", 0) == len(self.rejected)


TestOutboxMachine = OutboxMachine.TestCase
TestOutboxMachine.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)


async def test_the_outbox_refuses_a_file_it_cannot_make_durable(tmp_path):
    from gateway.outbox import OutboxError

    path = tmp_path / "held.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)  # another process, rollback journal
    try:
        holder.execute("CREATE TABLE x (y)")
        holder.execute("BEGIN")
        holder.execute("SELECT * FROM x").fetchall()
        with pytest.raises(OutboxError, match=r"durable|WAL"):
            await Outbox(path).open()
    finally:
        holder.close()


async def test_a_writer_cancelled_before_it_ran_still_answers_and_close_closes(tmp_path):
    outbox = await Outbox(tmp_path / "o.sqlite").open()
    future = outbox.submit([item("r1")])
    assert outbox._writer is not None
    outbox._writer.cancel()  # the event loop shuts down before the writer got a turn
    await outbox.close()
    assert isinstance(future.exception(), OutboxError)
    with pytest.raises(OutboxError):
        outbox.db  # noqa: B018 -- closed for real


async def test_what_the_destination_did_with_each_resource_is_kept(tmp_path):
    async with Outbox(tmp_path / "o.sqlite", clock=Clock()) as outbox:
        await ingest(outbox, "r1")
        [leased] = await outbox.lease("record", 10)
        entries = (
            EntryOutcome("Device", "exists", "Device/d1"),
            EntryOutcome("Observation", "rejected", "", "invariant at Observation.value"),
        )
        await outbox.settle(
            [
                Outcome(
                    envelope_id=leased.envelope.id,
                    status=OutcomeStatus.REJECTED,
                    reason="entry 422: invariant",
                    entries=entries,
                )
            ]
        )
        [q] = (await outbox.status()).quarantined
    assert q["envelope"] == leased.envelope.id and q["reason"] == "entry 422: invariant"
    assert q["entries"] == [
        {"resource": "Device", "result": "exists", "location": "Device/d1", "detail": ""},
        {
            "resource": "Observation",
            "result": "rejected",
            "location": "",
            "detail": "invariant at Observation.value",
        },
    ]


async def test_an_envelope_handed_out_before_is_marked_maybe_sent(tmp_path):
    """A crash between the send and the settle leaves no trace but the lease count: the next
    lease says the envelope may already be at its destination."""
    clock = Clock()
    async with Outbox(tmp_path / "o.sqlite", clock=clock) as outbox:
        await ingest(outbox, "r1")
        [first] = await outbox.lease("record", 10, lease_seconds=5)
        assert not first.envelope.maybe_sent
    async with Outbox(tmp_path / "o.sqlite", clock=clock) as outbox:  # the restart
        await outbox.release_leases()
        [again] = await outbox.lease("record", 10)
    assert again.envelope.id == first.envelope.id and again.envelope.maybe_sent


async def test_skipped_envelopes_are_counted_with_their_reason_and_never_leased(tmp_path):
    skipped = NewEnvelope(
        destination="mes",
        idem_key="r1",
        body=b"",
        state=EnvelopeState.SKIPPED,
        reason="not sent in the fr-mesures form: BMI",
    )
    async with Outbox(tmp_path / "o.sqlite") as outbox:
        await ingest(outbox, "r1", envelope(key="r1"), skipped)
        assert await outbox.lease("mes", 10) == []
        status = await outbox.status()
    assert status.by_destination["mes"] == {"skipped": 1}
    assert status.skipped == [
        {"destination": "mes", "reason": "not sent in the fr-mesures form: BMI", "count": 1}
    ]


async def test_an_envelope_quarantined_at_ingest_is_listed_and_cannot_be_retried_empty(tmp_path):
    bad = NewEnvelope(
        destination="mes",
        idem_key="r1",
        body=b"",
        state=EnvelopeState.QUARANTINED,
        reason="cannot map to fr-mesures: patient system",
    )
    async with Outbox(tmp_path / "o.sqlite") as outbox:
        await ingest(outbox, "r1", envelope(key="r1"), bad)
        [q] = (await outbox.status()).quarantined
        assert (q["source"], q["destination"]) == ("mapping", "mes")
        assert q["reason"] == "cannot map to fr-mesures: patient system"
        assert not await outbox.retry_quarantined(q["envelope"])  # nothing to send
        assert "has nothing to send" in await outbox.why_not_retried(q["envelope"])
        assert await outbox.why_not_retried(999) == "there is no envelope 999"


async def test_an_outbox_from_before_the_added_columns_opens_and_keeps_its_rows(tmp_path):
    path = tmp_path / "o.sqlite"
    async with Outbox(path) as outbox:
        await ingest(outbox, "r1")
    with sqlite3.connect(path) as db:  # the file as an older version wrote it
        db.execute("ALTER TABLE envelopes DROP COLUMN leases")
        db.execute("ALTER TABLE envelopes DROP COLUMN entries")
    async with Outbox(path) as outbox:
        [leased] = await outbox.lease("record", 10)
        await outbox.settle(
            [
                Outcome(
                    envelope_id=leased.envelope.id,
                    status=OutcomeStatus.DELIVERED,
                    entries=(EntryOutcome("Observation", "created", "Observation/1"),),
                )
            ]
        )
        assert (await outbox.status()).by_destination["record"] == {"done": 1}


async def test_envelopes_still_being_sent_are_never_leased_again(tmp_path):
    """A slow destination can outlast a lease: what this process is still sending stays out of
    the next lease, and the next due time ignores envelopes held by a lease."""
    clock = Clock()
    async with Outbox(tmp_path / "o.sqlite", clock=clock) as outbox:
        for key in ("r1", "r2", "r3"):
            await ingest(outbox, key, envelope(key=key))
        first = await outbox.lease("record", 2, lease_seconds=5)
        clock.now += 10  # the lease ran out while the send goes on
        busy = [item.envelope.id for item in first]
        again = await outbox.lease("record", 10, lease_seconds=5, busy=busy)
        assert [i.envelope.idem_key for i in again] == ["r3"]
        assert await outbox.next_due("record", busy=busy) == clock.now + 5  # r3's lease
        assert await outbox.next_due("record") == clock.now - 5  # r1, r2: their lease ran out
        assert [i.envelope.idem_key for i in await outbox.lease("record", 10, busy=busy)] == []


async def test_the_outbox_files_are_readable_by_their_owner_only(tmp_path):
    """Readings and the audit key live there: whatever the umask, group and others get nothing,
    and a file left readable by an older version is closed at open."""
    path = tmp_path / "data" / "o.sqlite"
    async with Outbox(path) as outbox:
        await ingest(outbox, "r1")
        modes = {p.name: p.stat().st_mode & 0o777 for p in path.parent.iterdir()}
    assert modes["o.sqlite"] == 0o600 and modes["o.sqlite-wal"] == 0o600
    assert path.parent.stat().st_mode & 0o077 == 0
    path.chmod(0o644)
    async with Outbox(path):
        pass
    assert path.stat().st_mode & 0o777 == 0o600


async def test_readings_waiting_for_consent_past_the_retention_limit_are_purged(tmp_path):
    clock = Clock()
    async with Outbox(tmp_path / "o.sqlite", clock=clock) as outbox:
        await ingest(outbox, "old", envelope(key="old", state=EnvelopeState.CONSENT_MISSING))
        clock.now += 10 * 86_400
        await ingest(outbox, "new", envelope(key="new", state=EnvelopeState.CONSENT_MISSING))
        await ingest(outbox, "sent", envelope(key="sent"))
        purged = await outbox.purge(held_before=clock.now - 86_400, reason="no consent in time")
        status = await outbox.status()
        entries = [e for e in await outbox.audit_log() if e.action == "purge"]
        with sqlite3.connect(tmp_path / "o.sqlite") as db:
            bodies = dict(  # idem_key is encrypted: by the reading's key
                db.execute(
                    "SELECT r.key, coalesce(length(b.body), 0) FROM envelopes e"
                    " JOIN readings r ON r.id = e.reading_id"
                    " LEFT JOIN bodies b ON b.envelope_id = e.id"
                )
            )
        # a device replay of the purged reading stays a duplicate: it does not come back
        assert (await ingest(outbox, "old", envelope(key="old"))).duplicate
    assert purged == 1
    assert status.by_destination["record"] == {"purged": 1, "consent_missing": 1, "pending": 1}
    assert bodies["old"] == 0 and bodies["new"] > 0
    assert [e.reason for e in entries] == ["no consent in time"] and entries[0].patient


async def test_a_withdrawal_purges_that_patients_unsent_readings_for_that_destination(tmp_path):
    clock = Clock()
    async with Outbox(tmp_path / "o.sqlite", clock=clock) as outbox:
        await ingest(outbox, "a", envelope(key="a"), envelope(dest="other", key="a"))
        await ingest(outbox, "b", envelope(key="b", state=EnvelopeState.CONSENT_MISSING))
        await ingest(outbox, "c", envelope(key="c"), patient="sys|someone-else")
        await ingest(outbox, "d", envelope(key="d"))
        [on_its_way] = await outbox.lease("record", 1)  # "a" is being sent: left to its answer
        purged = await outbox.purge(
            patient="sys|p1", destination="record", reason="consent withdrawn"
        )
        status = await outbox.status()
    assert on_its_way.envelope.idem_key == "a"
    assert purged == 2  # "b" (waiting) and "d" (pending); not "a" (leased), not "c", not "other"
    assert status.by_destination["record"] == {"purged": 2, "pending": 2}
    assert status.by_destination["other"] == {"pending": 1}


async def test_purge_needs_to_be_told_what(tmp_path):
    async with Outbox(tmp_path / "o.sqlite") as outbox:
        with pytest.raises(ValueError):
            await outbox.purge(reason="?")


async def test_a_lease_walks_the_backlog_in_order_and_stops_at_its_limit(tmp_path: Path) -> None:
    """The lease query must not read (and sort) every pending envelope: after days offline the
    drain would grow with the square of the backlog. Checked on SQLite's own plan."""
    from gateway.outbox.store import _DUE

    path = tmp_path / "o.sqlite"
    async with Outbox(path):
        pass
    conn = sqlite3.connect(path)
    sql = _DUE + " AND e.id NOT IN (?) ORDER BY e.id LIMIT ?"
    for analyzed in (False, True):
        if analyzed:
            conn.execute("ANALYZE")
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, ("d", 0, 0, 0, 20))]
        assert any("envelopes_queue" in step for step in plan), plan
        assert not any("TEMP B-TREE" in step for step in plan), plan
    conn.close()


async def test_bodies_an_older_version_kept_in_the_envelopes_rows_are_read_there(tmp_path):
    """Nothing is moved (an older daemon may still be running on the file): an envelope written
    before the bodies table is sent, retried and rotated with its body where it is."""
    path = tmp_path / "o.sqlite"
    async with Outbox(path) as outbox:
        for key in ("r1", "r2"):
            await ingest(outbox, key, envelope(key=key))
        before = await outbox.stored_envelopes("record")
    with sqlite3.connect(path) as db:  # r1 as an older version wrote it (sealed, in its row)
        db.execute("UPDATE envelopes SET body=(SELECT body FROM bodies WHERE envelope_id=1)")
        db.execute("DELETE FROM bodies WHERE envelope_id=1")
        db.execute("UPDATE envelopes SET body=x'' WHERE id=2")
    db.close()
    async with Outbox(path) as outbox:
        assert await outbox.stored_envelopes("record") == before
        await outbox.rotate_key(os.urandom(32))  # re-sealed where it is
        assert await outbox.stored_envelopes("record") == before
        leased = await outbox.lease("record", 10)
        assert [i.envelope.body for i in leased] == [body for _, body, _ in before]
        await outbox.settle(
            [
                Outcome(envelope_id=1, status=OutcomeStatus.REJECTED, reason="422"),
                Outcome(envelope_id=2, status=OutcomeStatus.DELIVERED),
            ]
        )
        assert await outbox.retry_quarantined(1)  # its body is there: it can go again
        [again] = await outbox.lease("record", 10)
        assert again.envelope.body == before[0][1]


async def test_leasing_and_settling_never_rewrite_the_bodies(tmp_path):
    """Bodies live apart from the envelope rows that leases and answers update: a drain writes
    a few hundred bytes per envelope to the WAL, not its whole bundle again."""
    path = tmp_path / "o.sqlite"
    big = b'{"resourceType":"Bundle","entry":"' + b"x" * 20_000 + b'"}'
    async with Outbox(path) as outbox:
        for i in range(20):
            await ingest(
                outbox, f"r{i}", NewEnvelope(destination="record", idem_key=f"k{i}", body=big)
            )
        await outbox.db.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)")
        leased = await outbox.lease("record", 20)
        await outbox.settle(
            [Outcome(envelope_id=i.envelope.id, status=OutcomeStatus.DELIVERED) for i in leased]
        )
        assert len(leased) == 20
        wal = (tmp_path / "o.sqlite-wal").stat().st_size
    assert wal < 20 * len(big) / 4  # the bundles themselves were not written again
