"""The `edge` command line, run in-process (typer's runner) and as a real process."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge import app
from gateway.outbox import NewEnvelope, Outbox


async def _stored(outbox: Outbox, key: str, patient: str, *envelopes: NewEnvelope) -> None:
    """One reading with ``envelopes``, as the daemon stores it (values of no interest here)."""
    await outbox.ingest(
        key=key,
        device="DEV",
        kind="weight",
        category="vital-signs",
        patient=patient,
        received_at="2026-11-25T08:00:00+00:00",
        payload=b"{}",
        envelopes=list(envelopes),
    )


runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_a_bad_config_field_is_named_and_exits_2(tmp_path):
    config = tmp_path / "edge.toml"
    config.write_text(
        """
[link]
backend = "bumble"
transport = "tcp-client:127.0.0.1:9"

[[destinations]]
type = "mqtt"
name = "broker"
host = "127.0.0.1"
port = "not-a-port"
ca_file = "ca.pem"
""",
        encoding="utf-8",
    )
    code, _, err = invoke("run", "--config", str(config))
    assert code == 2
    assert "destinations.0.mqtt.port" in err


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ('[link]\nbackend = "bumble"\ntransport = "x"\ncolour = "blue"\n', "link.colour"),
        ('[link]\nbackend = "radio"\n', "link.backend"),
        ('[link]\nbackend = "bumble"\n', "link"),
        (
            '[link]\nbackend = "bumble"\ntransport = "x"\n'
            '[[bindings]]\ndevice = "AA"\npatient = "nobar"\n',
            "bindings.0.patient",
        ),
        (
            '[link]\nbackend = "bumble"\ntransport = "x"\n'
            '[[destinations]]\ntype = "mqtt"\nname = "b"\nhost = "h"\n',
            "ca_file",
        ),
        ("not toml at all [", "not valid TOML"),
    ],
)
def test_config_errors_name_what_is_wrong(tmp_path, toml, field):
    config = tmp_path / "edge.toml"
    config.write_text(toml, encoding="utf-8")
    code, _, err = invoke("run", "--config", str(config))
    assert code == 2
    assert field in err


def test_decode_prints_the_exact_reading_as_json():
    code, out, _ = invoke("decode", "2A9D", "025433ea070816082a24")
    assert code == 0
    data = json.loads(out)
    assert data["values"]["weight"] == "65.700"
    assert data["values"]["weight_unit"] == "kg"
    assert data["timestamp"]["iso"] == "2026-08-22T08:42:36"


def test_decode_fhir_prints_a_transaction_bundle():
    code, out, _ = invoke(
        "decode", "0x2a9d", "0e 98 3a ea 07 0b 14 07 1f 0c 01 ec 00 d6 06", "--fhir"
    )
    assert code == 0
    bundle = json.loads(out)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    observations = [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"
    ]
    loinc = {
        c["code"]
        for o in observations
        for c in o["code"]["coding"]
        if c["system"] == "http://loinc.org"
    }
    assert loinc == {"29463-7", "8302-2", "39156-5"}
    from fhir.resources.R4B.bundle import Bundle

    Bundle.model_validate(bundle)
    assert '"value": 75.000,' in out  # exact JSON number: 15000 x 0.005 kg keeps 3 decimals


def test_decode_rejects_malformed_bytes_with_the_field_and_offset():
    code, _, err = invoke("decode", "2A9D", "0698300000")
    assert code == 1
    assert "offset" in err and "Time Stamp" in err


def test_decode_unknown_characteristic_exits_2():
    code, _, err = invoke("decode", "FFFF", "00")
    assert code == 2 and "no decoder" in err


def test_consent_grant_list_revoke(tmp_path):
    data = str(tmp_path)
    patient = "urn:oid:1.2.250.1.213.1.4.10|1850175000042"
    code, out, _ = invoke("consent", "list", "--data-dir", data)
    assert code == 0 and "nothing is sent" in out
    code, out, _ = invoke(
        "consent", "grant", "--patient", patient, "--destination", "record", "--data-dir", data
    )
    assert code == 0 and "granted #1" in out
    code, out, _ = invoke("consent", "list", "--data-dir", data)
    assert "vital-signs -> record" in out and "active" in out
    code, out, _ = invoke(
        "consent", "revoke", "--patient", patient, "--destination", "record", "--data-dir", data
    )
    assert code == 0 and "revoked 1" in out
    code, out, _ = invoke("consent", "list", "--all", "--data-dir", data)
    assert "revoked" in out
    code, _, err = invoke(
        "consent", "grant", "--patient", "no-bar", "--destination", "x", "--data-dir", data
    )
    assert code == 2 and "SYSTEM|VALUE" in err


def test_demo_runs_end_to_end_and_the_record_can_be_listed(tmp_path, caplog):
    data = str(tmp_path / "demo")
    caplog.set_level(logging.INFO)
    code, out, err = invoke("run", "--data-dir", data)
    assert code == 0, err
    assert "UNATTRIBUTED" in out  # user 2 of the generic scale is not bound
    assert "demo finished" in out
    code, out, _ = invoke("records", "list", "--data-dir", data, "--code", "29463-7")
    assert code == 0
    # generic scale user 1: 3, ACME: 2, A&D captures: 2, body-composition scale: 2
    assert "9 observation(s)" in out
    code, out, _ = invoke("outbox", "status", "--data-dir", data)
    assert "unattributed, never sent: 1" in out
    code, out, _ = invoke("export", "--ndjson", "--data-dir", data)
    lines = [json.loads(line) for line in out.splitlines()]
    assert {r["resourceType"] for r in lines} == {"Device", "Observation"}
    # nothing above DEBUG carries a patient identifier or a value
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG)
    assert "2990175000001" not in logged and "72.350" not in logged and "65.700" not in logged


def test_edge_is_installed_as_a_command_and_runs_as_a_process(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "edge", "decode", "2A19", "64"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["percent"] == 100


def test_scan_lists_the_demo_devices():
    code, out, _ = invoke("scan", "--timeout", "0.5")
    assert code == 0
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == [
        "C0:ED:6E:00:00:01",
        "C0:ED:6E:00:00:02",
        "C0:ED:6E:00:00:03",
        "C0:ED:6E:00:00:04",
        "C0:ED:6E:00:00:05",
        "C0:ED:6E:00:00:07",
        "C0:ED:6E:00:00:09",
        "C0:ED:6E:00:00:0A",
        "C0:ED:6E:00:00:0B",
    ]
    assert sum("Weight Scale" in line for line in lines) == 3
    assert "Blood Pressure" in lines[3] and "Health Thermometer" in lines[4]
    assert "Glucose" in lines[5] and "Continuous Glucose" in lines[6]
    assert "Pulse Oximeter" in lines[7] and "Body Composition" in lines[8]


def test_decode_fhir_maps_a_thermometer_value_with_its_site():
    # FLOAT 36.4 (6C 01 00 FF), Celsius, temperature type 6 (mouth)
    code, out, _ = invoke("decode", "2A1C", "046c0100ff06", "--fhir")
    assert code == 0
    obs = next(
        e["resource"]
        for e in json.loads(out)["entry"]
        if e["resource"]["resourceType"] == "Observation"
    )
    assert obs["valueQuantity"]["value"] == 36.4 and obs["valueQuantity"]["code"] == "Cel"
    assert '"value": 36.4,' in out  # a JSON number with the device's precision, not a string
    assert obs["bodySite"]["coding"][0]["code"] == "74262004"


def test_decode_fhir_maps_a_captured_blood_pressure_measurement():
    # Nordic's test capture: 138/88 mmHg, MAP 120, pulse 60, user 1, year unknown
    code, out, _ = invoke("decode", "2A35", "1e8a00580078000000041114293b3c00012700", "--fhir")
    assert code == 0
    resources = [e["resource"] for e in json.loads(out)["entry"]]
    resources = [r for r in resources if r["resourceType"] == "Observation"]
    panel = next(r for r in resources if r["code"]["coding"][0]["code"] == "150020")
    values = {
        c["code"]["coding"][0]["code"]: c["valueQuantity"]["value"] for c in panel["component"]
    }
    assert values == {"150021": 138, "150022": 88, "150023": 120}
    pulse = next(r for r in resources if r["code"]["coding"][0]["code"] == "149546")
    assert pulse["valueQuantity"] == {
        "value": 60,
        "unit": "/min",
        "system": "http://unitsofmeasure.org",
        "code": "/min",
    }


def test_decode_fhir_refuses_kpa_rather_than_rounding():
    # 16.0 kPa systolic: mm[Hg] has no exact decimal equivalent, so nothing is mapped
    code, _, err = invoke("decode", "2A35", "01a0f078f08cf0", "--fhir")
    assert code == 1 and "cannot map to FHIR" in err


def test_decode_fhir_maps_a_glucose_record_in_mg_per_dl():
    # seq 7, 2026-11-21 07:30:00, 111 mg/dL (SFLOAT 111e-5 kg/L), capillary whole blood, finger
    code, out, _ = invoke(
        "decode", "2A18", "02 0700 ea070b15071e00 6fb0 11".replace(" ", ""), "--fhir"
    )
    assert code == 0
    obs = next(
        e["resource"]
        for e in json.loads(out)["entry"]
        if e["resource"]["resourceType"] == "Observation"
    )
    assert obs["valueQuantity"]["value"] == 111 and obs["valueQuantity"]["code"] == "mg/dL"
    codings = {(c["system"], c["code"]) for c in obs["code"]["coding"]}
    assert ("http://loinc.org", "41653-7") in codings
    assert ("urn:iso:std:iso:11073:10101", "160184") in codings


@pytest.mark.parametrize(
    ("uuid", "payload", "mdc", "value"),
    [
        # PLX continuous: flags 0, SpO2 97 %, pulse 100 /min (SFLOAT 0x0061, 0x0064)
        ("2A5F", "0061006400", "150456", 97),
        # PLX spot-check: flags 0, SpO2 95 %, pulse 71 /min
        ("2A5E", "005f004700", "150456", 95),
        # Body Composition: flags 0, body fat 23.5 % (raw 235 = 0x00EB)
        ("2A9C", "0000eb00", "188748", 23.5),
    ],
)
def test_decode_fhir_covers_the_oximeter_streams_and_body_composition(uuid, payload, mdc, value):
    code, out, err = invoke("decode", uuid, payload, "--fhir")
    assert code == 0, err
    observations = [
        e["resource"]
        for e in json.loads(out)["entry"]
        if e["resource"]["resourceType"] == "Observation"
    ]
    first = observations[0]
    assert first["code"]["coding"][0]["code"] == mdc
    assert first["valueQuantity"]["value"] == value


def _uds_config(tmp_path: Path) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(
        f"""
