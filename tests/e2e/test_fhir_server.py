"""Emulated devices through the whole gateway into a real FHIR server over HTTPS: values, codes,
units and references as sent; a replay adds nothing."""

from __future__ import annotations

from decimal import Decimal

from tests.e2e.helpers import PATIENT, config, grant, outbox_status, run_until_idle

GLS_SYSID = "00-1B-2C-FF-FE-3D-4E-62"
WSS_SYSID = "00-1B-2C-FF-FE-3D-4E-5F"


def _config(tmp_path, server):
    return config(
        tmp_path,
        link={
            "backend": "bumble",
            "emulate": ["generic-wss", "generic-gls"],
            "idle_timeout": 1.0,
            "scan_seconds": 0.3,
        },
        bindings=[
            {"device": WSS_SYSID, "user_index": 1, "patient": PATIENT},
            {"device": GLS_SYSID, "patient": PATIENT},
        ],
        destinations=[
            {
                "type": "fhir",
                "name": "server",
                "base_url": server.base_url,
                "ca_file": server.ca_file,
                "bundle_size": 3,
            }
        ],
    )


def _grant(cfg) -> None:
    grant(cfg, destination="server")
    from gateway.consent import ConsentStore

    store = ConsentStore(cfg.gateway.data_dir / "consent.sqlite")
    store.grant(PATIENT, "server", "glucose", recorded_by="test")
    store.close()


def _values(server, code: str) -> list[tuple[str, Decimal, str]]:
    found = server.search("Observation", {"subject:identifier": PATIENT}, code=code)
    return sorted(
        (
            o["effectiveDateTime"],
            Decimal(str(o["valueQuantity"]["value"])),
            o["valueQuantity"]["code"],
        )
        for o in found
        if "valueQuantity" in o
    )


async def test_readings_reach_the_fhir_server_exactly_and_once(tmp_path, fhir_server):
    cfg = _config(tmp_path, fhir_server)
    _grant(cfg)
    await run_until_idle(cfg)
    weights = _values(fhir_server, "29463-7")
    assert [(v, u) for _, v, u in weights] == [
        (Decimal("72.350"), "kg"),
        (Decimal("72.100"), "kg"),
        (Decimal("71.950"), "kg"),
    ]
    glucose = _values(fhir_server, "41653-7")
    assert [v for _, v, _ in glucose] == [Decimal("111"), Decimal("142"), Decimal("98")]
    # every Observation points at a Device the server holds
    for o in fhir_server.search("Observation"):
        ref = o["device"]["reference"]
        assert ref.startswith("Device/") and fhir_server.get(ref)["resourceType"] == "Device"
    status = await outbox_status(cfg)
    assert status.by_destination["server"].get("done", 0) >= 6
    before_all = fhir_server.search("Observation")

    await run_until_idle(cfg)  # the devices send their memories again
    (cfg.gateway.data_dir / "outbox.sqlite").unlink()  # and even with the outbox lost...
    for suffix in ("-wal", "-shm"):
        (cfg.gateway.data_dir / f"outbox.sqlite{suffix}").unlink(missing_ok=True)
    await run_until_idle(cfg)
    # ...nothing new about the patient: conditional creates on the identifiers
    assert _values(fhir_server, "29463-7") == weights
    assert _values(fhir_server, "41653-7") == glucose
    after = fhir_server.search("Observation")
    new = [o for o in after if o["id"] not in {b["id"] for b in before_all}]
    # only the new sessions' battery levels: device status, about the devices, not the patient
    assert all(o["code"]["coding"][0]["code"] == "67996" for o in new)


async def test_readings_wait_while_the_server_is_down_and_push_sends_them(
    tmp_path, fhir_server_factory
):
    import asyncio

    from typer.testing import CliRunner

    from edge import app
    from gateway.daemon import Daemon
    from tests.e2e.helpers import wait_for

    server = fhir_server_factory()
    server.stop()  # the record server is down while the scale is read
    data = tmp_path / "data"
    toml = tmp_path / "edge.toml"
    toml.write_text(
        f"""
[gateway]
data_dir = "{data}"
timezone = "Europe/Paris"
[link]
backend = "bumble"
emulate = ["generic-wss"]
idle_timeout = 1.0
scan_seconds = 0.3
[[bindings]]
device = "{WSS_SYSID}"
user_index = 1
patient = "{PATIENT}"
[[destinations]]
type = "fhir"
name = "server"
base_url = "{server.base_url}"
ca_file = "{server.ca_file}"
[outbox]
retry_base = 30.0
"""
    )
    from gateway.config import load_config

    cfg = load_config(toml)
    grant(cfg, destination="server")
    daemon = Daemon(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await wait_for(lambda: daemon.emulators and all(e.done.is_set() for e in daemon.emulators))

        async def tried() -> bool:
            status = await outbox_status(cfg)
            return status.by_destination.get("server", {}).get("pending") == 3

        await wait_for(tried)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    server.start()  # back (same port), empty; the retries are 30+ s away: push now
    result = await asyncio.to_thread(
        CliRunner().invoke, app, ["records", "push", "--config", str(toml)]
    )
    assert result.exit_code == 0, result.stderr
    assert "server: 3 done" in result.stdout
    assert len(server.search("Observation", code="29463-7")) == 3
