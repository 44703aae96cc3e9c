"""Consent synced from a real FHIR server (Medplum): a Consent posted there permits after a sync;
with the server down the cached copy holds until it expires, then the answer is deny."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from edge import app
from gateway.consent import ConsentStore, build_consent
from gateway.consent.sync import ConsentSyncError, sync_consents
from tests.e2e.helpers import PATIENT, PATIENT_B, config

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _config(tmp_path, server, **destination):
    return config(
        tmp_path,
        bindings=[
            {"device": "00-1B-2C-FF-FE-3D-4E-5F", "user_index": 1, "patient": PATIENT},
            {"device": "00-1B-2C-FF-FE-3D-4E-5F", "user_index": 2, "patient": PATIENT_B},
        ],
        destinations=[
            {"type": "local", "name": "record"},
            {
                "type": "fhir",
                "name": "server",
                "base_url": server.base_url,
                "ca_file": server.ca_file,
                **destination,
            },
        ],
    )


def _post_consent(server, kind: str = "permit", destination: str = "server") -> dict:
    resource = build_consent(
        patient=PATIENT,
        destination=destination,
        categories=["vital-signs"],
        kind=kind,
        recorded_at=T0,
        recorded_by="Dr Record",
        start=T0,
    )
    response = server.post("Consent", resource)
    assert response.status_code == 201, response.text
    created: dict = response.json()
    return created


async def test_synced_consent_permits_then_holds_offline_until_it_expires(
    tmp_path, fhir_server_factory
):
    server = fhir_server_factory()
    created = _post_consent(server)
    cfg = _config(tmp_path, server)
    clock = Clock(T0 + timedelta(days=1))
    store = ConsentStore(cfg.gateway.data_dir / "consent.sqlite", clock=clock)
    assert not store.decide(PATIENT, "vital-signs", "server").permit  # nothing synced yet

    result = await sync_consents(store, cfg, "server", ttl=timedelta(hours=24), clock=clock)
    assert (result.patients, result.consents, result.failures) == (2, 1, [])
    decision = store.decide(PATIENT, "vital-signs", "server")
    assert decision.permit
    assert decision.consent_id == created["id"]
    assert decision.version == created["meta"]["versionId"]
    assert not store.decide(PATIENT_B, "vital-signs", "server").permit  # not theirs
    assert not store.decide(PATIENT, "vital-signs", "record").permit  # another destination

    server.stop()  # offline: the sync fails, the cache is kept as it was
    clock.now += timedelta(hours=12)
    offline = await sync_consents(store, cfg, "server", ttl=timedelta(hours=24), clock=clock)
    assert offline.patients == 0 and len(offline.failures) == 2
    assert all("patient #" in f and "alice" not in f for f in offline.failures)
    assert store.decide(PATIENT, "vital-signs", "server").permit  # within the expiry

    clock.now += timedelta(hours=12)  # 24 h after the last good sync
    expired = store.decide(PATIENT, "vital-signs", "server")
    assert not expired.permit and expired.reason == "consent cache expired"
    store.close()


async def test_a_partial_answer_keeps_the_previous_cache(tmp_path, fhir_server, monkeypatch):
    import gateway.consent.sync

    first = _post_consent(fhir_server)["id"]
    cfg = _config(tmp_path, fhir_server)
    store = ConsentStore(cfg.gateway.data_dir / "consent.sqlite")
    assert (await sync_consents(store, cfg, "server")).consents == 1
    _post_consent(fhir_server, "deny")
    # one per page, and this server gives no next link: 1 of 2, which could miss the deny
    monkeypatch.setattr(gateway.consent.sync, "PAGE_SIZE", 1)
    result = await sync_consents(store, cfg, "server")
    assert result.patients == 1 and "1 of 2 and no next page" in result.failures[0]
    assert [c.consent_id for c in store.consents()] == [first]  # the last full answer holds
    monkeypatch.setattr(gateway.consent.sync, "PAGE_SIZE", 100)
    assert (await sync_consents(store, cfg, "server")).consents == 2
    assert not store.decide(PATIENT, "vital-signs", "server").permit  # now the deny is seen
    store.close()


async def test_a_deny_on_the_server_overrides_a_local_grant(tmp_path, fhir_server):
    _post_consent(fhir_server, "deny")
    cfg = _config(tmp_path, fhir_server)
    store = ConsentStore(cfg.gateway.data_dir / "consent.sqlite")
    store.grant(PATIENT, "server", "vital-signs", recorded_by="patient")
    assert store.decide(PATIENT, "vital-signs", "server").permit
    await sync_consents(store, cfg, "server")
    decision = store.decide(PATIENT, "vital-signs", "server")
    assert not decision.permit and decision.consent_id is not None
    store.close()


async def test_sync_uses_the_destination_bearer_token(tmp_path, fhir_server_factory):
    server = fhir_server_factory(bearer_token="s3cret")
    _post_consent_with_token(server)
    token = tmp_path / "token"
    token.write_text("s3cret", encoding="utf-8")
    token.chmod(0o600)
    cfg = _config(tmp_path, server, token_file=str(token))
    store = ConsentStore(cfg.gateway.data_dir / "consent.sqlite")
    result = await sync_consents(store, cfg, "server")
    assert result.failures == [] and result.consents == 1
    assert store.decide(PATIENT, "vital-signs", "server").permit
    token.write_text("wrong", encoding="utf-8")
    denied = await sync_consents(store, cfg, "server")
    assert denied.patients == 0 and "HTTP 401" in denied.failures[0]
    store.close()


def _post_consent_with_token(server) -> None:
    resource = build_consent(
        patient=PATIENT,
        destination="server",
        categories=["vital-signs"],
        recorded_at=T0,
        recorded_by="Dr Record",
    )
    response = server.post("Consent", resource, headers={"Authorization": "Bearer s3cret"})
    assert response.status_code == 201, response.text


async def test_sync_refuses_a_destination_that_is_not_fhir(tmp_path, fhir_server):
    cfg = _config(tmp_path, fhir_server)
    store = ConsentStore(cfg.gateway.data_dir / "consent.sqlite")
    with pytest.raises(ConsentSyncError, match="not a FHIR server"):
        await sync_consents(store, cfg, "record")
    with pytest.raises(ConsentSyncError, match="no destination named"):
        await sync_consents(store, cfg, "nowhere")
    store.close()


def test_cli_sync_then_list(tmp_path, fhir_server):
    created = _post_consent(fhir_server)
    path = tmp_path / "edge.toml"
    path.write_text(
        f"""
