"""Encryption at rest of the outbox: the cipher, the data key's sources, tampering, migration of
an outbox from before encryption, key rotation (docs/encryption.md)."""

from __future__ import annotations

import asyncio
import base64
import os
import sqlite3
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge import app
from gateway import crypto
from gateway.outbox import EnvelopeState, NewEnvelope, Outbox, OutboxError
from gateway.outbox.store import TAMPERED

PATIENT = "urn:oid:1.2.250.1.213.1.4.10|1850175000042"
SECRETS = (b"1850175000042", b"72.350", b"71.950")


@pytest.fixture(autouse=True)
def _no_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("EDGE_DATA_KEY", "EDGE_DATA_KEY_NEW", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)


def envelope(dest: str = "record", value: str = "72.350") -> NewEnvelope:
    return NewEnvelope(
        destination=dest,
        idem_key=f"urn:ietf:rfc:3986|{PATIENT}-weight-{value}",
        body=b'{"resourceType":"Bundle","value":' + value.encode() + b"}",
    )


async def ingest(outbox: Outbox, key: str, value: str, *dests: str) -> None:
    await outbox.ingest(
        key=key,
        device="DEV",
        kind="weight",
        category="vital-signs",
        patient=PATIENT,
        received_at="2026-11-25T10:00:00+00:00",
        payload=b'{"weight":"' + value.encode() + b'"}',
        envelopes=[envelope(d, value) for d in dests or ("record",)],
    )


def raw_bytes(path: Path) -> bytes:
    return b"".join(f.read_bytes() for f in path.parent.iterdir() if f.name.startswith(path.name))


# -- the cipher -------------------------------------------------------------------------------
def test_a_sealed_value_opens_with_its_key_and_associated_data():
    cipher = crypto.Cipher(crypto.new_key())
    sealed = cipher.seal(b"72.350", b"readings.payload|r1")
    assert b"72.350" not in sealed
    assert sealed[0] == crypto.VERSION and sealed[1:5] == cipher.key_id
    assert cipher.open(sealed, b"readings.payload|r1") == b"72.350"


def test_nonces_never_repeat():
    cipher = crypto.Cipher(crypto.new_key())
    sealed = [cipher.seal(b"same", b"aad") for _ in range(2000)]
    nonces = {s[1 + crypto.KEY_ID_BYTES : crypto.HEADER] for s in sealed}
    assert len(nonces) == 2000 and len(set(sealed)) == 2000


def test_a_value_does_not_open_in_another_row_or_column_or_altered():
    cipher = crypto.Cipher(crypto.new_key())
    sealed = cipher.seal(b"72.350", b"envelopes.body|r1|record")
    for aad in (b"envelopes.body|r2|record", b"envelopes.body|r1|fhir", b"readings.payload|r1"):
        with pytest.raises(crypto.Tampered):
            cipher.open(sealed, aad)
    altered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(crypto.Tampered):
        cipher.open(altered, b"envelopes.body|r1|record")
    with pytest.raises(crypto.SealedByAnotherKey):
        crypto.Cipher(crypto.new_key()).open(sealed, b"envelopes.body|r1|record")


def test_keys_are_parsed_as_hex_base64_or_raw():
    key = crypto.new_key()
    for given in (key.hex().encode(), base64.b64encode(key), key):
        assert crypto.parse_key(given, "test") == key
    with pytest.raises(crypto.DataKeyError, match="32-byte"):
        crypto.parse_key(b"short", "test")


# -- the outbox -------------------------------------------------------------------------------
async def test_the_outbox_file_holds_no_value_nor_identifier_in_plaintext(tmp_path):
    path = tmp_path / "outbox.sqlite"
    async with Outbox(path) as outbox:
        await ingest(outbox, "r1", "72.350")
        await ingest(outbox, "r2", "71.950")
        await outbox.quarantine_input(
            device="DEV", characteristic="2a9d", reason="undecodable", raw=b"72.350"
        )
        leased = await outbox.lease("record", 10)
        assert [item.envelope.body for item in leased] == [
            b'{"resourceType":"Bundle","value":72.350}',
            b'{"resourceType":"Bundle","value":71.950}',
        ]
        assert leased[0].patient == PATIENT and PATIENT in leased[0].envelope.idem_key
        raw = raw_bytes(path)
    for secret in SECRETS:
        assert secret not in raw
    key_file = tmp_path / "data.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


