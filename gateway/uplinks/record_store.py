"""The embedded default record: a small FHIR store in one local SQLite file.

It accepts the same FHIR R4 transaction Bundles the other uplinks send, with the same meaning:

* every entry is a ``POST`` conditional create. The match key is the identifier named by
  ``request.ifNoneExist`` (``identifier=<system>|<url-encoded value>``), or the resource's first
  identifier when the entry has none. No match: the resource is stored with the uuid of its
  ``fullUrl`` as logical id ("created"). One match: nothing is written and the existing id is used
  ("exists"). A UNIQUE index on (type, identifier system, identifier value) makes more than one
  match impossible, so a replayed or retried bundle never duplicates anything.
* ``urn:uuid:`` references between entries are rewritten to ``<Type>/<id>`` (the existing id when
  the target already existed), in created resources only: existing ones are never modified.
* a bundle is all-or-nothing (FHIR transaction semantics): one entry that cannot be processed
  (bad JSON, no identifier, unknown resource type, unresolved reference...) rejects the whole
  bundle with ``TransactionRejected`` and nothing of it is written. Callers holding several
  envelopes use ``apply_transactions``: each bundle stays atomic, a rejected one does not stop the
  others, and the whole batch costs one commit (one fsync).

Numbers are never turned into floats: a resource is stored as JSON text in which every number
keeps the exact characters it arrived with (65.700 stays 65.700). Search results are parsed with
``decimal.Decimal`` for the same reason.

Durability: WAL with ``synchronous=FULL``; both are checked after opening and the store refuses to
run otherwise (``RecordStoreError``). Rejection reasons name entries by index and resource type,
never by identifier or value (they end up in logs and the outbox quarantine).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import unquote

import aiosqlite
import orjson

from gateway.durable_sqlite import open_durable
from gateway.uplinks.base import UplinkError

__all__ = [
    "EntryResult",
    "EntryStatus",
    "RecordStore",
    "RecordStoreError",
    "TransactionRejected",
]

#: Resource types this store keeps, in export order.
KNOWN_TYPES: tuple[str, ...] = ("Patient", "Device", "Observation")

_SCHEMA_VERSION = 1
_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS resource (
        id                TEXT PRIMARY KEY,
        type              TEXT NOT NULL,
        identifier_system TEXT NOT NULL,
        identifier_value  TEXT NOT NULL,
        patient_system    TEXT,
        patient_value     TEXT,
        effective         TEXT,
        json              TEXT NOT NULL,
        created_at        TEXT NOT NULL
    )
    """,
    """
    CREATE UNIQUE INDEX IF NOT EXISTS resource_identifier
        ON resource (type, identifier_system, identifier_value)
    """,
    """
    CREATE INDEX IF NOT EXISTS resource_patient
        ON resource (type, patient_system, patient_value, effective)
    """,
    """
    CREATE TABLE IF NOT EXISTS resource_code (
        resource_id TEXT NOT NULL REFERENCES resource (id) ON DELETE CASCADE,
        system      TEXT NOT NULL,
        code        TEXT NOT NULL,
        PRIMARY KEY (resource_id, system, code)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX IF NOT EXISTS resource_code_code ON resource_code (code, system)",
)

_UUID_PREFIX = "urn:uuid:"
# FHIR dateTime: YYYY, YYYY-MM, YYYY-MM-DD, or date and time with a zone offset.
_PARTIAL_DATE = re.compile(r"^(\d{4})(?:-(\d{2}))?$")


class RecordStoreError(UplinkError):
    """The store cannot be used safely (wrong journal mode or sync level, bad path...)."""


class TransactionRejected(Exception):
    """A bundle could not be processed; nothing of it was written.

    ``reason`` names the entry by index and type only, never by identifier or value.
    """

    def __init__(self, reason: str, *, entry: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.entry = entry


class EntryStatus(StrEnum):
    CREATED = "created"  # 201: stored under the fullUrl's uuid
    EXISTS = "exists"  # 200: a resource with that identifier was already there


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryResult:
    """What happened to one bundle entry (in bundle order), like a transaction-response entry."""

    index: int
    full_url: str
    resource_type: str
    id: str
    status: EntryStatus

    @property
    def location(self) -> str:
        return f"{self.resource_type}/{self.id}"


@dataclass(slots=True)
class _Entry:
    index: int
    full_url: str
    new_id: str
    resource_type: str
    resource: dict[str, Any]
    key: tuple[str, str]
    patient: tuple[str, str] | None
    effective: str | None
    codes: tuple[tuple[str, str], ...]


# --------------------------------------------------------------------------- parsing


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _load_exact(data: bytes | str) -> Any:
    """Parse JSON keeping every number as its original text (re-emitted verbatim by orjson)."""
    return json.loads(
        data,
        parse_float=orjson.Fragment,
        parse_int=orjson.Fragment,
        parse_constant=_reject_constant,
    )


def _dump_exact(value: Any) -> str:
    return orjson.dumps(value).decode()


def _load_decimal(text: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(text, parse_float=Decimal)
    return value


def _parse_full_url(value: str, where: str) -> str:
    """The logical id a created resource takes: the fullUrl's uuid, in canonical form."""
    if not value.startswith(_UUID_PREFIX):
        raise TransactionRejected(f"{where}: fullUrl must be a urn:uuid")
    try:
        return str(uuid.UUID(value[len(_UUID_PREFIX) :]))
    except ValueError:
        raise TransactionRejected(f"{where}: fullUrl is not a valid urn:uuid") from None


