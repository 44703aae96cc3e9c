"""Late binding with a real gateway: readings from a device no binding matches are kept and
never sent; an operator binds one to its patient (`edge outbox attribute`), after which it is
mapped, consent-checked and delivered like any other, and the audit trail says who did it.
A reading that already belongs to someone is never moved."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from edge import app
from gateway.config import load_config
from gateway.outbox import Outbox
from tests.e2e.helpers import PATIENT, grant, observations, outbox_status, run_until_idle


def _config_file(tmp_path: Path) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(
        f"""
[gateway]
data_dir = "{tmp_path / "data"}"
timezone = "Europe/Paris"

[link]
backend = "bumble"
emulate = ["generic-wss"]
idle_timeout = 1.0
scan_seconds = 0.3

[[destinations]]
type = "local"
name = "record"

[outbox]
retry_base = 0.05
retry_max = 0.5
consent_poll = 0.1
""",
        encoding="utf-8",
    )
    return path


def test_an_unattributed_reading_bound_later_reaches_its_patient_once(tmp_path):
    file = _config_file(tmp_path)
    cfg = load_config(file)
    asyncio.run(run_until_idle(cfg))  # no binding: kept, never sent
    status = asyncio.run(outbox_status(cfg))
    kept = status.unattributed  # the scale's readings, of its users 1 and 2
    assert kept >= 3 and status.by_destination == {}

    runner = CliRunner()
    listed = runner.invoke(app, ["outbox", "unattributed", "--config", str(file)])
    assert listed.exit_code == 0, listed.output
    assert f"{kept} unattributed reading(s)" in listed.output
    first = int(listed.output.split()[0])

    refused = runner.invoke(
        app, ["outbox", "attribute", "999", "--patient", PATIENT, "--config", str(file)]
    )
    assert refused.exit_code == 1 and "no reading 999" in refused.output

    done = runner.invoke(
        app, ["outbox", "attribute", str(first), "--patient", PATIENT, "--config", str(file)]
    )
    assert done.exit_code == 0, done.output
    assert "waits for the patient's consent" in done.output  # no grant yet: held, not sent
    asyncio.run(run_until_idle(cfg))
    assert (asyncio.run(outbox_status(cfg))).by_destination == {"record": {"consent_missing": 1}}
    assert asyncio.run(observations(cfg, patient=PATIENT)) == []

    grant(cfg)
    asyncio.run(run_until_idle(cfg))
    status = asyncio.run(outbox_status(cfg))
    assert status.by_destination == {"record": {"done": 1}} and status.unattributed == kept - 1
    found = asyncio.run(observations(cfg, patient=PATIENT))
    assert len(found) == 3  # weight, height, BMI of that one reading
    assert {o["subject"]["identifier"]["value"] for o in found} == {PATIENT.split("|")[1]}

    again = runner.invoke(
        app,
        [
            "outbox",
            "attribute",
            str(first),
            "--patient",
            "urn:oid:1.2.3|999",
            "--config",
            str(file),
        ],
    )
    assert again.exit_code == 1 and "already belongs to a patient" in again.output

    entries, verdict = asyncio.run(_audit(cfg.gateway.data_dir / "outbox.sqlite"))
    [bound] = [e for e in entries if e.action == "re-attribution"]
    assert bound.reading == first and bound.actor.startswith("cli:") and bound.patient
    [deny] = [e for e in entries if e.reading == first and e.action == "consent-deny"]
    assert deny.seq == bound.seq + 1  # in the same transaction as the binding
    later = [e.action for e in entries if e.envelope == deny.envelope and e.seq > deny.seq]
    assert {"released", "send", "delivered"} <= set(later), later
    assert verdict.intact
    asyncio.run(run_until_idle(cfg))  # running again adds nothing
    assert len(asyncio.run(observations(cfg, patient=PATIENT))) == 3


async def _audit(path: Path) -> tuple[list[Any], Any]:
    async with Outbox(path) as outbox:
        return await outbox.audit_log(), await outbox.verify_audit()
