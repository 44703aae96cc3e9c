"""The embedded default record: a small FHIR store in one local SQLite file.

It accepts the same FHIR R4 transaction Bundles the other uplinks send, with the same meaning:

* every entry is a ``POST`` conditional create. The match key is the identifier named by
  ``request.ifNoneExist`` (``identifier=<system>|<url-encoded value>``), or the resource's first
  identifier when the entry has none. No match: the resource is stored ("created") with a
  logical id keyed from its ``fullUrl``'s uuid (HMAC under the index key, below: the mappers'
  fullUrls are name-based uuids of identifiers, and ids are readable in the file). One match:
  nothing is written and the existing id is used ("exists"). A UNIQUE index on (type, keyed hash
  of the identifier) makes more than one match impossible, so a replayed or retried bundle never
  duplicates anything.
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

Encryption at rest (docs/encryption.md): each resource's JSON is sealed with the data key
(AES-256-GCM, bound to its type and id); identifiers, patients and codes are kept only as keyed
hashes (HMAC-SHA256 under a random index key, itself sealed in the file), enough for the
conditional create and the searches by equality. Left readable: resource types, code systems,
effective times (range searches) and creation times. A file from before (schema 1) is sealed at
open, in one transaction, then vacuumed.

Durability: WAL with ``synchronous=FULL``; both are checked after opening and the store refuses to
run otherwise (``RecordStoreError``). Rejection reasons name entries by index and resource type,
never by identifier or value (they end up in logs and the outbox quarantine).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import secrets
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

from gateway import crypto
from gateway.durable_sqlite import open_durable
from gateway.uplinks.base import UplinkError

__all__ = [
    "EntryResult",
    "EntryStatus",
    "RecordStore",
    "RecordStoreError",
    "TransactionRejected",
]

log = logging.getLogger(__name__)

#: Resource types this store keeps, in export order.
KNOWN_TYPES: tuple[str, ...] = ("Patient", "Device", "Observation")

_SCHEMA_VERSION = 2  # 1: the same in clear
_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS resource (
        id          TEXT PRIMARY KEY,
        type        TEXT NOT NULL,
        identifier  BLOB NOT NULL,  -- keyed hash of the match identifier (system, value)
        patient     BLOB,           -- keyed hash of the patient identifier
        effective   TEXT,
        json        BLOB NOT NULL,  -- sealed
        created_at  TEXT NOT NULL
    )
    """,
    "CREATE UNIQUE INDEX IF NOT EXISTS resource_match ON resource (type, identifier)",
    "CREATE INDEX IF NOT EXISTS resource_subject ON resource (type, patient, effective)",
    """
    CREATE TABLE IF NOT EXISTS resource_code (
        resource_id TEXT NOT NULL REFERENCES resource (id) ON DELETE CASCADE,
        system      TEXT NOT NULL,
        code        BLOB NOT NULL,  -- keyed hash of the code
        PRIMARY KEY (resource_id, system, code)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX IF NOT EXISTS resource_code_hash ON resource_code (code, system)",
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL)",
)
_KEY_CHECK = "data-key-check"  # meta: a known text sealed under the data key
_INDEX_KEY = "index-key"  # meta: the random HMAC key of the hashes, sealed under the data key
_HASH_BYTES = 16


def _aad(rtype: str, rid: str) -> bytes:
    return f"resource|{rtype}/{rid}".encode()


class _Index:
    """Keyed hashes of what the store looks up by equality, never stored in clear."""

    def __init__(self, key: bytes) -> None:
        self._mac = hmac.new(key, digestmod=hashlib.sha256)

    def _hash(self, kind: bytes, *parts: str) -> bytes:
        mac = self._mac.copy()
        mac.update(kind)
        for part in parts:  # length-prefixed: ("a|b", "c") and ("a", "b|c") differ
            data = part.encode()
            mac.update(len(data).to_bytes(4, "big") + data)
        return mac.digest()[:_HASH_BYTES]

    def identifier(self, system: str, value: str) -> bytes:
        return self._hash(b"identifier", system, value)

    def patient(self, system: str, value: str) -> bytes:
        return self._hash(b"patient", system, value)

    def code(self, code: str) -> bytes:
        return self._hash(b"code", code)

    def resource_id(self, full_url_uuid: str) -> str:
        """The logical id a created resource takes: keyed, because the mappers' fullUrls are
        name-based uuids of the identifiers (which hold the patient's) and stored ids are
        readable; deterministic, so a replayed bundle finds what it created."""
        return str(uuid.UUID(bytes=self._hash(b"id", full_url_uuid)))


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
    """A copy of ``node`` with the references named in ``targets`` replaced (bundle-internal
    ``urn:uuid:`` ones by ``Type/id``; at a migration, old ids by new ones)."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                out[key] = targets.get(value, value)
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
    db: aiosqlite.Connection, index: _Index, keys: set[tuple[str, str, str]]
) -> dict[tuple[str, str, str], str]:
    found: dict[tuple[str, str, str], str] = {}
    hashed = {
        (rtype, index.identifier(system, value)): (rtype, system, value)
        for rtype, system, value in keys
    }
    types = sorted({k[0] for k in keys})
    for hashes in _chunks(sorted({h for _, h in hashed})):
        # Two IN lists probe the unique index; rows outside ``keys`` are dropped below.
        sql = (
            "SELECT type, identifier, id FROM resource"
            f" WHERE type IN ({_marks(types)}) AND identifier IN ({_marks(hashes)})"
        )
        for rtype, digest, rid in await db.execute_fetchall(sql, [*types, *hashes]):
            key = hashed.get((rtype, bytes(digest)))
            if key is not None:
                found[key] = rid
    return found


