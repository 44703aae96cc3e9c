"""The outbox: the only durable copy of a reading until its destination confirms it.

One SQLite file in WAL mode with ``synchronous=FULL`` (NORMAL loses acknowledged rows on power
loss), checked at open. A reading is stored once under its stable key; each destination gets one
envelope carrying the reading's idempotency key. Envelopes are leased, then acknowledged, retried
with backoff, held for consent, or quarantined: one bad envelope never blocks the others. Leases
die with the process, so a restart resumes where it stopped.

Every change that matters to the patient's data (the reading stored, each consent decision, the
hand-over to a destination and its answer, holds, releases, quarantines, retries by hand) appends
an entry to the audit trail (``gateway.audit``) in the same transaction, so an entry exists exactly
when its change was committed; a transaction's entries are chained in one go before its commit.

Ingest uses group commit: readings submitted while a transaction is on disk go together in the
next one (up to ``max_batch``), and each submitter is answered only once its own transaction is
durable. Under load this turns one fsync per reading into one per group, and it lets the caller
map the next reading while the previous one is being written.
"""

from __future__ import annotations

import asyncio
import functools
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar, cast

import aiosqlite
import orjson

from gateway import audit
from gateway.audit import Action, Draft
from gateway.consent import Decision, Grant
from gateway.durable_sqlite import open_durable
from gateway.errors import GatewayError
from gateway.uplinks.base import EntryOutcome, Envelope, Outcome, OutcomeStatus

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings(
    id          INTEGER PRIMARY KEY,
    key         TEXT NOT NULL UNIQUE,
    device      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    category    TEXT NOT NULL,
    patient     TEXT,
    received_at TEXT NOT NULL,
    payload     BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS envelopes(
    id           INTEGER PRIMARY KEY,
    reading_id   INTEGER NOT NULL REFERENCES readings(id),
    destination  TEXT NOT NULL,
    idem_key     TEXT NOT NULL,
    state        TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    lease_until  REAL,
    decision     TEXT,
    last_error   TEXT,
    body         BLOB NOT NULL,
    updated_at   REAL NOT NULL,
    leases       INTEGER NOT NULL DEFAULT 0,
    entries      TEXT,
    UNIQUE(reading_id, destination)
);
CREATE INDEX IF NOT EXISTS envelopes_ready ON envelopes(destination, state, next_attempt);
CREATE TABLE IF NOT EXISTS cursors(
    device TEXT NOT NULL,
    stream TEXT NOT NULL,
    value  INTEGER NOT NULL,
    PRIMARY KEY(device, stream)
);
CREATE TABLE IF NOT EXISTS quarantine(
    id             INTEGER PRIMARY KEY,
    at             REAL NOT NULL,
    source         TEXT NOT NULL,
    device         TEXT,
    characteristic TEXT,
    destination    TEXT,
    envelope_id    INTEGER,
    reason         TEXT NOT NULL,
    raw            TEXT
);
"""


# Columns added after the first release: an older outbox file gets them at open.
_ADDED_COLUMNS = {
    "leases": "INTEGER NOT NULL DEFAULT 0",  # times handed to an uplink: >0 means maybe sent
    "entries": "TEXT",  # JSON: what the destination did with each resource (EntryOutcome)
}

T = TypeVar("T")


class OutboxError(GatewayError):
    """The outbox cannot be used safely (wrong durability settings, unreadable file)."""


class EnvelopeState(StrEnum):
    PENDING = "pending"
    CONSENT_MISSING = "consent_missing"
    DONE = "done"
    QUARANTINED = "quarantined"
    SKIPPED = "skipped"  # the destination's profile set has no form for this reading
    PURGED = "purged"  # never sent and removed: no consent in time, or withdrawn with a purge


Item = tuple[str, str, str, str, "str | None", str, bytes, "Sequence[NewEnvelope]"]
"""(key, device, kind, category, patient, received_at, payload, envelopes) of one reading."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NewEnvelope:
    destination: str
    idem_key: str
    body: bytes
    state: EnvelopeState = EnvelopeState.PENDING
    decision: str = ""
    reason: str = ""  # why a skipped or quarantined envelope will not be sent


@dataclass(frozen=True, slots=True)
class IngestResult:
    reading_id: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Leased:
    envelope: Envelope
    patient: str | None
    category: str


@dataclass(slots=True)
class Status:
    readings: int = 0
    unattributed: int = 0
    by_destination: dict[str, dict[str, int]] = field(default_factory=dict)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)  # per destination and reason


