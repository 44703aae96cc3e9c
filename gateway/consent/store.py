"""Local consent grants and the permit/deny decision.

Default deny: a reading goes to a destination only while an active grant covers (patient, data
category, destination) at the moment of the decision. Grants are never deleted: a revocation stamps
``revoked_at``, so any past decision can be explained. The file is shared by the daemon (reads) and
the ``edge consent`` commands (writes) through SQLite WAL; the daemon re-reads it at every decision,
so a revocation takes effect before the next send.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

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
"""

ANY_CATEGORY = "*"


@dataclass(frozen=True, slots=True)
class Decision:
    permit: bool
    reason: str  # no patient identifier in here: it is stored and may be logged
    grant_id: int | None = None

    def __str__(self) -> str:
        verdict = "permit" if self.permit else "deny"
        return f"{verdict}:{self.grant_id or '-'}:{self.reason}"


@dataclass(frozen=True, slots=True)
class Grant:
    id: int
    patient: str
    destination: str
    category: str
    granted_at: str
    revoked_at: str | None
    recorded_by: str


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class ConsentStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, timeout=5.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def grant(
        self,
        patient: str,
        destination: str,
        category: str = "vital-signs",
        recorded_by: str = "cli",
    ) -> Grant:
        at = _now()
        cursor = self._db.execute(
            "INSERT INTO grants(patient, destination, category, granted_at, recorded_by)"
            " VALUES (?,?,?,?,?)",
            (patient, destination, category, at, recorded_by),
        )
        return Grant(
            int(cursor.lastrowid or 0), patient, destination, category, at, None, recorded_by
        )

    def revoke(self, patient: str, destination: str, category: str | None = None) -> int:
        """Revoke active grants (all categories unless one is named); returns how many."""
        sql = (
            "UPDATE grants SET revoked_at=?"
            " WHERE revoked_at IS NULL AND patient=? AND destination=?"
        )
        params: list[str] = [_now(), patient, destination]
        if category is not None:
            sql += " AND category=?"
            params.append(category)
        return self._db.execute(sql, params).rowcount

    def grants(self, *, active_only: bool = False) -> list[Grant]:
        sql = (
            "SELECT id, patient, destination, category, granted_at, revoked_at, recorded_by"
            " FROM grants"
        )
        if active_only:
            sql += " WHERE revoked_at IS NULL"
        return [Grant(*row) for row in self._db.execute(sql + " ORDER BY id")]

    def decide(
        self, patient: str | None, category: str, destination: str, at: datetime | None = None
    ) -> Decision:
        if patient is None:
            return Decision(False, "reading is not attributed to a patient")
        when = (at or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="microseconds")
        row = self._db.execute(
            "SELECT id FROM grants WHERE patient=? AND destination=? AND category IN (?, ?)"
            " AND granted_at<=? AND (revoked_at IS NULL OR revoked_at>?)"
            " ORDER BY id DESC LIMIT 1",
            (patient, destination, category, ANY_CATEGORY, when, when),
        ).fetchone()
        if row is None:
            return Decision(False, f"no active consent for {category} to {destination}")
        return Decision(True, f"grant {row[0]}", int(row[0]))