async def _existing_ids(db: aiosqlite.Connection, ids: set[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(sorted(ids)):
        sql = f"SELECT id FROM resource WHERE id IN ({_marks(chunk)})"
        found.update(row[0] for row in await db.execute_fetchall(sql, list(chunk)))
    return found


def _marks(items: Sequence[Any]) -> str:
    return ", ".join("?" * len(items))


async def _insert(
    db: aiosqlite.Connection,
    cipher: crypto.Cipher,
    index: _Index,
    writes: list[_Write],
    created_at: str,
) -> None:
    if not writes:
        return
    rows = []
    codes = []
    for write in writes:
        entry = write.entry
        rtype = entry.resource_type
        rows.append(
            (
                write.id,
                rtype,
                index.identifier(*entry.key),
                None if entry.patient is None else index.patient(*entry.patient),
                entry.effective,
                cipher.seal(write.text.encode(), _aad(rtype, write.id)),
                created_at,
            )
        )
        codes += [(write.id, system, index.code(code)) for system, code in entry.codes]
    await db.executemany(
        "INSERT INTO resource (id, type, identifier, patient, effective, json, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
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
        self,
        path: Path,
        *,
        max_pages: int | None = None,
        busy_timeout: float = 5.0,
        key_dir: Path | None = None,
        create_key: bool = True,
        extra_keys: Sequence[bytes] = (),
    ) -> None:
        if str(path) == ":memory:":
            raise RecordStoreError("the record store needs a file (WAL + synchronous=FULL)")
        self.path = path
        self.max_pages = max_pages
        self.busy_timeout = busy_timeout
        self.key_dir = key_dir or path.parent
        """Where the data key file is (``data.key``) unless the environment gives the key."""
        self.create_key = create_key
        """False for the CLI: only the gateway makes the data key."""
        self.extra_keys = tuple(extra_keys)  # as Outbox.extra_keys
        self._db: aiosqlite.Connection | None = None
        self._cipher: crypto.Cipher | None = None
        self._index: _Index | None = None
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
            if version not in (0, 1, _SCHEMA_VERSION):
                raise RecordStoreError(f"unknown record store schema version {version}")
            # deleted cells zeroed: what a migration or a rotation replaces leaves no copy behind
            await db.execute("PRAGMA secure_delete=ON")
            await db.execute("BEGIN IMMEDIATE")
            try:
                # again, under the write lock: another process may have converted it meanwhile
                version = await _scalar(db, "PRAGMA user_version")
                if version == 1:
                    await _detach_v1(db)
                for statement in _SCHEMA:
                    await db.execute(statement)
                await self._unlock(db)
                if version == 1:
                    await _seal_v1(db, self._crypto())
                await db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
                await db.execute("COMMIT")
            except BaseException:
                await _rollback(db)
                raise
            if version == 1:  # values once in clear may linger in freed pages and the WAL
                await db.execute("VACUUM")
                await db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except aiosqlite.Error as exc:
            raise RecordStoreError(f"cannot prepare the record store: {exc}") from exc

    async def _unlock(self, db: aiosqlite.Connection) -> None:
        """Find the data key and the index key (in the open transaction): made for a new store,
        re-sealed under the current key after an interrupted rotation."""
        check = await _scalar(db, "SELECT value FROM meta WHERE name=?", (_KEY_CHECK,))
        try:
            unlocked = crypto.unlock(
                self.path,
                None if check is None else bytes(check),
                self.key_dir,
                create=self.create_key,
                extra=self.extra_keys,
            )
            crypto.register_store(self.key_dir, "record", self.path)
        except (crypto.DataKeyError, OSError) as exc:
            raise RecordStoreError(str(exc)) from exc
        self._cipher = unlocked.cipher
        if unlocked.new:
            if await _scalar(db, "SELECT 1 FROM meta WHERE name=?", (_INDEX_KEY,)):
                # a new index key would silently break the deduplication of everything stored
                raise RecordStoreError(
                    f"{self.path} has an index key but no key check: damaged or tampered with;"
                    " restore it from a backup"
                )
            index_key = secrets.token_bytes(32)
        else:
            sealed = await _scalar(db, "SELECT value FROM meta WHERE name=?", (_INDEX_KEY,))
            try:
                index_key = (unlocked.behind or unlocked.cipher).open(
                    bytes(sealed or b""), _INDEX_KEY.encode()
                )
            except (crypto.Tampered, crypto.SealedByAnotherKey) as exc:
                raise RecordStoreError(f"{self.path}: the index key does not open: {exc}") from None
        self._index = _Index(index_key)
        if unlocked.behind is not None:
            count = await _reseal(db, unlocked.behind, unlocked.cipher)
            log.info("record store: %d resource(s) re-sealed under the current data key", count)
        if unlocked.new or unlocked.behind is not None:
            await self._write_keys(db, unlocked.cipher, index_key)

    async def _write_keys(
        self, db: aiosqlite.Connection, cipher: crypto.Cipher, index_key: bytes
    ) -> None:
        await db.executemany(
            "INSERT INTO meta (name, value) VALUES (?, ?)"
            " ON CONFLICT(name) DO UPDATE SET value=excluded.value",
            [
                (_KEY_CHECK, cipher.seal(crypto.CHECK_TEXT, crypto.CHECK_AAD)),
                (_INDEX_KEY, cipher.seal(index_key, _INDEX_KEY.encode())),
            ],
        )

    async def _check_key(self, db: aiosqlite.Connection) -> None:
        """Refuse to seal under a key the file no longer uses (rotated while this process ran):
        what it wrote now would be unreadable once the old key is forgotten."""
        check = await _scalar(db, "SELECT value FROM meta WHERE name=?", (_KEY_CHECK,))
        key_id = bytes(check or b"")[1 : 1 + crypto.KEY_ID_BYTES]
        if key_id != self._crypto()[0].key_id:
            raise RecordStoreError(
                f"{self.path}: the data key was changed (edge keys rotate) while this process"
                " ran; restart it"
            )

    def _crypto(self) -> tuple[crypto.Cipher, _Index]:
        if self._cipher is None or self._index is None:
            raise RuntimeError("record store is not open")
        return self._cipher, self._index

    async def rotate_key(self, new_key: bytes) -> int:
        """Re-seal every resource and the index key under ``new_key``, in one transaction
        (the hashes stay: the index key does not change). Returns how many were re-sealed."""
        old = self._crypto()[0]
        new = crypto.Cipher(new_key)
        db = self._conn()
        async with self._lock:
            await db.execute("BEGIN IMMEDIATE")
            try:
                await self._check_key(db)
                sealed = await _scalar(db, "SELECT value FROM meta WHERE name=?", (_INDEX_KEY,))
                index_key = old.open(bytes(sealed), _INDEX_KEY.encode())
                count = await _reseal(db, old, new)
                await self._write_keys(db, new, index_key)
                await db.execute("COMMIT")
            except BaseException:
                await _rollback(db)
                raise
        self._cipher = new
        return count

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
        cipher, index = self._crypto()
        for entries in valid:
            for entry in entries:
                entry.new_id = index.resource_id(entry.new_id)
        created_at = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
        async with self._lock:
            await db.execute("BEGIN IMMEDIATE")
            try:
                await self._check_key(db)
                # Everything the planning needs, read in a few queries for the whole batch.
                known = _Known(
                    by_key=await _existing_keys(db, index, {_key(e) for b in valid for e in b}),
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
                await _insert(db, cipher, index, writes, created_at)
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
        where, params = _filters(self._crypto()[1], resource_type, patient, code, since, until)
        sql = f"SELECT type, id, json FROM resource r WHERE {where} ORDER BY r.effective, r.rowid"
        async with self._lock:
            rows = await self._conn().execute_fetchall(sql, params)
        return [_load_decimal(self._open(*row)) for row in rows]

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
        where, params = _filters(self._crypto()[1], resource_type, patient, code, since, until)
        async with self._lock:
            value = await _scalar(
                self._conn(), f"SELECT count(*) FROM resource r WHERE {where}", params
            )
        return int(value or 0)

    async def read(self, reference: str) -> dict[str, Any] | None:
        """The resource at ``Type/id``, or None."""
        rtype, _, rid = reference.partition("/")
        async with self._lock:
            sealed = await _scalar(
                self._conn(), "SELECT json FROM resource WHERE type = ? AND id = ?", (rtype, rid)
            )
        return None if sealed is None else _load_decimal(self._open(rtype, rid, sealed))

    def _open(self, rtype: str, rid: str, sealed: bytes) -> str:
        """A resource's JSON; ``RecordStoreError`` naming it if it does not authenticate."""
        try:
            return self._crypto()[0].open_text(bytes(sealed), _aad(rtype, rid))
        except (crypto.Tampered, crypto.SealedByAnotherKey) as exc:
            raise RecordStoreError(f"{self.path}: {rtype}/{rid}: {exc}") from None

    async def export_ndjson(self, out: IO[str]) -> int:
        """Write every resource as stored, one per line: patients, devices, observations, then
        anything else, each in creation order. Returns the number of lines written."""
        order = " ".join(f"WHEN '{name}' THEN {rank}" for rank, name in enumerate(KNOWN_TYPES))
        sql = f"SELECT type, id, json FROM resource ORDER BY CASE type {order} ELSE 99 END, rowid"
        written = 0
        async with self._lock, self._conn().execute(sql) as cursor:
            async for row in cursor:
                out.write(self._open(*row))
                out.write("\n")
                written += 1
        return written


def _filters(
    index: _Index,
    resource_type: str | None,
    patient: str | None,
    code: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
) -> tuple[str, list[str | bytes]]:
    clauses: list[str] = []
    params: list[str | bytes] = []
    if resource_type is not None:
        clauses.append("r.type = ?")
        params.append(resource_type)
    if patient is not None:
        system, bar, value = patient.partition("|")
        if not bar or not system or not value:
            raise ValueError("patient must be SYSTEM|VALUE")
        clauses.append("r.patient = ?")
        params.append(index.patient(system, value))
    if code is not None:
        system, bar, value = code.rpartition("|")
        if bar:
            clauses.append(
                "EXISTS (SELECT 1 FROM resource_code c"
                " WHERE c.resource_id = r.id AND c.code = ? AND c.system = ?)"
            )
            params += [index.code(value), system]
        else:
            clauses.append(
                "EXISTS (SELECT 1 FROM resource_code c WHERE c.resource_id = r.id AND c.code = ?)"
            )
            params.append(index.code(value))
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


# --------------------------------------------------------------------------- at rest


async def _reseal(db: aiosqlite.Connection, old: crypto.Cipher, new: crypto.Cipher) -> int:
    """Every resource opened with ``old`` and sealed again with ``new`` (fresh nonces). One
    that does not authenticate was tampered with: kept as it is (unreadable under any key, it
    fails only its own reads) rather than blocking the rotation of all the rest."""
    rows = await db.execute_fetchall("SELECT type, id, json FROM resource")
    updates = []
    for rtype, rid, sealed in rows:
        try:
            plain = old.open(bytes(sealed), _aad(rtype, rid))
        except (crypto.Tampered, crypto.SealedByAnotherKey):
            log.warning("record store: a stored resource failed authentication; left as it is")
            continue
        updates.append((new.seal(plain, _aad(rtype, rid)), rid))
    await db.executemany("UPDATE resource SET json = ? WHERE id = ?", updates)
    return len(updates)


async def _detach_v1(db: aiosqlite.Connection) -> None:
    """Move a schema-1 store's tables aside (their indexes too: index names are global)."""
    for index in ("resource_identifier", "resource_patient", "resource_code_code"):
        await db.execute(f"DROP INDEX IF EXISTS {index}")
    await db.execute("ALTER TABLE resource_code RENAME TO v1_resource_code")
    await db.execute("ALTER TABLE resource RENAME TO v1_resource")


async def _seal_v1(db: aiosqlite.Connection, keys: tuple[crypto.Cipher, _Index]) -> None:
    """Copy a schema-1 store into the sealed tables, then drop the clear ones."""
    cipher, index = keys
    rows = await db.execute_fetchall(
        "SELECT id, type, identifier_system, identifier_value, patient_system, patient_value,"
        " effective, json, created_at FROM v1_resource ORDER BY rowid"
    )
    # ids in clear were name-based uuids of the identifiers: each takes its keyed id, and every
    # reference to it follows
    ids = {str(row[0]): index.resource_id(str(row[0])) for row in rows}
    targets = {f"{row[1]}/{row[0]}": f"{row[1]}/{ids[str(row[0])]}" for row in rows}
    await db.executemany(
        "INSERT INTO resource (id, type, identifier, patient, effective, json, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (
                ids[rid],
                rtype,
                index.identifier(system, value),
                None if p_system is None else index.patient(p_system, p_value),
                effective,
                cipher.seal(_rekeyed(str(text), ids[rid], targets), _aad(rtype, ids[rid])),
                created_at,
            )
            for rid, rtype, system, value, p_system, p_value, effective, text, created_at in rows
        ],
    )
    codes = await db.execute_fetchall("SELECT resource_id, system, code FROM v1_resource_code")
    await db.executemany(
        "INSERT INTO resource_code (resource_id, system, code) VALUES (?, ?, ?)",
        [(ids[rid], system, index.code(code)) for rid, system, code in codes],
    )
    await db.execute("DROP TABLE v1_resource_code")
    await db.execute("DROP TABLE v1_resource")


def _rekeyed(text: str, new_id: str, targets: dict[str, str]) -> bytes:
    """A schema-1 resource with its new id and its references to re-keyed resources rewritten
    (numbers kept as they were written)."""
    resource = _load_exact(text)
    resource["id"] = new_id
    return _dump_exact(_rewrite(resource, targets)).encode()