async def test_a_tampered_body_is_quarantined_and_never_sent_the_others_go(tmp_path):
    path = tmp_path / "outbox.sqlite"
    async with Outbox(path) as outbox:
        await ingest(outbox, "r1", "72.350")
        await ingest(outbox, "r2", "71.950")
        await ingest(outbox, "r3", "72.100")
        with sqlite3.connect(path) as db:
            (body,) = db.execute("SELECT body FROM bodies WHERE envelope_id=2").fetchone()
            db.execute("UPDATE bodies SET body=? WHERE envelope_id=2", (body[:-1] + b"\x00",))
        leased = await outbox.lease("record", 10)
        assert [item.envelope.id for item in leased] == [1, 3]
        assert await outbox.lease("record", 10) == []
        status = await outbox.status()
        entries = [e for e in await outbox.audit_log() if e.action == "quarantined"]
    assert status.by_destination["record"] == {"quarantined": 1, "pending": 2}
    assert [(q["envelope"], q["reason"]) for q in status.quarantined] == [(2, TAMPERED)]
    assert [(e.envelope, e.reason) for e in entries] == [(2, TAMPERED)]


@pytest.mark.parametrize("byte", [1, 4])  # inside the key id: it is not authenticated alone
async def test_a_changed_key_id_is_tampering_of_that_envelope_not_a_key_problem(tmp_path, byte):
    """One flipped byte in a stored value's key id must fail that envelope only; taking it for
    a key change would stop the whole queue, restart after restart."""
    path = tmp_path / "outbox.sqlite"
    async with Outbox(path) as outbox:
        await ingest(outbox, "r1", "72.350")
        await ingest(outbox, "r2", "71.950")
        await ingest(outbox, "r3", "72.100")
        with sqlite3.connect(path) as db:
            (body,) = db.execute("SELECT body FROM bodies WHERE envelope_id=2").fetchone()
            changed = body[:byte] + bytes([body[byte] ^ 0xFF]) + body[byte + 1 :]
            db.execute("UPDATE bodies SET body=? WHERE envelope_id=2", (changed,))
    async with Outbox(path) as outbox:  # and after a restart too
        leased = await outbox.lease("record", 10)
        status = await outbox.status()
    assert [item.envelope.id for item in leased] == [1, 3]
    assert [(q["envelope"], q["reason"]) for q in status.quarantined] == [(2, TAMPERED)]


async def test_a_ciphertext_moved_to_another_row_fails_there(tmp_path):
    path = tmp_path / "outbox.sqlite"
    async with Outbox(path) as outbox:
        await ingest(outbox, "r1", "72.350")
        await ingest(outbox, "r2", "71.950")
        with sqlite3.connect(path) as db:  # r1's body copied over r2's: valid, but not r2's
            db.execute("UPDATE bodies SET body=(SELECT body FROM bodies WHERE envelope_id=1)")
        decided: list[tuple[str | None, str]] = []

        def decide(patient, category):  # type: ignore[no-untyped-def]
            from gateway.consent import Decision

            decided.append((patient, category))
            return Decision(permit=True, reason="granted", grant_id=1)

        leased, held, _ = await outbox.lease_consented("record", 10, decide=decide)
        status = await outbox.status()
    assert [item.envelope.id for item in leased] == [1] and held == 0
    assert decided == [(PATIENT, "vital-signs")]
    assert [(q["envelope"], q["reason"]) for q in status.quarantined] == [(2, TAMPERED)]


async def test_held_groups_release_and_purge_go_by_the_pseudonym(tmp_path):
    async with Outbox(tmp_path / "outbox.sqlite") as outbox:
        await outbox.ingest(
            key="r1",
            device="DEV",
            kind="weight",
            category="vital-signs",
            patient=PATIENT,
            received_at="t",
            payload=b"{}",
            envelopes=[
                NewEnvelope(
                    destination=d,
                    idem_key="k",
                    body=b"{}",
                    state=EnvelopeState.CONSENT_MISSING,
                )
                for d in ("record", "fhir")
            ],
        )
        assert sorted(await outbox.held_groups()) == [
            ("fhir", PATIENT, "vital-signs"),
            ("record", PATIENT, "vital-signs"),
        ]
        assert await outbox.release_held("record", PATIENT, "vital-signs", "permit:1:ok") == 1
        assert await outbox.purge(patient=PATIENT, reason="revoked") == 2


