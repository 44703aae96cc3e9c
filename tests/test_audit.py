"""The audit trail: the hash chain and what verify names, the outbox's entries (written in the
transaction of the change they record), the FHIR export, and `edge audit`."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import sqlite3
import time
from pathlib import Path

import orjson
import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.provenance import Provenance
from typer.testing import CliRunner

from edge import app
from gateway import audit
from gateway.audit import Action, Draft
from gateway.consent import ConsentStore, Decision
from gateway.outbox import EnvelopeState, NewEnvelope, Outbox
from gateway.uplinks.base import EntryOutcome, Outcome, OutcomeStatus

PATIENT = "urn:oid:1.2.250.1.213.1.4.10|1850175000042"
OTHER = "urn:oid:1.2.250.1.213.1.4.10|2920175000017"


class Clock:
    def __init__(self) -> None:
        self.now = 1_795_420_800.0  # 2026-11-23T08:00:00Z

    def __call__(self) -> float:
        return self.now


# -- the chain --------------------------------------------------------------------------------
def test_canonical_bytes_and_the_hash_are_stable():
    content = audit.canonical(
        "2026-11-23T08:00:00.000000+00:00",
        "gateway:02A1B2C3D4E5F601",
        "consent-permit",
        1,
        2,
        "record",
        3,
        "00112233445566778899aabbccddeeff",
        "grant 3",
    )
    # keys sorted, no whitespace, integers as integers, UTF-8: any change breaks every old chain
    assert content == (
        b'{"action":"consent-permit","actor":"gateway:02A1B2C3D4E5F601",'
        b'"at":"2026-11-23T08:00:00.000000+00:00","destination":"record","envelope":2,'
        b'"grant":3,"patient":"00112233445566778899aabbccddeeff","reading":1,"reason":"grant 3"}'
    )
    expected = hashlib.sha256(bytes(32) + content).hexdigest()
    assert audit.chain_hash(audit.GENESIS, content) == expected
    assert expected == "ff9a429bd2719697f1665e104a5c2705a910c6651e25a752f43fcbc36d04096f"
    # absent references are null, not missing; non-ASCII reasons are UTF-8 bytes
    empty = audit.canonical("t", "a", "held", None, None, None, None, None, "é")
    assert b'"grant":null' in empty and "é".encode() in empty


def log(entries: int = 6) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(audit.SCHEMA)
    for start in range(0, entries, 3):  # a few transactions of up to three entries
        conn.execute("BEGIN")
        audit.append(
            conn,
            1_795_420_800.0 + start,
            [
                Draft(action=Action.SEND, actor="gateway:02A1", envelope=i, destination="record")
                for i in range(start + 1, min(entries, start + 3) + 1)
            ],
        )
        conn.execute("COMMIT")
    return conn


def writable(conn: sqlite3.Connection) -> sqlite3.Connection:
    """What someone with the file and the sqlite3 shell can do: drop the guards."""
    for trigger in ("audit_no_update", "audit_no_delete", "audit_head_forward"):
        conn.execute(f"DROP TRIGGER {trigger}")
    return conn


def test_entries_are_chained_and_the_head_follows():
    conn = log(6)
    entries = audit.entries(conn)
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5, 6]
    assert entries[0].prev == audit.GENESIS
    for before, after in itertools.pairwise(entries):
        assert after.prev == before.hash
    assert all(audit.entry_hash(e) == e.hash for e in entries)
    verdict = audit.verify(conn)
    assert verdict.intact and verdict.count == 6
    assert (verdict.head_seq, verdict.head_hash) == (6, entries[-1].hash)
    assert [e.seq for e in audit.entries(conn, limit=2)] == [5, 6]


def test_an_empty_log_verifies():
    conn = log(0)
    verdict = audit.verify(conn)
    assert verdict.intact and verdict.count == 0


def test_the_log_refuses_updates_and_deletes_and_the_head_never_moves_back():
    conn = log(3)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE audit SET reason='x' WHERE seq=2")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM audit WHERE seq=3")
    with pytest.raises(sqlite3.DatabaseError, match="only moves forward"):
        conn.execute("UPDATE audit_head SET seq=1")
    with pytest.raises(sqlite3.DatabaseError, match="cannot be removed"):
        conn.execute("DELETE FROM audit_head")
    assert audit.verify(conn).intact


def _rehash(conn: sqlite3.Connection, seq: int, **changes: object) -> str:
    """Rewrite entry ``seq`` and recompute its own hash (not the entries after it)."""
    row = conn.execute(f"SELECT * FROM audit WHERE seq={seq}").fetchone()
    entry = audit.Entry.from_row(row)
    fields = {**entry.as_dict(), **changes}
    fields.pop("hash")
    digest = audit.entry_hash(audit.Entry(**fields, hash=""))
    sets = ", ".join(f"{'grant_id' if k == 'grant' else k}=?" for k in changes)
    conn.execute(f"UPDATE audit SET {sets}, hash=? WHERE seq=?", (*changes.values(), digest, seq))
    return digest


def _forge_after_head(conn: sqlite3.Connection) -> None:
    last = audit.entries(conn)[-1]
    content = audit.canonical(
        last.at, "cli:mallory", "delivered", None, 9, "record", None, None, ""
    )
    conn.execute(
        "INSERT INTO audit VALUES (7, ?, 'cli:mallory', 'delivered', NULL, 9, 'record', NULL, NULL,"
        " '', ?, ?)",
        (last.at, last.hash, audit.chain_hash(last.hash, content)),
    )


def _swap(conn: sqlite3.Connection, a: int, b: int) -> None:
    conn.execute(f"UPDATE audit SET seq=-1 WHERE seq={a}")
    conn.execute(f"UPDATE audit SET seq={a} WHERE seq={b}")
    conn.execute(f"UPDATE audit SET seq={b} WHERE seq=-1")


@pytest.mark.parametrize(
    ("tamper", "seq", "kind"),
    [
        (lambda c: c.execute("UPDATE audit SET reason='rewritten' WHERE seq=3"), 3, "edited"),
        (lambda c: c.execute("UPDATE audit SET actor='cli:mallory' WHERE seq=1"), 1, "edited"),
        (lambda c: c.execute("UPDATE audit SET envelope=99 WHERE seq=6"), 6, "edited"),
        (lambda c: c.execute("UPDATE audit SET hash=? WHERE seq=2", ("ab" * 32,)), 2, "edited"),
        (lambda c: c.execute("UPDATE audit SET prev=? WHERE seq=4", ("cd" * 32,)), 4, "edited"),
        (lambda c: c.execute("DELETE FROM audit WHERE seq=3"), 3, "deleted"),
        (lambda c: c.execute("DELETE FROM audit WHERE seq IN (1, 2)"), 1, "deleted"),
        # deleted, then the rest renumbered to close the hole
        (
            lambda c: (
                c.execute("DELETE FROM audit WHERE seq=3"),
                c.execute("UPDATE audit SET seq=seq-1 WHERE seq>3"),
                c.execute("UPDATE audit_head SET seq=5"),
            ),
            3,
            "deleted",
        ),
        (lambda c: _swap(c, 2, 5), 2, "reordered"),
        (lambda c: _swap(c, 4, 5), 4, "reordered"),
        (lambda c: c.execute("DELETE FROM audit WHERE seq>=5"), 5, "truncated"),
        (lambda c: c.execute("DELETE FROM audit WHERE seq=6"), 6, "truncated"),
        # a well-formed entry written after the head, outside the gateway
        (_forge_after_head, 7, "added"),
        # the last entry rewritten with its own hash recomputed: only the head knows
        (lambda c: _rehash(c, 6, reason="nothing happened"), 6, "edited"),
        # a middle entry rewritten with its own hash recomputed: the next one's link breaks
        (lambda c: _rehash(c, 3, destination="elsewhere"), 4, "deleted"),
    ],
    ids=[
        "reason",
        "actor",
        "reference",
        "hash",
        "prev",
        "middle",
        "first-two",
        "renumbered",
        "swapped",
        "adjacent-swap",
        "tail",
        "last",
        "appended",
        "last-rehashed",
        "middle-rehashed",
    ],
)
def test_every_kind_of_tampering_is_named_with_the_first_bad_entry(tamper, seq, kind):
    conn = writable(log(6))
    tamper(conn)
    verdict = audit.verify(conn)
    assert not verdict.intact
    assert verdict.problem is not None
    assert (verdict.problem.seq, verdict.problem.kind) == (seq, kind), str(verdict.problem)
    assert str(verdict.problem).startswith(f"entry #{seq}: {kind}: ")


def test_a_rewrite_with_every_hash_recomputed_is_caught_only_against_a_recorded_head():
    conn = writable(log(6))
    recorded = audit.verify(conn)
    # rewrite entry 2 and re-chain everything after it, head included: the chain is consistent
    prev = _rehash(conn, 2, reason="rewritten")
    for seq in range(3, 7):
        prev = _rehash(conn, seq, prev=prev)
    conn.execute("UPDATE audit_head SET hash=? WHERE id=1", (prev,))
    assert audit.verify(conn).intact  # no secret in the chain: this is the documented limit
    verdict = audit.verify(conn, expect=[(recorded.head_seq, recorded.head_hash)])
    assert verdict.problem is not None and verdict.problem.seq == 6
    assert "recorded earlier" in verdict.problem.detail


def test_entries_appended_after_a_truncation_keep_the_hole_visible():
    conn = writable(log(6))
    conn.execute("DELETE FROM audit WHERE seq>=5")
    conn.execute("BEGIN")
    audit.append(conn, 1_795_421_000.0, [Draft(action=Action.HELD, actor="gateway:02A1")])
    conn.execute("COMMIT")
    assert [e.seq for e in audit.entries(conn)] == [1, 2, 3, 4, 7]
    problem = audit.verify(conn).problem
    assert problem is not None and (problem.seq, problem.kind) == (5, "deleted")


def test_pseudonyms_are_keyed_stable_and_never_the_identifier():
    key, other_key = bytes(32), bytes([1]) * 32
    first = audit.pseudonym(key, PATIENT)
    assert first == audit.pseudonym(key, PATIENT) and len(first) == 32
    assert first != audit.pseudonym(key, OTHER)
    assert first != audit.pseudonym(other_key, PATIENT)  # without the key, no dictionary attack
    assert first != hashlib.sha256(PATIENT.encode()).hexdigest()[:32]
    assert "1850175000042" not in first


def test_stored_decisions_are_parsed():
    assert audit.parse_decision(str(Decision(True, "grant 3", 3))) == (True, 3, "grant 3")
    denied = Decision(False, "no active consent for vital-signs to record")
    assert audit.parse_decision(str(denied)) == (False, None, denied.reason)
    assert audit.parse_decision("permit:1:a: b") == (True, 1, "a: b")


# -- the outbox writes it ---------------------------------------------------------------------
def envelope(dest: str = "record", **kw: object) -> NewEnvelope:
    return NewEnvelope(destination=dest, idem_key="k", body=b'{"resourceType":"Bundle"}', **kw)


async def ingest(outbox: Outbox, key: str, *envelopes: NewEnvelope, patient: str | None = PATIENT):
    return await outbox.ingest(
        key=key,
        device="DEV",
        kind="weight",
        category="vital-signs",
        patient=patient,
        received_at="2026-11-23T08:00:00+00:00",
        payload=b'{"value": "72.350"}',
        envelopes=list(envelopes),
    )


def actions(entries: list[audit.Entry]) -> list[tuple[str, int | None]]:
    return [(e.action, e.envelope) for e in entries]


async def test_ingest_records_each_envelope_decision_and_unattributed_readings(tmp_path):
    async with Outbox(tmp_path / "o.sqlite", clock=Clock(), actor="gateway:02A1") as outbox:
        await ingest(
            outbox,
            "r1",
            envelope("record", decision="permit:4:grant 4"),
            envelope(
                "broker",
                state=EnvelopeState.CONSENT_MISSING,
                decision="deny:-:no active consent for vital-signs to broker",
            ),
            envelope("mes", state=EnvelopeState.SKIPPED, reason="no Mes form: only a BMI"),
            envelope("ehr", state=EnvelopeState.QUARANTINED, reason="cannot map to fr-mesures"),
        )
        await ingest(outbox, "r1", envelope())  # a duplicate changes nothing: no entry
        await ingest(outbox, "r2", patient=None)
        entries = await outbox.audit_log()
    assert [(e.action, e.reading, e.envelope, e.destination, e.grant) for e in entries] == [
        ("consent-permit", 1, 1, "record", 4),
        ("consent-deny", 1, 2, "broker", None),
        ("skipped", 1, 3, "mes", None),
        ("quarantined", 1, 4, "ehr", None),
        ("received", 2, None, None, None),
    ]
    assert entries[0].reason == "grant 4"
    assert entries[1].reason == "no active consent for vital-signs to broker"
    assert entries[4].reason == "unattributed: kept, never sent" and entries[4].patient is None
    assert {e.patient for e in entries[:4]} == {entries[0].patient}
    assert entries[0].patient is not None and len(entries[0].patient) == 32
    assert all(e.actor == "gateway:02A1" for e in entries)
    assert entries[0].at == "2026-11-23T08:00:00.000000+00:00"


async def test_hold_release_send_retry_quarantine_and_retry_by_hand_leave_their_entries(
    tmp_path,
):
    clock = Clock()
    path = tmp_path / "o.sqlite"
    async with Outbox(path, clock=clock, actor="gateway:02A1") as outbox:
        for key in ("a", "b", "c"):
            await ingest(
                outbox,
                key,
                envelope(state=EnvelopeState.CONSENT_MISSING, decision="deny:-:no grant"),
            )
        first = len(await outbox.audit_log())
        assert await outbox.release_held("record", PATIENT, "vital-signs", "permit:7:grant 7") == 3
        leased = await outbox.lease("record", 10)
        a, b, c = (item.envelope.id for item in leased)
        await outbox.settle(
            [
                Outcome(envelope_id=a, status=OutcomeStatus.DELIVERED),
                Outcome(envelope_id=b, status=OutcomeStatus.RETRY, reason="broker unreachable"),
                Outcome(
                    envelope_id=c, status=OutcomeStatus.REJECTED, reason="entry 422: invariant"
                ),
            ]
        )
        assert await outbox.retry_quarantined(c, actor="cli:alice")
        assert not await outbox.retry_quarantined(a)  # refused: nothing happened, no entry
        await outbox.hold_for_consent(b, "deny:-:revoked")
        entries = (await outbox.audit_log())[first:]
    assert actions(entries) == [
        ("consent-permit", None),
        ("released", a),
        ("released", b),
        ("released", c),
        ("send", a),
        ("send", b),
        ("send", c),
        ("delivered", a),
        ("retry", b),
        ("rejected", c),
        ("retried-by-hand", c),
        ("consent-deny", b),
        ("held", b),
    ]
    assert entries[0].grant == 7 and entries[0].patient is not None
    assert "3 held envelope(s) of vital-signs" in entries[0].reason
    assert entries[4].reason == "attempt 1"
    assert entries[8].reason == "broker unreachable"
    assert entries[9].reason == "entry 422: invariant"
    assert entries[10].actor == "cli:alice"
    assert entries[10].reason == "quarantined for: entry 422: invariant"
    assert {e.destination for e in entries} == {"record"}


async def test_the_check_right_before_the_send_is_recorded_with_the_lease_or_the_hold(tmp_path):
    async with Outbox(tmp_path / "o.sqlite", clock=Clock(), actor="gateway:02A1") as outbox:
        await ingest(outbox, "a", envelope(decision="permit:1:grant 1"))
        await ingest(outbox, "b", envelope(decision="permit:1:grant 1"), patient=OTHER)
        asked = []

        def decide(patient: str | None, category: str) -> Decision:
            asked.append(patient)
            if patient == PATIENT:
                return Decision(True, "grant 1", 1)
            return Decision(False, "no active consent for vital-signs to record")

        leased, held, _ = await outbox.lease_consented("record", 10, decide=decide)
        assert [item.patient for item in leased] == [PATIENT] and held == 1
        assert asked == [PATIENT, OTHER]  # once per patient and category
        status = await outbox.status()
        assert status.by_destination["record"] == {"pending": 1, "consent_missing": 1}
        entries = (await outbox.audit_log())[2:]
    assert actions(entries) == [
        ("consent-permit", 1),
        ("send", 1),
        ("consent-deny", 2),
        ("held", 2),
    ]
    assert entries[0].grant == 1 and entries[2].reason.startswith("no active consent")
    assert entries[0].patient != entries[2].patient


async def test_a_send_after_a_lease_without_an_answer_says_it_may_have_arrived(tmp_path):
    clock = Clock()
    async with Outbox(tmp_path / "o.sqlite", clock=clock) as outbox:
        await ingest(outbox, "a", envelope())
        [first] = await outbox.lease("record", 1, lease_seconds=5)
        await outbox.settle([Outcome(envelope_id=first.envelope.id, status=OutcomeStatus.RETRY)])
        clock.now += 600
        await outbox.lease("record", 1, lease_seconds=5)  # answered before: no doubt
        clock.now += 6  # this lease ran out unanswered (a crash): the next one may be a resend
        await outbox.lease("record", 1, lease_seconds=5)
        sends = [e.reason for e in await outbox.audit_log() if e.action == "send"]
    assert sends == [
        "attempt 1",
        "attempt 2",
        "attempt 2 (handed out before without an answer: may have arrived)",
    ]


async def test_a_failed_transaction_leaves_no_entry(tmp_path):
    async with Outbox(tmp_path / "o.sqlite", actor="gateway:02A1") as outbox:
        await ingest(outbox, "a", envelope(decision="permit:1:grant 1"))
        before = await outbox.verify_audit()

        def broken(conn: sqlite3.Connection) -> None:
            audit.append(conn, 0.0, [Draft(action=Action.SEND, actor="x", envelope=1)])
            conn.execute("UPDATE envelopes SET state=NULL")  # NOT NULL: the change fails

        with pytest.raises(sqlite3.IntegrityError):
            await outbox.atomically(broken)
        # a group commit where one reading cannot be written: only the others' entries remain
        good = outbox.submit([_item("b")])
        bad = outbox.submit([_item(None)])
        other = outbox.submit([_item("c")])
        results = await asyncio.gather(good, bad, other, return_exceptions=True)
        assert isinstance(results[1], sqlite3.IntegrityError)
        after = await outbox.verify_audit()
        entries = await outbox.audit_log()
    assert before.intact and after.intact
    assert after.count == before.count + 2
    assert [e.reading for e in entries] == [1, 2, 3]


def _item(key):
    return (key, "DEV", "weight", "vital-signs", PATIENT, "t", b"{}", [envelope()])


async def test_grants_and_revocations_are_copied_once(tmp_path):
    store = ConsentStore(tmp_path / "consent.sqlite")
    grant = store.grant(PATIENT, "record", recorded_by="nurse")
    async with Outbox(tmp_path / "o.sqlite", actor="gateway:02A1") as outbox:
        assert await outbox.record_consent(store.grants()) == 1
        assert await outbox.record_consent(store.grants()) == 0
        store.revoke(PATIENT, "record")
        assert await outbox.record_consent(store.grants()) == 1
        entries = await outbox.audit_log()
    store.close()
    assert [(e.action, e.grant, e.actor) for e in entries] == [
        ("consent-grant", grant.id, "consent grant by nurse"),
        ("consent-revoke", grant.id, "consent store"),
    ]
    assert entries[0].reason == f"vital-signs to record, granted {grant.granted_at}"
    assert entries[1].reason.startswith("revoked 20")
    assert entries[0].patient == entries[1].patient is not None


async def test_the_key_persists_so_a_patient_keeps_one_pseudonym(tmp_path):
    path = tmp_path / "o.sqlite"
    async with Outbox(path) as outbox:
        await ingest(outbox, "a", envelope())
    async with Outbox(path) as outbox:
        await ingest(outbox, "b", envelope())
        first, second = await outbox.audit_log()
        cipher = outbox.cipher
    assert first.patient == second.patient
    assert first.action == "queued" and first.actor.startswith("cli:")
    conn = sqlite3.connect(path)
    assert [e.seq for e in audit.entries(conn, patient=PATIENT, cipher=cipher)] == [1, 2]
    assert audit.entries(conn, patient=first.patient) == [first, second]
    assert audit.entries(conn, patient=OTHER, cipher=cipher) == []
    with pytest.raises(ValueError, match="data key"):
        audit.entries(conn, patient=PATIENT)


async def test_the_pseudonym_key_is_sealed_so_the_file_alone_cannot_test_patient_numbers(tmp_path):
    path = tmp_path / "o.sqlite"
    async with Outbox(path) as outbox:
        await ingest(outbox, "a", envelope())
        [entry] = await outbox.audit_log()
    conn = sqlite3.connect(path)
    (stored,) = conn.execute("SELECT value FROM audit_meta WHERE name='pseudonym-key'").fetchone()
    assert len(stored) > 32  # sealed, not the 32 bytes of the key
    assert audit.pseudonym(stored, PATIENT) != entry.patient
    # an outbox from before kept it in clear: sealed at open, the pseudonyms unchanged
    key = outbox.cipher.open(bytes(stored), b"pseudonym-key")
    with conn:
        conn.execute("UPDATE audit_meta SET value=? WHERE name='pseudonym-key'", (key,))
    conn.close()
    async with Outbox(path) as outbox:
        await ingest(outbox, "b", envelope())
        first, second = await outbox.audit_log()
    assert first.patient == second.patient == audit.pseudonym(key, PATIENT)
    conn = sqlite3.connect(path)
    (stored,) = conn.execute("SELECT value FROM audit_meta WHERE name='pseudonym-key'").fetchone()
    assert len(stored) > 32 and key not in path.read_bytes()


# -- FHIR export ------------------------------------------------------------------------------
async def test_every_entry_exports_as_a_valid_r4_audit_event_and_deliveries_with_provenance(
    tmp_path,
):
    async with Outbox(tmp_path / "o.sqlite", actor="gateway:02A1B2C3D4E5F601") as outbox:
        await ingest(outbox, "a", envelope("ehr", decision="permit:2:grant 2"))
        await ingest(outbox, "b", patient=None)
        [leased] = await outbox.lease("ehr", 1)
        outcome = Outcome(
            envelope_id=leased.envelope.id,
            status=OutcomeStatus.DELIVERED,
            reason="2 created, 0 already there",
            entries=(
                EntryOutcome("Device", "created", "Device/d7"),
                EntryOutcome("Observation", "created", "Observation/o9"),
            ),
        )
        await outbox.settle([outcome])
        await outbox.retry_quarantined(leased.envelope.id)  # refused, no entry
        conn = sqlite3.connect(tmp_path / "o.sqlite")
        resources = list(audit.export(conn, "02A1B2C3D4E5F601"))
        conn.close()
    events = [r for r in resources if r["resourceType"] == "AuditEvent"]
    assert [e["subtype"][0]["code"] for e in events] == [
        "consent-permit",
        "received",
        "send",
        "delivered",
    ]
    for resource in events:
        AuditEvent.model_validate(resource)
        assert resource["source"]["observer"]["identifier"]["value"] == "02-A1-B2-C3-D4-E5-F6-01"
    permit = events[0]
    assert permit["action"] == "E" and permit["outcome"] == "0"
    assert permit["outcomeDesc"] == "grant 2"
    what = {
        e["what"]["identifier"]["system"]: e["what"]["identifier"]["value"]
        for e in permit["entity"]
    }
    assert what["urn:edge:consent:grant"] == "2" and "urn:edge:patient-pseudonym" in what
    assert [a["name"] for a in permit["agent"]] == ["gateway:02A1B2C3D4E5F601", "ehr"]
    assert events[2]["type"]["code"] == "110106"  # Export
    [prov] = [r for r in resources if r["resourceType"] == "Provenance"]
    Provenance.model_validate(prov)
    assert [t["reference"] for t in prov["target"]] == ["Device/d7", "Observation/o9"]
    assert resources.index(prov) == resources.index(events[3]) + 1


# -- edge audit -------------------------------------------------------------------------------
runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _filled(tmp_path: Path) -> Path:
    async def fill() -> None:
        async with Outbox(tmp_path / "outbox.sqlite", actor="gateway:02A1") as outbox:
            for key in ("a", "b", "c"):
                await ingest(outbox, key, envelope(decision="permit:1:grant 1"))
            await ingest(outbox, "d", envelope(decision="permit:1:grant 1"), patient=OTHER)
            leased = await outbox.lease("record", 10)
            await outbox.settle(
                [
                    Outcome(envelope_id=item.envelope.id, status=OutcomeStatus.DELIVERED)
                    for item in leased
                ]
            )

    asyncio.run(fill())
    return tmp_path / "outbox.sqlite"


def test_cli_verify_passes_then_names_the_entry_edited_with_sqlite3(tmp_path):
    path = _filled(tmp_path)
    code, out, _ = invoke("audit", "verify", "--data-dir", str(tmp_path))
    assert code == 0, out
    assert out.startswith("12 entries, chain intact")
    head = out.split("head ")[1].split()[0]  # "#12:<hash>", to keep elsewhere
    # someone edits one entry with the sqlite3 shell (the guard trigger goes first)
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("UPDATE audit SET reason='grant 2' WHERE seq=5")
    conn.commit()
    conn.close()
    code, out, err = invoke("audit", "verify", "--data-dir", str(tmp_path))
    assert code == 1
    assert "entry #5: edited" in out + err
    # and against the head recorded before, a full rewrite would not pass either
    code, _, _ = invoke("audit", "verify", "--data-dir", str(tmp_path), "--expect", head)
    assert code == 1


def test_cli_list_and_export(tmp_path):
    _filled(tmp_path)
    code, out, _ = invoke("audit", "list", "--data-dir", str(tmp_path), "--limit", "3")
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("#12 ") and " delivered " in lines[-1]
    code, out, _ = invoke("audit", "list", "--data-dir", str(tmp_path), "--json")
    rows = json.loads(out)
    assert [r["seq"] for r in rows] == list(range(1, 13))
    assert {r["action"] for r in rows} == {"consent-permit", "send", "delivered"}
    code, out, _ = invoke(
        "audit", "list", "--data-dir", str(tmp_path), "--json", "--patient", OTHER
    )
    rows = json.loads(out)  # the decisions name the patient; the send and its answer follow
    assert [(r["action"], r["envelope"]) for r in rows] == [
        ("consent-permit", 4),
        ("send", 4),
        ("delivered", 4),
    ]
    code, out, _ = invoke(
        "audit", "list", "--data-dir", str(tmp_path), "--json", "--patient", rows[0]["patient"]
    )
    assert [r["seq"] for r in json.loads(out)] == [r["seq"] for r in rows]
    target = tmp_path / "audit.ndjson"
    code, out, _ = invoke("audit", "export", "--data-dir", str(tmp_path), "--out", str(target))
    assert code == 0 and "12 AuditEvent" in out
    events = [orjson.loads(line) for line in target.read_bytes().splitlines()]
    assert len(events) == 12
    for event in events:
        AuditEvent.model_validate(event)
    code, out, _ = invoke("audit", "export", "--data-dir", str(tmp_path))
    assert len(out.strip().splitlines()) == 12


def test_cli_without_an_outbox_says_so(tmp_path):
    for command in ("list", "verify", "export"):
        code, _, err = invoke("audit", command, "--data-dir", str(tmp_path))
        assert code == 1 and "no outbox" in err


async def test_a_destination_down_for_long_leaves_ever_fewer_identical_entries(tmp_path):
    """Every few minutes for days, the same reading is tried again: the attempts recorded thin
    out (1, 2, 3, 5, 9, 17...), the answer that ends it is always recorded."""
    clock = Clock()
    async with Outbox(tmp_path / "o.sqlite", clock=clock) as outbox:
        await ingest(outbox, "a", envelope())
        for _ in range(20):
            [item] = await outbox.lease("record", 1)
            await outbox.settle([Outcome(envelope_id=item.envelope.id, status=OutcomeStatus.RETRY)])
            clock.now += 1_000
        [item] = await outbox.lease("record", 1)
        await outbox.settle([Outcome(envelope_id=item.envelope.id, status=OutcomeStatus.DELIVERED)])
        log = await outbox.audit_log()
    sends = [e.reason.split(" (")[0] for e in log if e.action == "send"]
    assert sends == ["attempt 1", "attempt 2", "attempt 3", "attempt 5", "attempt 9", "attempt 17"]
    assert [e.action for e in log].count("retry") == 6  # the answers to those six
    assert log[-1].action == "delivered"


def test_verify_while_the_gateway_appends_never_cries_tampering(tmp_path):
    """The head and the rows are read in one snapshot: a commit between the two reads would
    otherwise look like an entry added from outside."""
    import threading

    path = tmp_path / "trail.sqlite"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.executescript(audit.SCHEMA)
    done = threading.Event()

    def append_forever() -> None:
        n = 0
        while not done.is_set():
            n += 1
            writer.execute("BEGIN IMMEDIATE")
            draft = Draft(action=Action.SEND, actor="gateway:02A1", envelope=n, destination="r")
            audit.append(writer, 1_795_420_800.0 + n, [draft])
            writer.execute("COMMIT")

    thread = threading.Thread(target=append_forever)
    thread.start()
    reader = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    verdicts: list[audit.Verdict] = []
    try:
        deadline = time.monotonic() + 20
        # verify while the writer appends: at least 200 times and over 50 appended entries
        while len(verdicts) < 200 or verdicts[-1].count - verdicts[0].count < 50:
            verdicts.append(audit.verify(reader))
            assert time.monotonic() < deadline, "the writer never got to append"
    finally:
        done.set()
        thread.join()
        reader.close()
        writer.close()
    assert all(v.intact for v in verdicts), next(v.problem for v in verdicts if not v.intact)
    assert verdicts[-1].count > verdicts[0].count  # the gateway did append meanwhile
