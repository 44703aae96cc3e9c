"""Local consent grants and the permit/deny decision.

Default deny: a reading goes to a destination only while an active grant covers (patient, data
category, destination) at the moment of the decision. Grants are never deleted: a revocation stamps
``revoked_at``, so any past decision can be explained. The file is shared by the daemon (reads) and
the ``edge consent`` commands (writes) through SQLite WAL; the daemon re-reads it at every decision,
so a revocation takes effect before the next send.

Next to the local grants, the store keeps FHIR R4 Consent resources: imported from JSON
(``edge consent import``) and synced from a record server (``edge consent sync``), the latter
with the time they were fetched and an expiry. A decision weighs all of them: any deny that
applies overrides every permit; a synced Consent counts only until its cache expires, after
which, with nothing else permitting, the answer is deny "consent cache expired" (docs/consent.md).
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drivers.registry import DRIVERS
from gateway.consent.fhir import (
    Consent,
    ConsentFormatError,
    build_consent,
    parse_consent,
)
from gateway.durable_sqlite import owner_only

_SCHEMA = """
CREATE TABLE IF NOT EXISTS grants(
    id          INTEGER PRIMARY KEY,
    patient     TEXT NOT NULL,
    destination TEXT NOT NULL,
    category    TEXT NOT NULL,
    granted_at  TEXT NOT NULL,
    revoked_at  TEXT,
    recorded_by TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS grants_lookup ON grants(patient, destination, category);
CREATE TABLE IF NOT EXISTS consents(
    source      TEXT NOT NULL,   -- "import" or "sync:<destination>"
    consent_id  TEXT NOT NULL,
    version     TEXT,
    patient     TEXT NOT NULL,
    resource    TEXT NOT NULL,   -- the Consent JSON as received
    stored_at   TEXT NOT NULL,
    PRIMARY KEY (source, consent_id)
);
CREATE INDEX IF NOT EXISTS consents_patient ON consents(patient);
CREATE TABLE IF NOT EXISTS sync_state(
    patient     TEXT NOT NULL,
    source      TEXT NOT NULL,
    fetched_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    PRIMARY KEY (patient, source)
);
"""
_GRANT_COLUMNS = {"attestation": "TEXT", "period_end": "TEXT"}  # added after the first release

ANY_CATEGORY = "*"
KNOWN_CATEGORIES = frozenset(driver.CATEGORY for driver in DRIVERS)


@dataclass(frozen=True, slots=True)
class Decision:
    permit: bool
    reason: str  # no patient identifier in here: it is stored and may be logged
    grant_id: int | None = None  # a local grant's row id
    consent_id: str | None = None  # the Consent the decision rests on ("grant-<id>" for grants)
    version: str | None = None  # its meta.versionId, when known

    def __str__(self) -> str:
        verdict = "permit" if self.permit else "deny"
        # stored and parsed back (gateway.audit.parse_decision): a local grant by its number, a
        # Consent as Consent/<id> (a server's ids may be numbers too: never read as a grant's);
        # no ":" inside, it separates the fields (Consent ids may be urn:uuid:...)
        if self.grant_id is not None:
            basis = str(self.grant_id)
        elif self.consent_id:
            basis = "Consent/" + self.consent_id.replace(":", "%3A")
        else:
            basis = "-"
        return f"{verdict}:{basis}:{self.reason}"


@dataclass(frozen=True, slots=True)
class Grant:
    id: int
    patient: str
    destination: str
    category: str
    granted_at: str
    revoked_at: str | None
    recorded_by: str
    attestation: str | None = None  # a nurse's statement that the patient agreed
    period_end: str | None = None  # the grant lapses then (None: until revoked)

    def to_fhir(self) -> dict[str, Any]:
        """This grant as a FHIR R4 Consent (id ``grant-<id>``, version 1, 2 once revoked)."""
        ends = self.revoked_at or self.period_end
        resource = build_consent(
            patient=self.patient,
            destination=self.destination,
            categories=[self.category],
            recorded_at=_parse(self.granted_at),
            recorded_by=self.recorded_by,
            attestation=self.attestation,
            start=_parse(self.granted_at),
            end=_parse(ends) if ends else None,
            consent_id=f"grant-{self.id}",
        )
        resource["meta"] = {"versionId": "2" if self.revoked_at else "1"}
        if self.revoked_at:
            resource["status"] = "inactive"
        return resource


@dataclass(frozen=True, slots=True)
class StoredConsent:
    source: str  # "import" or "sync:<destination>"
    consent_id: str
    version: str | None
    patient: str
    status: str
    stored_at: str
    expires_at: str | None  # synced ones: when the cached copy stops counting


@dataclass(frozen=True, slots=True)
class SyncState:
    patient: str
    source: str
    fetched_at: str
    expires_at: str


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ConsentStore:
    def __init__(self, path: Path, *, clock: Callable[[], datetime] = _utcnow) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        owner_only(path)  # who consented to what: patient identifiers
        self.path = path
        self.clock = clock
        self._db = sqlite3.connect(path, isolation_level=None, timeout=5.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        have = {row[1] for row in self._db.execute("PRAGMA table_info(grants)")}
        for column, kind in _GRANT_COLUMNS.items():
            if column not in have:
                try:
                    self._db.execute(f"ALTER TABLE grants ADD COLUMN {column} {kind}")
                except sqlite3.OperationalError as exc:  # another process added it meanwhile
                    if "duplicate column" not in str(exc):
                        raise

    def _now(self) -> str:
        return _iso(self.clock())

    def close(self) -> None:
        self._db.close()

    def grant(
        self,
        patient: str,
        destination: str,
        category: str = "vital-signs",
        recorded_by: str = "cli",
        *,
        attestation: str | None = None,
        period_end: datetime | None = None,
    ) -> Grant:
        at = self._now()
        end = _iso(period_end) if period_end is not None else None
        if end is not None and end <= at:
            raise ValueError("the consent period ends before it starts")
        cursor = self._db.execute(
            "INSERT INTO grants(patient, destination, category, granted_at, recorded_by,"
            " attestation, period_end) VALUES (?,?,?,?,?,?,?)",
            (patient, destination, category, at, recorded_by, attestation, end),
        )
        return Grant(
            int(cursor.lastrowid or 0),
            patient,
            destination,
            category,
            at,
            None,
            recorded_by,
            attestation,
            end,
        )

    def revoke(self, patient: str, destination: str, category: str | None = None) -> int:
        """Revoke active grants (all categories unless one is named, ``*`` naming them all);
        returns how many.

        Naming a category also narrows an all-categories grant (``*``): it is revoked and each
        other category edge knows is granted anew (same recorder, attestation and end), in one
        transaction. Leaving it would keep that category permitted: the patient said stop."""
        active = (
            " WHERE revoked_at IS NULL AND patient=? AND destination=?"
            " AND (period_end IS NULL OR period_end>?)"
        )
        if category == ANY_CATEGORY:
            category = None  # every category
        if category is not None and category not in KNOWN_CATEGORIES:
            granted = self._db.execute(
                "SELECT 1 FROM grants WHERE patient=? AND destination=? AND category=?",
                (patient, destination, category),
            ).fetchone()
            if granted is None:  # a typo would revoke nothing and narrow a "*" grant for nothing
                raise ValueError(
                    f"unknown category {category!r}: one of"
                    f" {', '.join(sorted(KNOWN_CATEGORIES))} or {ANY_CATEGORY}"
                )
        self._db.execute("BEGIN IMMEDIATE")
        try:
            now = self._now()  # under the write lock: no decision slips between it and the write
            # every grant not revoked yet, lapsed ones included
            params: list[str] = [now, patient, destination]
            sql = "UPDATE grants SET revoked_at=? WHERE revoked_at IS NULL AND patient=?"
            sql += " AND destination=?"
            if category is not None:
                wide = self._db.execute(
                    "SELECT id, recorded_by, attestation, period_end FROM grants"
                    + active
                    + " AND category=?",
                    (patient, destination, now, ANY_CATEGORY),
                ).fetchall()
                keep = sorted(KNOWN_CATEGORIES - {category})
                self._db.executemany(
                    "INSERT INTO grants(patient, destination, category, granted_at, recorded_by,"
                    " attestation, period_end) VALUES (?,?,?,?,?,?,?)",
                    [
                        (patient, destination, kept, now, f"{by} (from grant {gid})", attest, end)
                        for gid, by, attest, end in wide
                        for kept in keep
                    ],
                )
                sql += " AND category IN (?, ?)"
                params += [category, ANY_CATEGORY]
            count = self._db.execute(sql, params).rowcount
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return count

    def version(self) -> tuple[int, int]:
        """Changes whenever the store may have changed, from this connection or another
        process's (``edge consent``): a cheap test before reading every grant again."""
        row = self._db.execute("PRAGMA data_version").fetchone()
        return int(row[0]), self._db.total_changes

    def grants(self, *, active_only: bool = False) -> list[Grant]:
        sql = (
            "SELECT id, patient, destination, category, granted_at, revoked_at, recorded_by,"
            " attestation, period_end FROM grants"
        )
        if active_only:
            sql += " WHERE revoked_at IS NULL"
        return [Grant(*row) for row in self._db.execute(sql + " ORDER BY id")]

    # -- FHIR Consent resources ----------------------------------------------------------------
    def import_consent(self, resource: Mapping[str, Any], source: str = "import") -> Consent:
        """Validate and keep a Consent; one with the same id from the same source is replaced.
        Raises ConsentFormatError naming the bad field."""
        consent = parse_consent(resource)
        if consent.patient is None:
            raise ConsentFormatError(
                "patient.identifier", "an imported Consent must name the patient by identifier"
            )
        return self._store(consent, source)

    def _store(self, consent: Consent, source: str, patient: str | None = None) -> Consent:
        """Keep ``consent``; returned with the id it is kept under. One without an id gets a
        urn:uuid made from its content (so that it can be named to ``remove_imported``, and the
        same file imported twice is kept once)."""
        consent_id = consent.id or (
            "urn:uuid:"
            + str(
                uuid.uuid5(uuid.NAMESPACE_URL, json.dumps(dict(consent.resource), sort_keys=True))
            )
        )
        self._db.execute(
            "INSERT INTO consents(source, consent_id, version, patient, resource, stored_at)"
            " VALUES (?,?,?,?,?,?) ON CONFLICT(source, consent_id) DO UPDATE SET"
            " version=excluded.version, patient=excluded.patient, resource=excluded.resource,"
            " stored_at=excluded.stored_at",
            (
                source,
                consent_id,
                consent.version,
                patient or consent.patient,
                json.dumps(dict(consent.resource)),
                self._now(),
            ),
        )
        return consent if consent.id else dataclasses.replace(consent, id=consent_id)

    def remove_imported(self, consent_id: str) -> bool:
        """Forget an imported Consent (a mistake, or one the patient took back: deny beats permit,
        so a wrong imported deny could not be overridden otherwise). Whether it was there."""
        cursor = self._db.execute(
            "DELETE FROM consents WHERE source='import' AND consent_id=?", (consent_id,)
        )
        return cursor.rowcount > 0

    def replace_synced(
        self,
        patient: str,
        source: str,
        consents: Sequence[Consent],
        fetched_at: datetime,
        expires_at: datetime,
    ) -> None:
        """What the record server holds for this patient now replaces the cached copy."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("DELETE FROM consents WHERE source=? AND patient=?", (source, patient))
            for consent in consents:
                self._store(consent, source, patient)  # found by the patient's identifier
            self._db.execute(
                "INSERT INTO sync_state(patient, source, fetched_at, expires_at)"
                " VALUES (?,?,?,?) ON CONFLICT(patient, source) DO UPDATE SET"
                " fetched_at=excluded.fetched_at, expires_at=excluded.expires_at",
                (patient, source, _iso(fetched_at), _iso(expires_at)),
            )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def consents(self) -> list[StoredConsent]:
        rows = self._db.execute(
            "SELECT c.source, c.consent_id, c.version, c.patient, c.resource, c.stored_at,"
            " s.expires_at FROM consents c LEFT JOIN sync_state s"
            " ON s.patient=c.patient AND s.source=c.source ORDER BY c.source, c.consent_id"
        )
        return [
            StoredConsent(src, cid, ver, pat, str(json.loads(res).get("status")), at, exp)
            for src, cid, ver, pat, res, at, exp in rows
        ]

    def consent_resource(self, source: str, consent_id: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT resource FROM consents WHERE source=? AND consent_id=?", (source, consent_id)
        ).fetchone()
        if row is None:
            return None
        resource: dict[str, Any] = json.loads(row[0])
        return resource

    def sync_states(self) -> list[SyncState]:
        rows = self._db.execute(
            "SELECT patient, source, fetched_at, expires_at FROM sync_state ORDER BY source"
        )
        return [SyncState(*row) for row in rows]

    # -- deciding -------------------------------------------------------------------------------
    def decide(
        self,
        patient: str | None,
        category: str,
        destination: str,
        at: datetime | None = None,
        *,
        codes: Sequence[str] | None = None,
    ) -> Decision:
        """Permit or deny sending (patient, category) to destination at ``at`` (default: now).

        ``codes``: the reading's LOINC codes, for Consents that permit or deny single codes; a
        code-level deny with no codes given denies (it cannot be ruled out)."""
        if patient is None:
            return Decision(False, "reading is not attributed to a patient")
        moment = (at or self.clock()).astimezone(UTC)
        when = _iso(moment)
        permits: list[Decision] = []
        denies: list[Decision] = []
        row = self._db.execute(
            "SELECT id FROM grants WHERE patient=? AND destination=? AND category IN (?, ?)"
            " AND granted_at<=? AND (revoked_at IS NULL OR revoked_at>?)"
            " AND (period_end IS NULL OR period_end>?)"
            " ORDER BY id DESC LIMIT 1",
            (patient, destination, category, ANY_CATEGORY, when, when, when),
        ).fetchone()
        if row is not None:
            permits.append(Decision(True, f"grant {row[0]}", int(row[0]), f"grant-{row[0]}", "1"))
        expired = False
        rows = self._db.execute(
            "SELECT c.source, c.consent_id, c.version, c.resource, s.expires_at"
            " FROM consents c LEFT JOIN sync_state s ON s.patient=c.patient AND s.source=c.source"
            " WHERE c.patient=? ORDER BY c.source, c.consent_id",
            (patient,),
        )
        for source, consent_id, version, resource, expires_at in rows:
            stale = source.startswith("sync:") and (expires_at is None or expires_at <= when)
            expired = expired or stale
            try:
                consent = parse_consent(json.loads(resource))
            except (ValueError, ConsentFormatError):  # validated when stored; never permit
                denies.append(Decision(False, f"consent {consent_id} unreadable", None, consent_id))
                continue
            answer = consent.evaluate(category, destination, moment, codes)
            if answer is None:
                continue
            kind, why = answer
            if stale and kind == "permit":
                continue  # an expired copy permits nothing any more; its denies still hold
            decision = Decision(
                kind == "permit",
                f"consent {consent_id} ({source}): {why}",
                None,
                consent_id,
                version,
            )
            (permits if decision.permit else denies).append(decision)
        if denies:
            return denies[0]
        if permits:
            return permits[0]
        if expired:
            return Decision(False, "consent cache expired")
        return Decision(False, f"no active consent for {category} to {destination}")
