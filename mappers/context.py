"""``Reading.context``: the specimen of a glucose reading and its coded context Observations.

Context keys a kind accepts (``KindTerm.contexts``, plus ``specimen`` when ``KindTerm.specimens``
is set); each key at most once; a key or value name the tables do not know is a
``MappingError``.

* ``specimen`` picks the measurement's own code (``codes.GLUCOSE_SPECIMENS``): the sample type is
  part of what was measured, so it changes the MDC/LOINC codes (and the PHD identifier).
* every other key becomes one PhdCodedEnumerationObservation (PHD2
  input/examples/meal-context-observation.json: code MDC_CTXT_GLU_MEAL, value an MDC code),
  with the reading's patient, time, device and its own PHD identifier (type = the context code),
  ``derivedFrom`` the measurement Observation(s). The PHD example carries no link at all;
  ``derivedFrom`` is what PHD uses for related 11073 observations (Source-Handle-Reference, and
  the BITS example bpm-status.json), ``hasMember`` being reserved for group observations.
* a value whose MDC code could not be confirmed (``None`` in the table) is written as an
  ``Observation.note`` on the measurement ("Meal context: bedtime") instead.
* ``sample-location`` ``finger`` also sets the measurement's ``bodySite`` (SNOMED CT).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drivers.models import Reading
from mappers import codes
from mappers.errors import MappingError
from mappers.resources import (
    ObservationContext,
    mark_test_data,
    mdc_coding,
    observation_entry,
    observation_head,
    references,
)

SPECIMEN = "specimen"
SAMPLE_LOCATION = "sample-location"


@dataclass(frozen=True, slots=True)
class ReadingContext:
    specimen: codes.QuantityTerm | None  # replaces the term of ``KindTerm.specimen_of``
    coded: tuple[tuple[codes.ContextTerm, codes.Mdc], ...]  # in table order
    notes: tuple[str, ...]
    body_site: codes.BodySite | None


def parse_context(reading: Reading, kind: codes.KindTerm) -> ReadingContext:
    values: dict[str, str] = {}
    for key, value in reading.context:
        if key in values:
            raise MappingError(f"context key {key!r} appears twice in one reading")
        if key not in kind.contexts and not (key == SPECIMEN and kind.specimens):
            raise MappingError(f"context key {key!r} is not known for kind {kind.kind}")
        values[key] = value
    specimen = None
    if SPECIMEN in values:
        specimen = specimen_term(kind, values[SPECIMEN])
    coded: list[tuple[codes.ContextTerm, codes.Mdc]] = []
    notes: list[str] = []
    for key, term in kind.contexts.items():  # table order: deterministic output
        if key not in values:
            continue
        value = values[key]
        if value not in term.values:
            raise MappingError(f"context {key} value {value!r} is not known for kind {kind.kind}")
        code = term.values[value]
        if code is None:
            notes.append(f"{term.label}: {value}")
        else:
            coded.append((term, code))
    site = None
    if SAMPLE_LOCATION in values:
        site = codes.GLUCOSE_SAMPLE_SITES.get(values[SAMPLE_LOCATION])
    return ReadingContext(specimen=specimen, coded=tuple(coded), notes=tuple(notes), body_site=site)


def specimen_term(kind: codes.KindTerm, name: str) -> codes.QuantityTerm:
    try:
        return kind.specimens[name]
    except KeyError:
        raise MappingError(f"specimen {name!r} is not known for kind {kind.kind}") from None


def reading_specimen(reading: Reading, kind: codes.KindTerm) -> codes.QuantityTerm | None:
    """Just the specimen of a reading (for ``primary_observation_code``); validated the same."""
    if not kind.specimens:
        return None
    for key, value in reading.context:
        if key == SPECIMEN:
            return specimen_term(kind, value)
    return None


def context_entries(
    parsed: ReadingContext,
    context: ObservationContext,
    derived_from: list[str],
    *,
    test_data: bool,
) -> list[dict[str, Any]]:
    """One PhdCodedEnumerationObservation per coded context value."""
    entries = []
    for term, value in parsed.coded:
        resource = observation_head(
            [codes.PHD_CODED_ENUMERATION_OBSERVATION_PROFILE],
            [mdc_coding(term.mdc)],
            context.identifier_of(term.mdc.code),
            context,
            vital_sign=False,
        )
        if test_data:
            mark_test_data(resource)
        resource["valueCodeableConcept"] = {"coding": [mdc_coding(value)]}
        resource["device"] = {"reference": context.device_url}
        resource["derivedFrom"] = references(derived_from)
        entries.append(observation_entry(resource))
    return entries
