"""Hand-built inputs for the mapper tests and the R4B validation helpers they share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.observation import Observation

from drivers.models import (
    Absent,
    DeviceIdentity,
    GatewayInfo,
    PatientRef,
    Quantity,
    Reading,
    TimeSource,
)

PARIS_SUMMER = timezone(timedelta(hours=2))

SCALE = DeviceIdentity(
    address="00:1C:05:FF:E8:74",
    system_id="74E8FFFEFF051C00",
    manufacturer="ACME Health",
    model="WS-100",
    serial="SN0042",
    firmware="2.1.0",
    hardware="rev B",
    software="1.5",
)
BARE_SCALE = DeviceIdentity(address="a4:c1:38:0b:2e:7f")  # no DIS at all, no system id

PATIENT = PatientRef(system="urn:oid:1.2.250.1.213.1.4.8", value="2800175123456")
OTHER_PATIENT = PatientRef(system="urn:oid:1.2.250.1.213.1.4.8", value="1750375987654")
GATEWAY = GatewayInfo(system_id="ECDE3D4E58532D31", software_version="0.1.0", time_sync="ntpv4")


def kg(value: str) -> Quantity:
    return Quantity(name="body-weight", value=Decimal(value), unit="kg")


def reading(
    *quantities: Quantity,
    device: DeviceIdentity = SCALE,
    device_time: datetime | None = datetime(2026, 8, 22, 8, 42, 36),
    effective_time: datetime | None = None,
    time_source: TimeSource = TimeSource.DEVICE_LOCAL,
    received_at: datetime = datetime(2026, 8, 22, 6, 43, 1, 250_000, tzinfo=UTC),
    user_index: int | None = 1,
    kind: str = "weight",
) -> Reading:
    if effective_time is None:
        assert device_time is not None
        effective_time = device_time.replace(tzinfo=PARIS_SUMMER)
    return Reading(
        kind=kind,
        characteristic="2A9D",
        device=device,
        quantities=quantities or (kg("65.700"),),
        device_time=device_time,
        effective_time=effective_time,
        time_source=time_source,
        received_at=received_at,
        user_index=user_index,
        raw="0e5a19ea07081608 2a24",
    )


def si_reading() -> Reading:
    """Weight, height and BMI in SI units, as a WSS indication with height/BMI would give."""
    return reading(
        kg("65.700"),
        Quantity(name="body-height", value=Decimal("1.750"), unit="m"),
        Quantity(name="bmi", value=Decimal("21.5"), unit="kg/m2"),
    )


def absent(name: str, why: Absent, unit: str = "kg") -> Quantity:
    return Quantity(name=name, value=None, unit=unit, absent=why)


def quantity(name: str, value: str, unit: str) -> Quantity:
    return Quantity(name=name, value=Decimal(value), unit=unit)


def observations(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["resource"] for e in entries if e["resource"]["resourceType"] == "Observation"]


def by_profile(entries: list[dict[str, Any]], profile: str) -> list[dict[str, Any]]:
    """The entries whose resource claims ``profile`` (a PHD profile name or a full URL)."""
    url = profile if "/" in profile else PHD_SD + profile
    return [e for e in entries if url in e["resource"]["meta"]["profile"]]


PHD_SD = "http://hl7.org/fhir/uv/phd/StructureDefinition/"


_MODELS: dict[str, Any] = {"Device": Device, "Observation": Observation}


def validate_entries(entries: list[dict[str, Any]]) -> Any:
    """Validate every resource with its R4B model, then the whole transaction Bundle."""
    for entry in entries:
        resource = entry["resource"]
        _MODELS[resource["resourceType"]].model_validate(resource)
    return Bundle.model_validate(
        {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    )


def collect_references(node: Any) -> list[str]:
    """Every ``reference`` string anywhere in a resource tree."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                found.append(value)
            else:
                found.extend(collect_references(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(collect_references(item))
    return found
