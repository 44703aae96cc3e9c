"""The outbox: the only durable copy of a reading until its destination confirms it.

One SQLite file in WAL mode with ``synchronous=FULL`` (NORMAL loses acknowledged rows on power
loss), checked at open. A reading is stored once under its stable key; each destination gets one
envelope carrying the reading's idempotency key. Envelopes are leased, then acknowledged, retried
with backoff, held for consent, or quarantined: one bad envelope never blocks the others. Leases
die with the process, so a restart resumes where it stopped.

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
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar, cast

import aiosqlite
import orjson

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
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.path = path
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.max_batch = max_batch
        self._clock = clock
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
        await db.executescript(_SCHEMA)
        have = {
            row[1] for row in await (await db.execute("PRAGMA table_info(envelopes)")).fetchall()
        }
        for column, definition in _ADDED_COLUMNS.items():
            if column not in have:
                await db.execute(f"ALTER TABLE envelopes ADD COLUMN {column} {definition}")
        await db.commit()
        self._db = db
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
            results.append(IngestResult(reading_id, duplicate=False))
        return results

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
        self, *, device: str, characteristic: str, reason: str, raw: bytes, source: str = "device"
    ) -> None:
        """Keep input the gateway could not use (undecodable, unmappable) with the reason."""
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO quarantine(at, source, device, characteristic, reason, raw)"
                " VALUES (?,?,?,?,?,?)",
                (self._clock(), source, device, characteristic, reason, raw.hex()),
            )

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
        now = self._clock()
        held = sorted(busy)

        def work(conn: sqlite3.Connection) -> list[Any]:
            rows = conn.execute(
                "SELECT e.id, e.idem_key, e.body, e.attempts, r.kind, r.patient, r.category,"
                " e.leases FROM envelopes e JOIN readings r ON r.id = e.reading_id"
                " WHERE e.destination=? AND e.state='pending' AND e.next_attempt<=?"
                " AND (e.lease_until IS NULL OR e.lease_until<=?)"
                f" AND e.id NOT IN ({','.join('?' * len(held))})"
                " ORDER BY e.id LIMIT ?",
                (destination, now, now, *held, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE envelopes SET lease_until=?, leases=leases+1 WHERE id=?",
                [(now + lease_seconds, row[0]) for row in rows],
            )
            return rows

        rows = await self.atomically(work)
        return [
            Leased(
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
            for row in rows
        ]

    def backoff(self, attempts: int) -> float:
        """Exponential backoff with full jitter, capped."""
        ceiling = min(self.retry_max, self.retry_base * (2 ** min(attempts, 30)))
        return random.uniform(ceiling / 2, ceiling)

    async def settle(self, outcomes: Sequence[Outcome]) -> None:
        """Record what the destination answered, in one transaction (one thread round trip)."""
        now = self._clock()
        delays = {  # drawn here: the jitter is not the database thread's business
            o.envelope_id: o.retry_after
            for o in outcomes
            if o.status is OutcomeStatus.RETRY and o.retry_after is not None
        }

        def work(conn: sqlite3.Connection) -> None:
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

        await self.atomically(work)

    async def hold_for_consent(self, envelope_id: int, decision: str) -> None:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE envelopes SET state='consent_missing', lease_until=NULL, decision=?,"
                " updated_at=? WHERE id=?",
                (decision, self._clock(), envelope_id),
            )

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
        """A permit arrived: held envelopes of that group go back to pending."""
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE envelopes SET state='pending', decision=?, next_attempt=0, updated_at=?"
                " WHERE state='consent_missing' AND destination=? AND reading_id IN"
                " (SELECT id FROM readings WHERE patient=? AND category=?)",
                (decision, self._clock(), destination, patient, category),
            )
            return int(cursor.rowcount)

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

    async def retry_quarantined(self, envelope_id: int) -> bool:
        """A quarantined envelope goes back to pending; not one that has nothing to send (its
        reading could not be mapped for that destination)."""
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE envelopes SET state='pending', next_attempt=0, last_error=NULL,"
                " updated_at=? WHERE id=? AND state='quarantined' AND length(body)>0",
                (self._clock(), envelope_id),
            )
            return cursor.rowcount == 1

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


def _entries_json(entries: Sequence[EntryOutcome]) -> str:
    return orjson.dumps(
        [
            {"resource": e.resource, "result": e.result, "location": e.location, "detail": e.detail}
            for e in entries
        ]
    ).decode()
