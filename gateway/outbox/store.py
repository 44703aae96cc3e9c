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

Values are encrypted at rest (``gateway.crypto``, docs/encryption.md): readings' payloads and
patients, envelopes' bodies and idempotency keys, quarantined device bytes, each sealed with
AES-256-GCM under the data key with its row and column as associated data (``readings.payload|
<reading key>``; ``envelopes.body|<reading key>|<destination>``: the pair is unique and known
before the insert, unlike the envelope's id). Lookups by patient go by ``readings.patient_ref``,
the patient's pseudonym. Values are opened where they are used (lease); one that does not
authenticate quarantines its envelope, which is never sent. An outbox from before encryption is
sealed at open, in one transaction. The local record is sealed under the same key
(``gateway.uplinks.record_store``).

Ingest uses group commit: readings submitted while a transaction is on disk go together in the
next one (up to ``max_batch``), and each submitter is answered only once its own transaction is
durable. Under load this turns one fsync per reading into one per group, and it lets the caller
map the next reading while the previous one is being written (a group's inserts run on the event
loop's thread and only its COMMIT in SQLite's: ``durable_sqlite.transact_here`` says why).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

import aiosqlite
import orjson

from gateway import audit, crypto
from gateway.audit import Action, Draft
from gateway.consent import Decision, Grant
from gateway.durable_sqlite import (
    CancelledAfterCommit,
    finish,
    in_thread,
    open_durable,
    read_here,
    transact_here,
)
from gateway.errors import GatewayError
from gateway.uplinks.base import EntryOutcome, Envelope, Outcome, OutcomeStatus

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings(
    id          INTEGER PRIMARY KEY,
    key         TEXT NOT NULL UNIQUE,
    device      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    category    TEXT NOT NULL,
    patient     BLOB,
    received_at TEXT NOT NULL,
    payload     BLOB NOT NULL,
    patient_ref TEXT
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
-- the lease's order: pending envelopes of a destination by id, due-ness read from the index
-- (and next_due's earliest attempt, from the same entries: a backlog waiting for its retries,
-- days of it, is skipped or aggregated without reading a row)
CREATE INDEX IF NOT EXISTS envelopes_queue
    ON envelopes(destination, state, id, next_attempt, lease_until);
-- what waits in a state, whatever the destination (held for consent, purges): never a scan of
-- every envelope ever sent, which the drain loop would pay each batch
CREATE INDEX IF NOT EXISTS envelopes_state ON envelopes(state, destination);
DROP INDEX IF EXISTS envelopes_ready;
-- an envelope's body (sealed), apart from its row: leases and answers update that row twice
-- per reading, and SQLite rewrites a row whole, overflow pages included (a bundle of several
-- kB, each time, into the WAL). envelopes.body is empty for the envelopes written since; the
-- older ones keep theirs there (nothing is moved: an older process may still be running)
CREATE TABLE IF NOT EXISTS bodies(
    envelope_id INTEGER PRIMARY KEY REFERENCES envelopes(id),
    body        BLOB NOT NULL
);
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
    "envelopes": {
        "leases": "INTEGER NOT NULL DEFAULT 0",  # times handed to an uplink: >0: maybe sent
        "entries": "TEXT",  # JSON: what the destination did with each resource (EntryOutcome)
    },
    "readings": {
        "patient_ref": "TEXT",  # the patient's pseudonym: equality lookups on sealed patients
    },
}

BUSY_TIMEOUT = 5.0  # seconds a transaction waits for another process's write lock
_KEY_CHECK = "data-key-check"  # audit_meta: a known text sealed under the outbox's data key
TAMPERED = "stored data failed authentication (tampered or wrong key)"


# Associated data: each sealed value is bound to its row and column (docs/encryption.md).
def _aad_payload(key: str) -> bytes:
    return f"readings.payload|{key}".encode()


def _aad_patient(key: str) -> bytes:
    return f"readings.patient|{key}".encode()


def _aad_body(key: str, destination: str) -> bytes:
    return f"envelopes.body|{key}|{destination}".encode()


def _aad_idem(key: str, destination: str) -> bytes:
    return f"envelopes.idem_key|{key}|{destination}".encode()


def _aad_raw(quarantine_id: int) -> bytes:
    return b"quarantine.raw|%d" % quarantine_id


T = TypeVar("T")
log = logging.getLogger(__name__)


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


class _EnvelopeRow(NamedTuple):
    """A new envelope with its values sealed, ready to insert."""

    destination: str
    idem_key: bytes | None  # sealed; None fails the NOT NULL constraint: that reading alone
    state: EnvelopeState
    decision: str
    reason: str
    body: bytes  # sealed (b"" for an envelope with nothing to send)


class _ReadingRow(NamedTuple):
    """An ``Item`` with its values sealed (``submit`` does it while the last group is on disk:
    the transaction only executes)."""

    key: str
    values: tuple[Any, ...]  # the readings row
    patient: str | None  # the patient's pseudonym
    envelopes: tuple[_EnvelopeRow, ...]
    key_id: bytes  # of the key that sealed them
    item: Item  # to seal again if that key was rotated away meanwhile


@dataclass(frozen=True, slots=True)
class Unattributed:
    """A reading kept with no patient: what identifies it to an operator, no values."""

    reading_id: int
    key: str  # <device System ID or address>-<user index or _>-<kind>-<device time>
    kind: str
    received_at: str


@dataclass(frozen=True, slots=True)
class Leased:
    envelope: Envelope
    patient: str | None
    category: str


class LeaseResult(NamedTuple):
    """What ``lease_consented`` did: envelopes leased, how many held for consent, and the
    earlier answers it recorded first."""

    leased: list[Leased]
    held: int
    recorded: list[Outcome]


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
        key_dir: Path | None = None,
        create_key: bool = True,
        extra_keys: Sequence[bytes] = (),
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
        self.key_dir = key_dir or path.parent
        self.extra_keys = tuple(extra_keys)
        """Keys the outbox may be under besides the data key's sources (``edge keys rotate``
        gives the new key it is rotating to, when that comes from the environment)."""
        self.create_key = create_key
        """False for the CLI's side commands: only the gateway makes the data key (a key made
        by a shell where the service's credential is not visible would be the wrong one)."""
        """Where the data key file is (``data.key``) unless the environment gives the key."""
        self._cipher: crypto.Cipher | None = None  # the data key, found (or made) at open
        self.key_source = ""
        """Where the data key came from (for messages)."""
        self._pseudonyms: dict[str, str] = {}
        self._db: aiosqlite.Connection | None = None
        # One connection serves ingest and every drain loop: transactions must not interleave.
        self._lock = asyncio.Lock()
        # group commit: submitted groups waiting for the writer, in submission order
        self._queue: list[tuple[list[_ReadingRow], asyncio.Future[list[IngestResult]]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.commits = 0
        """Ingest transactions committed since open (how many groups the writer formed)."""

    # -- opening -------------------------------------------------------------------------
    async def open(self) -> Outbox:
        db = await open_durable(
            self.path, error=OutboxError, busy_timeout=BUSY_TIMEOUT, shared=True
        )
        await db.executescript(_SCHEMA + audit.SCHEMA)
        for table, columns in _ADDED_COLUMNS.items():
            info = await (await db.execute(f"PRAGMA table_info({table})")).fetchall()
            have = {row[1] for row in info}
            for column, definition in columns.items():
                if column not in have:
                    await db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
        await db.commit()
        self._db = db
        try:
            if await self.atomically(self._load_data_key):
                # sealed in place: the plaintext may linger in freed pages and the old pages:
                # rebuild the file and empty the WAL (once, for an outbox from before)
                await db.execute_fetchall("VACUUM")
                await db.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)")
        except BaseException:
            self._db = None
            await db.close()
            raise
        return self

    # -- the data key ----------------------------------------------------------------------
    @property
    def cipher(self) -> crypto.Cipher:
        if self._cipher is None:
            raise OutboxError("outbox is not open")
        return self._cipher

    def _load_data_key(self, conn: sqlite3.Connection) -> bool:
        """Find the data key and check it against the outbox (in the open transaction). A new
        outbox, or one written before encryption, gets a key (the key file, made now, unless
        the environment gives one) and its plaintext values sealed, in this transaction; one
        an interrupted rotation left under the previous key is re-sealed under the current one.
        An outbox holding sealed values without its key is refused, never treated as empty.
        Returns whether plaintext values were sealed."""
        row = conn.execute("SELECT value FROM audit_meta WHERE name=?", (_KEY_CHECK,)).fetchone()
        try:
            unlocked = crypto.unlock(
                self.path,
                None if row is None else bytes(row[0]),
                self.key_dir,
                create=self.create_key,
                extra=self.extra_keys,
            )
            crypto.register_store(self.key_dir, "outbox", self.path)
        except (crypto.DataKeyError, OSError) as exc:
            raise OutboxError(str(exc)) from exc
        self._cipher, self.key_source = unlocked.cipher, unlocked.where
        self._key = audit.pseudonym_key(conn, unlocked.behind or unlocked.cipher)
        if unlocked.new:
            # the overwritten plaintext must not survive in freed cells (VACUUM follows, but
            # may fail: a full disk)
            conn.execute("PRAGMA secure_delete=ON")
            sealed = _seal_plaintext(conn, unlocked.cipher, self._pseudonym)
            conn.execute(
                "INSERT INTO audit_meta(name, value) VALUES (?, ?)",
                (_KEY_CHECK, unlocked.cipher.seal(crypto.CHECK_TEXT, crypto.CHECK_AAD)),
            )
            audit.seal_pseudonym_key(conn, self._key, unlocked.cipher)
            return sealed > 0
        if unlocked.behind is not None:  # finish the interrupted rotation for this file
            count = _reseal(conn, unlocked.behind, unlocked.cipher)
            log.info("outbox: %d value(s) re-sealed under the current data key", count)
        in_clear = audit.pseudonym_key_in_clear(conn)
        if in_clear:
            conn.execute("PRAGMA secure_delete=ON")
        self._write_check(conn, unlocked.cipher)  # seals the pseudonym key afresh too
        return in_clear

    def _write_check(self, conn: sqlite3.Connection, cipher: crypto.Cipher) -> None:
        """The key check and the pseudonym key, sealed under ``cipher`` (a rotation)."""
        conn.execute(
            "UPDATE audit_meta SET value=? WHERE name=?",
            (cipher.seal(crypto.CHECK_TEXT, crypto.CHECK_AAD), _KEY_CHECK),
        )
        audit.seal_pseudonym_key(conn, self._key, cipher)

    def _check_key(self, conn: sqlite3.Connection) -> None:
        """Refuse to seal under a key the outbox no longer uses (rotated while this process
        ran): values written now would be unreadable after a restart."""
        row = conn.execute("SELECT value FROM audit_meta WHERE name=?", (_KEY_CHECK,)).fetchone()
        if row is None or bytes(row[0])[1 : 1 + crypto.KEY_ID_BYTES] != self.cipher.key_id:
            raise OutboxError(
                f"{self.path}: the data key was changed (edge keys rotate) while this process"
                " ran; restart it"
            )

    async def rotate_key(
        self, new_key: bytes, *, before_commit: Callable[[], None] = lambda: None
    ) -> int:
        """Re-seal every sealed value under ``new_key`` in one transaction; ``before_commit``
        runs last inside it (the key file swap). Returns how many values were re-sealed."""
        old, new = self.cipher, crypto.Cipher(new_key)

        def work(conn: sqlite3.Connection) -> int:
            self._check_key(conn)
            count = _reseal(conn, old, new)
            self._write_check(conn, new)
            before_commit()
            return count

        count = await self.atomically(work)
        self._cipher = new
        return count

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
            async with self._lock:  # nobody is using the connection, on either thread
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

        async with self._lock:  # held until the job ends, even if this caller is cancelled
            return await finish(in_thread(db, run))

    async def _here(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``atomically``, but ``work`` runs on this thread and only the COMMIT in SQLite's
        (``durable_sqlite.transact_here``): for the hot paths' short writes."""
        async with self._lock:
            return await transact_here(self.db, work, busy_timeout=BUSY_TIMEOUT)

    async def _snapshot(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` (reads only) inside aiosqlite's thread, outside any transaction."""
        db = self.db

        def run() -> T:
            return work(db._conn)

        async with self._lock:
            return await finish(in_thread(db, run))

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
        await self.atomically(
            lambda conn: conn.execute(
                "UPDATE envelopes SET lease_until=NULL WHERE lease_until IS NOT NULL"
            )
        )

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
        try:
            rows = [self._seal_item(item) for item in items]
        except Exception as exc:  # a malformed item fails its own submitter, like a bad insert
            future.set_exception(exc)
            return future
        self._queue.append((rows, future))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_groups())
        return future

    async def _write_groups(self) -> None:
        groups: list[tuple[list[_ReadingRow], asyncio.Future[list[IngestResult]]]] = []
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
        self, groups: list[tuple[list[_ReadingRow], asyncio.Future[list[IngestResult]]]]
    ) -> None:
        """One transaction for all ``groups``; if it fails, each group alone, so a bad reading
        fails only its own submitter and never the readings merged with it."""
        batch = [item for items, _ in groups for item in items]
        try:
            # inserts on this thread, the fsync beside the next mapping
            results = await self._here(functools.partial(self._insert, batch))
        except CancelledAfterCommit as stopped:  # durable: its submitters are told so
            self._answer(groups, cast(list[IngestResult], stopped.result))
            raise
        except Exception as exc:
            if len(groups) > 1:
                for group in groups:
                    await self._commit([group])
                return
            if not groups[0][1].done():
                groups[0][1].set_exception(exc)
            return
        self._answer(groups, results)

    def _answer(
        self,
        groups: list[tuple[list[_ReadingRow], asyncio.Future[list[IngestResult]]]],
        results: list[IngestResult],
    ) -> None:
        self.commits += 1
        start = 0
        for items, future in groups:
            if not future.done():
                future.set_result(results[start : start + len(items)])
            start += len(items)

    def _seal_item(self, item: Item) -> _ReadingRow:
        key, device, kind, category, who, received_at, payload, envelopes = item
        seal = self.cipher.seal
        values = (
            key,
            device,
            kind,
            category,
            None if who is None else seal(who.encode(), _aad_patient(key)),
            received_at,
            seal(payload, _aad_payload(key)),
            self._pseudonym(who),
        )
        envelope_rows = self._seal_envelopes(key, envelopes)
        return _ReadingRow(key, values, values[7], envelope_rows, self.cipher.key_id, item)

    def _seal_envelopes(
        self, key: str, envelopes: Sequence[NewEnvelope]
    ) -> tuple[_EnvelopeRow, ...]:
        seal = self.cipher.seal
        return tuple(
            _EnvelopeRow(
                e.destination,
                None
                if e.idem_key is None
                else seal(e.idem_key.encode(), _aad_idem(key, e.destination)),
                e.state,
                e.decision,
                e.reason,
                seal(e.body, _aad_body(key, e.destination)) if e.body else b"",
            )
            for e in envelopes
        )

    def _insert(self, batch: list[_ReadingRow], conn: sqlite3.Connection) -> list[IngestResult]:
        now = self._clock()
        self._check_key(conn)  # this process's key is still the outbox's
        results = []
        drafts: list[Draft] = []
        for row in batch:
            if row.key_id != self.cipher.key_id:  # rotated (rotate_key) since it was submitted
                row = self._seal_item(row.item)
            key, values, patient, envelopes = row.key, row.values, row.patient, row.envelopes
            cursor = conn.execute(
                "INSERT INTO readings(key, device, kind, category, patient, received_at,"
                " payload, patient_ref) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(key) DO NOTHING",
                values,
            )
            if cursor.rowcount == 0:
                row = conn.execute("SELECT id FROM readings WHERE key=?", (key,)).fetchone()
                results.append(IngestResult(int(row[0]), duplicate=True))
                continue
            reading_id = int(cursor.lastrowid or 0)
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
            drafts += self._add_envelopes(conn, now, reading_id, patient, envelopes)
            results.append(IngestResult(reading_id, duplicate=False))
        audit.append(conn, now, drafts)
        return results

    def _add_envelopes(
        self,
        conn: sqlite3.Connection,
        now: float,
        reading_id: int,
        patient: str | None,
        envelopes: Sequence[_EnvelopeRow],
    ) -> list[Draft]:
        """Insert a reading's sealed envelopes; their audit entries are returned."""
        drafts = []
        for e in envelopes:
            row = conn.execute(
                "INSERT INTO envelopes(reading_id, destination, idem_key, state, decision,"
                " last_error, body, updated_at) VALUES (?,?,?,?,?,?,x'',?)",
                (
                    reading_id,
                    e.destination,
                    e.idem_key,
                    e.state.value,
                    e.decision,
                    e.reason or None,
                    now,
                ),
            )
            if e.body:
                conn.execute(
                    "INSERT INTO bodies(envelope_id, body) VALUES (?,?)", (row.lastrowid, e.body)
                )
            if e.state is EnvelopeState.QUARANTINED:
                conn.execute(
                    "INSERT INTO quarantine(at, source, destination, envelope_id, reason)"
                    " VALUES (?, 'mapping', ?, ?, ?)",
                    (now, e.destination, row.lastrowid, e.reason),
                )
            drafts.append(self._queued(e, reading_id, int(row.lastrowid or 0), patient))
        return drafts

    # -- late binding ----------------------------------------------------------------------
    async def unattributed(self) -> list[Unattributed]:
        """Readings kept with no patient (no binding matched), oldest first; no values."""
        rows = await self._snapshot(
            lambda conn: conn.execute(
                "SELECT id, key, kind, received_at FROM readings WHERE patient IS NULL ORDER BY id"
            ).fetchall()
        )
        return [Unattributed(int(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]

    async def destinations(self) -> list[str]:
        """The destinations this outbox has envelopes for."""
        rows = await self._read("SELECT DISTINCT destination FROM envelopes ORDER BY 1")
        return [str(row[0]) for row in rows]

    async def stored_reading(self, reading_id: int) -> tuple[str | None, bytes]:
        """(patient, payload) of a stored reading, opened; ``OutboxError`` if there is none."""

        def read(conn: sqlite3.Connection) -> tuple[str | None, bytes]:
            row = conn.execute(
                "SELECT key, patient, payload FROM readings WHERE id=?", (reading_id,)
            ).fetchone()
            if row is None:
                raise OutboxError(f"no reading {reading_id} in the outbox")
            key, patient, payload = row
            try:
                who = None if patient is None else self.cipher.open_text(patient, _aad_patient(key))
                return who, self.cipher.open(bytes(payload), _aad_payload(key))
            except (crypto.Tampered, crypto.SealedByAnotherKey) as exc:
                raise OutboxError(f"reading {reading_id}: {exc}") from None

        return await self._snapshot(read)

    async def attribute(
        self, reading_id: int, patient: str, envelopes: Sequence[NewEnvelope]
    ) -> None:
        """Bind an unattributed reading to ``patient`` and queue its ``envelopes`` (mapped and
        consent-checked by the caller), in one transaction with the audit's re-attribution
        entry. Refused for a reading that already has a patient: one that may have been sent
        to someone is corrected at the record, never moved here."""

        def work(conn: sqlite3.Connection) -> None:
            self._check_key(conn)
            row = conn.execute(
                "SELECT key, patient IS NOT NULL, (SELECT count(*) FROM envelopes"
                " WHERE reading_id = readings.id) FROM readings WHERE id=?",
                (reading_id,),
            ).fetchone()
            if row is None:
                raise OutboxError(f"no reading {reading_id} in the outbox")
            key, attributed, queued = row
            if attributed or queued:
                raise OutboxError(
                    f"reading {reading_id} already belongs to a patient; a reading that may have"
                    " been sent is corrected in the record, not moved to someone else"
                )
            ref = self._pseudonym(patient)
            conn.execute(
                "UPDATE readings SET patient=?, patient_ref=? WHERE id=?",
                (self.cipher.seal(patient.encode(), _aad_patient(key)), ref, reading_id),
            )
            now = self._clock()
            drafts = [
                Draft(
                    action=Action.REATTRIBUTION,
                    actor=self.actor,
                    reading=reading_id,
                    patient=ref,
                    reason="an unattributed reading bound to a patient",
                ),
                *self._add_envelopes(
                    conn, now, reading_id, ref, self._seal_envelopes(key, envelopes)
                ),
            ]
            audit.append(conn, now, drafts)

        await self.atomically(work)

    def _queued(
        self, e: _EnvelopeRow, reading_id: int, envelope_id: int, patient: str | None
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
        rows = await self._read(
            "SELECT value FROM cursors WHERE device=? AND stream=?", (device, stream)
        )
        return int(rows[0][0]) if rows else None

    async def save_cursor(self, device: str, stream: str, value: int) -> None:
        """Durably remember the next record to ask ``device`` for."""
        await self.atomically(
            lambda conn: conn.execute(
                "INSERT INTO cursors(device, stream, value) VALUES (?,?,?)"
                " ON CONFLICT(device, stream) DO UPDATE SET value=excluded.value",
                (device, stream, value),
            )
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
            self._check_key(conn)
            # the id is chosen here (the transaction holds the write lock): the sealed bytes
            # are bound to it
            (qid,) = conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM quarantine").fetchone()
            conn.execute(
                "INSERT INTO quarantine(id, at, source, device, characteristic, reason, raw)"
                " VALUES (?,?,?,?,?,?,?)",
                (
                    qid,
                    now,
                    source,
                    device,
                    characteristic,
                    reason,
                    self.cipher.seal(raw, _aad_raw(qid)),
                ),
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
            self._check_key(conn)  # this process's key is the outbox's: what fails is tampered
            due = _open_due(self.cipher, destination, _due(conn, destination, now, limit, busy))
            rows = [d.row for d in due if not d.failed]
            conn.executemany(
                "UPDATE envelopes SET lease_until=?, leases=leases+1 WHERE id=?",
                [(now + lease_seconds, row[0]) for row in rows],
            )
            drafts = self._quarantine_failed(conn, now, destination, due, "")
            drafts += [
                self._send(destination, row) for row in rows if _audited_attempt(int(row[3]))
            ]
            audit.append(conn, now, drafts)
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
        settle: Sequence[Outcome] = (),
    ) -> LeaseResult:
        """``lease``, with the consent check right before the send: ``decide(patient,
        category)`` is asked once per (patient, category) of the due envelopes; the permitted
        ones are leased and the denied ones held (``consent_missing``), each decision and its
        consequence in the audit trail, in one transaction. Returns (leased, how many held).

        The due envelopes are read first, the decisions made here (the consent store belongs
        to this thread), then the transaction takes only those still due: a decision is on
        disk before its envelope can go. ``settle``: outcomes of earlier batches, recorded first
        in the same transaction (one commit where there were two)."""
        now = self._clock()
        cipher = self.cipher
        delays = _retry_delays(settle)
        async with self._lock:  # read and opened here: one batch, no thread round trip
            due = await read_here(
                self.db,
                lambda conn: _open_due(
                    cipher, destination, _due(conn, destination, now, limit, busy)
                ),
                busy_timeout=BUSY_TIMEOUT,
            )
        if not due:
            return LeaseResult([], 0, await self.settle(settle) if settle else [])
        rows = [d.row for d in due if not d.failed]
        decisions: dict[tuple[str | None, str], Decision] = {}
        for row in rows:
            if (row[5], row[6]) not in decisions:
                decisions[row[5], row[6]] = decide(row[5], row[6])

        def work(conn: sqlite3.Connection) -> tuple[list[Any], int, list[Outcome]]:
            now = self._clock()  # in the transaction: entries' times follow its order
            recorded, drafts = self._settled(conn, settle, delays, now)
            self._check_key(conn)  # this process's key is the outbox's: what failed is tampered
            leased, held = [], 0
            still_due = (
                " WHERE id=? AND state='pending' AND next_attempt<=?"
                " AND (lease_until IS NULL OR lease_until<=?)"
            )
            drafts += self._quarantine_failed(conn, now, destination, due, still_due)
            # one statement per decision (not per envelope): each is a GIL hand-over to paho
            taken = _still_due(
                conn,
                "UPDATE envelopes SET lease_until=?, leases=leases+1",
                (now + lease_seconds,),
                [row[0] for row in rows if decisions[row[5], row[6]].permit],
                now,
            )
            for decision in {d for d in decisions.values() if not d.permit}:
                taken |= _still_due(
                    conn,
                    "UPDATE envelopes SET state='consent_missing', lease_until=NULL,"
                    " decision=?, updated_at=?",
                    (str(decision), now),
                    [row[0] for row in rows if decisions[row[5], row[6]] == decision],
                    now,
                )
            for row in rows:
                if row[0] not in taken:
                    continue
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
                    leased.append(row)
                    if _audited_attempt(int(row[3])):
                        drafts += [decided, self._send(destination, row)]
                else:
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
            return leased, held, recorded

        leased, held, recorded = await self._here(work)
        return LeaseResult([_leased(destination, row) for row in leased], held, recorded)

    def _quarantine_failed(
        self,
        conn: sqlite3.Connection,
        now: float,
        destination: str,
        due: Sequence[_Due],
        still_due: str,
    ) -> list[Draft]:
        """Quarantine the due envelopes whose stored values did not open (never sent); their
        audit entries. ``still_due``: the condition that they were not taken meanwhile."""
        drafts = []
        for d in due:
            if not d.failed:
                continue
            eid = d.row[0]
            condition = still_due or " WHERE id=?"
            params: tuple[Any, ...] = (eid, now, now) if still_due else (eid,)
            taken = conn.execute(
                "UPDATE envelopes SET state='quarantined', lease_until=NULL, last_error=?,"
                " updated_at=?" + condition,
                (d.failed, now, *params),
            ).rowcount
            if not taken:
                continue
            conn.execute(
                "INSERT INTO quarantine(at, source, destination, envelope_id, reason)"
                " VALUES (?, 'outbox', ?, ?, ?)",
                (now, destination, eid, d.failed),
            )
            drafts.append(
                Draft(
                    action=Action.QUARANTINED,
                    actor=self.actor,
                    envelope=eid,
                    destination=destination,
                    reason=d.failed,
                )
            )
        return drafts

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

    async def settle(self, outcomes: Sequence[Outcome]) -> list[Outcome]:
        """Record what the destination answered, in one transaction (one thread round trip).
        Returns the outcomes recorded (see ``_record_outcomes``)."""
        delays = _retry_delays(outcomes)
        return await self._here(lambda conn: self._record_outcomes(conn, outcomes, delays))

    def _record_outcomes(
        self, conn: sqlite3.Connection, outcomes: Sequence[Outcome], delays: dict[int, float]
    ) -> list[Outcome]:
        """``settle``'s work, in the caller's transaction, audited (see ``_settled``)."""
        now = self._clock()  # in the transaction: entries' times follow its order
        recorded, drafts = self._settled(conn, outcomes, delays, now)
        audit.append(conn, now, drafts)
        return recorded

    def _settled(
        self,
        conn: sqlite3.Connection,
        outcomes: Sequence[Outcome],
        delays: dict[int, float],
        now: float,
    ) -> tuple[list[Outcome], list[Draft]]:
        """Record answers in the caller's transaction; returns them and their audit entries (to
        append). A delivery counts whatever happened to the envelope meanwhile (purged or held
        after its lease ran out: it did arrive), unless it is already done; a retry or a refusal
        only for an envelope still out (pending, under a lease). So recording the same answers
        twice (a transaction that committed although its caller was cancelled, then tried
        again) changes nothing."""
        if not outcomes:
            return [], []
        ids = sorted({o.envelope_id for o in outcomes})
        rows = conn.execute(
            "SELECT id, destination, attempts, state, lease_until IS NOT NULL FROM envelopes"
            f" WHERE id IN ({','.join('?' * len(ids))})",
            ids,
        ).fetchall()
        delivered_ok = {row[0] for row in rows if row[3] != "done"}
        out = {row[0] for row in rows if row[3] == "pending" and row[4]}
        destinations = {row[0]: row[1] for row in rows}
        tried = {row[0]: int(row[2]) for row in rows}
        first: dict[int, Outcome] = {}  # each envelope answered once
        for o in outcomes:
            takes = delivered_ok if o.status is OutcomeStatus.DELIVERED else out
            if o.envelope_id in takes:
                first.setdefault(o.envelope_id, o)
        outcomes = list(first.values())
        drafts = [
            Draft(
                action=_SETTLED[o.status],
                actor=self.actor,
                envelope=o.envelope_id,
                destination=destinations[o.envelope_id],
                reason=o.reason,
            )
            for o in outcomes
            if o.status is not OutcomeStatus.RETRY or _audited_attempt(tried[o.envelope_id])
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
        return outcomes, drafts

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
                "SELECT e.id, e.destination, r.patient_ref FROM envelopes e"
                " JOIN readings r ON r.id = e.reading_id WHERE"
                " (e.lease_until IS NULL OR e.lease_until<=?)"
            )
            params: list[Any] = [now]
            if held_before is not None:
                sql += " AND e.state='consent_missing' AND e.updated_at<?"
                params.append(held_before)
            else:
                sql += " AND e.state IN ('pending', 'consent_missing') AND r.patient_ref=?"
                params.append(self._pseudonym(patient))
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
            conn.executemany("DELETE FROM bodies WHERE envelope_id=?", [(row[0],) for row in rows])
            audit.append(
                conn,
                now,
                [
                    Draft(
                        action=Action.PURGE,
                        actor=self.actor,
                        envelope=row[0],
                        destination=row[1],
                        patient=row[2],
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
                "SELECT e.destination, r.patient_ref FROM envelopes e"
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
                patient=row[1],
                reason=reason,
            )
            held = replace(
                decided, action=Action.HELD, grant=None, patient=None, reason="held for consent"
            )
            audit.append(conn, now, [decided, held])

        await self.atomically(work)

    async def held_groups(self) -> list[tuple[str, str, str]]:
        """Distinct (destination, patient, category) waiting for consent. Groups go by the
        patient's pseudonym; the patient is opened from one of the group's readings (a group
        whose patient does not open is left out: its envelopes stay held)."""
        rows = await self._read(
            "SELECT e.destination, r.patient, r.category, r.key, MIN(r.id) FROM envelopes e"
            " JOIN readings r ON r.id = e.reading_id WHERE e.state='consent_missing'"
            " GROUP BY e.destination, r.patient_ref, r.category"
        )
        groups = []
        for destination, sealed, category, key, _ in rows:
            if sealed is None:
                continue
            try:
                patient = self.cipher.open_text(bytes(sealed), _aad_patient(key))
            except (crypto.Tampered, crypto.SealedByAnotherKey):
                # one unreadable reading (tampered; or a key rotated while this process ran:
                # the next lease's key check stops it) holds back nothing but its own group's
                # release, until the stale-hold purge
                continue
            groups.append((destination, patient, category))
        return groups

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
                    " WHERE e.state='consent_missing' AND e.destination=? AND r.patient_ref=?"
                    " AND r.category=? ORDER BY e.id",
                    (destination, self._pseudonym(patient), category),
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
        return await self.atomically(
            lambda conn: (
                conn.execute(
                    "UPDATE envelopes SET next_attempt=0 WHERE state='pending' AND next_attempt>0"
                ).rowcount
            )
        )

    async def retry_quarantined(self, envelope_id: int, *, actor: str | None = None) -> bool:
        """A quarantined envelope goes back to pending; not one that has nothing to send (its
        reading could not be mapped for that destination). ``actor``: who asked (default: the
        outbox's)."""

        def work(conn: sqlite3.Connection) -> bool:
            now = self._clock()  # in the transaction: entries' times follow its order
            row = conn.execute(
                "SELECT e.destination, e.last_error FROM envelopes e"
                " LEFT JOIN bodies b ON b.envelope_id = e.id"
                " WHERE e.id=? AND e.state='quarantined' AND length(coalesce(b.body, e.body))>0",
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

    async def stored_envelopes(
        self, destination: str | None = None, *, state: EnvelopeState | None = None
    ) -> list[tuple[str, bytes, str]]:
        """(idem_key, body, kind) of the envelopes (of ``destination``, in ``state``), in id
        order, decrypted: what an uplink is handed (tools, benchmarks, tests)."""
        sql = (
            "SELECT e.idem_key, coalesce(b.body, e.body), r.kind, r.key, e.destination"
            " FROM envelopes e JOIN readings r ON r.id = e.reading_id"
            " LEFT JOIN bodies b ON b.envelope_id = e.id WHERE 1"
        )
        params: list[Any] = []
        if destination is not None:
            sql += " AND e.destination=?"
            params.append(destination)
        if state is not None:
            sql += " AND e.state=?"
            params.append(state.value)
        open_ = self.cipher.open
        return [
            (
                open_(bytes(idem), _aad_idem(key, dest)).decode(),
                open_(bytes(body), _aad_body(key, dest)) if len(body) else b"",
                kind,
            )
            for idem, body, kind, key, dest in await self._read(
                sql + " ORDER BY e.id", tuple(params)
            )
        ]

    async def stored_payloads(self) -> list[bytes]:
        """The readings as stored (``reading_to_json``), in id order, decrypted."""
        rows = await self._read("SELECT key, payload FROM readings ORDER BY id")
        return [self.cipher.open(bytes(payload), _aad_payload(key)) for key, payload in rows]

    async def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return await self._snapshot(lambda conn: conn.execute(sql, params).fetchall())

    # -- reporting -----------------------------------------------------------------------
    async def status(self, quarantine_limit: int = 20) -> Status:
        return await self._snapshot(lambda conn: read_status(conn, quarantine_limit))


def read_status(conn: sqlite3.Connection, quarantine_limit: int = 20) -> Status:
    """Counts and reasons, nothing encrypted read: also for a read-only look at the file
    (``edge diagnose``) that needs neither the key nor write access."""
    status = Status()
    row = conn.execute("SELECT COUNT(*), SUM(patient IS NULL) FROM readings").fetchone()
    status.readings = int(row[0] or 0)
    status.unattributed = int(row[1] or 0)
    for destination, state, count in conn.execute(
        "SELECT destination, state, COUNT(*) FROM envelopes GROUP BY destination, state"
    ):
        status.by_destination.setdefault(destination, {})[state] = int(count)
    for destination, reason, count in conn.execute(
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
    ) in conn.execute(
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

# INDEXED BY: walked in id order, the first ``limit`` due rows end the scan; through
# envelopes_ready SQLite would read every pending row (bodies included) to sort them, per lease:
# a drain after days offline would grow with the square of the backlog
_DUE = (
    "SELECT e.id, e.idem_key, coalesce(b.body, e.body), e.attempts, r.kind, r.patient, r.category,"
    " e.leases, r.key FROM envelopes e INDEXED BY envelopes_queue"
    " JOIN readings r ON r.id = e.reading_id LEFT JOIN bodies b ON b.envelope_id = e.id"
    " WHERE e.destination=? AND e.state='pending' AND e.next_attempt<=?"
    " AND (e.lease_until IS NULL OR e.lease_until<=?)"
)


def _due(
    conn: sqlite3.Connection, destination: str, now: float, limit: int, busy: Collection[int]
) -> list[Any]:
    """Envelopes that may be leased now, oldest first: (id, idem_key, body, attempts, kind,
    patient, category, leases, reading key), sealed as stored (``_open_due`` opens them)."""
    held = sorted(busy)
    return conn.execute(
        _DUE + f" AND e.id NOT IN ({','.join('?' * len(held))}) ORDER BY e.id LIMIT ?",
        (destination, now, now, *held, limit),
    ).fetchall()


def _still_due(
    conn: sqlite3.Connection, change: str, params: tuple[Any, ...], ids: list[int], now: float
) -> set[int]:
    """``change`` (an ``UPDATE envelopes SET ...``) applied to those of ``ids`` still due, in
    one statement; returns which ones it took."""
    if not ids:
        return set()
    rows = conn.execute(
        f"{change} WHERE id IN ({','.join('?' * len(ids))}) AND state='pending'"
        " AND next_attempt<=? AND (lease_until IS NULL OR lease_until<=?) RETURNING id",
        (*params, *ids, now, now),
    ).fetchall()
    return {int(row[0]) for row in rows}


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


def _retry_delays(outcomes: Sequence[Outcome]) -> dict[int, float]:
    """The destination's own waits (Retry-After), drawn outside the database thread."""
    return {
        o.envelope_id: o.retry_after
        for o in outcomes
        if o.status is OutcomeStatus.RETRY and o.retry_after is not None
    }


def _entries_json(entries: Sequence[EntryOutcome]) -> str:
    return orjson.dumps(
        [
            {"resource": e.resource, "result": e.result, "location": e.location, "detail": e.detail}
            for e in entries
        ]
    ).decode()


# -- sealing ----------------------------------------------------------------------------------
_BODIES = (
    "SELECT b.envelope_id, r.key, e.destination, b.body FROM bodies b"
    " JOIN envelopes e ON e.id = b.envelope_id JOIN readings r ON r.id = e.reading_id"
)


def _seal_plaintext(
    conn: sqlite3.Connection, cipher: crypto.Cipher, pseudonym: Callable[[str | None], str | None]
) -> int:
    """Seal the values of an outbox written before encryption (all of them are plaintext);
    returns how many rows changed."""
    readings = [
        (
            None if patient is None else cipher.seal_text(patient, _aad_patient(key)),
            cipher.seal(_blob(payload), _aad_payload(key)),
            pseudonym(patient),
            rid,
        )
        for rid, key, patient, payload in conn.execute(
            "SELECT id, key, patient, payload FROM readings"
        ).fetchall()
    ]
    conn.executemany("UPDATE readings SET patient=?, payload=?, patient_ref=? WHERE id=?", readings)
    envelopes = [  # bodies in the envelopes' rows: the bodies table came after encryption
        (
            cipher.seal_text(idem_key, _aad_idem(key, destination)),
            cipher.seal(_blob(body), _aad_body(key, destination)) if len(body) else b"",
            eid,
        )
        for eid, key, destination, idem_key, body in conn.execute(
            "SELECT e.id, r.key, e.destination, e.idem_key, e.body FROM envelopes e"
            " JOIN readings r ON r.id = e.reading_id"
        ).fetchall()
    ]
    conn.executemany("UPDATE envelopes SET idem_key=?, body=? WHERE id=?", envelopes)
    raws = [
        (cipher.seal(bytes.fromhex(raw), _aad_raw(qid)), qid)
        for qid, raw in conn.execute(
            "SELECT id, raw FROM quarantine WHERE raw IS NOT NULL"
        ).fetchall()
    ]
    conn.executemany("UPDATE quarantine SET raw=? WHERE id=?", raws)
    return len(readings) + len(envelopes) + len(raws)


def _blob(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def _reseal(conn: sqlite3.Connection, old: crypto.Cipher, new: crypto.Cipher) -> int:
    """Every sealed value opened with ``old`` and sealed again with ``new`` (fresh nonces).

    ``old`` is the outbox's key (checked by the caller), so a value that does not open was
    tampered with: it is unreadable under any key, and is emptied (its envelope is quarantined
    when next leased, as any tampered one) rather than blocking the rotation of all the rest."""
    count = 0

    def again(value: bytes | None, aad: bytes, where: str) -> bytes | None:
        nonlocal count
        if value is None or len(value) == 0:
            return value
        try:
            plain = old.open(bytes(value), aad)
        except (crypto.SealedByAnotherKey, crypto.Tampered):
            log.warning("%s: a stored value failed authentication; emptied by the rotation", where)
            return b""
        count += 1
        return new.seal(plain, aad)

    conn.executemany(
        "UPDATE readings SET patient=?, payload=? WHERE id=?",
        [
            (
                again(patient, _aad_patient(key), f"reading {rid}"),
                again(payload, _aad_payload(key), f"reading {rid}"),
                rid,
            )
            for rid, key, patient, payload in conn.execute(
                "SELECT id, key, patient, payload FROM readings"
            ).fetchall()
        ],
    )
    conn.executemany(
        "UPDATE envelopes SET idem_key=?, body=? WHERE id=?",
        [
            (
                again(idem_key, _aad_idem(key, destination), f"envelope {eid}"),
                again(body, _aad_body(key, destination), f"envelope {eid}"),  # an older one's
                eid,
            )
            for eid, key, destination, idem_key, body in conn.execute(
                "SELECT e.id, r.key, e.destination, e.idem_key, e.body FROM envelopes e"
                " JOIN readings r ON r.id = e.reading_id"
            ).fetchall()
        ],
    )
    conn.executemany(
        "UPDATE bodies SET body=? WHERE envelope_id=?",
        [
            (again(body, _aad_body(key, destination), f"envelope {eid}"), eid)
            for eid, key, destination, body in conn.execute(_BODIES).fetchall()
        ],
    )
    conn.executemany(
        "UPDATE quarantine SET raw=? WHERE id=?",
        [
            (again(raw, _aad_raw(qid), f"quarantined input {qid}"), qid)
            for qid, raw in conn.execute(
                "SELECT id, raw FROM quarantine WHERE raw IS NOT NULL"
            ).fetchall()
        ],
    )
    return count


@dataclass(frozen=True, slots=True)
class _Due:
    """A due envelope, opened: (id, idem_key, body, attempts, kind, patient, category, leases)
    with plaintext values, or ``failed`` saying why it could not be opened."""

    row: tuple[Any, ...]
    failed: str = ""


def _open_due(cipher: crypto.Cipher, destination: str, rows: Sequence[Any]) -> list[_Due]:
    """Open the sealed values of due rows (``_due``); a value that does not authenticate fails
    its envelope only. A value naming another key fails its envelope too: the key id is not
    authenticated until the value opens, so a changed byte there is tampering like any other;
    a real key change (rotated while this process ran) is caught first, by the transaction's
    key check (``_check_key``), before anything is quarantined."""
    opened = []
    for eid, idem, body, attempts, kind, patient, category, leases, key in rows:
        try:
            plain = (
                eid,
                cipher.open_text(bytes(idem), _aad_idem(key, destination)),
                cipher.open(bytes(body), _aad_body(key, destination)),
                attempts,
                kind,
                None if patient is None else cipher.open_text(bytes(patient), _aad_patient(key)),
                category,
                leases,
            )
        except (crypto.Tampered, crypto.SealedByAnotherKey):
            opened.append(_Due((eid, "", b"", attempts, kind, None, category, leases), TAMPERED))
            continue
        opened.append(_Due(plain))
    return opened