[gateway]
data_dir = "{tmp_path / "data"}"

[link]
backend = "bumble"
emulate = ["generic-wss"]

[[bindings]]
device = "00-1B-2C-FF-FE-3D-4E-5F"
user_index = 1
patient = "{PATIENT}"

[[destinations]]
type = "fhir"
name = "server"
base_url = "{fhir_server.base_url}"
ca_file = "{fhir_server.ca_file}"
""",
        encoding="utf-8",
    )
    path.chmod(0o600)
    runner = CliRunner()
    result = runner.invoke(
        app, ["consent", "sync", "--config", str(path), "--destination", "server"]
    )
    assert result.exit_code == 0, result.stderr
    assert "synced 1 consent(s) for 1 patient(s) from server" in result.stdout
    result = runner.invoke(app, ["consent", "list", "--config", str(path)])
    assert f"Consent/{created['id']}" in result.stdout and "from sync:server" in result.stdout
    assert "cached until" in result.stdout
    result = runner.invoke(app, ["consent", "list", "--fhir", "--config", str(path)])
    assert [r["id"] for r in json.loads(result.stdout)] == [created["id"]]
    result = runner.invoke(
        app, ["consent", "sync", "--config", str(path), "--destination", "nowhere"]
    )
    assert result.exit_code == 1 and "no destination named" in result.stderr


async def test_the_daemon_syncs_consents_itself_and_sends_what_they_permit(tmp_path, fhir_server):
    """No local grant: the patient's Consent is on the record server. The daemon fetches it
    (consent.sync_from) and the readings go; the other patient's wait, visibly."""
    from tests.e2e.helpers import outbox_status, run_until_idle

    _post_consent(fhir_server)
    cfg = config(
        tmp_path,
        bindings=[
            {"device": "00-1B-2C-FF-FE-3D-4E-5F", "user_index": 1, "patient": PATIENT},
            {"device": "00-1B-2C-FF-FE-3D-4E-5F", "user_index": 2, "patient": PATIENT_B},
        ],
        destinations=[
            {
                "type": "fhir",
                "name": "server",
                "base_url": fhir_server.base_url,
                "ca_file": fhir_server.ca_file,
            }
        ],
        consent={"sync_from": "server", "sync_every_minutes": 1, "cache_hours": 1},
    )
    await run_until_idle(cfg)
    weights = fhir_server.search("Observation", {"subject:identifier": PATIENT}, code="29463-7")
    assert len(weights) == 3  # user 1's three weights
    assert fhir_server.search("Observation", {"subject:identifier": PATIENT_B}) == []
    status = await outbox_status(cfg)
    assert status.by_destination["server"]["consent_missing"] == 1  # user 2's one weight


def test_a_sync_interval_longer_than_the_cache_is_refused(tmp_path, fhir_server):
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError, match="sync_every_minutes must be shorter than cache_hours"):
        config(
            tmp_path,
            destinations=[{"type": "fhir", "name": "server", "base_url": fhir_server.base_url}],
            consent={"sync_from": "server", "sync_every_minutes": 120, "cache_hours": 1},
        )
    with pytest.raises(ConfigError, match=r"consent\.sync_from"):
        config(tmp_path, consent={"sync_from": "record"})  # the local record: not a server
