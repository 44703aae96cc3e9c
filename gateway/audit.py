"""The audit trail: an append-only, hash-chained log of what happened to patient data.

Every consent decision, every hand-over to a destination and what the destination answered, every
hold, release, quarantine and manual retry is one entry: who (``actor``), what (``action`` and
opaque references: outbox row ids, the destination's name, the consent grant id, a keyed
pseudonym of the patient), when (``at``, UTC) and why (``reason``, text that never holds a health
value or a patient identifier). Entries live in the outbox's own SQLite file and are appended
inside the very transaction that makes the change they describe: an entry exists if and only if
its change was committed, and it costs no extra fsync.

**Chain.** ``hash = SHA-256(prev_hash bytes || canonical bytes)``, ``prev_hash`` being the previous
entry's hash (64 zeros for the first). The canonical bytes are the entry's fields other than
``seq``, ``prev`` and ``hash`` as compact JSON with sorted keys, UTF-8, integers as integers and
absent references as ``null`` (:func:`canonical`). The order is authenticated by the links, not
by ``seq``, which is the position (so a swap of two rows shows as a broken link, not as an edit).
``audit_head`` (one row) holds the last ``seq`` and ``hash``, updated in the same transaction:
entries cut off the end are missing against it. Triggers refuse ``UPDATE`` and ``DELETE`` on the
log (and a head that moves back): an honest program cannot rewrite history by mistake.

**What :func:`verify` detects and what it cannot.** It names the first bad entry and says why:
an entry whose content no longer matches its hash (*edited*), a hole in the sequence or a link to
an entry that is not there (*deleted*), a link to an entry that sits elsewhere (*reordered*), a
log that stops before the head (*truncated*), entries after the head (*added* outside the
gateway). The chain has no secret: someone who can write the file can recompute every hash from
the edit onwards and move the head, and the result verifies. Against that, copy the head that
``edge audit verify`` prints somewhere else (a ticket, another machine) and check it later with
``--expect SEQ:HASH``; removing the whole log and its head is likewise only visible against such
a copy (or because ``readings`` exist with no log).

**Patients.** Entries name a patient only by ``HMAC-SHA256(key, "SYSTEM|VALUE")`` (128 bits, hex),
with a random per-outbox key kept in the file (``audit_meta``) sealed under the data key (in
clear, the file alone would let anyone test candidate numbers), never exported. Keyed rather than
salted: national patient numbers are few and structured enough for a plain or public-salt hash
to be reversed by enumeration, and a per-entry salt would stop anyone from following one patient.
The gateway (which holds the key, and the readings in clear anyway) can answer "everything about
this patient" (``edge audit list --patient``); a reader of an export can only group entries.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import hmac
import os
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson

from gateway.crypto import Cipher, SealedByAnotherKey, Tampered

GENESIS = "0" * 64
"""``prev`` of the first entry."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit(
    seq         INTEGER PRIMARY KEY,
    at          TEXT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    reading     INTEGER,
    envelope    INTEGER,
    destination TEXT,
    grant_id    INTEGER,
    patient     TEXT,
    reason      TEXT NOT NULL,
    prev        TEXT NOT NULL,
    hash        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_head(
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_meta(
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_head_forward BEFORE UPDATE ON audit_head
WHEN NEW.seq < OLD.seq BEGIN SELECT RAISE(ABORT, 'the audit head only moves forward'); END;
CREATE TRIGGER IF NOT EXISTS audit_head_no_delete BEFORE DELETE ON audit_head
BEGIN SELECT RAISE(ABORT, 'the audit head cannot be removed'); END;
"""

_KEY_NAME = "pseudonym-key"
_COLUMNS = (
    "seq, at, actor, action, reading, envelope, destination, grant_id, patient, reason, prev, hash"
)


class Action(StrEnum):
    RECEIVED = "received"  # a new reading was stored (attributed or not)
    CONSENT_GRANT = "consent-grant"  # a grant recorded in consent.sqlite, as the gateway saw it
    CONSENT_REVOKE = "consent-revoke"
    CONSENT_PERMIT = "consent-permit"  # a decision: at queueing, right before a send, at release
    CONSENT_DENY = "consent-deny"
    QUEUED = "queued"  # an envelope queued without a consent decision (tools, tests)
    HELD = "held"  # waits for consent (consent_missing)
    RELEASED = "released"  # a permit arrived: back to pending
    SKIPPED = "skipped"  # the destination's form cannot carry the reading
    QUARANTINED = "quarantined"  # kept, not sendable (mapping failed)
    SEND = "send"  # handed to the uplink (written before it goes)
    DELIVERED = "delivered"  # the destination confirmed
    RETRY = "retry"  # transient failure, will be sent again
    REJECTED = "rejected"  # the destination refused it: quarantined
    RETRIED_BY_HAND = "retried-by-hand"  # edge outbox retry
    PURGE = "purge"  # retention or a revocation removed stored data
    REATTRIBUTION = "re-attribution"  # an unattributed reading bound to a patient afterwards


@dataclass(frozen=True, slots=True, kw_only=True)
class Draft:
    """An entry before it is chained: what the caller knows."""

    action: Action
    actor: str
    reading: int | None = None  # outbox readings.id
    envelope: int | None = None  # outbox envelopes.id
    destination: str | None = None
    grant: int | None = None  # consent grant id
    patient: str | None = None  # keyed pseudonym, never the identifier
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    seq: int
    at: str
    actor: str
    action: str
    reading: int | None
    envelope: int | None
    destination: str | None
    grant: int | None
    patient: str | None
    reason: str
    prev: str
    hash: str

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Entry:
        return cls(
            seq=row[0],
            at=row[1],
            actor=row[2],
            action=row[3],
            reading=row[4],
            envelope=row[5],
            destination=row[6],
            grant=row[7],
            patient=row[8],
            reason=row[9],
            prev=row[10],
            hash=row[11],
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def canonical(
    at: str,
    actor: str,
    action: str,
    reading: int | None,
    envelope: int | None,
    destination: str | None,
    grant: int | None,
    patient: str | None,
    reason: str,
) -> bytes:
    """The bytes an entry's hash covers (with its ``prev``): compact JSON, keys sorted."""
    return orjson.dumps(
        {
            "action": action,
            "actor": actor,
            "at": at,
            "destination": destination,
            "envelope": envelope,
            "grant": grant,
            "patient": patient,
            "reading": reading,
            "reason": reason,
        },
        option=orjson.OPT_SORT_KEYS,
    )


def chain_hash(prev: str, content: bytes) -> str:
    return hashlib.sha256(bytes.fromhex(prev) + content).hexdigest()


def entry_hash(entry: Entry) -> str:
    """What ``entry.hash`` must be, given its content and its ``prev``."""
    content = canonical(
        entry.at,
        entry.actor,
        entry.action,
        entry.reading,
        entry.envelope,
        entry.destination,
        entry.grant,
        entry.patient,
        entry.reason,
    )
    return chain_hash(entry.prev, content)


def timestamp(seconds: float) -> str:
    """An entry's ``at``: UTC, ISO 8601 with microseconds."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds")


def local_actor() -> str:
    """Who runs this process when it is not the gateway: ``cli:<OS user>``."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no passwd entry (containers)
        user = f"uid {os.getuid()}"
    return f"cli:{user}"


# -- writing (inside the caller's transaction) ------------------------------------------------
def append(conn: sqlite3.Connection, at: float, drafts: Sequence[Draft]) -> None:
    """Chain ``drafts`` after the head and move the head, in the caller's open transaction.

    The head, not the last row, is what a new entry follows: rows cut off the end stay visible
    as a hole, and rows slipped in after the head (written outside the gateway) are stepped over
    and stay visible as a broken link.
    """
    if not drafts:
        return
    head = conn.execute("SELECT seq, hash FROM audit_head WHERE id=1").fetchone()
    last = conn.execute("SELECT MAX(seq) FROM audit").fetchone()[0] or 0
    if head is None:  # a new log (or a head removed by hand: start from what is there)
        prev = GENESIS
        if last:
            prev = conn.execute("SELECT hash FROM audit WHERE seq=?", (last,)).fetchone()[0]
        conn.execute("INSERT INTO audit_head(id, seq, hash) VALUES (1, ?, ?)", (last, prev))
        seq = last
    else:
        seq, prev = max(int(head[0]), int(last)), str(head[1])
    when = timestamp(at)
    rows = []
    for d in drafts:
        seq += 1
        fields = (
            when,
            d.actor,
            d.action.value,
            d.reading,
            d.envelope,
            d.destination,
            d.grant,
            d.patient,
            d.reason,
        )
        digest = hashlib.sha256(bytes.fromhex(prev) + canonical(*fields)).hexdigest()
        rows.append((seq, *fields, prev, digest))
        prev = digest
    conn.executemany(f"INSERT INTO audit({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    conn.execute("UPDATE audit_head SET seq=?, hash=? WHERE id=1", (seq, prev))


def pseudonym_key(conn: sqlite3.Connection, cipher: Cipher) -> bytes:
    """This outbox's pseudonym key: a new one if it has none (``seal_pseudonym_key`` stores
    it), or the stored one opened with ``cipher`` (kept in clear before encryption existed)."""
    row = conn.execute("SELECT value FROM audit_meta WHERE name=?", (_KEY_NAME,)).fetchone()
    if row is None:
        return secrets.token_bytes(32)
    stored = bytes(row[0])
    if len(stored) == 32:  # in clear, from before: the caller seals it now
        return stored
    try:
        return cipher.open(stored, _KEY_NAME.encode())
    except (SealedByAnotherKey, Tampered) as exc:
        raise Tampered(f"the audit trail's pseudonym key does not open: {exc}") from None


def pseudonym_key_in_clear(conn: sqlite3.Connection) -> bool:
    """Whether the pseudonym key is stored in clear (an outbox from before)."""
    row = conn.execute("SELECT length(value) FROM audit_meta WHERE name=?", (_KEY_NAME,)).fetchone()
    return row is not None and int(row[0]) == 32


def seal_pseudonym_key(conn: sqlite3.Connection, key: bytes, cipher: Cipher) -> None:
    """Store the pseudonym key sealed under the data key: in clear, the file alone would let
    anyone test candidate patient numbers against the pseudonyms."""
    conn.execute(
        "INSERT INTO audit_meta(name, value) VALUES (?, ?)"
        " ON CONFLICT(name) DO UPDATE SET value=excluded.value",
        (_KEY_NAME, cipher.seal(key, _KEY_NAME.encode())),
    )


def pseudonym(key: bytes, patient: str) -> str:
    """The patient as entries name it: HMAC-SHA256 of ``SYSTEM|VALUE``, 128 bits in hex."""
    return hmac.new(key, patient.encode(), hashlib.sha256).hexdigest()[:32]


def parse_decision(text: str) -> tuple[bool, int | None, str]:
    """(permit, grant id, reason) of a stored consent decision (``str(Decision)``)."""
    verdict, _, rest = text.partition(":")
    grant, _, reason = rest.partition(":")
    return verdict == "permit", int(grant) if grant.isdigit() else None, reason


# -- reading ----------------------------------------------------------------------------------
def has_log(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT COUNT(*) FROM sqlite_master WHERE type='table' AND name IN ('audit', 'audit_head')"
    ).fetchone()
    return int(row[0]) == 2


def entries(
    conn: sqlite3.Connection,
    *,
    limit: int | None = None,
    patient: str | None = None,
    action: str | None = None,
    cipher: Cipher | None = None,
) -> list[Entry]:
    """Entries in order; ``limit``: only the last ones; ``patient``: the entries about one patient
    (those naming its pseudonym, and those about the readings and envelopes they name), given as
    the pseudonym or as ``SYSTEM|VALUE`` (hashed with ``cipher``'s opening of this outbox's
    pseudonym key: ``SYSTEM|VALUE`` needs the data key)."""
    where, params = [], []
    if patient is not None:
        if "|" in patient:
            if cipher is None:
                raise ValueError("a patient given as SYSTEM|VALUE needs the data key")
            has_key = conn.execute("SELECT 1 FROM audit_meta WHERE name=?", (_KEY_NAME,))
            key = pseudonym_key(conn, cipher) if has_key.fetchone() else b""
            patient = pseudonym(key, patient) if key else ""
        where.append(
            "(patient=? OR envelope IN (SELECT envelope FROM audit WHERE patient=?)"
            " OR reading IN (SELECT reading FROM audit WHERE patient=?))"
        )
        params += [patient] * 3
    if action is not None:
        where.append("action=?")
        params.append(action)
    sql = f"SELECT {_COLUMNS} FROM audit"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if limit is not None:
        sql = f"SELECT * FROM ({sql} ORDER BY seq DESC LIMIT {int(limit)})"
    rows = conn.execute(sql + " ORDER BY seq", params).fetchall()
    return [Entry.from_row(row) for row in rows]


def describe(entry: Entry) -> str:
    """One line for ``edge audit list``."""
    refs = []
    if entry.reading is not None:
        refs.append(f"reading {entry.reading}")
    if entry.envelope is not None:
        refs.append(f"envelope {entry.envelope}")
    if entry.destination is not None:
        refs.append(f"-> {entry.destination}")
    if entry.grant is not None:
        refs.append(f"grant {entry.grant}")
    if entry.patient is not None:
        refs.append(f"patient ~{entry.patient[:8]}")
    line = f"#{entry.seq} {entry.at} {entry.actor} {entry.action}"
    if refs:
        line += " " + " ".join(refs)
    return f"{line}: {entry.reason}" if entry.reason else line


# -- verifying --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Problem:
    seq: int  # the first bad entry (for truncated: the first missing one)
    kind: str  # edited | deleted | reordered | truncated | added | head
    detail: str

    def __str__(self) -> str:
        return f"entry #{self.seq}: {self.kind}: {self.detail}"


@dataclass(frozen=True, slots=True)
class Verdict:
    count: int
    head_seq: int
    head_hash: str
    problem: Problem | None

    @property
    def intact(self) -> bool:
        return self.problem is None


@contextlib.contextmanager
def _one_snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """Every read inside sees the same state of the file: a gateway appending meanwhile (the
    head and the rows read apart) would otherwise look like an entry written from outside."""
    if conn.in_transaction:  # the caller's transaction is the snapshot already
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")


def verify(conn: sqlite3.Connection, expect: Sequence[tuple[int, str]] = ()) -> Verdict:
    """Walk the chain from the first entry; the first problem found, or none.

    ``expect``: (seq, hash) pairs recorded elsewhere earlier (``edge audit verify`` prints the
    head): each must still be in the chain, which is what catches a rewrite with recomputed
    hashes.
    """
    with _one_snapshot(conn):
        return _verify(conn, expect)


def _verify(conn: sqlite3.Connection, expect: Sequence[tuple[int, str]]) -> Verdict:
    head = conn.execute("SELECT seq, hash FROM audit_head WHERE id=1").fetchone()
    expected, prev, count = 1, GENESIS, 0
    problem: Problem | None = None
    seen: dict[int, str] = {}
    wanted = dict(expect)
    cursor = conn.execute(f"SELECT {_COLUMNS} FROM audit ORDER BY seq")
    for row in cursor:
        entry = Entry.from_row(row)
        count += 1
        problem = _check(conn, entry, expected, prev)
        if problem is not None:
            break
        if entry.seq in wanted:
            seen[entry.seq] = entry.hash
        expected, prev = entry.seq + 1, entry.hash
    last = expected - 1
    if problem is None and head is None and count:
        problem = Problem(last, "head", "the chain head (audit_head) is missing")
    if problem is None and head is not None:
        head_seq, head_hash = int(head[0]), str(head[1])
        if head_seq > last:
            problem = Problem(
                last + 1,
                "truncated",
                f"the log ends at #{last} but its head says #{head_seq}:"
                f" entries #{last + 1}..#{head_seq} were removed",
            )
        elif head_seq < last:
            problem = Problem(
                head_seq + 1,
                "added",
                f"entries #{head_seq + 1}..#{last} come after the head (#{head_seq}):"
                " written outside the gateway",
            )
        elif head_hash != prev:
            problem = Problem(
                last, "edited", "it no longer matches the chain head (rewritten with a new hash)"
            )
    if problem is None:
        for seq, digest in sorted(wanted.items()):
            if seen.get(seq) != digest:
                what = "is missing" if seq not in seen else f"has hash {seen[seq][:16]}…"
                problem = Problem(
                    seq,
                    "edited",
                    f"expected hash {digest[:16]}… (recorded earlier) but the entry {what}:"
                    " the log was rewritten from here or before",
                )
                break
    head_seq = int(head[0]) if head is not None else 0
    head_hash = str(head[1]) if head is not None else GENESIS
    return Verdict(count, head_seq, head_hash, problem)


def _check(conn: sqlite3.Connection, entry: Entry, expected: int, prev: str) -> Problem | None:
    if entry.seq != expected:
        missing = f"#{expected}" if entry.seq == expected + 1 else f"#{expected}..#{entry.seq - 1}"
        return Problem(expected, "deleted", f"{missing} missing from the sequence")
    consistent = entry_hash(entry) == entry.hash
    if not consistent:
        return Problem(entry.seq, "edited", "its content no longer matches its hash")
    if entry.prev == prev:
        return None
    row = conn.execute("SELECT seq FROM audit WHERE hash=? LIMIT 1", (entry.prev,)).fetchone()
    if row is not None and int(row[0]) != entry.seq:
        return Problem(
            entry.seq,
            "reordered",
            f"it was chained after #{row[0]}, not after #{entry.seq - 1}"
            " (entries were moved or inserted)",
        )
    return Problem(
        entry.seq,
        "deleted",
        f"the entry it was chained after is gone: entries before it were removed and the rest"
        f" renumbered, or #{entry.seq - 1} was rewritten with a new hash",
    )


# -- FHIR export ------------------------------------------------------------------------------
DCM = "http://dicom.nema.org/resources/ontology/DCM"
ACTION_SYSTEM = "urn:edge:audit-action"
EUI64_SYSTEM = "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680"  # as the PhgDevice identifier

ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
# reference -> (identifier system, entity type, object role, role name, description)
_ENTITIES = {
    "patient": ("urn:edge:patient-pseudonym", "1", "1", "Patient", "patient (keyed pseudonym)"),
    "reading": ("urn:edge:outbox:reading", "2", "4", "Domain Resource", "reading in the outbox"),
    "envelope": (
        "urn:edge:outbox:envelope",
        "2",
        "4",
        "Domain Resource",
        "the reading addressed to one destination",
    ),
    "grant": ("urn:edge:consent:grant", "2", "13", "Security Resource", "consent grant"),
}

_EXPORT = {Action.SEND, Action.DELIVERED, Action.RETRY, Action.REJECTED}
_DECISIONS = {Action.CONSENT_PERMIT, Action.CONSENT_DENY}


def _event_type(action: str) -> dict[str, str]:
    if action in _EXPORT:
        return {"system": DCM, "code": "110106", "display": "Export"}
    if action == Action.RECEIVED:
        return {"system": DCM, "code": "110107", "display": "Import"}
    return {"system": DCM, "code": "110110", "display": "Patient Record"}


def _event_action(action: str) -> str:
    """C(reate) R(ead) U(pdate) D(elete) E(xecute), as R4 AuditEvent.action."""
    if action in (Action.RECEIVED, Action.CONSENT_GRANT):
        return "C"
    if action in _EXPORT:
        return "R"
    if action == Action.PURGE:
        return "D"
    if action in _DECISIONS:
        return "E"
    return "U"


def _outcome(action: str) -> str:
    """0 success, 4 minor failure (will be retried), 8 serious failure (quarantined)."""
    if action == Action.RETRY:
        return "4"
    if action in (Action.REJECTED, Action.QUARANTINED):
        return "8"
    return "0"


def _identifier(system: str, value: str) -> dict[str, Any]:
    return {"identifier": {"system": system, "value": value}}


def _dashed(eui64: str) -> str:
    return "-".join(eui64[i : i + 2] for i in range(0, len(eui64), 2)).upper()


def audit_event(entry: Entry, gateway_id: str | None = None) -> dict[str, Any]:
    """The entry as a FHIR R4 AuditEvent (plain dict); ``id`` is the entry's hash."""
    agents: list[dict[str, Any]] = []
    actor = entry.actor
    if actor.startswith("gateway:"):
        who = _identifier(EUI64_SYSTEM, _dashed(actor.removeprefix("gateway:")))
        who["display"] = "edge gateway"
    else:
        who = {"display": actor}
    agents.append({"who": who, "name": actor, "requestor": not actor.startswith("gateway:")})
    if entry.destination is not None:
        agents.append(
            {
                "type": {
                    "coding": [{"system": DCM, "code": "110152", "display": "Destination Role ID"}]
                },
                "who": _identifier("urn:edge:destination", entry.destination),
                "name": entry.destination,
                "requestor": False,
            }
        )
    observer: dict[str, Any] = {"display": "edge gateway"}
    if gateway_id:
        observer = {**_identifier(EUI64_SYSTEM, _dashed(gateway_id)), "display": "edge gateway"}
    entities = [
        {
            "what": _identifier(system, str(value)),
            "type": {"system": ENTITY_TYPE, "code": type_code},
            "role": {"system": OBJECT_ROLE, "code": role, "display": role_name},
            "description": description,
        }
        for value, (system, type_code, role, role_name, description) in (
            (entry.patient, _ENTITIES["patient"]),
            (entry.reading, _ENTITIES["reading"]),
            (entry.envelope, _ENTITIES["envelope"]),
            (entry.grant, _ENTITIES["grant"]),
        )
        if value is not None
    ]
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": entry.hash,
        "type": _event_type(entry.action),
        "subtype": [{"system": ACTION_SYSTEM, "code": entry.action}],
        "action": _event_action(entry.action),
        "recorded": entry.at,
        "outcome": _outcome(entry.action),
        "agent": agents,
        "source": {
            "site": "edge",
            "observer": observer,
            "type": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": "4",
                    "display": "Application Server",
                }
            ],
        },
    }
    if entry.reason:
        event["outcomeDesc"] = entry.reason
    if entities:
        event["entity"] = entities
    return event