def _identifiers(resource: dict[str, Any]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    raw = resource.get("identifier")
    if isinstance(raw, list):
        for item in raw:
            if isinstance(item, dict):
                system, value = item.get("system"), item.get("value")
                if isinstance(system, str) and isinstance(value, str) and system and value:
                    found.append((system, value))
    return found


def _parse_if_none_exist(query: str, where: str) -> tuple[str, str]:
    """``identifier=<system>|<value>`` -> (system, value).

    The token is percent-decoded, then read with FHIR search escaping: ``\\|``, ``\\,``,
    ``\\$`` and ``\\\\`` stand for the character itself; an unescaped ``|`` separates system
    and value and an unescaped ``,`` would mean "any of several values", which is refused.
    """
    name, sep, token = query.partition("=")
    if name != "identifier" or not sep or "&" in token:
        raise TransactionRejected(
            f"{where}: ifNoneExist must be a single identifier=<system>|<value> search"
        )
    parts: list[list[str]] = [[]]
    chars = iter(unquote(token))
    for char in chars:
        if char == "\\":
            following = next(chars, "")
            if following in ("\\", "|", ",", "$"):
                parts[-1].append(following)
            else:  # not an escape: keep the backslash as it is
                parts[-1].append(char + following)
        elif char == "|" and len(parts) == 1:
            parts.append([])
        elif char == ",":
            raise TransactionRejected(f"{where}: ifNoneExist with several values is not supported")
        else:
            parts[-1].append(char)
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise TransactionRejected(f"{where}: ifNoneExist identifier needs a system and a value")
    return "".join(parts[0]), "".join(parts[1])


def _normalise_instant(value: dt.datetime) -> str:
    """Fixed-width UTC text, so that SQL text comparison is time order."""
    if value.tzinfo is None:
        raise ValueError("a time zone is required")
    utc = value.astimezone(dt.UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="microseconds") + "Z"


def _parse_fhir_datetime(text: str) -> str:
    """A FHIR dateTime as normalised UTC text; partial dates mean their first instant in UTC."""
    partial = _PARTIAL_DATE.match(text)
    if partial:
        year, month = int(partial.group(1)), int(partial.group(2) or 1)
        return _normalise_instant(dt.datetime(year, month, 1, tzinfo=dt.UTC))
    if len(text) == 10:
        day = dt.date.fromisoformat(text)
        return _normalise_instant(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC))
    if "T" not in text:
        raise ValueError("not a FHIR dateTime")
    parsed = dt.datetime.fromisoformat(text)
    return _normalise_instant(parsed)


def _effective(resource: dict[str, Any], where: str) -> str | None:
    raw: object = resource.get("effectiveDateTime", resource.get("effectiveInstant"))
    if raw is None:
        period = resource.get("effectivePeriod")
        if isinstance(period, dict):
            raw = period.get("start")
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise TransactionRejected(f"{where}: effective time is not a string")
    try:
        return _parse_fhir_datetime(raw)
    except ValueError:
        raise TransactionRejected(
            f"{where}: effective time is not a FHIR dateTime (a time needs a zone offset)"
        ) from None


