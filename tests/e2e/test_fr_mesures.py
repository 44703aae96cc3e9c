"""Emulated devices through the whole gateway into the real FHIR server in the ``fr-mesures``
form (Mon espace santé): every feed bundle valid against the ANS profiles, no BMI and no NaN
ever sent, the readings MES has no form for skipped with their reason, and a replay (even with
the outbox lost) adds nothing although MES-style Observations carry no conditional create."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

from gateway.consent import ConsentStore
from gateway.outbox import EnvelopeState, Outbox
from mappers.fr_mesures import feed_bundles
from tests.e2e.helpers import PATIENT as HELPERS_PATIENT
from tests.e2e.helpers import config, outbox_status, run_until_idle
from tests.support.ans_profiles import mes_api_issues, validator

# urn:oid:<pairing authority> | idPe; the suite's own patient, whom no log may name (conftest)
PATIENT = HELPERS_PATIENT
SOLUTION_OID = "1.2.250.1.999.1.3"
WSS_SYSID = "00-1B-2C-FF-FE-3D-4E-5F"
BPS_SYSID = "00-1B-2C-FF-FE-3D-4E-60"
CGM_SYSID = "00-1B-2C-FF-FE-3D-4E-69"


def _config(tmp_path: Any, server: Any) -> Any:
    cfg = config(
        tmp_path,
        link={
            "backend": "bumble",
            "emulate": ["generic-wss", "generic-bps", "generic-cgm"],
            "idle_timeout": 1.0,
            "scan_seconds": 0.3,
        },
        bindings=[
            {"device": WSS_SYSID, "user_index": 1, "patient": PATIENT},
            {"device": BPS_SYSID, "user_index": 1, "patient": PATIENT},
            {"device": CGM_SYSID, "patient": PATIENT},
        ],
        destinations=[
            {
                "type": "fhir",
                "name": "mes",
                "base_url": server.base_url,
                "ca_file": server.ca_file,
                "profile_set": "fr-mesures",
                "solution_oid": SOLUTION_OID,
            }
        ],
    )
    store = ConsentStore(cfg.gateway.data_dir / "consent.sqlite")
    for category in ("vital-signs", "glucose"):
        store.grant(PATIENT, "mes", category, recorded_by="test")
    store.close()
    return cfg


def _by_code(server: Any) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for o in server.search("Observation", {"subject:identifier": PATIENT}):
        found.setdefault(o["code"]["coding"][0]["code"], []).append(o)
    return found


async def _sent_bodies(cfg: Any) -> list[dict[str, Any]]:
    async with Outbox(cfg.gateway.data_dir / "outbox.sqlite") as outbox:  # bodies encrypted
        rows = await outbox.stored_envelopes(state=EnvelopeState.DONE)
    return [orjson.loads(body) for _, body, _ in rows]


async def test_readings_reach_the_record_in_the_mes_form_once(tmp_path, fhir_server):
    cfg = _config(tmp_path, fhir_server)
    await run_until_idle(cfg)
    by_code = _by_code(fhir_server)
    # weight in kg and height in cm, never a BMI (MES computes it and refuses it)
    assert "39156-5" not in by_code
    weights = sorted(Decimal(str(o["valueQuantity"]["value"])) for o in by_code["29463-7"])
    assert weights == [Decimal("71.950"), Decimal("72.100"), Decimal("72.350")]
    assert {o["valueQuantity"]["code"] for o in by_code["29463-7"]} == {"kg"}
    heights = {
        (Decimal(str(o["valueQuantity"]["value"])), o["valueQuantity"]["code"])
        for o in by_code["8302-2"]
    }
    assert heights == {(Decimal("175.0"), "cm")}  # 1.750 m
    # blood pressure with no NaN anywhere: a mean arterial pressure the monitor did not give
    # is left out, never sent as a value-less component
    for bp in by_code["85354-9"]:
        assert all("valueQuantity" in c for c in bp["component"])
        assert "dataAbsentReason" not in bp
    assert "8867-4" in by_code  # the pulse, in its own transaction
    # every Observation: the solution as source, the patient by identifier, its Device held
    for observations in by_code.values():
        for o in observations:
            assert o["meta"]["source"] == f"urn:oid:{SOLUTION_OID}"
            assert o["subject"]["identifier"]["value"] == PATIENT.split("|")[1]
            device = fhir_server.get(o["device"]["reference"])
            assert device["resourceType"] == "Device"
    # each device once, by its SYSID
    sysids = [d["identifier"][0]["value"] for d in fhir_server.search("Device")]
    assert len(sysids) == len(set(sysids)) == 2  # the scale and the monitor; the CGM sent nothing
    # what was sent passes the ANS / PHD 1.0.0 validator and the MES API rules, bundle by bundle
    ans = validator()
    bodies = await _sent_bodies(cfg)
    assert bodies
    for body in bodies:
        for feed in feed_bundles(body):
            assert ans.validate_feed_bundle(feed) == []
            assert mes_api_issues(feed) == []
    # the CGM's raw records have no Mes form: kept, visible, never sent
    status = await outbox_status(cfg)
    assert status.by_destination["mes"].get("skipped", 0) > 0
    assert status.by_destination["mes"].get("pending", 0) == 0
    assert all(k["reason"].startswith("not sent in the fr-mesures form") for k in status.skipped)
    assert status.quarantined == []

    before = {code: len(found) for code, found in _by_code(fhir_server).items()}
    (cfg.gateway.data_dir / "outbox.sqlite").unlink()  # the outbox lost, the devices replayed
    for suffix in ("-wal", "-shm"):
        (cfg.gateway.data_dir / f"outbox.sqlite{suffix}").unlink(missing_ok=True)
    await run_until_idle(cfg)
    after = {code: len(found) for code, found in _by_code(fhir_server).items()}
    assert after == before  # looked up by identifier before each send: nothing twice
