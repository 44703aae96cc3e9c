"""The test FHIR server (``tests/support/fhir_server.py``) against the project's own bundles.

Everything goes over HTTPS to the real server process: the mapper's transaction Bundles are
accepted, stored as sent and found again; conditional creates do not duplicate; invalid entries
are refused alone; faults, bearer auth and TLS behave as later uplink tests will need.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest

from drivers.models import DeviceIdentity, Quantity, Reading
from mappers.phd import map_reading, transaction_bundle
from tests.mappers.factories import GATEWAY, PATIENT, quantity, reading
from tests.support import fhir_server as fhir_support
from tests.support.fhir_server import FhirServer, parse_json

# The fixtures, for this module (tests/conftest.py does not exist; folders register their own).
fhir_server = fhir_support.fhir_server
fhir_server_factory = fhir_support.fhir_server_factory
fhir_server_session = fhir_support.fhir_server_session

BODYWEIGHT = "http://hl7.org/fhir/StructureDefinition/bodyweight"
BP = "http://hl7.org/fhir/StructureDefinition/bp"
PHD = "http://hl7.org/fhir/uv/phd/StructureDefinition/"

BPM = DeviceIdentity(
    address="C4:7C:8D:6A:1F:02",
    system_id="C47C8DFFFE6A1F02",
    manufacturer="ACME Health",
    model="BP-7",
    firmware="1.0.3",
)


def mmhg(name: str, value: str) -> Quantity:
    return quantity(name, value, "mm[Hg]")


def bp_reading() -> Reading:
    return reading(
        mmhg("systolic", "121"),
        mmhg("diastolic", "79"),
        mmhg("mean-arterial-pressure", "93"),
        quantity("pulse-rate", "72", "/min"),
        kind="blood-pressure",
        device=BPM,
    )


def weight_and_bp_bundle() -> dict[str, Any]:
    """What the gateway sends for a scale reading and a BP reading: 3 Devices, 3 Observations.
    A deep copy: the mapper shares frozen Device entries, tests here spoil some entries."""
    entries = map_reading(reading(), PATIENT, GATEWAY) + map_reading(bp_reading(), PATIENT, GATEWAY)
    return copy.deepcopy(transaction_bundle(entries))


def statuses(response: dict[str, Any]) -> list[str]:
    """Per-entry HTTP status codes ("201 Created" and "201" both give "201")."""
    return [entry["response"]["status"].split(" ")[0] for entry in response["entry"]]


def entry_with(bundle: dict[str, Any], profile: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        e for e in bundle["entry"] if profile in e["resource"]["meta"]["profile"]
    ]
    assert len(found) == 1, profile
    return found[0]


def by_identifier(server: FhirServer, resource: dict[str, Any]) -> list[dict[str, Any]]:
    identifier = resource["identifier"][0]
    token = f"{identifier['system']}|{identifier['value']}"
    return server.search(resource["resourceType"], identifier=token)


def resolved(node: Any, locations: dict[str, str]) -> Any:
    """``node`` with bundle-internal ``urn:uuid`` references replaced by the server's ids."""
    if isinstance(node, dict):
        return {
            key: locations.get(value, value)
            if key == "reference" and isinstance(value, str)
            else resolved(value, locations)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [resolved(item, locations) for item in node]
    return node


def as_sent(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored resource without what the server adds (id, meta.versionId / lastUpdated)."""
    out = {key: value for key, value in stored.items() if key != "id"}
    out["meta"] = {k: v for k, v in stored["meta"].items() if k not in {"versionId", "lastUpdated"}}
    return out


# --------------------------------------------------------------------------- mapped bundles


def test_mapped_transaction_is_stored_as_sent(fhir_server: FhirServer) -> None:
    bundle = weight_and_bp_bundle()
    response = fhir_server.post_bundle(bundle)

    assert response["type"] in {"transaction-response", "batch-response"}
    assert statuses(response) == ["201"] * len(bundle["entry"])
    locations = {
        sent["fullUrl"]: got["response"]["location"].split("/_history")[0]
        for sent, got in zip(bundle["entry"], response["entry"], strict=True)
    }
    sent_observations = [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"
    ]
    assert len(sent_observations) == 3  # weight, BP panel, pulse

    for sent in sent_observations:
        (stored,) = by_identifier(fhir_server, sent)
        # Values, codes, units, subject, times: all as sent (decimals compared as numbers);
        # only the bundle-internal references now name the created Devices.
        assert as_sent(stored) == resolved(sent, locations)
        device = fhir_server.get(stored["device"]["reference"])
        assert device["resourceType"] == "Device"
        sent_device = next(
            e for e in bundle["entry"] if e["fullUrl"] == sent["device"]["reference"]
        )
        assert device["identifier"] == sent_device["resource"]["identifier"]
        (gateway_ref,) = [x["valueReference"]["reference"] for x in stored["extension"]]
        assert fhir_server.get(gateway_ref)["meta"]["profile"] == [PHD + "PhgDevice"]

    (weight,) = by_identifier(fhir_server, entry_with(bundle, BODYWEIGHT)["resource"])
    assert weight["valueQuantity"] == {
        "value": Decimal("65.700"),
        "unit": "kg",
        "system": "http://unitsofmeasure.org",
        "code": "kg",
    }
    (panel,) = by_identifier(fhir_server, entry_with(bundle, BP)["resource"])
    assert [
        (c["code"]["coding"][1]["code"], c["valueQuantity"]["value"], c["valueQuantity"]["code"])
        for c in panel["component"]
    ] == [("8480-6", 121, "mm[Hg]"), ("8462-4", 79, "mm[Hg]"), ("8478-0", 93, "mm[Hg]")]

    # The gateway names the patient by identifier only: that search finds all three.
    patient = {"subject:identifier": f"{PATIENT.system}|{PATIENT.value}"}
    assert len(fhir_server.search("Observation", patient)) == 3
    assert len(fhir_server.search("Device")) == 3  # PhgDevice, scale, BP monitor
    # PHD IG profiles are not in the server's package: recorded, not validated.
    assert set(fhir_server.skipped_profiles()) == {
        PHD + name
        for name in (
            "PhgDevice",
            "PhdDevice",
            "PhdNumericObservation",
            "PhdCompoundNumericObservation",
        )
    }


def test_same_bundle_again_creates_nothing(fhir_server: FhirServer) -> None:
    bundle = weight_and_bp_bundle()
    first = fhir_server.post_bundle(bundle)
    counts = {t: len(fhir_server.search(t)) for t in ("Device", "Observation")}

    again = fhir_server.post_bundle(bundle)

    # Conditional create (ifNoneExist on the identifier) found each one: 200, same resources.
    assert statuses(again) == ["200"] * len(bundle["entry"])
    assert [e["response"]["location"] for e in again["entry"]] == [
        e["response"]["location"] for e in first["entry"]
    ]
    assert (
        {t: len(fhir_server.search(t)) for t in counts}
        == counts
        == {
            "Device": 3,
            "Observation": 3,
        }
    )


def _no_status(obs: dict[str, Any]) -> None:
    del obs["status"]


def _weight_in_cm(obs: dict[str, Any]) -> None:
    obs["valueQuantity"].update(unit="cm", code="cm")


def _systolic_in_kpa(obs: dict[str, Any]) -> None:
    obs["component"][0]["valueQuantity"].update(value=Decimal("16.1"), unit="kPa", code="kPa")


@pytest.mark.parametrize(
    ("profile", "spoil", "expression"),
    [
        (BODYWEIGHT, _no_status, "Observation.status"),
        (BODYWEIGHT, _weight_in_cm, "Observation.value[x]:valueQuantity.code"),
        (BP, _systolic_in_kpa, "Observation.component.value[x]"),
    ],
    ids=["no-status", "bodyweight-in-cm", "bp-in-kpa"],
)
def test_invalid_entry_is_refused_alone(
    fhir_server: FhirServer,
    profile: str,
    spoil: Callable[[dict[str, Any]], None],
    expression: str,
) -> None:
    bundle = weight_and_bp_bundle()
    bad = entry_with(bundle, profile)
    spoil(bad["resource"])

    response = fhir_server.post_bundle(bundle)

    index = bundle["entry"].index(bad)
    refused = response["entry"][index]["response"]
    assert refused["status"].split(" ")[0] in {"400", "422"}
    outcome = refused["outcome"]
    assert outcome["resourceType"] == "OperationOutcome"
    assert any(
        issue["severity"] == "error" and expression in issue.get("expression", [])
        for issue in outcome["issue"]
    ), outcome
    assert by_identifier(fhir_server, bad["resource"]) == []
    # The bundle is processed like a batch: every other entry was created.
    others = [s for i, s in enumerate(statuses(response)) if i != index]
    assert others == ["201"] * (len(bundle["entry"]) - 1)
    assert len(fhir_server.search("Observation")) == 2


def test_entries_referencing_a_refused_entry_are_refused(fhir_server: FhirServer) -> None:
    bundle = weight_and_bp_bundle()
    weight = entry_with(bundle, BODYWEIGHT)
    (scale,) = [
        e for e in bundle["entry"] if e["fullUrl"] == weight["resource"]["device"]["reference"]
    ]
    scale["resource"]["status"] = "switched-on"  # not in the required device-status value set
    bundle["entry"].reverse()  # any order: referenced entries are created first

    response = fhir_server.post_bundle(bundle)

    by_url = dict(zip((e["fullUrl"] for e in bundle["entry"]), statuses(response), strict=True))
    assert by_url.pop(scale["fullUrl"]) == "400"
    assert by_url.pop(weight["fullUrl"]) == "400"  # its device was not created
    assert set(by_url.values()) == {"201"}


def test_bare_observation_create_honours_if_none_exist(fhir_server: FhirServer) -> None:
    weight = entry_with(weight_and_bp_bundle(), BODYWEIGHT)
    resource = copy.deepcopy(weight["resource"])
    del resource["device"], resource["extension"]  # no bundle to resolve them in
    headers = {"If-None-Exist": weight["request"]["ifNoneExist"]}

    created = fhir_server.post("Observation", resource, headers)
    again = fhir_server.post("Observation", resource, headers)

    assert created.status_code == 201
    assert created.headers["Location"].startswith(f"{fhir_server.base_url}/Observation/")
    assert again.status_code == 200
    assert parse_json(again.content)["id"] == parse_json(created.content)["id"]
    assert len(fhir_server.search("Observation")) == 1


# --------------------------------------------------------------------------- faults, auth, TLS


def test_injected_fault_then_success(fhir_server: FhirServer) -> None:
    fhir_server.inject(503, retry_after=1)

    def post() -> httpx.Response:
        return fhir_server.post("/", weight_and_bp_bundle())

    failed = post()
    assert failed.status_code == 503
    assert failed.headers["Retry-After"] == "1"
    assert failed.json()["resourceType"] == "OperationOutcome"
    assert fhir_server.search("Observation") == []

    succeeded = post()
    assert succeeded.status_code == 200
    assert set(statuses(parse_json(succeeded.content))) == {"201"}


def test_bearer_token_and_client_certificate(
    fhir_server_factory: Callable[..., FhirServer],
) -> None:
    server = fhir_server_factory(bearer_token="s3cret-token", require_client_cert=True)
    url = f"{server.base_url}/metadata"

    anonymous = server.ssl_context(client_cert=False)
    with pytest.raises(httpx.TransportError):  # no client certificate: the handshake fails
        httpx.get(url, verify=anonymous, headers={"Authorization": "Bearer s3cret-token"})
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        refused = httpx.get(url, verify=server.ssl_context(), headers=headers)
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"] == "Bearer"
    allowed = server.http.get("/metadata")  # the helper's client sends the token and the cert
    assert allowed.status_code == 200
    assert allowed.json()["fhirVersion"] == "4.0.1"


def test_tls_needs_the_test_ca(fhir_server: FhirServer) -> None:
    assert fhir_server.base_url.startswith("https://127.0.0.1:")
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{fhir_server.base_url}/metadata")  # system trust store only
    trusted = httpx.get(f"{fhir_server.base_url}/metadata", verify=fhir_server.ssl_context())
    assert trusted.json()["resourceType"] == "CapabilityStatement"


def test_restart_keeps_the_port_and_empties_the_store(fhir_server: FhirServer) -> None:
    fhir_server.post_bundle(weight_and_bp_bundle())
    port = fhir_server.port

    fhir_server.restart()

    assert fhir_server.port == port
    assert fhir_server.search("Observation") == []