def _codes(resource: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    code = resource.get("code")
    codings = code.get("coding") if isinstance(code, dict) else None
    found: dict[tuple[str, str], None] = {}
    if isinstance(codings, list):
        for coding in codings:
            if isinstance(coding, dict):
                system, value = coding.get("system"), coding.get("code")
                if isinstance(system, str) and isinstance(value, str):
                    found[(system, value)] = None
    return tuple(found)


def _subject_identifier(resource: dict[str, Any]) -> tuple[str, str] | None:
    subject = resource.get("subject")
    if not isinstance(subject, dict):
        return None
    ident = subject.get("identifier")
    if isinstance(ident, dict):
        system, value = ident.get("system"), ident.get("value")
        if isinstance(system, str) and isinstance(value, str) and system and value:
            return system, value
    return None


def _references(node: Any) -> Iterable[str]:
    """Every ``urn:uuid:`` string found under a ``reference`` key, anywhere in the resource."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                if value.startswith(_UUID_PREFIX):
                    yield value
            else:
                yield from _references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item)


def _rewrite(node: Any, targets: dict[str, str]) -> Any:
    """A copy of ``node`` with bundle-internal references replaced by ``Type/id``."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "reference" and isinstance(value, str) and value.startswith(_UUID_PREFIX):
                out[key] = targets[value]
            else:
                out[key] = _rewrite(value, targets)
        return out
    if isinstance(node, list):
        return [_rewrite(item, targets) for item in node]
    return node


def _parse_bundle(body: bytes) -> list[_Entry]:
    """Everything that can be checked without the database; raises ``TransactionRejected``."""
    try:
        bundle = _load_exact(body)
    except (ValueError, RecursionError):
        raise TransactionRejected("bundle is not valid JSON") from None
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise TransactionRejected("body is not a FHIR Bundle")
    if bundle.get("type") != "transaction":
        raise TransactionRejected("Bundle.type must be transaction")
    raw_entries = bundle.get("entry")
    if not isinstance(raw_entries, list) or not raw_entries:
        raise TransactionRejected("bundle has no entries")

    entries: list[_Entry] = []
    seen_ids: set[str] = set()
    for index, raw in enumerate(raw_entries):
        where = f"entry {index}"
        if not isinstance(raw, dict):
            raise TransactionRejected(f"{where}: not an object", entry=index)
        resource = raw.get("resource")
        if not isinstance(resource, dict):
            raise TransactionRejected(f"{where}: no resource", entry=index)
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str) or rtype not in KNOWN_TYPES:
            raise TransactionRejected(f"{where}: unsupported resourceType", entry=index)
        where = f"entry {index} ({rtype})"
        full_url = raw.get("fullUrl")
        if not isinstance(full_url, str):
            raise TransactionRejected(f"{where}: fullUrl must be a urn:uuid", entry=index)
        new_id = _parse_full_url(full_url, where)
        if new_id in seen_ids:  # compared as uuids: case or spelling may differ
            raise TransactionRejected(f"{where}: duplicate fullUrl", entry=index)
        seen_ids.add(new_id)

        request = raw.get("request")
        if not isinstance(request, dict):
            raise TransactionRejected(f"{where}: no request", entry=index)
        if request.get("method") != "POST" or request.get("url") != rtype:
            raise TransactionRejected(
                f"{where}: only POST to the resource type is supported", entry=index
            )
        identifiers = _identifiers(resource)
        condition = request.get("ifNoneExist")
        if condition is not None:
            if not isinstance(condition, str):
                raise TransactionRejected(f"{where}: ifNoneExist is not a string", entry=index)
            key = _parse_if_none_exist(condition, where)
            if key not in identifiers:
                raise TransactionRejected(
                    f"{where}: ifNoneExist names no identifier of the resource", entry=index
                )
        elif identifiers:
            key = identifiers[0]
        else:
            raise TransactionRejected(f"{where}: resource has no identifier", entry=index)

        if rtype == "Patient":
            patient: tuple[str, str] | None = key
        else:
            patient = _subject_identifier(resource)
        entries.append(
            _Entry(
                index=index,
                full_url=full_url,
                new_id=new_id,
                resource_type=rtype,
                resource=resource,
                key=key,
                patient=patient,
                effective=_effective(resource, where) if rtype == "Observation" else None,
                codes=_codes(resource),
            )
        )

    # Every internal reference must point at an entry of this bundle (checked before any write).
    by_url = {entry.full_url: entry for entry in entries}
    for entry in entries:
        for ref in _references(entry.resource):
            if ref not in by_url:
                raise TransactionRejected(
                    f"entry {entry.index} ({entry.resource_type}): unresolved urn:uuid reference",
                    entry=entry.index,
                )
        # An Observation naming its patient only by a reference to a Patient entry.
        if entry.patient is None and entry.resource_type == "Observation":
            subject = entry.resource.get("subject")
            subject_ref = subject.get("reference") if isinstance(subject, dict) else None
            target = by_url.get(subject_ref) if isinstance(subject_ref, str) else None
            if target is not None and target.resource_type == "Patient":
                entry.patient = target.key
    return entries


