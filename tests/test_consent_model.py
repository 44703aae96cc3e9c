"""The consent model as FHIR R4 Consent: periods, deny over permit, code exclusions, imports that
name the bad field, decisions that carry the consent's id and version (docs/consent.md)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fhir.resources.R4B.consent import Consent as R4BConsent
from typer.testing import CliRunner

from edge import app
from gateway.consent import ConsentFormatError, ConsentStore, build_consent, parse_consent

ALICE = "urn:oid:1.2.3|alice"
BOB = "urn:oid:1.2.3|bob"
T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


def consent(
    kind: str = "permit",
    *,
    consent_id: str = "c1",
    version: str = "3",
    patient: str = ALICE,
    destination: str = "record",
    categories: tuple[str, ...] = ("vital-signs",),
    start: datetime | None = T0,
    end: datetime | None = None,
    excluded: tuple[str, ...] = (),
) -> dict[str, Any]:
    resource = build_consent(
        patient=patient,
        destination=destination,
        categories=categories,
        kind=kind,
        recorded_at=T0,
        recorded_by="patient",
        start=start,
        end=end,
        excluded_codes=excluded,
        consent_id=consent_id,
    )
    resource["meta"] = {"versionId": version}
    return resource


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def store(tmp_path):
    s = ConsentStore(tmp_path / "c.sqlite", clock=Clock(T0 + timedelta(days=1)))
    yield s
    s.close()


def test_built_consents_are_valid_r4_and_read_back():
    resource = build_consent(
        patient=ALICE,
        destination="record",
        categories=["vital-signs"],
        recorded_at=T0,
        recorded_by="Nurse Joy",
        attestation="patient agreed by phone, 2026-11-01",
        start=T0,
        end=T0 + timedelta(days=30),
        excluded_codes=["2339-0"],
        consent_id="x1",
    )
    R4BConsent.model_validate(resource)  # the official model accepts it
    parsed = parse_consent(resource)
    assert parsed.patient == ALICE and parsed.provision.destinations == ("record",)
    assert parsed.provision.categories == ("vital-signs",)
    assert parsed.provision.provisions[0].type == "deny"
    assert parsed.provision.provisions[0].codes == ("2339-0",)


def test_local_grant_as_fhir_is_valid_r4(store):
    grant = store.grant(ALICE, "record", "vital-signs", "Nurse Joy", attestation="signed form")
    resource = grant.to_fhir()
    R4BConsent.model_validate(resource)
    assert resource["id"] == f"grant-{grant.id}" and resource["meta"]["versionId"] == "1"
    store.revoke(ALICE, "record")
    revoked = store.grants()[0].to_fhir()
    assert revoked["status"] == "inactive" and revoked["meta"]["versionId"] == "2"


def test_grant_decisions_carry_consent_id_and_version(store):
    grant = store.grant(ALICE, "record")
    decision = store.decide(ALICE, "vital-signs", "record")
    assert decision.permit and decision.grant_id == grant.id
    assert (decision.consent_id, decision.version) == (f"grant-{grant.id}", "1")
    assert str(decision) == f"permit:{grant.id}:grant {grant.id}"


def test_a_store_from_before_the_fhir_model_is_upgraded_in_place(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE grants(id INTEGER PRIMARY KEY, patient TEXT NOT NULL,"
        " destination TEXT NOT NULL, category TEXT NOT NULL, granted_at TEXT NOT NULL,"
        " revoked_at TEXT, recorded_by TEXT NOT NULL);"
        "INSERT INTO grants VALUES (1, 'urn:oid:1.2.3|alice', 'record', 'vital-signs',"
        " '2026-01-01T00:00:00.000000+00:00', NULL, 'patient');"
    )
    db.commit()
    db.close()
    store = ConsentStore(path)
    assert store.grants()[0].attestation is None
    assert store.decide(ALICE, "vital-signs", "record").grant_id == 1
    store.close()
    ConsentStore(path).close()  # a second opening finds the columns there


def test_grant_period_end_lapses(store):
    store.grant(ALICE, "record", period_end=T0 + timedelta(days=2))
    assert store.decide(ALICE, "vital-signs", "record", T0 + timedelta(days=1, hours=1)).permit
    lapsed = store.decide(ALICE, "vital-signs", "record", T0 + timedelta(days=2))
    assert not lapsed.permit
    with pytest.raises(ValueError):
        store.grant(ALICE, "record", period_end=T0)  # ends before "now" (T0 + 1 day)


def test_imported_consent_permits_within_its_period_and_carries_id_and_version(store):
    store.import_consent(consent(start=T0, end=T0 + timedelta(days=10)))
    inside = store.decide(ALICE, "vital-signs", "record", T0 + timedelta(days=5))
    assert inside.permit and (inside.consent_id, inside.version) == ("c1", "3")
    assert inside.grant_id is None and str(inside).startswith("permit:Consent/c1:")
    assert "alice" not in inside.reason
    assert not store.decide(ALICE, "vital-signs", "record", T0 - timedelta(seconds=1)).permit
    expired = store.decide(ALICE, "vital-signs", "record", T0 + timedelta(days=10))
    assert not expired.permit and expired.consent_id is None  # expired consent: default deny
    assert not store.decide(ALICE, "vital-signs", "broker", T0 + timedelta(days=5)).permit
    assert not store.decide(ALICE, "laboratory", "record", T0 + timedelta(days=5)).permit
    assert not store.decide(BOB, "vital-signs", "record", T0 + timedelta(days=5)).permit


def test_deny_overrides_permit_from_grants_and_consents(store):
    store.grant(ALICE, "record", "*")
    store.import_consent(consent(consent_id="ok"))
    assert store.decide(ALICE, "vital-signs", "record").permit
    store.import_consent(consent("deny", consent_id="no", version="7", categories=()))
    decision = store.decide(ALICE, "vital-signs", "record")
    assert not decision.permit and (decision.consent_id, decision.version) == ("no", "7")
    assert str(decision).startswith("deny:Consent/no:")


def test_inactive_consent_is_ignored(store):
    resource = consent()
    resource["status"] = "inactive"
    store.import_consent(resource)
    assert not store.decide(ALICE, "vital-signs", "record").permit


def test_nested_provision_excludes_a_code(store):
    store.import_consent(consent(excluded=("2339-0",)))  # glucose excluded from vital signs
    assert store.decide(ALICE, "vital-signs", "record", codes=["29463-7"]).permit
    excluded = store.decide(ALICE, "vital-signs", "record", codes=["29463-7", "2339-0"])
    assert not excluded.permit and "provision.provision[0]" in excluded.reason
    unknown = store.decide(ALICE, "vital-signs", "record")  # the daemon gives no codes yet
    assert not unknown.permit and "codes are unknown" in unknown.reason


def test_a_nested_permit_narrows_a_deny(store):
    store.import_consent(consent("deny", categories=("*",), excluded=("29463-7",)))
    store.grant(ALICE, "record")
    assert store.decide(ALICE, "vital-signs", "record", codes=["29463-7"]).permit
    assert not store.decide(ALICE, "vital-signs", "record", codes=["8867-4"]).permit


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: r.update(resourceType="Patient"), "resourceType"),
        (lambda r: r.update(status="maybe"), "status"),
        (lambda r: r.update(scope={"coding": [{"code": "research"}]}), "scope"),
        (lambda r: r["provision"].update(type="allow"), "provision.type"),
        (lambda r: r["provision"]["period"].update(start="yesterday"), "provision.period.start"),
        (lambda r: r["provision"].update(actor={}), "provision.actor"),
        (
            lambda r: r["provision"]["actor"][0]["reference"]["identifier"].pop("value"),
            "provision.actor[0].reference.identifier.value",
        ),
        (
            lambda r: r["provision"].update(code=[{"coding": [{"system": "x:y", "code": "1"}]}]),
            "provision.code[0]",
        ),
        (lambda r: r["patient"].pop("identifier"), "patient"),
        (lambda r: r.pop("provision"), "provision"),
        (
            lambda r: r["provision"].update(provision=[{"type": "nope"}]),
            "provision.provision[0].type",
        ),
    ],
)
def test_invalid_consent_names_the_field(mutate, field):
    resource = copy.deepcopy(consent())
    mutate(resource)
    with pytest.raises(ConsentFormatError) as caught:
        parse_consent(resource)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_import_needs_a_patient_identifier(store):
    resource = consent()
    resource["patient"] = {"reference": "Patient/1"}
    with pytest.raises(ConsentFormatError, match=r"^patient\.identifier"):
        store.import_consent(resource)
    assert store.consents() == []


def test_synced_consent_holds_until_its_cache_expires(store):
    parsed = parse_consent(consent(consent_id="srv", version="2"))
    fetched = T0 + timedelta(hours=1)
    store.replace_synced(ALICE, "sync:server", [parsed], fetched, fetched + timedelta(hours=24))
    within = store.decide(ALICE, "vital-signs", "record", fetched + timedelta(hours=23))
    assert within.permit and (within.consent_id, within.version) == ("srv", "2")
    beyond = store.decide(ALICE, "vital-signs", "record", fetched + timedelta(hours=24))
    assert not beyond.permit and beyond.reason == "consent cache expired"
    # a fresh sync that finds nothing replaces the cache: default deny
    store.replace_synced(ALICE, "sync:server", [], fetched, fetched + timedelta(hours=48))
    assert store.decide(ALICE, "vital-signs", "record", fetched).reason.startswith("no active")


# -- CLI ------------------------------------------------------------------------------------------
runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_cli_import_list_and_fhir_export(tmp_path):
    data = str(tmp_path / "data")
    good = tmp_path / "consent.json"
    good.write_text(json.dumps(consent(start=None)), encoding="utf-8")
    code, out, err = invoke("consent", "import", str(good), "--data-dir", data)
    assert code == 0, err
    assert "imported Consent/c1 v3" in out
    code, out, _ = invoke("consent", "list", "--data-dir", data)
    assert code == 0 and "Consent/c1 v3" in out and "from import" in out
    store = ConsentStore(tmp_path / "data" / "consent.sqlite")
    assert store.decide(ALICE, "vital-signs", "record").consent_id == "c1"
    store.close()
    code, out, _ = invoke("consent", "list", "--fhir", "--data-dir", data)
    assert code == 0 and [r["id"] for r in json.loads(out)] == ["c1"]


def test_cli_import_rejects_invalid_json_naming_the_field(tmp_path):
    data = str(tmp_path / "data")
    bad = consent()
    bad["provision"]["type"] = "allow"
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": consent(consent_id="fine")}, {"resource": bad}],
    }
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle), encoding="utf-8")
    code, _, err = invoke("consent", "import", str(path), "--data-dir", data)
    assert code == 1
    assert "entry[1].resource.provision.type: expected 'permit' or 'deny'" in err
    code, out, _ = invoke("consent", "list", "--data-dir", data)
    assert "no consent recorded" in out  # nothing imported when one is bad
    path.write_text("{not json", encoding="utf-8")
    code, _, err = invoke("consent", "import", str(path), "--data-dir", data)
    assert code == 2 and "not valid JSON" in err


def test_cli_grant_on_behalf_needs_an_attestation(tmp_path):
    data = str(tmp_path / "data")
    base = ("consent", "grant", "--patient", ALICE, "--destination", "record")
    code, _, err = invoke(*base, "--recorded-by", "Nurse Joy", "--data-dir", data)
    assert code == 2 and "--attestation" in err
    code, out, err = invoke(
        *base,
        "--recorded-by",
        "Nurse Joy",
        "--attestation",
        "patient agreed at the visit",
        "--period-end",
        "2099-01-01",
        "--data-dir",
        data,
    )
    assert code == 0, err
    code, out, _ = invoke("consent", "list", "--data-dir", data)
    assert "by Nurse Joy (attested: patient agreed at the visit)" in out
    assert "until 2099-01-01" in out
    code, _, err = invoke(*base, "--period-end", "soon", "--data-dir", data)
    assert code == 2 and "--period-end" in err


def test_a_decision_resting_on_a_consent_id_with_colons_parses_back() -> None:
    from gateway.audit import parse_decision
    from gateway.consent import Decision

    text = str(Decision(True, "Consent urn:uuid:1 permits", consent_id="urn:uuid:1"))
    assert parse_decision(text) == (True, None, "Consent urn:uuid:1 permits")
    assert parse_decision(str(Decision(False, "revoked", grant_id=7))) == (False, 7, "revoked")


def test_the_consent_file_is_readable_by_its_owner_only(tmp_path) -> None:
    """It names patients: 0600 in a 0700 directory whatever the umask, and an older file that
    was left readable is closed."""
    from gateway.consent import ConsentStore

    path = tmp_path / "data" / "consent.sqlite"
    store = ConsentStore(path)
    store.grant("urn:oid:1.2.3|1850175000042", "record", "vital-signs", recorded_by="patient")
    store.close()
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o077 == 0
    path.chmod(0o644)
    ConsentStore(path).close()
    assert path.stat().st_mode & 0o777 == 0o600


def test_an_expired_synced_deny_still_denies_over_a_local_grant(store):
    """Expiry takes away what the server permitted, never what it refused: the last word from
    the record server was deny, and a local grant must not win once the cache is old."""
    store.grant(ALICE, "record", "vital-signs", recorded_by="patient")
    parsed = parse_consent(consent("deny", consent_id="srv-deny"))
    fetched = T0 + timedelta(hours=1)
    store.replace_synced(ALICE, "sync:server", [parsed], fetched, fetched + timedelta(hours=1))
    later = fetched + timedelta(hours=5)
    decision = store.decide(ALICE, "vital-signs", "record", later)
    assert not decision.permit and decision.consent_id == "srv-deny"


async def test_a_sync_answer_about_another_patient_is_refused_whole(tmp_path, monkeypatch):
    """A server that ignored the patient filter: its Consents are not filed under this patient
    (another patient's permit must never become theirs); the previous cache stays."""
    from gateway.config import parse_config
    from gateway.consent import sync

    cfg = parse_config(
        {
            "gateway": {"data_dir": str(tmp_path)},
            "link": {"backend": "bleak"},
            "bindings": [{"device": "00-1B-2C-FF-FE-3D-4E-5F", "patient": ALICE}],
            "destinations": [{"type": "fhir", "name": "server", "base_url": "https://x.test"}],
        }
    )
    someone_else = consent(patient="urn:oid:1.2.250.1.213.1.4.10|2920175000017")

    async def lenient(_uplink, _patient):  # type: ignore[no-untyped-def]
        return [someone_else]

    monkeypatch.setattr(sync, "_search", lenient)
    store = ConsentStore(tmp_path / "c.sqlite")
    try:
        result = await sync.sync_consents(store, cfg, "server")
        assert result.patients == 0 and len(result.failures) == 1
        assert "another patient" in result.failures[0]
        assert not store.decide(ALICE, "vital-signs", "server").permit
    finally:
        store.close()


@pytest.mark.parametrize(
    "narrowing",
    [
        {"data": [{"meaning": "instance", "reference": {"reference": "Observation/123"}}]},
        {"dataPeriod": {"start": "2025-01-01", "end": "2025-12-31"}},
        {
            "purpose": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HRESCH"}
            ]
        },
        {
            "securityLabel": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}
            ]
        },
    ],
)
def test_a_permit_narrowed_by_what_edge_cannot_evaluate_permits_nothing(store, narrowing):
    """ "Permit only Observation/123", "only for research": read as a broad permit, it would
    send everything; edge takes it as no permit at all (a deny so narrowed still denies)."""
    resource = consent()
    resource["provision"].update(narrowing)
    store.import_consent(resource)
    decision = store.decide(ALICE, "vital-signs", "record", T0 + timedelta(days=2))
    assert not decision.permit


