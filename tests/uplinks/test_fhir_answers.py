"""How the FHIR uplink reads a server's answers (pure parts; the real server is in
tests/uplinks/test_fhir_server_uplink.py)."""

from __future__ import annotations

import email.utils
import time

import orjson

from gateway.uplinks.base import EntryOutcome, Envelope, OutcomeStatus
from gateway.uplinks.fhir import _combine, _judge, _location, _match, _outcome_text, _retry_after

DEVICE = {"fullUrl": "urn:uuid:d", "resource": {"resourceType": "Device"}, "request": {}}


def _envelope(eid: int, *observations: str) -> Envelope:
    entries = [DEVICE] + [
        {"fullUrl": f"urn:uuid:{o}", "resource": {"resourceType": "Observation"}, "request": {}}
        for o in observations
    ]
    body = orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    return Envelope(id=eid, destination="fhir", idem_key=f"k{eid}", body=body)


def test_readings_share_their_device_entry_in_one_bundle() -> None:
    bundle, slots = _combine([_envelope(1, "a", "b"), _envelope(2, "c")])
    assert [e["fullUrl"] for e in bundle["entry"]] == [
        "urn:uuid:d",
        "urn:uuid:a",
        "urn:uuid:b",
        "urn:uuid:c",
    ]
    assert [s.entries for s in slots] == [[0, 1, 2], [0, 3]]


def _answers(*statuses: str) -> list[dict]:
    return [{"response": {"status": s}} for s in statuses]


def test_each_reading_is_judged_by_its_own_entries() -> None:
    bundle, slots = _combine([_envelope(1, "a"), _envelope(2, "b")])
    answers = _answers("200 OK", "201 Created", "201 Created")
    answers[0]["response"]["location"] = "Device/d1/_history/3"
    answers[1]["response"]["location"] = "https://fhir.example/R4/Observation/o1/_history/1"
    first, second = (_judge(slot, answers, bundle) for slot in slots)
    assert first.status is OutcomeStatus.DELIVERED and "1 created, 1 already there" in first.reason
    assert first.entries == (
        EntryOutcome("Device", "exists", "Device/d1"),
        EntryOutcome("Observation", "created", "Observation/o1"),
    )
    assert second.status is OutcomeStatus.DELIVERED
    assert [e.result for e in second.entries] == ["exists", "created"]


def test_location_is_type_and_id() -> None:
    assert _location({"location": "Observation/7/_history/2"}) == "Observation/7"
    assert _location({"location": "http://x/fhir/Device/9"}) == "Device/9"
    assert _location({}) == ""


def test_a_refused_entry_rejects_its_reading_only() -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "code": "invariant",
                "diagnostics": "value 72.35 kg is wrong",  # servers may quote values
                "expression": ["Observation.valueQuantity"],
            }
        ],
    }
    bundle, slots = _combine([_envelope(1, "a"), _envelope(2, "b")])
    answers = _answers("200", "422", "201")
    answers[1]["response"]["outcome"] = outcome
    first, second = (_judge(slot, answers, bundle) for slot in slots)
    assert first.status is OutcomeStatus.REJECTED
    assert "invariant" in first.reason and "Observation.valueQuantity" in first.reason
    assert "72.35" not in first.reason  # free-text diagnostics never kept
    rejected = first.entries[1]
    assert (rejected.resource, rejected.result) == ("Observation", "rejected")
    assert "invariant" in rejected.detail and "72.35" not in rejected.detail
    assert second.status is OutcomeStatus.DELIVERED


def test_a_transient_entry_status_is_retried() -> None:
    bundle, slots = _combine([_envelope(1, "a")])
    assert _judge(slots[0], _answers("200", "503"), bundle).status is OutcomeStatus.RETRY
    assert _judge(slots[0], _answers("200", ""), bundle).status is OutcomeStatus.RETRY


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert _retry_after("7") == 7.0
    assert _retry_after(None) is None and _retry_after("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    after = _retry_after(later)
    assert after is not None and 25 <= after <= 31


def test_outcome_text_is_only_for_operation_outcomes() -> None:
    assert _outcome_text({"resourceType": "Bundle"}) == ""
    assert _outcome_text(None) == ""
    text = _outcome_text(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"code": "required", "details": {"coding": [{"code": "MSG_X"}]}}],
        }
    )
    assert text == "required MSG_X"


def test_a_lookup_counts_only_a_hit_with_exactly_the_identifier_searched() -> None:
    """A lenient server may ignore a search parameter and answer unrelated Observations: taking
    one of those for the reading's copy would mark the reading delivered while it never left."""

    def hit(oid: str, *identifiers: tuple[str, str]) -> dict:
        resource = {
            "resourceType": "Observation",
            "id": oid,
            "identifier": [{"system": s, "value": v} for s, v in identifiers],
        }
        return {"resource": resource, "search": {"mode": "match"}}

    answer = {
        "resourceType": "Bundle",
        "entry": [hit("o1", ("urn:x", "other")), hit("o2", ("urn:y", "k1")), hit("o3")],
    }
    assert _match(answer, "urn:x", "k1") == ""
    answer["entry"].append(hit("o4", ("urn:z", "z"), ("urn:x", "k1")))
    assert _match(answer, "urn:x", "k1") == "Observation/o4"
    assert _match({"resourceType": "OperationOutcome"}, "urn:x", "k1") == ""
    assert _match(None, "urn:x", "k1") == ""
