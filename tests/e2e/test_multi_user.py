"""A family scale with the User Data Service through the whole gateway: each user's readings
reach their own patient's record, unlocked with their own consent code."""

from __future__ import annotations

from decimal import Decimal

from tests.e2e.helpers import PATIENT, PATIENT_B, config, grant, observations, run_until_idle

SCALE_SYSID = "00-1B-2C-FF-FE-3D-4E-72"


async def test_each_user_reaches_their_own_record(tmp_path):
    cfg = config(
        tmp_path,
        link={
            "backend": "bumble",
            "emulate": ["acme-bf7-uds"],
            "idle_timeout": 1.0,
            "scan_seconds": 0.3,
        },
        bindings=[
            {"device": SCALE_SYSID, "user_index": 1, "patient": PATIENT, "consent_code": 1234},
            {"device": SCALE_SYSID, "user_index": 2, "patient": PATIENT_B, "consent_code": 5678},
        ],
    )
    grant(cfg)
    grant(cfg, patient=PATIENT_B)
    daemon, _ = await run_until_idle(cfg)
    assert daemon.emulators[0].consents == [(1, True), (2, True)]

    def weights(found):
        return sorted(o["valueQuantity"]["value"] for o in found if "valueQuantity" in o)

    first = await observations(cfg, patient=PATIENT, code="29463-7")
    second = await observations(cfg, patient=PATIENT_B, code="29463-7")
    assert weights(first) == [Decimal("81.000"), Decimal("81.200")]
    assert weights(second) == [Decimal("64.550")]