class Outbox:
    def __init__(
        self,
        path: Path,
        *,
        retry_base: float = 1.0,
        retry_max: float = 300.0,
        clock: Any = time.time,
        max_batch: int = 64,
        actor: str | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.path = path
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.max_batch = max_batch
        self._clock = clock
        self.actor = actor or audit.local_actor()
        """Who the audit trail names for changes made through this outbox (the gateway id for
        the daemon; ``cli:<OS user>`` by default)."""
        self._key = b""  # the audit trail's pseudonym key, read at open
        self._pseudonyms: dict[str, str] = {}
        self._db: aiosqlite.Connection | None = None
        # One connection serves ingest and every drain loop: transactions must not interleave.
        self._lock = asyncio.Lock()
        # group commit: submitted groups waiting for the writer, in submission order
        self._queue: list[tuple[list[Item], asyncio.Future[list[IngestResult]]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.commits = 0
        """Ingest transactions committed since open (how many groups the writer formed)."""

    # -- opening -------------------------------------------------------------------------
    async def open(self) -> Outbox:
        db = await open_durable(self.path, error=OutboxError)
        await db.executescript(_SCHEMA + audit.SCHEMA)
        have = {
            row[1] for row in await (await db.execute("PRAGMA table_info(envelopes)")).fetchall()
        }
        for column, definition in _ADDED_COLUMNS.items():
            if column not in have:
                await db.execute(f"ALTER TABLE envelopes ADD COLUMN {column} {definition}")
        await db.commit()
        self._db = db
        try:
            self._key = await self.atomically(audit.pseudonym_key)
        except BaseException:
            self._db = None
            await db.close()
            raise
        return self

    async def close(self) -> None:
        """Flush what was submitted (every submitter gets its answer), then close."""
        while self._writer is not None:
            writer = self._writer
            try:
                await asyncio.shield(writer)
            except asyncio.CancelledError:
                if not writer.cancelled():
                    raise  # close() itself was cancelled
                # the writer was cancelled before it could run (loop shutdown): answer everyone
                self._writer = None
                self._fail_queue()
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def __aenter__(self) -> Outbox:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def now(self) -> float:
        """The outbox's clock (seconds), which schedules retries."""
        return float(self._clock())

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise OutboxError("outbox is not open")
        return self._db

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (durable on return), one at a time."""
        async with self._lock:
            db = self.db
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")

    async def atomically(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` as one ``BEGIN IMMEDIATE`` ... ``COMMIT`` inside aiosqlite's thread.

        One thread round trip for the whole transaction: statement by statement, the hops cost
        more than the work (aiosqlite offers no public call for this; the version is pinned).
        """
        db = self.db

        def run() -> T:
            conn: sqlite3.Connection = db._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        async with self._lock:
            return cast(T, await db._execute(run))  # type: ignore[no-untyped-call]

    async def _snapshot(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` (reads only) inside aiosqlite's thread, outside any transaction."""
        db = self.db

        def run() -> T:
            return work(db._conn)

        async with self._lock:
            return cast(T, await db._execute(run))  # type: ignore[no-untyped-call]

    def _pseudonym(self, patient: str | None) -> str | None:
        """The patient as the audit trail names it (keyed hash; see ``gateway.audit``)."""
        if patient is None:
            return None
        known = self._pseudonyms.get(patient)
        if known is None:
            if len(self._pseudonyms) > 10_000:
                self._pseudonyms.clear()
            known = self._pseudonyms[patient] = audit.pseudonym(self._key, patient)
        return known

    async def record(self, drafts: Sequence[Draft]) -> None:
        """Append entries to the audit trail on their own (for changes made elsewhere)."""
        await self.atomically(lambda conn: audit.append(conn, self._clock(), drafts))

    async def record_consent(self, grants: Sequence[Grant]) -> int:
        """Copy grants and revocations from the consent store into the audit trail, each once
        (which were copied is kept with the log); returns how many entries were added."""

        def work(conn: sqlite3.Connection) -> int:
            now = self._clock()  # in the transaction: entries' times follow its order
            row = conn.execute("SELECT value FROM audit_meta WHERE name='consent-seen'").fetchone()
            seen: dict[str, bool] = orjson.loads(row[0]) if row else {}
            drafts = []
            for g in grants:
                was = seen.get(str(g.id))
                granted = Draft(
                    action=Action.CONSENT_GRANT,
                    actor=f"consent grant by {g.recorded_by}",
                    destination=g.destination,
                    grant=g.id,
                    patient=self._pseudonym(g.patient),
                    reason=f"{g.category} to {g.destination}, granted {g.granted_at}",
                )
                if was is None:
                    drafts.append(granted)
                if g.revoked_at is not None and not was:
                    drafts.append(
                        replace(
                            granted,
                            action=Action.CONSENT_REVOKE,
                            actor="consent store",
                            reason=f"revoked {g.revoked_at} (the store does not keep who revoked)",
                        )
                    )
                seen[str(g.id)] = g.revoked_at is not None
            if drafts:
                audit.append(conn, now, drafts)
                conn.execute(
                    "INSERT INTO audit_meta(name, value) VALUES ('consent-seen', ?)"
                    " ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                    (orjson.dumps(seen),),
                )
            return len(drafts)

        return await self.atomically(work)

    async def audit_log(self, *, limit: int | None = None) -> list[audit.Entry]:
        """The audit trail's entries, in order (the last ``limit`` ones)."""
        return await self._snapshot(lambda conn: audit.entries(conn, limit=limit))

    async def verify_audit(self) -> audit.Verdict:
        return await self._snapshot(audit.verify)

    async def release_leases(self) -> None:
        """Forget leases of a previous run: this process is the outbox's only sender."""
        async with self._transaction() as db:
            await db.execute("UPDATE envelopes SET lease_until=NULL WHERE lease_until IS NOT NULL")

    # -- ingest --------------------------------------------------------------------------
    async def ingest(
        self,
        *,
        key: str,
        device: str,
        kind: str,
        category: str,
        patient: str | None,
        received_at: str,
        payload: bytes,
        envelopes: Sequence[NewEnvelope],
    ) -> IngestResult:
        """Store a reading and its envelopes in one durable transaction (committed on return)."""
        results = await self.ingest_many(
            [(key, device, kind, category, patient, received_at, payload, envelopes)]
        )
        return results[0]

    async def ingest_many(self, items: Iterable[Item]) -> list[IngestResult]:
        """Store readings durably (committed on return), possibly with other submitters' ones.

        The write goes on even if the caller is cancelled: what was handed over is kept.
        """
        return await asyncio.shield(self.submit(items))

    def submit(self, items: Iterable[Item]) -> asyncio.Future[list[IngestResult]]:
        """Queue readings for the next ingest transaction without waiting for it.

        The returned future resolves once they are durable (or fails with the transaction's
        error). A group is never split across transactions; groups go in submission order.
        """
        self.db  # noqa: B018 -- fail now, not in the writer, if the outbox is closed
        future: asyncio.Future[list[IngestResult]] = asyncio.get_running_loop().create_future()
        self._queue.append((list(items), future))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_groups())
        return future

    async def _write_groups(self) -> None:
        groups: list[tuple[list[Item], asyncio.Future[list[IngestResult]]]] = []
        try:
            while self._queue:
                groups = [self._queue.pop(0)]
                size = len(groups[0][0])
                while self._queue and size + len(self._queue[0][0]) <= self.max_batch:
                    size += len(self._queue[0][0])
                    groups.append(self._queue.pop(0))
                await self._commit(groups)
        finally:
            self._writer = None
            # cancelled (event loop shutting down): nobody may wait forever for an answer
            self._queue[:0] = groups
            self._fail_queue()

    def _fail_queue(self) -> None:
        for _, future in self._queue:
            if not future.done():
                future.set_exception(OutboxError("the outbox writer stopped before committing"))
        self._queue.clear()

    async def _commit(
        self, groups: list[tuple[list[Item], asyncio.Future[list[IngestResult]]]]
    ) -> None:
        """One transaction for all ``groups``; if it fails, each group alone, so a bad reading
        fails only its own submitter and never the readings merged with it."""
        batch = [item for items, _ in groups for item in items]
        try:
            results = await self.atomically(functools.partial(self._insert, batch))
        except Exception as exc:
            if len(groups) > 1:
                for group in groups:
                    await self._commit([group])
                return
            if not groups[0][1].done():
                groups[0][1].set_exception(exc)
            return
        self.commits += 1
        start = 0
        for items, future in groups:
            if not future.done():
                future.set_result(results[start : start + len(items)])
            start += len(items)

    def _insert(self, batch: list[Item], conn: sqlite3.Connection) -> list[IngestResult]:
        now = self._clock()
        results = []
        drafts: list[Draft] = []
        for key, *reading, envelopes in batch:
            cursor = conn.execute(
                "INSERT INTO readings(key, device, kind, category, patient, received_at,"
                " payload) VALUES (?,?,?,?,?,?,?) ON CONFLICT(key) DO NOTHING",
                (key, *reading),
            )
            if cursor.rowcount == 0:
                row = conn.execute("SELECT id FROM readings WHERE key=?", (key,)).fetchone()
                results.append(IngestResult(int(row[0]), duplicate=True))
                continue
            reading_id = int(cursor.lastrowid or 0)
            patient = self._pseudonym(cast("str | None", reading[3]))
            if not envelopes:  # otherwise each envelope's entry says it arrived, and what for
                drafts.append(
                    Draft(
                        action=Action.RECEIVED,
                        actor=self.actor,
                        reading=reading_id,
                        patient=patient,
                        reason="attributed, nothing to send"
                        if patient
                        else "unattributed: kept, never sent",
                    )
                )
            for e in envelopes:
                row = conn.execute(
                    "INSERT INTO envelopes(reading_id, destination, idem_key, state, decision,"
                    " last_error, body, updated_at) VALUES (?,?,?,?,?,?,?,?)",
                    (
                        reading_id,
                        e.destination,
                        e.idem_key,
                        e.state.value,
                        e.decision,
                        e.reason or None,
                        e.body,
                        now,
                    ),
                )
                if e.state is EnvelopeState.QUARANTINED:
                    conn.execute(
                        "INSERT INTO quarantine(at, source, destination, envelope_id, reason)"
                        " VALUES (?, 'mapping', ?, ?, ?)",
                        (now, e.destination, row.lastrowid, e.reason),
                    )
                drafts.append(self._queued(e, reading_id, int(row.lastrowid or 0), patient))
            results.append(IngestResult(reading_id, duplicate=False))
        audit.append(conn, now, drafts)
        return results

    def _queued(
        self, e: NewEnvelope, reading_id: int, envelope_id: int, patient: str | None
    ) -> Draft:
        """The audit entry of an envelope created at ingest: the consent decision it got."""
        grant, reason = None, e.reason
        if e.state is EnvelopeState.SKIPPED:
            action = Action.SKIPPED
        elif e.state is EnvelopeState.QUARANTINED:
            action = Action.QUARANTINED
        elif e.decision:
            permit, grant, reason = audit.parse_decision(e.decision)
            action = Action.CONSENT_PERMIT if permit else Action.CONSENT_DENY
        else:  # no decision given (tools, tests): say what state it was queued in
            action = Action.QUEUED if e.state is EnvelopeState.PENDING else Action.HELD
        return Draft(
            action=action,
            actor=self.actor,
            reading=reading_id,
            envelope=envelope_id,
            destination=e.destination,
            grant=grant,
            patient=patient,
            reason=reason,
        )

    async def load_cursor(self, device: str, stream: str) -> int | None:
        """Where the last record download from ``device`` stopped (record-access devices)."""
        db = self.db
        async with db.execute(
            "SELECT value FROM cursors WHERE device=? AND stream=?", (device, stream)
        ) as cursor:
            row = await cursor.fetchone()
        return None if row is None else int(row[0])

    async def save_cursor(self, device: str, stream: str, value: int) -> None:
        """Durably remember the next record to ask ``device`` for."""
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO cursors(device, stream, value) VALUES (?,?,?)"
                " ON CONFLICT(device, stream) DO UPDATE SET value=excluded.value",
                (device, stream, value),
            )

    async def quarantine_input(
        self,
        *,
        device: str,
        characteristic: str,
        reason: str,
        raw: bytes,
        source: str = "device",
        reading_id: int | None = None,
    ) -> None:
        """Keep input the gateway could not use (undecodable, unmappable) with the reason; a
        stored reading that will not be sent (``reading_id``) gets an audit entry too."""

        def work(conn: sqlite3.Connection) -> None:
            now = self._clock()  # in the transaction: entries' times follow its order
            conn.execute(
                "INSERT INTO quarantine(at, source, device, characteristic, reason, raw)"
                " VALUES (?,?,?,?,?,?)",
                (now, source, device, characteristic, reason, raw.hex()),
            )
            if reading_id is not None:
                draft = Draft(
                    action=Action.QUARANTINED, actor=self.actor, reading=reading_id, reason=reason
                )
                audit.append(conn, now, [draft])

        await self.atomically(work)

    # -- delivery ------------------------------------------------------------------------
    async def lease(
        self,
        destination: str,
        limit: int,
        lease_seconds: float = 60.0,
        *,
        busy: Collection[int] = (),
    ) -> list[Leased]:
        """Up to ``limit`` due envelopes, hidden from other leases for ``lease_seconds``.
        ``busy``: envelopes this process is still sending, whatever their lease says (a slow
        destination can outlast a lease; they must not go out twice at once)."""

        def work(conn: sqlite3.Connection) -> list[Any]:
            now = self._clock()  # in the transaction: entries' times follow its order
            rows = _due(conn, destination, now, limit, busy)
            conn.executemany(
                "UPDATE envelopes SET lease_until=?, leases=leases+1 WHERE id=?",
                [(now + lease_seconds, row[0]) for row in rows],
            )
            audit.append(
                conn,
                now,
                [self._send(destination, row) for row in rows if _audited_attempt(int(row[3]))],
            )
            return rows

        rows = await self.atomically(work)
        return [_leased(destination, row) for row in rows]

    async def lease_consented(
        self,
        destination: str,
        limit: int,
        lease_seconds: float = 60.0,
        *,
        decide: Callable[[str | None, str], Decision],
        busy: Collection[int] = (),
    ) -> tuple[list[Leased], int]:
        """``lease``, with the consent check right before the send: ``decide(patient,
        category)`` is asked once per (patient, category) of the due envelopes; the permitted
        ones are leased and the denied ones held (``consent_missing``), each decision and its
        consequence in the audit trail, in one transaction. Returns (leased, how many held).

        The due envelopes are read first, the decisions made here (the consent store belongs
        to this thread), then the transaction takes only those still due: a decision is on
        disk before its envelope can go."""
        now = self._clock()
        rows = await self._snapshot(lambda conn: _due(conn, destination, now, limit, busy))
        if not rows:
            return [], 0
        decisions: dict[tuple[str | None, str], Decision] = {}
        for row in rows:
            if (row[5], row[6]) not in decisions:
                decisions[row[5], row[6]] = decide(row[5], row[6])

        def work(conn: sqlite3.Connection) -> tuple[list[Any], int]:
            now = self._clock()  # in the transaction: entries' times follow its order
            leased, held, drafts = [], 0, []
            still_due = (
                " WHERE id=? AND state='pending' AND next_attempt<=?"
                " AND (lease_until IS NULL OR lease_until<=?)"
            )
            for row in rows:
                decision = decisions[row[5], row[6]]
                decided = Draft(
                    action=Action.CONSENT_PERMIT if decision.permit else Action.CONSENT_DENY,
                    actor=self.actor,
                    envelope=row[0],
                    destination=destination,
                    grant=decision.grant_id,
                    patient=self._pseudonym(row[5]),
                    reason=decision.reason,
                )
                if decision.permit:
                    taken = conn.execute(
                        "UPDATE envelopes SET lease_until=?, leases=leases+1" + still_due,
                        (now + lease_seconds, row[0], now, now),
                    ).rowcount
                    if taken:
                        leased.append(row)
                        if _audited_attempt(int(row[3])):
                            drafts += [decided, self._send(destination, row)]
                else:
                    taken = conn.execute(
                        "UPDATE envelopes SET state='consent_missing', lease_until=NULL,"
                        " decision=?, updated_at=?" + still_due,
                        (str(decision), now, row[0], now, now),
                    ).rowcount
                    if taken:
                        held += 1
                        drafts += [
                            decided,
                            replace(
                                decided,
                                action=Action.HELD,
                                grant=None,
                                patient=None,
                                reason="consent denied right before the send",
                            ),
                        ]
            audit.append(conn, now, drafts)
            return leased, held

        leased, held = await self.atomically(work)
        return [_leased(destination, row) for row in leased], held

    def _send(self, destination: str, row: Sequence[Any]) -> Draft:
        attempt = f"attempt {int(row[3]) + 1}"
        if int(row[3]) > 2:
            attempt += " (retries are recorded at attempts 1, 2, 3, 5, 9, 17, 33...)"
        if row[7] > row[3]:  # leased more often than answered: a crash or a lost answer
            attempt += " (handed out before without an answer: may have arrived)"
        return Draft(
            action=Action.SEND,
            actor=self.actor,
            envelope=row[0],
            destination=destination,
            reason=attempt,
        )

    def backoff(self, attempts: int) -> float:
        """Exponential backoff with full jitter, capped."""
        ceiling = min(self.retry_max, self.retry_base * (2 ** min(attempts, 30)))
        return random.uniform(ceiling / 2, ceiling)

    async def settle(self, outcomes: Sequence[Outcome]) -> None:
        """Record what the destination answered, in one transaction (one thread round trip)."""
        delays = {  # drawn here: the jitter is not the database thread's business
            o.envelope_id: o.retry_after
            for o in outcomes
            if o.status is OutcomeStatus.RETRY and o.retry_after is not None
        }

        def work(conn: sqlite3.Connection) -> None:
            now = self._clock()  # in the transaction: entries' times follow its order
            ids = sorted({o.envelope_id for o in outcomes})
            known = conn.execute(
                "SELECT id, destination, attempts FROM envelopes"
                f" WHERE id IN ({','.join('?' * len(ids))})",
                ids,
            ).fetchall()
            destinations = {row[0]: row[1] for row in known}
            tried = {row[0]: int(row[2]) for row in known}
            drafts = [
                Draft(
                    action=_SETTLED[o.status],
                    actor=self.actor,
                    envelope=o.envelope_id,
                    destination=destinations[o.envelope_id],
                    reason=o.reason,
                )
                for o in outcomes
                if o.envelope_id in destinations
                and (o.status is not OutcomeStatus.RETRY or _audited_attempt(tried[o.envelope_id]))
            ]
            entries = [(_entries_json(o.entries), o.envelope_id) for o in outcomes if o.entries]
            conn.executemany("UPDATE envelopes SET entries=? WHERE id=?", entries)
            conn.executemany(
                "UPDATE envelopes SET state='done', lease_until=NULL, last_error=NULL,"
                " updated_at=? WHERE id=?",
                [(now, o.envelope_id) for o in outcomes if o.status is OutcomeStatus.DELIVERED],
            )
            for o in outcomes:
                if o.status is OutcomeStatus.RETRY:
                    row = conn.execute(
                        "SELECT attempts FROM envelopes WHERE id=?", (o.envelope_id,)
                    ).fetchone()
                    attempts = (row[0] if row else 0) + 1
                    delay = delays.get(o.envelope_id)
                    if delay is None:
                        delay = self.backoff(attempts - 1)
                    conn.execute(
                        "UPDATE envelopes SET attempts=?, next_attempt=?, lease_until=NULL,"
                        " last_error=?, updated_at=? WHERE id=?",
                        (attempts, now + delay, o.reason, now, o.envelope_id),
                    )
                elif o.status is OutcomeStatus.REJECTED:
                    conn.execute(
                        "UPDATE envelopes SET state='quarantined', attempts=attempts+1,"
                        " lease_until=NULL, last_error=?, updated_at=? WHERE id=?",
                        (o.reason, now, o.envelope_id),
                    )
                    conn.execute(
                        "INSERT INTO quarantine(at, source, destination, envelope_id, reason)"
                        " SELECT ?, 'destination', destination, id, ? FROM envelopes WHERE id=?",
                        (now, o.reason, o.envelope_id),
                    )
            audit.append(conn, now, drafts)

        await self.atomically(work)

    async def purge(
        self,
        *,
        reason: str,
        held_before: float | None = None,
        patient: str | None = None,
        destination: str | None = None,
        category: str | None = None,
    ) -> int:
        """Remove what was never sent: the envelope's copy of the reading is dropped (state
        ``purged``, an empty body) and each removal audited. ``held_before``: envelopes waiting
        for consent since before that time (the retention limit); ``patient`` (+ destination,
        category): what a revocation withdraws, waiting or pending. An envelope on its way
        (under a lease) is left to its answer. The reading's row stays: its key keeps a device
        replay from bringing it back."""
        if held_before is None and patient is None:
            raise ValueError("purge what? give held_before or patient")

        def work(conn: sqlite3.Connection) -> int:
            now = self._clock()
            sql = (
                "SELECT e.id, e.destination, r.patient FROM envelopes e"
                " JOIN readings r ON r.id = e.reading_id WHERE"
                " (e.lease_until IS NULL OR e.lease_until<=?)"
            )
            params: list[Any] = [now]
            if held_before is not None:
                sql += " AND e.state='consent_missing' AND e.updated_at<?"
                params.append(held_before)
            else:
                sql += " AND e.state IN ('pending', 'consent_missing') AND r.patient=?"
                params.append(patient)
            if destination is not None:
                sql += " AND e.destination=?"
                params.append(destination)
            if category is not None:
                sql += " AND r.category=?"
                params.append(category)
            rows = conn.execute(sql, params).fetchall()
            conn.executemany(
                "UPDATE envelopes SET state='purged', body=x'', lease_until=NULL, last_error=?,"
                " updated_at=? WHERE id=?",
                [(reason, now, row[0]) for row in rows],
            )
            audit.append(
                conn,
                now,
                [
                    Draft(
                        action=Action.PURGE,
                        actor=self.actor,
                        envelope=row[0],
                        destination=row[1],
                        patient=self._pseudonym(row[2]),
                        reason=reason,
                    )
                    for row in rows
                ],
            )
            return len(rows)

        return await self.atomically(work)

    async def hold_for_consent(self, envelope_id: int, decision: str) -> None:
        """Back to ``consent_missing`` with the (deny) decision that sent it there."""
        permit, grant, reason = audit.parse_decision(decision)

        def work(conn: sqlite3.Connection) -> None:
            now = self._clock()  # in the transaction: entries' times follow its order
            row = conn.execute(
                "SELECT e.destination, r.patient FROM envelopes e"
                " JOIN readings r ON r.id = e.reading_id WHERE e.id=?",
                (envelope_id,),
            ).fetchone()
            conn.execute(
                "UPDATE envelopes SET state='consent_missing', lease_until=NULL, decision=?,"
                " updated_at=? WHERE id=?",
                (decision, now, envelope_id),
            )
            if row is None:
                return
            decided = Draft(
                action=Action.CONSENT_PERMIT if permit else Action.CONSENT_DENY,
                actor=self.actor,
                envelope=envelope_id,
                destination=row[0],
                grant=grant,
                patient=self._pseudonym(row[1]),
                reason=reason,
            )
            held = replace(
                decided, action=Action.HELD, grant=None, patient=None, reason="held for consent"
            )
            audit.append(conn, now, [decided, held])

        await self.atomically(work)

    async def held_groups(self) -> list[tuple[str, str, str]]:
        """Distinct (destination, patient, category) waiting for consent."""
        rows = await self._read(
            "SELECT DISTINCT e.destination, r.patient, r.category FROM envelopes e"
            " JOIN readings r ON r.id = e.reading_id WHERE e.state='consent_missing'"
        )
        return [(row[0], row[1], row[2]) for row in rows]

    async def release_held(
        self, destination: str, patient: str, category: str, decision: str
    ) -> int:
        """A permit arrived: held envelopes of that group go back to pending (the decision once,
        then each release, in the audit trail)."""
        _, grant, reason = audit.parse_decision(decision)

        def work(conn: sqlite3.Connection) -> int:
            now = self._clock()  # in the transaction: entries' times follow its order
            ids = [
                row[0]
                for row in conn.execute(
                    "SELECT e.id FROM envelopes e JOIN readings r ON r.id = e.reading_id"
                    " WHERE e.state='consent_missing' AND e.destination=? AND r.patient=?"
                    " AND r.category=? ORDER BY e.id",
                    (destination, patient, category),
                )
            ]
            conn.executemany(
                "UPDATE envelopes SET state='pending', decision=?, next_attempt=0, updated_at=?"
                " WHERE id=?",
                [(decision, now, envelope_id) for envelope_id in ids],
            )
            if ids:
                decided = Draft(
                    action=Action.CONSENT_PERMIT,
                    actor=self.actor,
                    destination=destination,
                    grant=grant,
                    patient=self._pseudonym(patient),
                    reason=f"{reason}; {len(ids)} held envelope(s) of {category}",
                )
                released = [
                    replace(
                        decided, action=Action.RELEASED, envelope=i, patient=None, reason=reason
                    )
                    for i in ids
                ]
                audit.append(conn, now, [decided, *released])
            return len(ids)

        return await self.atomically(work)

    async def next_due(self, destination: str, *, busy: Collection[int] = ()) -> float | None:
        """When the next pending envelope may be sent (None: none): not before its lease runs
        out, and not while this process is still sending it (``busy``)."""
        held = sorted(busy)
        rows = await self._read(
            "SELECT MIN(MAX(next_attempt, COALESCE(lease_until, 0))) FROM envelopes"
            " WHERE destination=? AND state='pending'"
            f" AND id NOT IN ({','.join('?' * len(held))})",
            (destination, *held),
        )
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    async def make_due(self) -> int:
        """Every pending envelope may be sent now (a push by hand skips the backoff)."""
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE envelopes SET next_attempt=0 WHERE state='pending' AND next_attempt>0"
            )
            return int(cursor.rowcount)

    async def retry_quarantined(self, envelope_id: int, *, actor: str | None = None) -> bool:
        """A quarantined envelope goes back to pending; not one that has nothing to send (its
        reading could not be mapped for that destination). ``actor``: who asked (default: the
        outbox's)."""

        def work(conn: sqlite3.Connection) -> bool:
            now = self._clock()  # in the transaction: entries' times follow its order
            row = conn.execute(
                "SELECT destination, last_error FROM envelopes"
                " WHERE id=? AND state='quarantined' AND length(body)>0",
                (envelope_id,),
            ).fetchone()
            if row is None:
                return False
            conn.execute(
                "UPDATE envelopes SET state='pending', next_attempt=0, last_error=NULL,"
                " updated_at=? WHERE id=?",
                (now, envelope_id),
            )
            draft = Draft(
                action=Action.RETRIED_BY_HAND,
                actor=actor or self.actor,
                envelope=envelope_id,
                destination=row[0],
                reason=f"quarantined for: {row[1]}" if row[1] else "",
            )
            audit.append(conn, now, [draft])
            return True

        return await self.atomically(work)

    async def why_not_retried(self, envelope_id: int) -> str:
        """Why ``retry_quarantined`` refused an envelope, in words for the operator."""
        rows = await self._read("SELECT state FROM envelopes WHERE id=?", (envelope_id,))
        if not rows:
            return f"there is no envelope {envelope_id}"
        state = rows[0][0]
        if state != EnvelopeState.QUARANTINED.value:
            return f"envelope {envelope_id} is {state}, not quarantined"
        return (
            f"envelope {envelope_id} has nothing to send: its reading could not be mapped for"
            " that destination (see the reason in edge outbox status); fix the configuration,"
            " then have the device send its memory again"
        )

    async def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        async with self._lock:
            return list(await (await self.db.execute(sql, params)).fetchall())

    # -- reporting -----------------------------------------------------------------------
    async def status(self, quarantine_limit: int = 20) -> Status:
        status = Status()
        row = (await self._read("SELECT COUNT(*), SUM(patient IS NULL) FROM readings"))[0]
        status.readings = int(row[0] or 0)
        status.unattributed = int(row[1] or 0)
        for destination, state, count in await self._read(
            "SELECT destination, state, COUNT(*) FROM envelopes GROUP BY destination, state"
        ):
            status.by_destination.setdefault(destination, {})[state] = int(count)
        for destination, reason, count in await self._read(
            "SELECT destination, last_error, COUNT(*) FROM envelopes WHERE state='skipped'"
            " GROUP BY destination, last_error ORDER BY destination, last_error"
        ):
            status.skipped.append({"destination": destination, "reason": reason, "count": count})
        for (
            qid,
            at,
            source,
            device,
            characteristic,
            destination,
            envelope_id,
            reason,
            entries,
        ) in await self._read(
            "SELECT q.id, q.at, q.source, q.device, q.characteristic, q.destination,"
            " q.envelope_id, q.reason, e.entries FROM quarantine q"
            " LEFT JOIN envelopes e ON e.id = q.envelope_id ORDER BY q.id DESC LIMIT ?",
            (quarantine_limit,),
        ):
            status.quarantined.append(
                {
                    "id": qid,
                    "at": at,
                    "source": source,
                    "device": device,
                    "characteristic": characteristic,
                    "destination": destination,
                    "envelope": envelope_id,
                    "reason": reason,
                    "entries": orjson.loads(entries) if entries else [],
                }
            )
        return status


def _audited_attempt(failed_before: int) -> bool:
    """Whether a send (its consent permit, the send, a retry answer) goes in the audit trail:
    the first attempts and then ever fewer (after 1, 2, 4, 8... failed ones). A destination down
    for days retries each reading every few minutes; recording every try would fill a small
    gateway's disk with identical entries. Denials, deliveries and rejections are all recorded."""
    return failed_before & (failed_before - 1) == 0


_SETTLED = {
    OutcomeStatus.DELIVERED: Action.DELIVERED,
    OutcomeStatus.RETRY: Action.RETRY,
    OutcomeStatus.REJECTED: Action.REJECTED,
}

_DUE = (
    "SELECT e.id, e.idem_key, e.body, e.attempts, r.kind, r.patient, r.category, e.leases"
    " FROM envelopes e JOIN readings r ON r.id = e.reading_id"
    " WHERE e.destination=? AND e.state='pending' AND e.next_attempt<=?"
    " AND (e.lease_until IS NULL OR e.lease_until<=?)"
)


def _due(
    conn: sqlite3.Connection, destination: str, now: float, limit: int, busy: Collection[int]
) -> list[Any]:
    """Envelopes that may be leased now, oldest first: (id, idem_key, body, attempts, kind,
    patient, category, leases)."""
    held = sorted(busy)
    return conn.execute(
        _DUE + f" AND e.id NOT IN ({','.join('?' * len(held))}) ORDER BY e.id LIMIT ?",
        (destination, now, now, *held, limit),
    ).fetchall()


def _leased(destination: str, row: Sequence[Any]) -> Leased:
    return Leased(
        Envelope(
            id=row[0],
            destination=destination,
            idem_key=row[1],
            body=bytes(row[2]),
            attempts=row[3],
            kind=row[4],
            maybe_sent=row[7] > 0,
        ),
        patient=row[5],
        category=row[6],
    )


def _entries_json(entries: Sequence[EntryOutcome]) -> str:
    return orjson.dumps(
        [
            {"resource": e.resource, "result": e.result, "location": e.location, "detail": e.detail}
            for e in entries
        ]
    ).decode()
