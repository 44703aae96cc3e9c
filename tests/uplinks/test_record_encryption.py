"""The local record at rest: sealed resources, hashed lookups, migration from clear, tampering,
keys, and rotation together with the outbox (docs/encryption.md)."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import os
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge import app
from gateway import crypto, keys
from gateway.outbox import NewEnvelope, Outbox
from gateway.uplinks.record_store import EntryStatus, RecordStore, RecordStoreError
from tests.uplinks.fhir_samples import (
    LOINC,
    PATIENT,
    PATIENT_SYSTEM,
    SCALE_EUI64,
    reading_body,
)

PATIENT_TOKEN = f"{PATIENT_SYSTEM}|{PATIENT}"
IDENTIFIER = "obs-7c41e9d2"
VALUE = Decimal("72.345")
SECRETS = (PATIENT.encode(), b"72.345", IDENTIFIER.encode(), SCALE_EUI64.encode())
WHEN = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def _no_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("EDGE_DATA_KEY", "EDGE_DATA_KEY_NEW", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)


def raw_bytes(path: Path) -> bytes:
    return b"".join(f.read_bytes() for f in path.parent.iterdir() if f.name.startswith(path.name))


async def _weights(path: Path, **options: object) -> list[Decimal]:
    async with RecordStore(path, **options) as store:  # type: ignore[arg-type]
        found = await store.search(patient=PATIENT_TOKEN, code=f"{LOINC}|29463-7", since=WHEN)
    return [obs["valueQuantity"]["value"] for obs in found]


async def test_the_record_file_holds_no_value_nor_identifier_in_plaintext(tmp_path: Path) -> None:
    path = tmp_path / "record.sqlite"
    async with RecordStore(path) as store:
        await store.apply_transaction(reading_body(IDENTIFIER, VALUE))
        out = io.StringIO()
        assert await store.export_ndjson(out) == 3
    for secret in SECRETS:
        assert secret not in raw_bytes(path), secret
    assert PATIENT in out.getvalue() and "72.345" in out.getvalue()
    # the lookups still work on the hashes, and numbers come back exact
    assert await _weights(path) == [VALUE]
    async with RecordStore(path) as store:
        assert await store.count(patient=f"{PATIENT_SYSTEM}|9999999999") == 0
        assert await store.count(code="29463-7") == 1
        again = await store.apply_transaction(reading_body(IDENTIFIER, VALUE))
        assert [r.status for r in again] == [EntryStatus.EXISTS] * 3


async def test_a_tampered_resource_fails_its_own_reads_only(tmp_path: Path) -> None:
    path = tmp_path / "record.sqlite"
    async with RecordStore(path) as store:
        [_, _, obs] = await store.apply_transaction(reading_body(IDENTIFIER, VALUE))
        [_, _, other] = await store.apply_transaction(reading_body("obs-2", Decimal("71.5")))
    with sqlite3.connect(path) as conn:
        (sealed,) = conn.execute("SELECT json FROM resource WHERE id=?", (obs.id,)).fetchone()
        flipped = bytes(sealed[:-1]) + bytes([sealed[-1] ^ 1])
        conn.execute("UPDATE resource SET json=? WHERE id=?", (flipped, obs.id))
    async with RecordStore(path) as store:
        with pytest.raises(RecordStoreError, match=f"Observation/{obs.id}"):
            await store.read(obs.location)
        assert (await store.read(other.location) or {})["valueQuantity"]["value"] == Decimal("71.5")
        # writing goes on: lookups never open a resource
        created = await store.apply_transaction(reading_body("obs-3", Decimal("70.1")))
        assert created[2].status is EntryStatus.CREATED
    # a ciphertext moved to another row does not open there either
    with sqlite3.connect(path) as conn:
        (good,) = conn.execute("SELECT json FROM resource WHERE id=?", (other.id,)).fetchone()
        conn.execute("UPDATE resource SET json=? WHERE id=?", (good, created[2].id))
    async with RecordStore(path) as store:
        with pytest.raises(RecordStoreError, match="authentication"):
            await store.read(created[2].location)


async def test_a_missing_or_wrong_key_is_refused_never_an_empty_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "record.sqlite"
    async with RecordStore(path) as store:
        await store.apply_transaction(reading_body(IDENTIFIER, VALUE))
    key = (tmp_path / "data.key").read_bytes()
    (tmp_path / "data.key").unlink()
    with pytest.raises(RecordStoreError, match="encrypted but its data key was not found"):
        await _weights(path, create_key=False)
    with pytest.raises(RecordStoreError, match="encrypted but its data key was not found"):
        await _weights(path)  # a key is made only for a store that has none
    monkeypatch.setenv("EDGE_DATA_KEY", crypto.new_key().hex())
    with pytest.raises(RecordStoreError, match="not the key"):
        await _weights(path)
    monkeypatch.setenv("EDGE_DATA_KEY", key.decode().strip())
    assert await _weights(path) == [VALUE]


def test_the_cli_reads_the_record_with_the_gateways_key_and_never_makes_one(
    tmp_path: Path,
) -> None:
    record = tmp_path / "record.sqlite"
    asyncio.run(_fill(record))
    shown = CliRunner().invoke(app, ["records", "list", "--data-dir", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    assert "72.345" in shown.output
    (tmp_path / "data.key").unlink()
    refused = CliRunner().invoke(app, ["records", "list", "--data-dir", str(tmp_path)])
    assert refused.exit_code == 1 and "data key was not found" in refused.output
    assert not (tmp_path / "data.key").exists()


async def _fill(record: Path) -> None:
    async with RecordStore(record) as store:
        await store.apply_transaction(reading_body(IDENTIFIER, VALUE))


V1_SCHEMA = """
CREATE TABLE resource (
    id TEXT PRIMARY KEY, type TEXT NOT NULL, identifier_system TEXT NOT NULL,
    identifier_value TEXT NOT NULL, patient_system TEXT, patient_value TEXT, effective TEXT,
    json TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE UNIQUE INDEX resource_identifier ON resource (type, identifier_system, identifier_value);
CREATE INDEX resource_patient ON resource (type, patient_system, patient_value, effective);
CREATE TABLE resource_code (
    resource_id TEXT NOT NULL REFERENCES resource (id) ON DELETE CASCADE,
    system TEXT NOT NULL, code TEXT NOT NULL, PRIMARY KEY (resource_id, system, code)
) WITHOUT ROWID;
CREATE INDEX resource_code_code ON resource_code (code, system);
PRAGMA user_version = 1;
"""


async def test_a_record_from_before_encryption_is_sealed_at_open(tmp_path: Path) -> None:
    """A schema-1 record (everything in clear) is converted in one transaction, then vacuumed."""
    source = tmp_path / "source.sqlite"
    async with RecordStore(source) as store:  # what the clear tables held, resource by resource
        await store.apply_transaction(reading_body(IDENTIFIER, VALUE))
        out = io.StringIO()
        await store.export_ndjson(out)
    path = tmp_path / "old" / "record.sqlite"
    path.parent.mkdir()
    import json

    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(V1_SCHEMA)
        for n, line in enumerate(out.getvalue().splitlines()):
            res = json.loads(line)
            ident = res["identifier"][0]
            subject = res.get("subject", {}).get("identifier", {})
            conn.execute(
                "INSERT INTO resource VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    res["id"],
                    res["resourceType"],
                    ident["system"],
                    ident["value"],
                    subject.get("system"),
                    subject.get("value"),
                    "2026-01-01T08:00:00.000000Z" if subject else None,
                    line,
                    f"2026-01-01T08:00:0{n}",
                ),
            )
            for coding in res.get("code", {}).get("coding", []):
                conn.execute(
                    "INSERT INTO resource_code VALUES (?,?,?)",
                    (res["id"], coding["system"], coding["code"]),
                )
    conn.close()
    assert PATIENT.encode() in raw_bytes(path)
    assert await _weights(path) == [VALUE]
    for secret in SECRETS:
        assert secret not in raw_bytes(path), secret
    async with RecordStore(path) as store:
        again = await store.apply_transaction(reading_body(IDENTIFIER, VALUE))
        assert [r.status for r in again] == [EntryStatus.EXISTS] * 3
        assert await store.count() == 3
        # ids in clear were re-keyed, and the references followed them
        observation = await store.read(again[2].location)
        assert observation is not None
        assert await store.read(observation["device"]["reference"]) is not None
    for line in out.getvalue().splitlines():
        assert json.loads(line)["id"].encode() not in raw_bytes(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (2,)
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert not {t for t in tables if t.startswith("v1_")}


async def _outbox_and_record(data: Path) -> None:
    async with Outbox(data / "outbox.sqlite") as outbox:
        await outbox.ingest(
            key="r1",
            device="DEV",
            kind="weight",
            category="vital-signs",
            patient=PATIENT_TOKEN,
            received_at="2026-11-25T10:00:00+00:00",
            payload=b"{}",
            envelopes=[NewEnvelope(destination="record", idem_key="k", body=b"{}")],
        )
    await _fill(data / "record.sqlite")


def test_keys_rotate_re_encrypts_the_record_too(tmp_path: Path) -> None:
    asyncio.run(_outbox_and_record(tmp_path))
    old = crypto.read_key_file(tmp_path / "data.key")
    result = CliRunner().invoke(app, ["keys", "rotate", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "and 3 record resource(s)" in result.output
    new = crypto.read_key_file(tmp_path / "data.key")
    assert new != old
    assert not [f for f in os.listdir(tmp_path) if f.startswith("data.key.")]
    assert asyncio.run(_weights(tmp_path / "record.sqlite")) == [VALUE]
    (tmp_path / "data.key").unlink()
    os.environ["EDGE_DATA_KEY"] = old.hex()
    try:
        with pytest.raises(RecordStoreError, match="not the key"):
            asyncio.run(_weights(tmp_path / "record.sqlite"))
    finally:
        del os.environ["EDGE_DATA_KEY"]


async def test_a_rotation_cut_between_the_outbox_and_the_record_is_finished(
    tmp_path: Path,
) -> None:
    """The outbox committed under the new key, the record still under the old one: the record
    re-seals itself when opened, and the old key is forgotten only after that."""
    await _outbox_and_record(tmp_path)
    key_file = tmp_path / "data.key"
    old, new = crypto.read_key_file(key_file), crypto.new_key()

    def swap() -> None:
        crypto.write_key_file(key_file.with_name("data.key.old"), old)
        crypto.write_key_file(key_file, new)

    async with Outbox(tmp_path / "outbox.sqlite") as outbox:
        await outbox.rotate_key(new, before_commit=swap)
    # ... power cut here: the record was never re-sealed
    record = tmp_path / "record.sqlite"
    await keys.finish_rotation(tmp_path, keys.record_paths(tmp_path))
    assert not key_file.with_name("data.key.old").exists()
    assert await _weights(record) == [VALUE]
    with sqlite3.connect(record) as conn:
        sealed = [bytes(row[0]) for row in conn.execute("SELECT json FROM resource")]
    assert {s[1 : 1 + crypto.KEY_ID_BYTES] for s in sealed} == {crypto.key_id(new)}


async def test_stored_ids_do_not_give_away_the_identifiers(tmp_path: Path) -> None:
    """The mappers' fullUrls are name-based uuids of the identifiers (which hold the patient's):
    anyone could test candidate patient numbers against them, so stored ids are keyed."""
    path = tmp_path / "record.sqlite"
    body = reading_body(IDENTIFIER, VALUE)
    full_urls = [e["fullUrl"].removeprefix("urn:uuid:") for e in json.loads(body)["entry"]]
    async with RecordStore(path) as store:
        results = await store.apply_transaction(body)
        observation = await store.read(results[2].location)
    assert observation is not None
    assert observation["device"] == {"reference": f"Device/{results[0].id}"}
    raw = raw_bytes(path)
    for url in full_urls:
        assert url.encode() not in raw


async def test_a_process_that_missed_a_rotation_stops_writing(tmp_path: Path) -> None:
    record = tmp_path / "record.sqlite"
    await _outbox_and_record(tmp_path)
    async with RecordStore(record) as stale:
        await keys.rotate(tmp_path, keys.record_paths(tmp_path))
        with pytest.raises(RecordStoreError, match="restart"):
            await stale.apply_transaction(reading_body("obs-after", Decimal("70.0")))
    assert await _weights(record) == [VALUE]


def test_a_record_outside_the_data_directory_is_rotated_too(tmp_path: Path) -> None:
    """No --config: the record is found because it was registered when the key sealed it."""
    data = tmp_path / "data"
    elsewhere = tmp_path / "srv" / "alice.sqlite"
    asyncio.run(_outbox_and_record(data))
    asyncio.run(_fill_with_key(elsewhere, data))
    result = CliRunner().invoke(app, ["keys", "rotate", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    assert "and 6 record resource(s)" in result.output
    assert asyncio.run(_weights(elsewhere, key_dir=data)) == [VALUE]
    # a registered record that is not there stops the rotation before anything changes
    key = (data / "data.key").read_bytes()
    elsewhere.rename(tmp_path / "moved.sqlite")
    refused = CliRunner().invoke(app, ["keys", "rotate", "--data-dir", str(data)])
    assert refused.exit_code == 1 and "alice.sqlite" in refused.output
    assert (data / "data.key").read_bytes() == key


async def _fill_with_key(record: Path, key_dir: Path) -> None:
    async with RecordStore(record, key_dir=key_dir) as store:
        await store.apply_transaction(reading_body(IDENTIFIER, VALUE))


def _rotate_with_a_power_cut_before_the_record(tmp_path: Path, mp: pytest.MonkeyPatch) -> None:
    """``keys.rotate`` stopped after the outbox's commit: the record is still under the old key."""
    with mp.context() as patched:

        async def power_cut(self: RecordStore, new_key: bytes) -> int:
            raise OSError("power cut")

        patched.setattr(RecordStore, "rotate_key", power_cut)
        with pytest.raises(OSError):
            asyncio.run(keys.rotate(tmp_path, keys.record_paths(tmp_path)))