def provenance(entry: Entry, locations: Sequence[str], gateway_id: str | None) -> dict[str, Any]:
    """A FHIR R4 Provenance for a delivery the destination answered with resource locations:
    those resources (as the destination names them) came from this envelope, by this gateway."""
    who: dict[str, Any] = {"display": "edge gateway"}
    if gateway_id:
        who = {**_identifier(EUI64_SYSTEM, _dashed(gateway_id)), "display": "edge gateway"}
    return {
        "resourceType": "Provenance",
        "id": entry.hash,
        "target": [
            {"reference": location, "display": f"at destination {entry.destination}"}
            for location in locations
        ],
        "recorded": entry.at,
        "activity": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                    "code": "CREATE",
                    "display": "create",
                }
            ]
        },
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                            "code": "assembler",
                            "display": "Assembler",
                        }
                    ]
                },
                "who": who,
            }
        ],
        "entity": [
            {"role": "source", "what": _identifier("urn:edge:outbox:envelope", str(entry.envelope))}
        ],
    }


def export(conn: sqlite3.Connection, gateway_id: str | None = None) -> Iterator[dict[str, Any]]:
    """Every entry as an AuditEvent, in order; after a ``delivered`` entry whose destination
    said where it put the resources (FHIR servers), a Provenance for them."""
    with _one_snapshot(conn):
        yield from _export(conn, gateway_id)


def _export(conn: sqlite3.Connection, gateway_id: str | None) -> Iterator[dict[str, Any]]:
    for row in conn.execute(f"SELECT {_COLUMNS} FROM audit ORDER BY seq"):
        entry = Entry.from_row(row)
        yield audit_event(entry, gateway_id)
        if entry.action == Action.DELIVERED and entry.envelope is not None:
            locations = _locations(conn, entry.envelope)
            if locations:
                yield provenance(entry, locations, gateway_id)


def _locations(conn: sqlite3.Connection, envelope: int) -> list[str]:
    row = conn.execute("SELECT entries FROM envelopes WHERE id=?", (envelope,)).fetchone()
    if row is None or not row[0]:
        return []
    return [e["location"] for e in orjson.loads(row[0]) if e.get("location")]
