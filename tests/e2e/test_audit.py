"""The audit trail through the daemon: each consent decision, send and answer is an entry; after a
revocation nothing goes and the trail shows why; no entry holds a health value or an identifier."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

from fhir.resources.R4B.auditevent import AuditEvent

import gateway.daemon
from gateway import audit
from gateway.consent import ConsentStore
from gateway.daemon import Daemon
from gateway.uplinks.base import Envelope, Outcome
from tests.e2e.conftest import SECRETS
from tests.e2e.helpers import (
    PATIENT,
    config,
    grant,
    observations,
    outbox_status,
    wait_for,
)
from tests.e2e.test_consent_and_quarantine import _one_reading


class RevokingUplink:
    """The local record, and the patient revoking consent while the drain is under way: right
    after the second send was answered."""

    def __init__(self, inner, consent_path) -> None:
        self.inner = inner
        self.name = inner.name
        self.consent_path = consent_path
        self.sends: list[tuple[datetime, list[int]]] = []

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def send(self, batch: Sequence[Envelope]) -> list[Outcome]:
        self.sends.append((datetime.now(UTC), [e.id for e in batch]))
        outcomes = await self.inner.send(batch)
        if len(self.sends) == 2:
            store = ConsentStore(self.consent_path)
            assert store.revoke(PATIENT, "record") == 1
            store.close()
        return outcomes


async def test_revocation_during_a_drain_nothing_is_sent_after_it_and_each_decision_is_audited(
    tmp_path, monkeypatch
):
    # one batch of one reading at a time, so "the second send" is one reading
    monkeypatch.setattr(gateway.daemon, "DRAIN_INFLIGHT", 1)
    cfg = config(
        tmp_path, outbox={"batch": 1, "retry_base": 0.05, "retry_max": 0.5, "consent_poll": 0.1}
    )
    grant(cfg)
    consent_path = cfg.gateway.data_dir / "consent.sqlite"
    daemon = Daemon(cfg)
    uplink = RevokingUplink(daemon.uplinks["record"], consent_path)
    daemon.uplinks["record"] = uplink
    await daemon.outbox.open()
    await uplink.start()
    stop = asyncio.Event()
    try:
        good = _one_reading()
        readings = [replace(good, device_time=good.device_time.replace(minute=m)) for m in range(6)]
        await daemon.on_readings(readings)  # consent granted: all six queued
        drain = asyncio.create_task(daemon.drain_loop("record", stop))

        async def all_held() -> bool:
            status = await daemon.outbox.status()
            return status.by_destination["record"].get("consent_missing") == 4

        await wait_for(all_held)
        await asyncio.sleep(0.3)  # more drain cycles: still nothing may go
        stop.set()
        await asyncio.wait_for(drain, 5)
        entries = await daemon.outbox.audit_log()
        verdict = await daemon.outbox.verify_audit()
    finally:
        stop.set()
        await uplink.close()
        await daemon.outbox.close()

    store = ConsentStore(consent_path)
    [revoked] = store.grants()
    store.close()
    assert revoked.revoked_at is not None
    revoked_at = datetime.fromisoformat(revoked.revoked_at)

    # nothing was sent after the revocation: two sends, both before it, and only they arrived
    assert len(uplink.sends) == 2
    assert all(at < revoked_at for at, _ in uplink.sends)
    sent = [envelope for _, ids in uplink.sends for envelope in ids]
    assert len(await observations(cfg)) == 2

    # the trail: every decision, in order, by whom, and the revocation between them
    assert verdict.intact and verdict.count == len(entries)
    assert [e.at for e in entries] == sorted(e.at for e in entries)
    gateway_actor = f"gateway:{daemon.gateway.system_id}"
    kinds = [(e.action, e.envelope) for e in entries]
    assert kinds[0] == ("consent-grant", None)
    assert entries[0].actor == "consent grant by test" and entries[0].grant == revoked.id
    assert kinds[1:7] == [("consent-permit", envelope) for envelope in range(1, 7)]
    revocation = next(e for e in entries if e.action == "consent-revoke")
    # answers are recorded with the next lease, but before a consent change is copied in: the
    # trail keeps the order things happened in
    before = [(e.action, e.envelope) for e in entries if 7 < e.seq < revocation.seq]
    assert before == [
        ("consent-permit", sent[0]),
        ("send", sent[0]),
        ("delivered", sent[0]),
        ("consent-permit", sent[1]),
        ("send", sent[1]),
        ("delivered", sent[1]),
    ]
    after = [e for e in entries if e.seq > revocation.seq]
    assert [(e.action, e.envelope) for e in after] == [
        (action, envelope)
        for envelope in sorted(set(range(1, 7)) - set(sent))
        for action in ("consent-deny", "held")
    ]
    assert all(e.reason for e in after)
    assert {e.reason for e in after if e.action == "consent-deny"} == {
        "no active consent for vital-signs to record"
    }
    sends = [e for e in entries if e.action == "send"]
    assert all(datetime.fromisoformat(e.at) < revoked_at for e in sends)
    assert all(datetime.fromisoformat(e.at) >= revoked_at for e in after)
    decisions = [e for e in entries if e.action in ("consent-permit", "consent-deny")]
    assert {e.actor for e in decisions} == {gateway_actor}
    assert {e.grant for e in decisions if e.action == "consent-permit"} == {revoked.id}
    assert len({e.patient for e in decisions}) == 1  # one patient, one pseudonym


async def test_a_held_reading_released_by_a_grant_through_the_whole_daemon(tmp_path):
    cfg = config(tmp_path)  # no consent yet: default deny
    daemon = Daemon(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await wait_for(lambda: daemon.emulators and all(e.done.is_set() for e in daemon.emulators))

        async def state(name: str, count: int) -> bool:
            status = await outbox_status(cfg)
            return status.by_destination.get("record", {}).get(name) == count

        await wait_for(lambda: state("consent_missing", 3))
        grant(cfg)
        await wait_for(lambda: state("done", 3))
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)

    path = cfg.gateway.data_dir / "outbox.sqlite"
    conn = sqlite3.connect(path)
    entries = audit.entries(conn)
    assert audit.verify(conn).intact
    exported = list(audit.export(conn, daemon.gateway.system_id))
    conn.close()
    actions = [e.action for e in entries]
    # ingest and drain wrote concurrently: times still follow the chain's order
    assert [e.at for e in entries] == sorted(e.at for e in entries)
    # the scale's second user is bound to nobody: kept, never sent, and said so
    assert [e.reason for e in entries if e.action == "received"] == [
        "unattributed: kept, never sent"
    ]
    assert actions.count("consent-deny") == 3  # at queueing
    grant_seq = actions.index("consent-grant")
    release = entries[actions.index("consent-permit")]
    assert release.seq > grant_seq and release.envelope is None
    assert actions.count("released") == 3
    assert actions.count("send") == 3 and actions.count("delivered") == 3
    assert actions.count("consent-permit") == 1 + 3  # the release, then each send
    for event in exported:
        AuditEvent.model_validate(event)
    assert len(exported) == len(entries)  # the local record names no locations: no Provenance

    # no identifier, no value: not in the rows, not in the export, not in the file's pages
    rows = sqlite3.connect(path).execute("SELECT * FROM audit").fetchall()
    text = "\n".join(str(value) for row in rows for value in row)
    copy = tmp_path / "audit-only.sqlite"
    shutil.copy(path, copy)
    for suffix in ("-wal", "-shm"):
        if path.with_name(path.name + suffix).exists():
            shutil.copy(path.with_name(path.name + suffix), copy.with_name(copy.name + suffix))
    db = sqlite3.connect(copy)
    for table in ("envelopes", "readings", "quarantine", "cursors"):
        db.execute(f"DROP TABLE {table}")
    db.execute("VACUUM")
    db.close()
    raw = copy.read_bytes()
    assert len(raw) > 4096 and b"consent-permit" in raw
    export_text = "\n".join(str(resource) for resource in exported)
    for secret in SECRETS:
        assert secret not in text
        assert secret not in export_text
        assert secret.encode() not in raw
    assert b"urn:oid:1.2.250.1.213.1.4.10" not in raw  # not even the identifier system


async def test_an_unmappable_reading_is_audited_as_kept_and_quarantined(tmp_path):
    from drivers.models import Quantity

    cfg = config(tmp_path)
    grant(cfg)
    daemon = Daemon(cfg)
    await daemon.outbox.open()
    try:
        good = _one_reading()
        bad = replace(
            good,
            quantities=(Quantity(name="body-weight", value=good.quantities[0].value, unit="st"),),
        )
        await daemon.on_reading(bad)
        entries = await daemon.outbox.audit_log()
    finally:
        await daemon.outbox.close()
    assert [(e.action, e.reading) for e in entries] == [
        ("consent-grant", None),
        ("received", 1),
        ("quarantined", 1),
    ]
    assert entries[1].reason == "attributed, nothing to send" and entries[1].patient
    assert entries[2].reason.startswith("cannot map to FHIR")