[gateway]
data_dir = "{tmp_path / "data"}"
[link]
backend = "bumble"
emulate = ["acme-bf7-uds", "generic-bps"]
"""
    )
    return path


def test_users_register_adds_a_user_on_a_multi_user_device(tmp_path):
    config = str(_uds_config(tmp_path))
    code, out, err = invoke(
        "users", "register", "C0:ED:6E:00:00:0D", "--consent-code", "2468", "--config", config
    )
    assert code == 0, err
    assert "registered as user 3" in out  # the scale already knows users 1 and 2
    assert "consent_code" in out and "2468" not in out  # the code is not echoed back
    code, _, err = invoke(
        "users", "register", "C0:ED:6E:00:00:04", "--consent-code", "2468", "--config", config
    )
    assert code == 1 and "User Control Point" in err


def test_emulate_generates_weight_readings_for_scales_only():
    code, _, err = invoke(
        "emulate", "generic-cgm", "--hci", "tcp-server:127.0.0.1:0", "--generate", "5"
    )
    assert code == 2 and "not a weight scale: generic-cgm" in err


def test_outbox_status_shows_skipped_reasons_and_what_the_server_did_per_resource(tmp_path):
    import asyncio

    from gateway.outbox import EnvelopeState
    from gateway.uplinks.base import EntryOutcome, Outcome, OutcomeStatus

    async def fill() -> int:
        async with Outbox(tmp_path / "outbox.sqlite") as outbox:
            await _stored(
                outbox,
                "r1",
                "sys|p1",
                NewEnvelope(destination="fhir", idem_key="k1", body=b"{}"),
                NewEnvelope(
                    destination="mes",
                    idem_key="k1",
                    body=b"",
                    state=EnvelopeState.SKIPPED,
                    reason="not sent in the fr-mesures form: only a BMI",
                ),
            )
            [leased] = await outbox.lease("fhir", 1)
            entries = (
                EntryOutcome("Device", "exists", "Device/d7"),
                EntryOutcome("Observation", "rejected", "", "invariant at Observation.value"),
            )
            outcome = Outcome(
                envelope_id=leased.envelope.id,
                status=OutcomeStatus.REJECTED,
                reason="entry 422: invariant",
                entries=entries,
            )
            await outbox.settle([outcome])
            return leased.envelope.id

    envelope_id = asyncio.run(fill())
    code, out, _ = invoke("outbox", "status", "--data-dir", str(tmp_path))
    assert code == 0
    assert "mes: skipped=1" in out
    assert "mes: 1 x not sent in the fr-mesures form: only a BMI" in out
    assert f"fhir envelope {envelope_id}: entry 422: invariant" in out
    assert "Device: exists Device/d7" in out
    assert "Observation: rejected (invariant at Observation.value)" in out
    code, out, _ = invoke("outbox", "retry", str(envelope_id), "--data-dir", str(tmp_path))
    assert code == 0 and "will be sent again" in out
    code, out, _ = invoke("outbox", "status", "--data-dir", str(tmp_path))
    assert "fhir: pending=1" in out


def test_revoke_with_purge_drops_what_that_destination_did_not_get_yet(tmp_path):
    import asyncio

    patient = "urn:oid:1.2.250.1.213.1.4.10|2990175000009"
    data = str(tmp_path)
    code, _, _ = invoke(
        "consent",
        "grant",
        "--patient",
        patient,
        "--destination",
        "ehr",
        "--data-dir",
        data,
        "--recorded-by",
        "patient",
    )
    assert code == 0

    async def fill() -> None:
        async with Outbox(tmp_path / "outbox.sqlite") as outbox:
            for key in ("r1", "r2"):
                await _stored(
                    outbox, key, patient, NewEnvelope(destination="ehr", idem_key=key, body=b"{}")
                )

    asyncio.run(fill())
    code, out, _ = invoke(
        "consent",
        "revoke",
        "--patient",
        patient,
        "--destination",
        "ehr",
        "--category",
        "*",  # every category: the purge too
        "--purge",
        "--data-dir",
        data,
    )
    assert code == 0, out
    assert "revoked 1 grant(s)" in out and "purged 2 reading(s) not yet sent to ehr" in out
    code, out, _ = invoke("outbox", "status", "--data-dir", data)
    assert "ehr: purged=2" in out
    code, out, _ = invoke("audit", "list", "--data-dir", data)
    assert out.count("purge") >= 2 and "2990175000009" not in out


def test_a_revocation_that_leaves_something_permitting_says_so(tmp_path):
    """An imported Consent still permits: "revoked" alone would mislead the patient."""
    import json as _json

    from gateway.consent import build_consent

    patient = "urn:oid:1.2.250.1.213.1.4.10|2990175000009"
    data = str(tmp_path)
    consent = build_consent(
        patient=patient,
        destination="ehr",
        categories=["vital-signs"],
        recorded_at=datetime(2026, 1, 1, tzinfo=UTC),
        recorded_by="patient",
        consent_id="imported-1",
    )
    path = tmp_path / "consent.json"
    path.write_text(_json.dumps(consent), encoding="utf-8")
    assert invoke("consent", "import", str(path), "--data-dir", data)[0] == 0
    code, out, err = invoke(
        "consent", "revoke", "--patient", patient, "--destination", "ehr", "--data-dir", data
    )
    assert code == 1 and "revoked 0 grant(s)" in out
    assert "still permitted" in err and "consent imported-1" in err
    assert invoke("consent", "remove", "imported-1", "--data-dir", data)[0] == 0
    code, _, _ = invoke(
        "consent", "revoke", "--patient", patient, "--destination", "ehr", "--data-dir", data
    )
    assert code == 0


def test_attribute_refuses_a_configuration_that_does_not_name_the_outbox_destinations(tmp_path):
    """Without the gateway's --config the demo's would be used: the reading would be queued for
    destinations the gateway does not have, and could never be attributed again."""
    import asyncio

    async def fill() -> None:
        async with Outbox(tmp_path / "outbox.sqlite") as outbox:
            await _stored(
                outbox,
                "r1",
                "urn:oid:1.2.3|1",
                NewEnvelope(destination="hospital", idem_key="k", body=b"{}"),
            )

    asyncio.run(fill())
    code, _, err = invoke(
        "outbox", "attribute", "1", "--patient", "urn:oid:1.2.3|2", "--data-dir", str(tmp_path)
    )
    assert code == 1 and "hospital" in err and "--config" in err
    code, _, err = invoke(
        "outbox",
        "attribute",
        "1",
        "--patient",
        "urn:oid:1.2.3|2",
        "--data-dir",
        str(tmp_path / "x"),
    )
    assert code == 1 and "no outbox" in err
    assert not (tmp_path / "x").exists()  # nothing made on the way