def test_a_deny_until_a_bare_date_denies_all_of_that_day(store):
    """FHIR: a date without a time is the whole day; an exclusive end at its midnight would let
    a permit win on the last day of the deny."""
    store.grant(ALICE, "record", "vital-signs", recorded_by="patient")
    deny = consent("deny", consent_id="until-31", start=None)
    deny["provision"]["period"] = {"end": "2026-12-31"}
    store.import_consent(deny)
    on_the_31st = datetime(2026, 12, 31, 22, 0, tzinfo=UTC)
    assert not store.decide(ALICE, "vital-signs", "record", on_the_31st).permit
    assert store.decide(
        ALICE, "vital-signs", "record", datetime(2027, 1, 1, 0, 1, tzinfo=UTC)
    ).permit


@pytest.mark.parametrize(
    ("text", "end", "expected"),
    [
        ("2026-12-31", False, datetime(2026, 12, 31, tzinfo=UTC)),
        ("2026-12-31", True, datetime(2027, 1, 1, tzinfo=UTC)),
        ("2026-02", True, datetime(2026, 3, 1, tzinfo=UTC)),
        ("2026-12", True, datetime(2027, 1, 1, tzinfo=UTC)),
        ("2026", True, datetime(2027, 1, 1, tzinfo=UTC)),
        ("2026-12-31T10:00:00+01:00", True, datetime(2026, 12, 31, 9, 0, tzinfo=UTC)),
    ],
)
def test_fhir_date_times_and_their_precision(text, end, expected):
    from gateway.consent.fhir import parse_datetime

    assert parse_datetime(text, "period.end", end=end) == expected