async def test_without_its_key_an_encrypted_outbox_is_refused_not_empty(tmp_path):
    path = tmp_path / "outbox.sqlite"
    async with Outbox(path) as outbox:
        await ingest(outbox, "r1", "72.350")
    (tmp_path / "data.key").unlink()
    with pytest.raises(OutboxError, match="is encrypted but its data key was not found") as refused:
        await Outbox(path).open()
    assert "EDGE_DATA_KEY" in str(refused.value) and str(tmp_path / "data.key") in str(
        refused.value
    )
    assert not (tmp_path / "data.key").exists()  # no new key made for encrypted data


async def test_a_wrong_key_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "outbox.sqlite"
    async with Outbox(path) as outbox:
        await ingest(outbox, "r1", "72.350")
    crypto.write_key_file(tmp_path / "data.key", crypto.new_key())
    with pytest.raises(OutboxError, match="not the key its readings were encrypted with"):
        await Outbox(path).open()
    monkeypatch.setenv("EDGE_DATA_KEY", crypto.new_key().hex())
    with pytest.raises(OutboxError, match=r"\$EDGE_DATA_KEY is not the key"):
        await Outbox(path).open()


async def test_a_key_file_open_to_others_is_refused(tmp_path):
    path = tmp_path / "outbox.sqlite"
    async with Outbox(path):
        pass
    (tmp_path / "data.key").chmod(0o644)
    with pytest.raises(OutboxError, match="chmod 600"):
        await Outbox(path).open()


async def test_a_key_from_the_environment_or_a_credential(tmp_path, monkeypatch):
    key = crypto.new_key()
    path = tmp_path / "outbox.sqlite"
    monkeypatch.setenv("EDGE_DATA_KEY", base64.b64encode(key).decode())
    async with Outbox(path) as outbox:
        await ingest(outbox, "r1", "72.350")
        assert outbox.key_source == "$EDGE_DATA_KEY"
    assert not (tmp_path / "data.key").exists()
    monkeypatch.delenv("EDGE_DATA_KEY")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "edge-data-key").write_bytes(key)  # systemd hands the raw bytes
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    async with Outbox(path) as outbox:
        [item] = await outbox.lease("record", 10)
        assert item.envelope.body.endswith(b"72.350}")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(OutboxError, match="not found"):
        await Outbox(path).open()


_OLD_SCHEMA = """
CREATE TABLE readings(id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, device TEXT NOT NULL,
    kind TEXT NOT NULL, category TEXT NOT NULL, patient TEXT, received_at TEXT NOT NULL,
    payload BLOB NOT NULL);
CREATE TABLE envelopes(id INTEGER PRIMARY KEY, reading_id INTEGER NOT NULL REFERENCES readings(id),
    destination TEXT NOT NULL, idem_key TEXT NOT NULL, state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL DEFAULT 0, lease_until REAL,
    decision TEXT, last_error TEXT, body BLOB NOT NULL, updated_at REAL NOT NULL,
    UNIQUE(reading_id, destination));
CREATE TABLE quarantine(id INTEGER PRIMARY KEY, at REAL NOT NULL, source TEXT NOT NULL,
    device TEXT, characteristic TEXT, destination TEXT, envelope_id INTEGER,
    reason TEXT NOT NULL, raw TEXT);
"""