# --------------------------------------------------------------------------- planning


@dataclass(slots=True)
class _Write:
    entry: _Entry
    id: str
    text: str


@dataclass(slots=True)
class _Known:
    """Identifier keys and logical ids present in the store (or created earlier in the batch)."""

    by_key: dict[tuple[str, str, str], str]
    ids: set[str]


def _key(entry: _Entry) -> tuple[str, str, str]:
    return (entry.resource_type, *entry.key)


def _plan(entries: list[_Entry], known: _Known) -> tuple[list[EntryResult], list[_Write]]:
    """Decide created/exists for each entry of one bundle and render what to insert.

    ``known`` is only updated when the whole bundle is accepted, so a rejected bundle leaves no
    trace for the next ones.
    """
    assigned: dict[tuple[str, str, str], str] = {}
    outcome: list[tuple[_Entry, str, EntryStatus]] = []
    for entry in entries:
        key = _key(entry)
        existing = assigned.get(key) or known.by_key.get(key)
        if existing is not None:
            outcome.append((entry, existing, EntryStatus.EXISTS))
            continue
        if entry.new_id in known.ids:
            raise TransactionRejected(
                f"entry {entry.index} ({entry.resource_type}): fullUrl uuid already used"
                " as the id of another resource",
                entry=entry.index,
            )
        assigned[key] = entry.new_id
        outcome.append((entry, entry.new_id, EntryStatus.CREATED))

    targets = {entry.full_url: f"{entry.resource_type}/{rid}" for entry, rid, _ in outcome}
    writes: list[_Write] = []
    results: list[EntryResult] = []
    for entry, rid, status in outcome:
        results.append(
            EntryResult(
                index=entry.index,
                full_url=entry.full_url,
                resource_type=entry.resource_type,
                id=rid,
                status=status,
            )
        )
        if status is EntryStatus.CREATED:
            body = {k: v for k, v in entry.resource.items() if k not in ("resourceType", "id")}
            resource = {"resourceType": entry.resource_type, "id": rid, **body}
            try:
                text = _dump_exact(_rewrite(resource, targets))
            except (orjson.JSONEncodeError, RecursionError):
                raise TransactionRejected(
                    f"entry {entry.index} ({entry.resource_type}): cannot be serialised",
                    entry=entry.index,
                ) from None
            writes.append(_Write(entry=entry, id=rid, text=text))
    known.by_key.update(assigned)
    known.ids.update(assigned.values())
    return results, writes


_CHUNK = 250  # bound the number of SQL variables per query


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


async def _existing_keys(
    db: aiosqlite.Connection, keys: set[tuple[str, str, str]]
) -> dict[tuple[str, str, str], str]:
    found: dict[tuple[str, str, str], str] = {}
    types = sorted({k[0] for k in keys})
    systems = sorted({k[1] for k in keys})
    for values in _chunks(sorted({k[2] for k in keys})):
        # Three IN lists probe the unique index; rows outside ``keys`` are dropped below.
        sql = (
            "SELECT type, identifier_system, identifier_value, id FROM resource"
            f" WHERE type IN ({_marks(types)}) AND identifier_system IN ({_marks(systems)})"
            f" AND identifier_value IN ({_marks(values)})"
        )
        for rtype, system, value, rid in await db.execute_fetchall(
            sql, [*types, *systems, *values]
        ):
            if (rtype, system, value) in keys:
                found[(rtype, system, value)] = rid
    return found