@pytest.mark.parametrize("text", ["2026-12-31 10:00", "20261231", "2026-12-31T10:00", "31/12/2026"])
def test_what_is_not_a_fhir_date_time_is_refused(text):
    from gateway.consent.fhir import parse_datetime

    with pytest.raises(ConsentFormatError, match=r"period\.end"):
        parse_datetime(text, "period.end")


async def test_consents_of_another_scope_on_the_server_are_left_out_not_fatal(
    tmp_path, monkeypatch
):
    from gateway.config import parse_config
    from gateway.consent import sync

    cfg = parse_config(
        {
            "gateway": {"data_dir": str(tmp_path)},
            "link": {"backend": "bleak"},
            "bindings": [{"device": "00-1B-2C-FF-FE-3D-4E-5F", "patient": ALICE}],
            "destinations": [{"type": "fhir", "name": "server", "base_url": "https://x.test"}],
        }
    )
    research = consent(consent_id="research")
    research["scope"] = {
        "coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}
        ]
    }
    permit = consent(consent_id="privacy", destination="server")

    async def answer(_uplink, _patient):  # type: ignore[no-untyped-def]
        return [research, permit]

    monkeypatch.setattr(sync, "_search", answer)
    store = ConsentStore(tmp_path / "c.sqlite")
    try:
        result = await sync.sync_consents(store, cfg, "server")
        assert (result.patients, result.consents, result.failures) == (1, 1, [])
        assert store.decide(ALICE, "vital-signs", "server").consent_id == "privacy"
    finally:
        store.close()