def _old_outbox(path: Path, state: str) -> sqlite3.Connection:
    """An outbox as written before encryption: one reading, its envelope in ``state``; the
    connection is left open (and in a transaction) for more rows."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(_OLD_SCHEMA)
    db.execute(
        "INSERT INTO readings VALUES (1, 'r1', 'DEV', 'weight', 'vital-signs', ?, 't', ?)",
        (PATIENT, b'{"weight":"72.350"}'),
    )
    db.execute(
        "INSERT INTO envelopes(reading_id, destination, idem_key, state, body, updated_at)"
        " VALUES (1, 'record', ?, ?, ?, 0)",
        (f"{PATIENT}-weight", state, b'{"value":71.950}'),
    )
    return db


async def test_a_plaintext_outbox_from_before_is_encrypted_at_open(tmp_path):
    path = tmp_path / "outbox.sqlite"
    with _old_outbox(path, "pending") as db:
        db.execute(
            "INSERT INTO quarantine(at, source, device, reason, raw)"
            " VALUES (0, 'device', 'DEV', 'undecodable', ?)",
            (b"72.350".hex(),),
        )
    db.close()
    assert b"72.350" in raw_bytes(path)
    async with Outbox(path) as outbox:
        [item] = await outbox.lease("record", 10)
        assert item.envelope.body == b'{"value":71.950}' and item.patient == PATIENT
        assert item.envelope.idem_key == f"{PATIENT}-weight"
    for secret in SECRETS:
        assert secret not in raw_bytes(path)
    cipher = crypto.Cipher(crypto.read_key_file(tmp_path / "data.key"))
    with sqlite3.connect(path) as db:
        (raw,) = db.execute("SELECT raw FROM quarantine").fetchone()
    assert cipher.open(raw, b"quarantine.raw|1") == b"72.350"


def _sealed(path: Path) -> list[bytes]:
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT r.patient, r.payload, e.idem_key, b.body FROM envelopes e"
            " JOIN readings r ON r.id = e.reading_id JOIN bodies b ON b.envelope_id = e.id"
            " ORDER BY e.id"
        ).fetchall()
    return [bytes(v) for row in rows for v in row]


async def _store(path: Path, *dests: str) -> None:
    async with Outbox(path) as outbox:
        await ingest(outbox, "r1", "72.350", *dests)
        await ingest(outbox, "r2", "71.950")


async def _leased(path: Path, destination: str = "record") -> list[tuple[bytes, str | None]]:
    async with Outbox(path) as outbox:
        return [(i.envelope.body, i.patient) for i in await outbox.lease(destination, 10)]


def test_keys_rotate_re_encrypts_everything_and_keeps_it_readable(tmp_path):
    path = tmp_path / "outbox.sqlite"
    asyncio.run(_store(path, "record", "fhir"))
    before, old_key = _sealed(path), (tmp_path / "data.key").read_bytes()
    result = CliRunner().invoke(app, ["keys", "rotate", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "re-encrypted 10 stored value(s)" in result.output
    after = _sealed(path)
    assert (tmp_path / "data.key").read_bytes() != old_key
    assert len(before) == len(after) == 12
    assert not any(a == b for a, b in zip(before, after, strict=True))
    assert stat.S_IMODE((tmp_path / "data.key").stat().st_mode) == 0o600
    assert not [f for f in os.listdir(tmp_path) if f.startswith("data.key.")]
    assert asyncio.run(_leased(path)) == [
        (b'{"resourceType":"Bundle","value":72.350}', PATIENT),
        (b'{"resourceType":"Bundle","value":71.950}', PATIENT),
    ]
    assert [p for _, p in asyncio.run(_leased(path, "fhir"))] == [PATIENT]


async def test_a_rotation_that_did_not_commit_is_finished_at_the_next_open(tmp_path):
    path = tmp_path / "outbox.sqlite"
    key_file = tmp_path / "data.key"
    async with Outbox(path) as outbox:
        await ingest(outbox, "r1", "72.350")
        old = crypto.read_key_file(key_file)
        new = crypto.new_key()

        def swap_then_crash() -> None:  # the key file swapped, the commit never happens
            crypto.write_key_file(key_file.with_name("data.key.old"), old)
            crypto.write_key_file(key_file, new)
            raise OSError("power cut")

        with pytest.raises(OSError):
            await outbox.rotate_key(new, before_commit=swap_then_crash)
    async with Outbox(path) as outbox:  # found under data.key.old: re-sealed under data.key
        [item] = await outbox.lease("record", 10)
        assert item.envelope.body.endswith(b"72.350}")
    assert crypto.read_key_file(key_file) == new
    # the old key is kept until every store of the directory is under the new one
    assert key_file.with_name("data.key.old").exists()
    crypto.remove_leftovers(key_file)
    async with Outbox(path) as outbox:  # and the outbox no longer needs it
        await outbox.release_leases()
        assert len(await outbox.lease("record", 10)) == 1


def test_rotating_a_key_from_the_environment_needs_the_new_one(tmp_path, monkeypatch):
    path = tmp_path / "outbox.sqlite"
    old, new = crypto.new_key(), crypto.new_key()
    monkeypatch.setenv("EDGE_DATA_KEY", old.hex())
    asyncio.run(_store(path))
    refused = CliRunner().invoke(app, ["keys", "rotate", "--data-dir", str(tmp_path)])
    assert refused.exit_code == 1 and "EDGE_DATA_KEY_NEW" in refused.output
    monkeypatch.setenv("EDGE_DATA_KEY_NEW", new.hex())
    result = CliRunner().invoke(app, ["keys", "rotate", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "re-encrypted 8 stored value(s)" in result.output
    monkeypatch.delenv("EDGE_DATA_KEY_NEW")  # the rotation is over
    with pytest.raises(OutboxError, match="not the key"):
        asyncio.run(_leased(path))  # still the old key in the environment
    monkeypatch.setenv("EDGE_DATA_KEY", new.hex())
    assert len(asyncio.run(_leased(path))) == 2
    assert not (tmp_path / "data.key").exists()


async def test_a_process_still_on_the_old_key_stops_writing_after_a_rotation(tmp_path):
    path = tmp_path / "outbox.sqlite"
    async with Outbox(path) as running, Outbox(path) as rotating:
        await ingest(running, "r1", "72.350")
        await rotating.rotate_key(crypto.new_key())
        with pytest.raises(OutboxError, match="restart"):
            await ingest(running, "r2", "71.950")
        with pytest.raises(OutboxError, match="restart"):
            await running.lease("record", 10)


async def test_a_tampered_value_does_not_stop_a_rotation(tmp_path):
    """After a suspected key leak the key must rotate, tampered rows or not."""
    path = tmp_path / "outbox.sqlite"
    async with Outbox(path) as outbox:
        await ingest(outbox, "r1", "72.350")
        await ingest(outbox, "r2", "71.950")
    with sqlite3.connect(path) as db:
        (body,) = db.execute("SELECT body FROM bodies WHERE envelope_id=2").fetchone()
        db.execute("UPDATE bodies SET body=? WHERE envelope_id=2", (body[:-1] + b"\x00",))
    async with Outbox(path) as outbox:
        resealed = await outbox.rotate_key(os.urandom(32))
        leased = await outbox.lease("record", 10)
        status = await outbox.status()
    assert resealed > 0
    assert [item.envelope.id for item in leased] == [1]
    assert [(q["envelope"], q["reason"]) for q in status.quarantined] == [(2, TAMPERED)]


def test_the_cli_never_makes_the_data_key_only_the_gateway_does(tmp_path):
    """An outbox from before encryption, looked at from a shell (where the service's credential
    is not visible): refused with the reason, nothing migrated, no key file made; the read-only
    status works without any key."""
    path = tmp_path / "outbox.sqlite"
    with _old_outbox(path, "quarantined") as db:
        pass  # committed on leaving
    db.close()
    runner = CliRunner()
    result = runner.invoke(app, ["outbox", "retry", "1", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1 and "has no data key yet" in result.stderr
    assert not (tmp_path / "data.key").exists()
    assert b"72.350" in raw_bytes(path)  # untouched: the gateway migrates it at its start
    result = runner.invoke(app, ["outbox", "status", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0 and "record: quarantined=1" in result.stdout
    assert not (tmp_path / "data.key").exists()


async def test_a_registry_that_cannot_be_written_does_not_stop_the_outbox(tmp_path, caplog):
    """sealed-stores made by another user (a sudo run): logged, the outbox opens all the same."""
    registry = tmp_path / crypto.STORES_FILE
    registry.mkdir()  # neither readable nor writable as a file
    async with Outbox(tmp_path / "outbox.sqlite") as outbox:
        await ingest(outbox, "r1", "72.350")
    assert "sealed-stores cannot be updated" in caplog.text
