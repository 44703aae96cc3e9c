"""Patient binding is exact, never guessed; consent is default deny and time-aware."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from drivers.models import DeviceIdentity, PatientRef
from gateway.binding import Binding, Bindings
from gateway.consent import ConsentStore

ALICE = PatientRef(system="urn:oid:1.2.3", value="alice")
BOB = PatientRef(system="urn:oid:1.2.3", value="bob")
SCALE = DeviceIdentity(address="C0:ED:6E:00:00:01", system_id="001B2CFFFE3D4E5F")


def test_multi_user_scale_binds_each_user_index_separately():
    bindings = Bindings(
        [
            Binding("00-1B-2C-FF-FE-3D-4E-5F", ALICE, 1),
            Binding("001b2cfffe3d4e5f", BOB, 2),
        ]
    )
    assert bindings.resolve(SCALE, 1) == ALICE
    assert bindings.resolve(SCALE, 2) == BOB
    assert bindings.resolve(SCALE, 3) is None  # a third household member: held, not guessed
    assert bindings.resolve(SCALE, 0xFF) is None  # unknown user
    assert bindings.resolve(SCALE, None) is None  # no user index sent: no user-less binding


def test_a_binding_without_user_index_never_catches_a_user_of_a_multi_user_scale():
    bindings = Bindings([Binding("C0:ED:6E:00:00:01", ALICE)])
    assert bindings.resolve(SCALE, None) == ALICE  # by address, single-user reading
    assert bindings.resolve(SCALE, 2) is None


def test_system_id_wins_over_address_and_other_devices_do_not_match():
    bindings = Bindings([Binding("001B2CFFFE3D4E5F", ALICE), Binding("C0-ED-6E-00-00-01", BOB)])
    assert bindings.resolve(SCALE, None) == ALICE
    other = DeviceIdentity(address="C0:ED:6E:00:00:09")
    assert bindings.resolve(other, None) is None


def test_binding_the_same_device_and_user_to_two_patients_is_refused():
    with pytest.raises(ValueError, match="bound twice"):
        Bindings([Binding("001B2CFFFE3D4E5F", ALICE, 1), Binding("001B2CFFFE3D4E5F", BOB, 1)])


def test_consent_is_deny_by_default_and_scoped(tmp_path):
    store = ConsentStore(tmp_path / "c.sqlite")
    assert not store.decide(str(ALICE), "vital-signs", "record").permit
    grant = store.grant(str(ALICE), "record", "vital-signs")
    decision = store.decide(str(ALICE), "vital-signs", "record")
    assert decision.permit and decision.grant_id == grant.id
    assert not store.decide(str(ALICE), "vital-signs", "broker").permit  # another destination
    assert not store.decide(str(BOB), "vital-signs", "record").permit  # another patient
    assert not store.decide(str(ALICE), "laboratory", "record").permit  # another category
    assert not store.decide(None, "vital-signs", "record").permit  # unattributed
    assert "alice" not in store.decide(str(ALICE), "vital-signs", "broker").reason


def test_revocation_is_dated_and_decisions_before_it_still_hold(tmp_path):
    store = ConsentStore(tmp_path / "c.sqlite")
    store.grant(str(ALICE), "record", "*")
    before = datetime.now(UTC)
    assert store.decide(str(ALICE), "vital-signs", "record", before).permit  # "*" covers all
    assert store.revoke(str(ALICE), "record") == 1
    assert not store.decide(str(ALICE), "vital-signs", "record").permit
    assert store.decide(str(ALICE), "vital-signs", "record", before).permit  # history is kept
    assert not store.decide(str(ALICE), "vital-signs", "record", before - timedelta(days=1)).permit
    assert [g.revoked_at is not None for g in store.grants()] == [True]


def test_revoking_one_category_of_an_all_categories_grant_stops_that_category_only(tmp_path):
    """A "*" grant left alone would keep permitting the category the patient withdrew."""
    store = ConsentStore(tmp_path / "c.sqlite")
    store.grant(str(ALICE), "record", "*", recorded_by="nurse Martin", attestation="by phone")
    store.grant(str(ALICE), "other", "*")
    assert store.revoke(str(ALICE), "record", "vital-signs") == 1  # the "*" grant
    assert not store.decide(str(ALICE), "vital-signs", "record").permit
    assert store.decide(str(ALICE), "glucose", "record").permit  # what was not withdrawn stays
    assert store.decide(str(ALICE), "vital-signs", "other").permit  # another destination
    [kept] = [g for g in store.grants(active_only=True) if g.destination == "record"]
    assert (kept.category, kept.attestation) == ("glucose", "by phone")
    assert kept.recorded_by.startswith("nurse Martin (from grant ")
    assert store.revoke(str(ALICE), "record", "glucose") == 1
    assert not store.decide(str(ALICE), "glucose", "record").permit
    with pytest.raises(ValueError, match="unknown category"):
        store.revoke(str(ALICE), "other", "vitalsigns")  # a typo narrows nothing
    assert store.decide(str(ALICE), "vital-signs", "other").permit
    store.grant(str(ALICE), "other", "laboratory")  # a category granted can be revoked
    assert store.revoke(str(ALICE), "other", "laboratory") == 2  # it, and the "*" narrowed
    store.close()


def test_a_grant_from_another_connection_is_seen_at_the_next_decision(tmp_path):
    daemon_side = ConsentStore(tmp_path / "c.sqlite")
    assert not daemon_side.decide(str(ALICE), "vital-signs", "record").permit
    cli_side = ConsentStore(tmp_path / "c.sqlite")
    cli_side.grant(str(ALICE), "record")
    cli_side.close()
    assert daemon_side.decide(str(ALICE), "vital-signs", "record").permit