def test_a_rotation_cut_inside_keys_rotate_finishes_when_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asyncio.run(_outbox_and_record(tmp_path))
    _rotate_with_a_power_cut_before_the_record(tmp_path, monkeypatch)
    assert (tmp_path / "data.key.old").exists()  # the record still needs it
    result = CliRunner().invoke(app, ["keys", "rotate", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "data.key.old").exists()
    assert asyncio.run(_weights(tmp_path / "record.sqlite")) == [VALUE]


def _stores_keyed_by_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """An outbox and a record under EDGE_DATA_KEY, and EDGE_DATA_KEY_NEW (returned) set for a
    rotation."""
    old, new = crypto.new_key(), crypto.new_key()
    monkeypatch.setenv("EDGE_DATA_KEY", old.hex())
    asyncio.run(_outbox_and_record(tmp_path))
    monkeypatch.setenv("EDGE_DATA_KEY_NEW", new.hex())
    return new


def test_after_a_rotation_from_the_environment_other_commands_never_undo_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    new = _stores_keyed_by_the_environment(tmp_path, monkeypatch)
    result = CliRunner().invoke(app, ["keys", "rotate", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    # both still in the environment: a command run now must not re-seal under the old key
    listed = CliRunner().invoke(app, ["records", "list", "--data-dir", str(tmp_path)])
    assert listed.exit_code == 1 and "not the key" in listed.output
    monkeypatch.setenv("EDGE_DATA_KEY", new.hex())
    monkeypatch.delenv("EDGE_DATA_KEY_NEW")
    assert asyncio.run(_weights(tmp_path / "record.sqlite")) == [VALUE]


def test_a_rotation_from_the_environment_cut_between_stores_finishes_when_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    new = _stores_keyed_by_the_environment(tmp_path, monkeypatch)
    _rotate_with_a_power_cut_before_the_record(tmp_path, monkeypatch)
    result = CliRunner().invoke(app, ["keys", "rotate", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    monkeypatch.setenv("EDGE_DATA_KEY", new.hex())
    monkeypatch.delenv("EDGE_DATA_KEY_NEW")
    assert asyncio.run(_weights(tmp_path / "record.sqlite")) == [VALUE]

    async def outbox_opens() -> int:
        async with Outbox(tmp_path / "outbox.sqlite") as outbox:
            return len(await outbox.lease("record", 10))

    assert asyncio.run(outbox_opens()) == 1


def test_records_list_shows_observations_about_a_device_too(tmp_path: Path) -> None:
    """A battery level's Observation is about the scale (subject: the Device), not a patient."""
    bundle = json.loads(reading_body(IDENTIFIER, VALUE))
    device_url = bundle["entry"][0]["fullUrl"]
    battery = {
        "fullUrl": "urn:uuid:0b0e7e52-9d0f-4f7e-8d53-3a4d4e5f6a7b",
        "resource": {
            "resourceType": "Observation",
            "identifier": [{"system": "urn:example:battery", "value": "battery-1"}],
            "status": "final",
            "code": {"coding": [{"system": "urn:iso:std:iso:11073:10101", "code": "67996"}]},
            "subject": {"reference": device_url},
            "effectiveDateTime": "2026-01-01T08:00:00+00:00",
            "valueQuantity": {"value": 87, "unit": "%"},
        },
        "request": {"method": "POST", "url": "Observation"},
    }
    bundle["entry"].append(battery)

    async def fill() -> None:
        async with RecordStore(tmp_path / "record.sqlite") as store:
            await store.apply_transaction(json.dumps(bundle).encode())

    asyncio.run(fill())
    shown = CliRunner().invoke(app, ["records", "list", "--data-dir", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    assert "subject Device/" in shown.output and "2 observation(s)" in shown.output