def test_a_server_consent_with_a_number_for_id_is_never_taken_for_a_local_grant() -> None:
    from gateway.audit import parse_decision
    from gateway.consent.store import Decision

    decision = Decision(True, "consent 123 (sync:server): permits", None, "123", "1")
    assert str(decision).startswith("permit:Consent/123:")
    assert parse_decision(str(decision)) == (True, None, "consent 123 (sync:server): permits")
    grant = Decision(True, "grant 7", 7, "grant-7", "1")
    assert parse_decision(str(grant)) == (True, 7, "grant 7")
    assert parse_decision("permit:7:grant 7") == (True, 7, "grant 7")  # stored before


def test_an_imported_consent_can_be_removed_even_one_without_an_id(tmp_path):
    """A deny imported by mistake would otherwise deny for good (deny beats permit)."""
    data = str(tmp_path / "data")
    wrong = consent("deny", start=None)
    del wrong["id"]
    path = tmp_path / "deny.json"
    path.write_text(json.dumps(wrong), encoding="utf-8")
    code, out, err = invoke("consent", "import", str(path), "--data-dir", data)
    assert code == 0, err
    consent_id = out.split("Consent/", 1)[1].split()[0]
    assert consent_id.startswith("urn:uuid:")  # named, so that it can be removed
    code, again, _ = invoke("consent", "import", str(path), "--data-dir", data)
    assert code == 0 and consent_id in again  # the same file, kept once
    store = ConsentStore(tmp_path / "data" / "consent.sqlite")
    store.grant(ALICE, "record", "vital-signs", recorded_by="patient")
    assert not store.decide(ALICE, "vital-signs", "record").permit
    code, out, err = invoke("consent", "remove", f"Consent/{consent_id}", "--data-dir", data)
    assert code == 0, err
    assert store.decide(ALICE, "vital-signs", "record").permit  # the grant decides again
    code, _, err = invoke("consent", "remove", consent_id, "--data-dir", data)
    assert code == 1 and "no imported Consent" in err
    store.close()


def test_a_synced_consent_is_not_removed_locally(store):
    synced = parse_consent(consent("deny", consent_id="s1"))
    store.replace_synced(ALICE, "sync:server", [synced], T0, T0 + timedelta(days=1))
    assert not store.remove_imported("s1")
    assert [c.consent_id for c in store.consents()] == ["s1"]
