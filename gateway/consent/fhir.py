"""FHIR R4 Consent: parsing plain JSON into a typed model, and evaluating it (docs/consent.md).

The product reads Consent resources as plain dicts (imported files, the record server's search
answers) and refuses a malformed one with a ``ConsentFormatError`` naming the bad field, e.g.
``provision.provision[0].type: expected 'permit' or 'deny'``. Only what edge evaluates is
interpreted: status, scope, patient, provision type/period/actor/code (nested provisions too).

Evaluation of one Consent for (patient, category, destination, time, codes): the root provision
applies when its period covers the time, an actor names the destination (no actor: any
destination) and its codes cover the category (no category code: every category). A nested
provision that applies overrides its parent (the deepest applying one wins). Across Consents a
deny overrides a permit. Nothing applying means no answer here: the store's default deny.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

SCOPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentscope"
CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
LOINC = "http://loinc.org"
DESTINATION_SYSTEM = "urn:edge:destination"  # actor identifier naming an edge destination
ACTOR_ROLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ACTOR_ROLE = "IRCP"  # information recipient: the destination the data goes to
PURPOSE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
PURPOSE = "TREAT"
CONSENT_CATEGORY = {"system": LOINC, "code": "59284-0", "display": "Patient Consent"}
ANY_CATEGORY = "*"


class ConsentFormatError(ValueError):
    """A Consent resource edge cannot use; the message starts with the offending field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Provision:
    type: str  # "permit" or "deny"
    start: datetime | None
    end: datetime | None
    destinations: tuple[str, ...]  # empty: any destination
    categories: tuple[str, ...]  # Observation category codes; empty: every category
    codes: tuple[str, ...]  # LOINC codes; empty: every code
    provisions: tuple[Provision, ...]
    # narrowed by elements edge does not evaluate (class, data, dataPeriod, securityLabel,
    # action, a purpose other than treatment): such a permit is not taken as a permit at all
    narrowed: bool = False

    def covers(
        self, category: str, destination: str, at: datetime, codes: Sequence[str] | None
    ) -> bool | None:
        """Whether this provision applies; None when it depends on codes nobody gave."""
        if self.start is not None and at < self.start:
            return False
        if self.end is not None and at >= self.end:
            return False
        if self.destinations and destination not in self.destinations:
            return False
        if (
            self.categories
            and category not in self.categories
            and ANY_CATEGORY not in (self.categories)
        ):
            return False
        if self.codes:
            if codes is None:
                return None
            return any(code in self.codes for code in codes)
        return True


@dataclass(frozen=True, slots=True)
class Consent:
    id: str
    version: str | None
    status: str
    patient: str | None  # "system|value", or None when only a literal reference is given
    provision: Provision
    resource: Mapping[str, Any]

    def evaluate(
        self,
        category: str,
        destination: str,
        at: datetime,
        codes: Sequence[str] | None = None,
    ) -> tuple[str, str] | None:
        """("permit" | "deny", reason) when this Consent speaks to the request, else None."""
        if self.status != "active":
            return None
        return _walk(self.provision, category, destination, at, codes, "provision")


def _walk(
    p: Provision,
    category: str,
    destination: str,
    at: datetime,
    codes: Sequence[str] | None,
    path: str,
) -> tuple[str, str] | None:
    applies = p.covers(category, destination, at, codes)
    if applies is False:
        return None
    if p.type == "permit" and p.narrowed:
        return None  # it may permit far less than it seems to: read as not permitting
    if applies is None:  # a code-level rule and the caller did not say which codes
        if p.type == "deny":
            return "deny", f"{path} denies some codes; the reading's codes are unknown"
        return None
    verb = "permits" if p.type == "permit" else "denies"
    answer: tuple[str, str] = (p.type, f"{path} {verb} {category} to {destination}")
    inner = [
        found
        for i, child in enumerate(p.provisions)
        if (found := _walk(child, category, destination, at, codes, f"{path}.provision[{i}]"))
    ]
    # an applying nested provision is an exception to its parent; among siblings deny wins
    return next((a for a in inner if a[0] == "deny"), inner[0] if inner else answer)


