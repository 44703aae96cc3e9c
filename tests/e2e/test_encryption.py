"""Encryption at rest with a real gateway: the emulated scale's values and the patient's
identifier are nowhere in the outbox nor the local record files (they are all in the record,
opened); a tampered stored body is quarantined and never sent while the other readings are
delivered (docs/encryption.md)."""

from __future__ import annotations

import sqlite3
import stat

from gateway.outbox.store import TAMPERED
from tests.e2e.helpers import (
    PATIENT,
    config,
    grant,
    observations,
    outbox_status,
    run_until_idle,
)

VALUES = (b"72.350", b"72.100", b"71.950")
IDENTIFIER = PATIENT.split("|")[1].encode()


def _raw(cfg, name: str) -> bytes:  # type: ignore[no-untyped-def]
    data = cfg.gateway.data_dir
    return b"".join(f.read_bytes() for f in sorted(data.glob(f"{name}*")))


async def test_the_outbox_and_record_files_hold_no_value_nor_identifier(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGE_DATA_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    cfg = config(tmp_path)
    grant(cfg)
    await run_until_idle(cfg)
    assert (await outbox_status(cfg)).by_destination == {"record": {"done": 3}}
    found = await observations(cfg, patient=PATIENT)
    values = {str(o["valueQuantity"]["value"]).encode() for o in found}
    assert set(VALUES) <= values  # what is searched for below is really in the record
    for name in ("outbox.sqlite", "record.sqlite"):
        raw = _raw(cfg, name)
        assert raw  # the files were read
        for secret in (*VALUES, IDENTIFIER):
            assert secret not in raw, (name, secret)
    key = cfg.gateway.data_dir / "data.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


async def test_a_tampered_body_is_quarantined_and_never_sent(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGE_DATA_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    cfg = config(tmp_path)
    await run_until_idle(cfg)  # no consent yet: the three readings wait in the outbox
    assert (await outbox_status(cfg)).by_destination == {"record": {"consent_missing": 3}}
    with sqlite3.connect(cfg.gateway.data_dir / "outbox.sqlite") as db:
        (body,) = db.execute("SELECT body FROM bodies WHERE envelope_id=2").fetchone()
        db.execute(
            "UPDATE bodies SET body=? WHERE envelope_id=2", (body[:40] + b"\x00" + body[41:],)
        )
    db.close()
    grant(cfg)
    await run_until_idle(cfg)
    status = await outbox_status(cfg)
    assert status.by_destination == {"record": {"done": 2, "quarantined": 1}}
    assert [(q["envelope"], q["reason"]) for q in status.quarantined] == [(2, TAMPERED)]
    # the two untampered readings x (weight, height, bmi): the tampered one never arrived
    readings = await observations(cfg, patient=PATIENT)
    assert len(readings) == 6
