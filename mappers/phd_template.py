"""Fast path for ``dumps(transaction_bundle(map_reading(reading, patient, gateway)))``.

Why: a device sends the same bundle again and again with only its numbers and times changed, yet
the slow path rebuilds and serialises every dict of it per reading. Here the bundle bytes of one
reading *shape* are turned into a template once, and each later reading of that shape only fills
its slots (string joins, one SHA-1 per Observation for its ``fullUrl``).

No FHIR rule lives here; ``mappers.phd`` stays the only definition of the mapping:

* The shape (``_shape``) is every input the bundle can depend on except the measured values, the
  three times and the unmapped provenance fields (``raw``, ``sequence``).
* For a new shape ``map_reading`` runs on the reading itself and on two probe copies whose values
  and times are replaced by sentinels. Where a probe's sentinels occur in its bytes, the template
  gets a slot: the effective time, the identifier timestamp, each value, and each ``fullUrl``
  derived from an identifier that holds the timestamp (found with ``resources.full_url`` itself).
* Slots are filled with the functions ``map_reading`` uses (``format_datetime``,
  ``Reading.timestamp_part``, ``codes.convert_to``, ``full_url``).
* A template is kept only if it reproduces, byte for byte, both the reading's own bundle and the
  second probe's. A shape whose bytes depend on anything else (today: a battery level, whose
  entry carries the receipt time) is remembered as not templatable and takes the slow path.

Any ``MappingError`` and anything unusual on the fast path (a non-``Decimal`` value, a timestamp
that escaping would change) is settled by the slow path, so errors are exactly ``map_reading``'s.
``mappers`` must not import the gateway, so the serialiser is handed in (``gateway.serialize``'s
``dumps``). The cache is the only state: a bounded dict, first in first out.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from drivers.models import GatewayInfo, PatientRef, Reading
from mappers import codes
from mappers.errors import MappingError
from mappers.phd import (
    map_reading,
    observation_identifier,
    primary_observation_code,
    transaction_bundle,
)
from mappers.resources import format_datetime, full_url

__all__ = ["BundleTemplates"]

Dumps = Callable[[dict[str, Any]], bytes]

_EPOCH = datetime(2000, 1, 1)
# A timestamp made only of these is the same once JSON-escaped, FHIR-search-escaped and
# percent-encoded, so it can be pasted into every slot as is.
_PLAIN_TIMESTAMP = re.compile(r"[0-9.-]+")
_TOKEN_CHARS = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz.")


@dataclass(frozen=True, slots=True)
class _Probe:
    """Sentinel values and times: digit runs found nowhere else in a bundle."""

    device_seconds: int
    received: timedelta
    effective: datetime
    value_base: int
    value_fraction: str
    provenance: int


_PROBES = (
    _Probe(
        918273645,
        timedelta(seconds=829384756, microseconds=283746),
        datetime(2031, 7, 13, 5, 17, 49, 123456),
        7193,
        "4682",
        5550123,
    ),
    _Probe(
        736451928,
        timedelta(seconds=647382915, microseconds=364758),
        datetime(2027, 2, 9, 21, 43, 6, 654321),
        6284,
        "5917",
        5550456,
    ),
)


class _Slow(Exception):
    """This reading must take the slow path (its result or error is map_reading's)."""


@dataclass(frozen=True, slots=True)
class _Template:
    """Bundle bytes of one shape: literal text pieces, some of them slots to fill per reading."""

    pieces: tuple[str, ...]  # the bundle's text, "" where a slot goes
    slots: tuple[tuple[int, int], ...]  # (index in pieces, index in fill's list)
    urls: tuple[tuple[str, str, tuple[str, ...]], ...]  # (type, system, identifier split at ts)
    values: tuple[tuple[int, frozenset[str], str, str], ...]  # (index, {unit out}, name, unit in)
    key: tuple[str, ...] | None  # idempotency key split at the timestamp

    def fill(self, reading: Reading) -> list[str]:
        """Slot values: timestamp, effective time, the fullUrls, then the values."""
        timestamp = reading.timestamp_part
        if _PLAIN_TIMESTAMP.fullmatch(timestamp) is None:
            raise _Slow
        filled = [timestamp, format_datetime(reading.effective_time)]
        for resource_type, system, parts in self.urls:
            filled.append(full_url(resource_type, system, timestamp.join(parts)))
        quantities = reading.quantities
        for index, unit_out, name, unit in self.values:
            value = quantities[index].value
            if type(value) is not Decimal:
                raise _Slow
            filled.append(str(codes.convert_to(unit_out, name, value, unit)[0]))
        return filled

    def render(self, filled: list[str]) -> bytes:
        parts = list(self.pieces)
        for position, slot in self.slots:
            parts[position] = filled[slot]
        return "".join(parts).encode()


class BundleTemplates:
    """Bundle bytes per reading through templates cached per shape (see the module docstring).

    ``dumps`` must be the serialiser the slow path would use (``gateway.serialize.dumps``).
    """

    def __init__(self, dumps: Dumps, *, maxsize: int = 256) -> None:
        self._dumps = dumps
        self._maxsize = maxsize
        self._templates: dict[tuple[Any, ...], _Template | None] = {}
        self.fast = 0  # readings served from a template (tests check the fast path ran)
        self.slow = 0  # readings served by map_reading

    def bundle(self, reading: Reading, patient: PatientRef, gateway: GatewayInfo) -> bytes:
        """``dumps(transaction_bundle(map_reading(reading, patient, gateway)))``, same bytes."""
        template = self._template(reading, patient, gateway)
        if template is not None:
            try:
                body = template.render(template.fill(reading))
            except (_Slow, MappingError):
                pass
            else:
                self.fast += 1
                return body
        self.slow += 1
        return self._slow_bundle(reading, patient, gateway)

    def bundle_and_key(
        self, reading: Reading, patient: PatientRef, gateway: GatewayInfo
    ) -> tuple[bytes, str]:
        """``bundle`` and the reading's idempotency key, ``observation_identifier(reading,
        patient, primary_observation_code(reading))``, whose timestamp the bundle computes anyway.
        """
        template = self._template(reading, patient, gateway)
        if template is not None and template.key is not None:
            try:
                filled = template.fill(reading)
                body = template.render(filled)
            except (_Slow, MappingError):
                pass
            else:
                self.fast += 1
                return body, filled[0].join(template.key)
        self.slow += 1
        body = self._slow_bundle(reading, patient, gateway)
        return body, observation_identifier(reading, patient, primary_observation_code(reading))

    def clear(self) -> None:
        self._templates.clear()

    def __len__(self) -> int:
        return len(self._templates)

    # --- templates --------------------------------------------------------------------------------

    def _slow_bundle(self, reading: Reading, patient: PatientRef, gateway: GatewayInfo) -> bytes:
        return self._dumps(transaction_bundle(map_reading(reading, patient, gateway)))

    def _template(
        self, reading: Reading, patient: PatientRef, gateway: GatewayInfo
    ) -> _Template | None:
        try:
            shape = _shape(reading, patient, gateway)
            return self._templates[shape]
        except KeyError:
            pass
        except (TypeError, AttributeError):  # unhashable or malformed input: map_reading judges
            return None
        try:
            body = self._slow_bundle(reading, patient, gateway)
        except MappingError:
            return None  # not cached: the slow path raises it again, exactly
        template = self._derive(reading, patient, gateway, body)
        if len(self._templates) >= self._maxsize:
            del self._templates[next(iter(self._templates))]
        self._templates[shape] = template
        return template

    def _derive(
        self, reading: Reading, patient: PatientRef, gateway: GatewayInfo, body: bytes
    ) -> _Template | None:
        """The shape's template, or None when it does not reproduce every bundle it is checked
        against (the reading's own and a second probe's)."""
        try:
            template = self._from_probe(reading, patient, gateway, _PROBES[0])
            checks = [(reading, body)]
            second = _probe_reading(reading, _PROBES[1])
            checks.append((second, self._slow_bundle(second, patient, gateway)))
            for checked, expected in checks:
                filled = template.fill(checked)
                if template.render(filled) != expected:
                    return None
                if template.key is not None and filled[0].join(template.key) != (
                    observation_identifier(checked, patient, primary_observation_code(checked))
                ):
                    return None
        except (_Slow, MappingError):
            return None
        return template

    def _from_probe(
        self, reading: Reading, patient: PatientRef, gateway: GatewayInfo, probe: _Probe
    ) -> _Template:
        """Split the probe reading's bundle at its sentinels."""
        probed = _probe_reading(reading, probe)
        entries = map_reading(probed, patient, gateway)
        text = self._dumps(transaction_bundle(entries)).decode()
        timestamp = probed.timestamp_part
        needles: dict[str, int] = {timestamp: 0, format_datetime(probed.effective_time): 1}
        urls: list[tuple[str, str, tuple[str, ...]]] = []
        for item in entries:
            resource = item["resource"]
            for identifier in resource.get("identifier", ()):
                system, value = identifier["system"], identifier["value"]
                url = full_url(resource["resourceType"], system, value)
                if timestamp in value and url == item["fullUrl"] and url not in needles:
                    needles[url] = len(needles)
                    urls.append((resource["resourceType"], system, tuple(value.split(timestamp))))
        values: list[tuple[int, frozenset[str], str, str]] = []
        for index, quantity in enumerate(probed.quantities):
            if quantity.value is None:
                continue
            found: set[tuple[str, frozenset[str]]] = set()
            for unit_out in _units_out(quantity.unit):
                try:
                    written = codes.convert_to(
                        unit_out, quantity.name, quantity.value, quantity.unit
                    )
                except MappingError:
                    continue
                if str(written[0]) in text:
                    found.add((str(written[0]), unit_out))
            if len(found) > 1:
                raise _Slow
            if found:  # not found: a quantity without a confirmed code is not sent
                ((written_text, unit_out),) = found
                if written_text in needles:
                    raise _Slow
                needles[written_text] = len(needles)
                values.append((index, unit_out, quantity.name, quantity.unit))
        pieces, slots = _split(text, needles)
        try:
            code = primary_observation_code(reading)
            key = tuple(observation_identifier(probed, patient, code).split(timestamp))
        except MappingError:
            key = None
        return _Template(
            pieces=pieces,
            slots=slots,
            urls=tuple(urls),
            values=tuple(values),
            key=key if key is not None and len(key) > 1 else None,
        )


def _shape(reading: Reading, patient: PatientRef, gateway: GatewayInfo) -> tuple[Any, ...]:
    """Everything but values, times, ``raw`` and ``sequence`` (types where ``is`` tests them)."""
    battery = reading.battery
    return (
        reading.kind,
        reading.characteristic,
        reading.device,
        tuple([(q.name, q.unit, q.absent, q.value is None) for q in reading.quantities]),
        reading.device_time is None,
        reading.effective_time.tzinfo,
        reading.time_source,
        type(reading.time_source),
        reading.user_index,
        reading.flags,
        reading.site,
        reading.corrections,
        reading.context,
        reading.status,
        reading.clock,
        None if battery is None else (type(battery), battery),
        patient,
        gateway,
    )


def _probe_reading(reading: Reading, probe: _Probe) -> Reading:
    """``reading`` with every value, time and provenance field replaced by ``probe``'s."""
    quantities = tuple(
        q
        if q.value is None
        else dataclasses.replace(
            q, value=Decimal(f"{probe.value_base + 37 * index}.{probe.value_fraction}")
        )
        for index, q in enumerate(reading.quantities)
    )
    device_time = reading.device_time
    if device_time is not None:
        device_time = (_EPOCH + timedelta(seconds=probe.device_seconds)).replace(
            tzinfo=device_time.tzinfo
        )
    return dataclasses.replace(
        reading,
        quantities=quantities,
        device_time=device_time,
        effective_time=probe.effective.replace(tzinfo=reading.effective_time.tzinfo),
        received_at=datetime(2000, 1, 1, tzinfo=UTC) + probe.received,
        raw=f"{probe.provenance:x}",
        sequence=probe.provenance,
    )


def _units_out(unit: str) -> list[frozenset[str]]:
    """The units a device unit can be written in (as ``convert_to`` target sets)."""
    out = [frozenset({unit})]
    conversion = codes.UNIT_CONVERSIONS.get(unit)
    if conversion is not None:
        out.append(frozenset({conversion[0]}))
    return out


def _split(
    text: str, needles: dict[str, int]
) -> tuple[tuple[str, ...], tuple[tuple[int, int], ...]]:
    """``text`` cut at every needle occurrence: the pieces and which piece is which slot.

    A needle inside a longer token (a sentinel transformed in a way no slot knows) or two
    overlapping needles make the shape untemplatable.
    """
    hits: list[tuple[int, int, int]] = []
    for needle, slot in needles.items():
        start = text.find(needle)
        while start >= 0:
            end = start + len(needle)
            before = text[start - 1] if start else ""
            after = text[end] if end < len(text) else ""
            if before in _TOKEN_CHARS or after in _TOKEN_CHARS:
                raise _Slow
            hits.append((start, end, slot))
            start = text.find(needle, end)
    hits.sort()
    pieces: list[str] = []
    slots: list[tuple[int, int]] = []
    position = 0
    for start, end, slot in hits:
        if start < position:
            raise _Slow
        pieces.append(text[position:start])
        slots.append((len(pieces), slot))
        pieces.append("")
        position = end
    pieces.append(text[position:])
    return tuple(pieces), tuple(slots)