# -- parsing ------------------------------------------------------------------------------------
def _obj(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConsentFormatError(field, "expected a JSON object")
    return value


def _list(value: Any, field: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConsentFormatError(field, "expected a JSON array")
    return value


def _str(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConsentFormatError(field, "expected a non-empty string")
    return value


_FHIR_DATETIME = re.compile(
    r"(?P<year>[0-9]{4})(-(?P<month>[0-9]{2})(-(?P<day>[0-9]{2})"
    r"(?P<time>T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?(Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?"
)


def parse_datetime(value: Any, field: str, *, end: bool = False) -> datetime:
    """A FHIR ``dateTime``. A year, month or date without a time means the whole of it: as a
    period's (exclusive) ``end`` that is the first instant after it, so a deny "until
    2026-12-31" still denies on the 31st."""
    text = _str(value, field)
    match = _FHIR_DATETIME.fullmatch(text)
    if match is None:
        raise ConsentFormatError(field, f"not a FHIR dateTime: {text!r}")
    if match["time"] is not None:
        if not text.endswith("Z") and "+" not in match["time"] and "-" not in match["time"]:
            raise ConsentFormatError(field, "a dateTime with a time needs a time zone")
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    year, month, day = int(match["year"]), int(match["month"] or 1), int(match["day"] or 1)
    try:
        start = datetime(year, month, day, tzinfo=UTC)
    except ValueError as exc:
        raise ConsentFormatError(field, f"not a FHIR dateTime: {text!r}") from exc
    if not end:
        return start
    if match["day"] is not None:
        return start + timedelta(days=1)
    if match["month"] is not None:
        return datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return datetime(year + 1, 1, 1, tzinfo=UTC)


def _codings(value: Any, field: str) -> list[tuple[str | None, str]]:
    out: list[tuple[str | None, str]] = []
    for i, coding in enumerate(_list(_obj(value, field).get("coding"), f"{field}.coding")):
        c = _obj(coding, f"{field}.coding[{i}]")
        system = c.get("system")
        if system is not None:
            system = _str(system, f"{field}.coding[{i}].system")
        out.append((system, _str(c.get("code"), f"{field}.coding[{i}].code")))
    return out


def _provision(value: Any, field: str) -> Provision:
    p = _obj(value, field)
    kind = p.get("type")
    if kind not in ("permit", "deny"):
        raise ConsentFormatError(f"{field}.type", "expected 'permit' or 'deny'")
    start = end = None
    if "period" in p:
        period = _obj(p["period"], f"{field}.period")
        if "start" in period:
            start = parse_datetime(period["start"], f"{field}.period.start")
        if "end" in period:
            end = parse_datetime(period["end"], f"{field}.period.end", end=True)
        if start is not None and end is not None and end < start:
            raise ConsentFormatError(f"{field}.period", "end is before start")
    destinations: list[str] = []
    for i, actor in enumerate(_list(p.get("actor"), f"{field}.actor")):
        a = _obj(actor, f"{field}.actor[{i}]")
        _codings(a.get("role"), f"{field}.actor[{i}].role")  # required by R4
        ref = _obj(a.get("reference"), f"{field}.actor[{i}].reference")
        ident = ref.get("identifier")
        if ident is not None:
            where = f"{field}.actor[{i}].reference.identifier"
            ident = _obj(ident, where)
            if ident.get("system") == DESTINATION_SYSTEM:
                destinations.append(_str(ident.get("value"), f"{where}.value"))
                continue
        # an actor edge cannot name as a destination: keep it, matching nothing
        destinations.append("\0" + str(ref.get("reference") or ref.get("display") or "?"))
    categories: list[str] = []
    codes: list[str] = []
    for i, concept in enumerate(_list(p.get("code"), f"{field}.code")):
        for system, code in _codings(concept, f"{field}.code[{i}]"):
            if system == CATEGORY_SYSTEM or (system is None and code == ANY_CATEGORY):
                categories.append(code)
            elif system == LOINC:
                codes.append(code)
            else:
                raise ConsentFormatError(
                    f"{field}.code[{i}]", f"unsupported code system {system!r}"
                )
    children = tuple(
        _provision(child, f"{field}.provision[{i}]")
        for i, child in enumerate(_list(p.get("provision"), f"{field}.provision"))
    )
    purposes = [
        c.get("code") if isinstance(c, Mapping) else None
        for c in _list(p.get("purpose"), f"{field}.purpose")
    ]
    narrowed = any(k in p for k in _UNEVALUATED) or any(code != PURPOSE for code in purposes)
    return Provision(
        kind,
        start,
        end,
        tuple(destinations),
        tuple(categories),
        tuple(codes),
        children,
        narrowed,
    )


_UNEVALUATED = ("class", "data", "dataPeriod", "securityLabel", "action")


def parse_consent(resource: Any) -> Consent:
    """A Consent (parsed JSON) -> Consent, or a ConsentFormatError naming the bad field."""
    r = _obj(resource, "Consent")
    if r.get("resourceType") != "Consent":
        raise ConsentFormatError("resourceType", "expected 'Consent'")
    consent_id = _str(r.get("id"), "id") if "id" in r else ""
    meta = _obj(r.get("meta", {}), "meta")
    version = _str(meta["versionId"], "meta.versionId") if "versionId" in meta else None
    status = r.get("status")
    if status not in ("draft", "proposed", "active", "rejected", "inactive", "entered-in-error"):
        raise ConsentFormatError("status", f"not a Consent status: {status!r}")
    scope = _codings(r.get("scope"), "scope")
    if not any(c == "patient-privacy" and s in (None, SCOPE_SYSTEM) for s, c in scope):
        raise ConsentFormatError("scope", "edge uses only patient-privacy consents")
    if not _list(r.get("category"), "category"):
        raise ConsentFormatError("category", "at least one category is required")
    patient = None
    ref = _obj(r.get("patient"), "patient")
    if "identifier" in ref:
        ident = _obj(ref["identifier"], "patient.identifier")
        system = _str(ident.get("system"), "patient.identifier.system")
        patient = f"{system}|{_str(ident.get('value'), 'patient.identifier.value')}"
    elif "reference" not in ref:
        raise ConsentFormatError("patient", "needs an identifier or a reference")
    if "dateTime" in r:
        parse_datetime(r["dateTime"], "dateTime")
    if "provision" not in r:
        raise ConsentFormatError("provision", "edge needs a provision (permit or deny)")
    provision = _provision(r["provision"], "provision")
    return Consent(consent_id, version, status, patient, provision, r)


def build_consent(
    *,
    patient: str,
    destination: str,
    categories: Iterable[str],
    kind: str = "permit",
    recorded_at: datetime,
    recorded_by: str,
    attestation: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    excluded_codes: Iterable[str] = (),
    consent_id: str | None = None,
) -> dict[str, Any]:
    """A FHIR R4 Consent for a local grant: patient-privacy, the destination as recipient."""
    system, _, value = patient.partition("|")
    period: dict[str, str] = {}
    if start is not None:
        period["start"] = start.astimezone(UTC).isoformat()
    if end is not None:
        period["end"] = end.astimezone(UTC).isoformat()
    provision: dict[str, Any] = {
        "type": kind,
        "actor": [
            {
                "role": {"coding": [{"system": ACTOR_ROLE_SYSTEM, "code": ACTOR_ROLE}]},
                "reference": {
                    "identifier": {"system": DESTINATION_SYSTEM, "value": destination},
                    "display": destination,
                },
            }
        ],
        "purpose": [{"system": PURPOSE_SYSTEM, "code": PURPOSE}],
    }
    if period:
        provision["period"] = period
    cats = [c for c in categories if c != ANY_CATEGORY]
    if cats:
        provision["code"] = [{"coding": [{"system": CATEGORY_SYSTEM, "code": c}]} for c in cats]
    excluded = list(excluded_codes)
    if excluded:
        provision["provision"] = [
            {
                "type": "deny" if kind == "permit" else "permit",
                "code": [{"coding": [{"system": LOINC, "code": c}]} for c in excluded],
            }
        ]
    performer = {"display": recorded_by}
    resource: dict[str, Any] = {
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": SCOPE_SYSTEM, "code": "patient-privacy"}]},
        "category": [{"coding": [CONSENT_CATEGORY]}],
        "patient": {"identifier": {"system": system, "value": value}},
        "dateTime": recorded_at.astimezone(UTC).isoformat(),
        "performer": [performer],
        "policyRule": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                    "code": "OPTIN" if kind == "permit" else "OPTOUT",
                }
            ]
        },
        "provision": provision,
    }
    if consent_id is not None:
        resource["id"] = consent_id
    if attestation:
        resource["verification"] = [
            {
                "verified": True,
                "verifiedWith": {"display": recorded_by},
                "verificationDate": (recorded_at.astimezone(UTC).isoformat()),
            }
        ]
        resource["sourceAttachment"] = {"contentType": "text/plain", "title": attestation}
    return resource