async def _existing_ids(db: aiosqlite.Connection, ids: set[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(sorted(ids)):
        sql = f"SELECT id FROM resource WHERE id IN ({_marks(chunk)})"
        found.update(row[0] for row in await db.execute_fetchall(sql, list(chunk)))
    return found


def _marks(items: Sequence[Any]) -> str:
    return ", ".join("?" * len(items))


async def _insert(db: aiosqlite.Connection, writes: list[_Write], created_at: str) -> None:
    if not writes:
        return
    rows = []
    codes = []
    for write in writes:
        entry = write.entry
        patient_system, patient_value = entry.patient or (None, None)
        rows.append(
            (
                write.id,
                entry.resource_type,
                entry.key[0],
                entry.key[1],
                patient_system,
                patient_value,
                entry.effective,
                write.text,
                created_at,
            )
        )
        codes += [(write.id, system, code) for system, code in entry.codes]
    await db.executemany(
        "INSERT INTO resource (id, type, identifier_system, identifier_value,"
        " patient_system, patient_value, effective, json, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    if codes:
        await db.executemany(
            "INSERT INTO resource_code (resource_id, system, code) VALUES (?, ?, ?)", codes
        )


# --------------------------------------------------------------------------- the store


class RecordStore:
    """A FHIR store in one SQLite file. Use ``async with RecordStore(path) as store:``.

    ``max_pages`` sets ``PRAGMA max_page_count``: a quota under the filesystem's free space, so a
    full store gives a clean SQLITE_FULL (callers retry later) instead of a full disk.
    One connection; calls are serialised by a lock (the store serves one person).
    """

    def __init__(
        self, path: Path, *, max_pages: int | None = None, busy_timeout: float = 5.0
    ) -> None:
        if str(path) == ":memory:":
            raise RecordStoreError("the record store needs a file (WAL + synchronous=FULL)")
        self.path = path
        self.max_pages = max_pages
        self.busy_timeout = busy_timeout
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    # ---- life cycle

    async def open(self) -> RecordStore:
        if self._db is not None:
            return self
        db = await open_durable(self.path, error=RecordStoreError, busy_timeout=self.busy_timeout)
        try:
            await self._configure(db)
        except BaseException:
            await db.close()
            raise
        self._db = db
        return self

    async def _configure(self, db: aiosqlite.Connection) -> None:
        try:
            if self.max_pages is not None:
                await db.execute(f"PRAGMA max_page_count={int(self.max_pages)}")
            version = await _scalar(db, "PRAGMA user_version")
            if version not in (0, _SCHEMA_VERSION):
                raise RecordStoreError(f"unknown record store schema version {version}")
            await db.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA:
                    await db.execute(statement)
                await db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
                await db.execute("COMMIT")
            except BaseException:
                await _rollback(db)
                raise
        except aiosqlite.Error as exc:
            raise RecordStoreError(f"cannot prepare the record store: {exc}") from exc

    async def durability(self) -> dict[str, object]:
        """The settings durability rests on, read back from SQLite (for health checks)."""
        async with self._lock:
            db = self._conn()
            return {
                "journal_mode": await _scalar(db, "PRAGMA journal_mode"),
                "synchronous": await _scalar(db, "PRAGMA synchronous"),
            }

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await db.close()

    async def __aenter__(self) -> RecordStore:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("record store is not open")
        return self._db

    # ---- writing

    async def apply_transaction(self, bundle: bytes) -> list[EntryResult]:
        """Apply one transaction Bundle atomically; raises ``TransactionRejected``."""
        (result,) = await self.apply_transactions([bundle])
        if isinstance(result, TransactionRejected):
            raise result
        return result

    async def apply_transactions(
        self, bundles: Sequence[bytes]
    ) -> list[list[EntryResult] | TransactionRejected]:
        """Apply several bundles, each atomic, in one SQLite transaction (one commit).

        Returns, per bundle and in order, its entry results or the ``TransactionRejected``
        explaining why nothing of it was written. A later bundle sees what an earlier one of the
        same batch created. SQLite errors (disk full, I/O) roll the whole batch back and
        propagate: nothing is committed, the caller retries.
        """
        parsed: list[list[_Entry] | TransactionRejected] = []
        for body in bundles:
            try:
                parsed.append(_parse_bundle(body))
            except TransactionRejected as rejected:
                parsed.append(rejected)
        valid = [item for item in parsed if not isinstance(item, TransactionRejected)]
        if not valid:  # only rejections: nothing to write
            return [item for item in parsed if isinstance(item, TransactionRejected)]

        db = self._conn()
        created_at = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
        async with self._lock:
            await db.execute("BEGIN IMMEDIATE")
            try:
                # Everything the planning needs, read in a few queries for the whole batch.
                known = _Known(
                    by_key=await _existing_keys(db, {_key(e) for b in valid for e in b}),
                    ids=await _existing_ids(db, {e.new_id for b in valid for e in b}),
                )
                results: list[list[EntryResult] | TransactionRejected] = []
                writes: list[_Write] = []
                for item in parsed:
                    if isinstance(item, TransactionRejected):
                        results.append(item)
                        continue
                    try:
                        planned, bundle_writes = _plan(item, known)
                    except TransactionRejected as rejected:
                        results.append(rejected)
                        continue
                    results.append(planned)
                    writes += bundle_writes
                await _insert(db, writes, created_at)
                await db.execute("COMMIT")
            except BaseException:
                await _rollback(db)
                raise
        return results

    # ---- reading

    async def search(
        self,
        *,
        patient: str | None = None,
        code: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        resource_type: str = "Observation",
    ) -> list[dict[str, Any]]:
        """Resources matching every given filter, oldest effective time first.

        ``patient`` is ``SYSTEM|VALUE`` (the Observation's ``subject.identifier``); ``code`` is a
        code of ``Observation.code`` (MDC, LOINC...), optionally ``SYSTEM|CODE``; ``since`` is
        inclusive and ``until`` exclusive, both time-zone aware. Numbers come back as ``Decimal``.
        """
        where, params = _filters(resource_type, patient, code, since, until)
        sql = f"SELECT json FROM resource r WHERE {where} ORDER BY r.effective, r.rowid"
        async with self._lock:
            rows = await self._conn().execute_fetchall(sql, params)
        return [_load_decimal(row[0]) for row in rows]

    async def count(
        self,
        *,
        resource_type: str | None = None,
        patient: str | None = None,
        code: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
    ) -> int:
        """How many resources match (all types when ``resource_type`` is None)."""
        where, params = _filters(resource_type, patient, code, since, until)
        async with self._lock:
            value = await _scalar(
                self._conn(), f"SELECT count(*) FROM resource r WHERE {where}", params
            )
        return int(value or 0)

    async def read(self, reference: str) -> dict[str, Any] | None:
        """The resource at ``Type/id``, or None."""
        rtype, _, rid = reference.partition("/")
        async with self._lock:
            text = await _scalar(
                self._conn(), "SELECT json FROM resource WHERE type = ? AND id = ?", (rtype, rid)
            )
        return None if text is None else _load_decimal(str(text))

    async def export_ndjson(self, out: IO[str]) -> int:
        """Write every resource as stored, one per line: patients, devices, observations, then
        anything else, each in creation order. Returns the number of lines written."""
        order = " ".join(f"WHEN '{name}' THEN {rank}" for rank, name in enumerate(KNOWN_TYPES))
        sql = f"SELECT json FROM resource ORDER BY CASE type {order} ELSE 99 END, rowid"
        written = 0
        async with self._lock, self._conn().execute(sql) as cursor:
            async for row in cursor:
                out.write(row[0])
                out.write("\n")
                written += 1
        return written


def _filters(
    resource_type: str | None,
    patient: str | None,
    code: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
) -> tuple[str, list[str]]:
    clauses: list[str] = []
    params: list[str] = []
    if resource_type is not None:
        clauses.append("r.type = ?")
        params.append(resource_type)
    if patient is not None:
        system, bar, value = patient.partition("|")
        if not bar or not system or not value:
            raise ValueError("patient must be SYSTEM|VALUE")
        clauses.append("r.patient_system = ? AND r.patient_value = ?")
        params += [system, value]
    if code is not None:
        system, bar, value = code.rpartition("|")
        if bar:
            clauses.append(
                "EXISTS (SELECT 1 FROM resource_code c"
                " WHERE c.resource_id = r.id AND c.code = ? AND c.system = ?)"
            )
            params += [value, system]
        else:
            clauses.append(
                "EXISTS (SELECT 1 FROM resource_code c WHERE c.resource_id = r.id AND c.code = ?)"
            )
            params.append(value)
    if since is not None:
        clauses.append("r.effective >= ?")
        params.append(_normalise_instant(since))
    if until is not None:
        clauses.append("r.effective < ?")
        params.append(_normalise_instant(until))
    return (" AND ".join(clauses) or "1"), params


async def _scalar(db: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
    async with db.execute(sql, params) as cursor:
        row = await cursor.fetchone()
    return None if row is None else row[0]


async def _rollback(db: aiosqlite.Connection) -> None:
    """ROLLBACK, ignoring errors: after SQLITE_FULL the transaction may already be gone."""
    try:
        if db.in_transaction:
            await db.execute("ROLLBACK")
    except aiosqlite.Error:
        pass
