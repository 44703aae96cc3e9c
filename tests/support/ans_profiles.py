"""A small validator for ANS "Mesures de santé" 3.1.1 + PHD 1.0.0 ``PhdDevice`` (tests only).

The conformance files in ``<fhir-ig>/`` (``/work/shared/fhir-ig/SOURCES.md``) hold the ANS
StructureDefinitions as **differentials only** (no snapshot) and the FR Core parents are absent,
so no off-the-shelf validator applies. This one applies what the files state:

* element cardinalities (``min`` / ``max``), ``fixed[x]`` (exact) and ``pattern[x]`` (subset)
  values, choice-type restrictions (``effective[x]`` dateTime only...), inside slices too;
* slices whose membership can be decided: ``value`` / ``pattern`` discriminators with a fixed or
  pattern value in the slice (or in the slice's own pattern), type slices of ``value[x]``,
  extension slices by ``url`` (fixed ``url`` element, else the extension profile's canonical),
  ``profile`` discriminators on ``Bundle.entry.resource``;
* extension profiles (``type.profile`` of an extension slice) applied to the extension itself,
  when the extension's StructureDefinition is in the folder;
* ``Reference`` target profiles: the referenced type, and, for a reference resolved inside the
  bundle being checked, the ``meta.profile`` of the target;
* required bindings whose content is at hand: the folder's ValueSets (ANS ``method-glucose-vs``,
  the PHD 1.0.0 XML value sets without filters) and a few NOS JDVs whose codes
  ``fhir-mapping.md`` §4.5/§4.6 lists and the ANS examples confirm (``STAND_IN_VALUE_SETS``,
  partial by nature). Other required bindings are recorded in ``unchecked``;
* the PHD 1.0.0 ``PhdDevice`` differential, read from its FHIR XML source (SYSID slice,
  ``meta.profile`` slice, MDC type 65573, specialization...);
* the feed bundle profile ``MesBundleFluxAlimentation`` (``validate_feed_bundle``), plus, on
  request, the Mon espace santé API rules of ``fhir-mapping.md`` §4.3 (``MES_API_RULES``).

What the parents say is not in the folder. The few parent rules the ANS profiles rely on are added
as synthetic differential elements (``BASE_FACTS``), from the R4 core vital-signs profiles
(``vitalsigns``, ``bodyweight``... ``bp``) as ``fhir-mapping.md`` §3/§4.5 summarise them:
``status``/``category:VSCat``/``code``/``subject``/``effective[x]`` required, each profile's LOINC
code, the numeric value's four parts, the fixed UCUM code of heart rate / SpO2 / BMI / BP
components, and the invariants vs-1, vs-2 and vs-3. FR Core's own extra rules are unknown here.

Not checked (listed in ``unchecked`` when met): bindings without local content (NOS JDVs other
than the stand-ins, extensible bindings), ``PhdDevice.property`` slices (their discriminator
``type`` has no fixed value to match), invariants other than the ones above.

The folder: ``$EDGE_FHIR_IG`` when set, else ``<repo>/../shared/fhir-ig``, else
``/work/shared/fhir-ig`` (``ig_folder``). Tests call ``validator()``, which skips them with the
missing folder named when there is none.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
ANS_FOLDER = "ans-mesures-3.1.1"
PHD_FOLDER = "phd-1.0.0"

MES_SD = "https://interop.esante.gouv.fr/ig/fhir/mesures/StructureDefinition/"
PHD_DEVICE = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdDevice"
FEED_BUNDLE = MES_SD + "mesures-bundle-flux-alimentation"
GLUCOSE = MES_SD + "mesures-observation-glucose"
BMI = MES_SD + "mesures-fr-observation-bmi"

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
NOS_LOINC = "https://mos.esante.gouv.fr/NOS/TRE_A04-Loinc/FHIR/TRE-A04-Loinc"
NOS_TAASIP = "https://mos.esante.gouv.fr/NOS/TRE_R308-TAASIP/FHIR/TRE-R308-TAASIP"
NOS_FMA = "https://mos.esante.gouv.fr/NOS/TRE_R309-FMA/FHIR/TRE-R309-FMA"
_NOS_JDV = "https://mos.esante.gouv.fr/NOS/"

_OID = r"[0-2](\.(0|[1-9][0-9]*))+"
_IF_NONE_EXIST = re.compile(rf"identifier=urn:oid:{_OID}\|[A-Za-z0-9-]+")
_URN_OID = re.compile(rf"urn:oid:{_OID}")
_URN_UUID = re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_DATE_AT_LEAST_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


# --------------------------------------------------------------------------- the folder


def ig_folder() -> Path | None:
    """The conformance folder, or ``None`` (see the module doc for the search order)."""
    override = os.environ.get("EDGE_FHIR_IG")
    candidates = (
        [Path(override)]
        if override
        else [REPO.parent / "shared" / "fhir-ig", Path("/work/shared/fhir-ig")]
    )
    for candidate in candidates:
        if (candidate / ANS_FOLDER).is_dir() and (candidate / PHD_FOLDER).is_dir():
            return candidate
    return None


def _searched() -> str:
    override = os.environ.get("EDGE_FHIR_IG")
    if override:
        return f"$EDGE_FHIR_IG={override}"
    return f"{REPO.parent / 'shared' / 'fhir-ig'} and /work/shared/fhir-ig"


def validator() -> AnsValidator:
    """The shared validator, or ``pytest.skip`` naming the folder that is missing."""
    folder = ig_folder()
    if folder is None:
        pytest.skip(
            f"FHIR IG conformance folder missing: no {ANS_FOLDER}/ and {PHD_FOLDER}/ under "
            f"{_searched()} (set EDGE_FHIR_IG to the folder holding them)"
        )
    return _validator(folder)


@functools.cache
def _validator(folder: Path) -> AnsValidator:
    return AnsValidator(folder)


# --------------------------------------------------------------------------- synthetic rules

# Parent-profile rules (R4 core vital signs, fhir-mapping.md §3/§4.5), as differential elements.
_VITAL_SIGNS: list[dict[str, Any]] = [
    {"id": "Observation.status", "min": 1},
    {
        "id": "Observation.category",
        "min": 1,
        "slicing": {"discriminator": [{"type": "pattern", "path": "$this"}], "rules": "open"},
    },
    {
        "id": "Observation.category:VSCat",
        "sliceName": "VSCat",
        "min": 1,
        "max": "1",
        "patternCodeableConcept": {"coding": [{"system": OBS_CATEGORY, "code": "vital-signs"}]},
    },
    {"id": "Observation.code", "min": 1},
    {"id": "Observation.subject", "min": 1},
    {
        "id": "Observation.effective[x]",
        "min": 1,
        "type": [{"code": "dateTime"}, {"code": "Period"}],
    },
]


def _loinc_code(code: str) -> list[dict[str, Any]]:
    return [
        {
            "id": "Observation.code.coding",
            "slicing": {
                "discriminator": [
                    {"type": "value", "path": "code"},
                    {"type": "value", "path": "system"},
                ],
                "rules": "open",
            },
        },
        {
            "id": "Observation.code.coding:base",
            "sliceName": "base",
            "min": 1,
            "max": "1",
            "patternCoding": {"system": LOINC, "code": code},
        },
    ]


def _numeric(unit: str | None) -> list[dict[str, Any]]:
    """R4 vital-sign valueQuantity: value, unit, system (UCUM) and code all 1..1."""
    elements: list[dict[str, Any]] = [
        {"id": f"Observation.value[x]:valueQuantity.{part}", "min": 1}
        for part in ("value", "unit", "system", "code")
    ]
    elements.append({"id": "Observation.value[x]:valueQuantity.system", "fixedUri": UCUM})
    if unit is not None:
        elements.append({"id": "Observation.value[x]:valueQuantity.code", "fixedCode": unit})
    return elements


def _bp_component(slice_name: str, code: str, required: bool) -> list[dict[str, Any]]:
    base = f"Observation.component:{slice_name}"
    return [
        {
            "id": base,
            "sliceName": slice_name,
            "min": 1 if required else 0,
            "max": "1",
        },
        {
            "id": base + ".code",
            "patternCodeableConcept": {"coding": [{"system": LOINC, "code": code}]},
        },
        {"id": base + ".value[x]", "type": [{"code": "Quantity"}]},
        {"id": base + ".value[x]:valueQuantity.value", "min": 1},
        {"id": base + ".value[x]:valueQuantity.system", "min": 1, "fixedUri": UCUM},
        {"id": base + ".value[x]:valueQuantity.code", "min": 1, "fixedCode": "mm[Hg]"},
    ]


BASE_FACTS: dict[str, list[dict[str, Any]]] = {
    MES_SD + "mesures-fr-observation-body-weight": [
        *_VITAL_SIGNS,
        *_loinc_code("29463-7"),
        *_numeric(None),
    ],
    MES_SD + "mesures-fr-observation-bodyheight": [
        *_VITAL_SIGNS,
        *_loinc_code("8302-2"),
        *_numeric(None),
    ],
    MES_SD + "mesures-fr-observation-body-temperature": [
        *_VITAL_SIGNS,
        *_loinc_code("8310-5"),
        *_numeric(None),
    ],
    MES_SD + "mesures-fr-observation-heartrate": [
        *_VITAL_SIGNS,
        *_loinc_code("8867-4"),
        *_numeric("/min"),
    ],
    MES_SD + "mesures-fr-observation-oxygen-sat": [
        *_VITAL_SIGNS,
        *_loinc_code("2708-6"),
        *_numeric("%"),
    ],
    MES_SD + "mesures-fr-observation-bmi": [
        *_VITAL_SIGNS,
        *_loinc_code("39156-5"),
        *_numeric("kg/m2"),
    ],
    MES_SD + "mesures-fr-observation-resp-rate": [
        *_VITAL_SIGNS,
        *_loinc_code("9279-1"),
        *_numeric("/min"),
    ],
    MES_SD + "mesures-fr-observation-bp": [
        *_VITAL_SIGNS,
        *_loinc_code("85354-9"),
        {
            "id": "Observation.component",
            "slicing": {"discriminator": [{"type": "pattern", "path": "code"}], "rules": "open"},
        },
        *_bp_component("SystolicBP", "8480-6", True),
        *_bp_component("DiastolicBP", "8462-4", True),
        *_bp_component("MeanBP", "8478-0", False),  # FR Core's slice (spec §3)
    ],
    GLUCOSE: list(_VITAL_SIGNS),
    MES_SD + "mesures-observation-head-circumference": list(_VITAL_SIGNS),
    MES_SD + "mesures-observation-pain-severity": list(_VITAL_SIGNS),
    MES_SD + "mesures-observation-steps-by-day": list(_VITAL_SIGNS),
    MES_SD + "mesures-observation-waist-circumference": list(_VITAL_SIGNS),
}

# NOS JDVs with required bindings whose codes fhir-mapping.md lists and the ANS examples confirm
# (system from the examples). Partial stand-ins: the JDV files themselves are not in the folder.
STAND_IN_VALUE_SETS: dict[str, set[tuple[str | None, str]]] = {
    # J157 moment of measurement (§4.6; CISP2 A05 left out: its NOS system is not attested here)
    _NOS_JDV + "JDV_J157-MomentGlucose-ENS/FHIR/JDV-J157-MomentGlucose-ENS": {
        (NOS_LOINC, code) for code in ("53049-3", "88365-2", "16915-1", "LA11865-5", "LA46-8")
    },
    # J163 glucose units (§4.5), bound on valueQuantity.code (a code: no system)
    _NOS_JDV + "JDV_J163-GlucoseUnits-ENS/FHIR/JDV-J163-GlucoseUnits-ENS": {
        (None, "mg/dL"),
        (None, "%"),
    },
    # J164 number of days (§4.6)
    _NOS_JDV + "JDV_J164-GlucoseNumberOfDays-ENS/FHIR/JDV-J164-GlucoseNumberOfDays-ENS": {
        (NOS_TAASIP, code) for code in ("GEN-275", "GEN-276", "GEN-277", "GEN-278", "GEN-092")
    },
    # J149 BP body site (§4.5: FMA 24890 arm, 24922 wrist)
    _NOS_JDV + "JDV_J149-BodySiteBP-ENS/FHIR/JDV-J149-BodySiteBP-ENS": {
        (NOS_FMA, "24890"),
        (NOS_FMA, "24922"),
    },
}

# Resource type of the target profiles the ANS differentials name.
_TARGET_TYPES = {
    PHD_DEVICE: "Device",
    "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-patient": "Patient",
    "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-encounter": "Encounter",
    "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-related-person": "RelatedPerson",
    "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-practitioner": "Practitioner",
    "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-organization": "Organization",
}


# --------------------------------------------------------------------------- definitions


@dataclass
class Definition:
    """One StructureDefinition's differential (plus base facts), indexed by element id."""

    url: str
    type: str
    elements: list[dict[str, Any]]
    by_id: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for element in self.elements:
            self.by_id[element["id"]] = {**self.by_id.get(element["id"], {}), **element}


def _element_from_xml(node: ET.Element) -> dict[str, Any]:
    """A FHIR XML ``ElementDefinition`` as the JSON form, for the parts the validator reads."""
    ns = "{http://hl7.org/fhir}"
    element: dict[str, Any] = {"id": node.get("id")}
    for child in node:
        tag = child.tag.removeprefix(ns)
        value = child.get("value")
        if tag in ("min",):
            element["min"] = int(value or 0)
        elif tag in ("max", "sliceName", "path") or tag.startswith(("fixed", "pattern")):
            element[tag] = value
        elif tag == "slicing":
            element["slicing"] = {
                "discriminator": [
                    {
                        "type": d.find(ns + "type").get("value"),  # type: ignore[union-attr]
                        "path": d.find(ns + "path").get("value"),  # type: ignore[union-attr]
                    }
                    for d in child.findall(ns + "discriminator")
                ],
                "rules": child.find(ns + "rules").get("value"),  # type: ignore[union-attr]
            }
        elif tag == "binding":
            element["binding"] = {
                "strength": child.find(ns + "strength").get("value"),  # type: ignore[union-attr]
                "valueSet": child.find(ns + "valueSet").get("value"),  # type: ignore[union-attr]
            }
        elif tag == "type":
            kind: dict[str, Any] = {"code": child.find(ns + "code").get("value")}  # type: ignore[union-attr]
            for list_tag in ("profile", "targetProfile"):
                found = [p.get("value") for p in child.findall(ns + list_tag)]
                if found:
                    kind[list_tag] = found
            element.setdefault("type", []).append(kind)
    return element


def _load_xml_definition(path: Path) -> Definition:
    ns = "{http://hl7.org/fhir}"
    root = ET.parse(path).getroot()
    url = root.find(ns + "url").get("value")  # type: ignore[union-attr]
    type_ = root.find(ns + "type").get("value")  # type: ignore[union-attr]
    differential = root.find(ns + "differential")
    assert differential is not None and url and type_
    elements = [_element_from_xml(e) for e in differential.findall(ns + "element")]
    return Definition(url, type_, elements)


def _expansion_from_value_set(vs: dict[str, Any]) -> set[tuple[str | None, str]] | str | None:
    """``{(system, code)}``; a system name when it includes a whole code system; ``None`` when
    not expandable here (filters, other value sets)."""
    includes = vs.get("compose", {}).get("include", [])
    codes: set[tuple[str | None, str]] = set()
    whole: list[str] = []
    for include in includes:
        if include.get("filter") or include.get("valueSet") or "system" not in include:
            return None
        if "concept" in include:
            codes.update((include["system"], c["code"]) for c in include["concept"])
        else:
            whole.append(include["system"])
    if whole and codes:
        return None
    if whole:
        return "|".join(whole)
    return codes


def _value_set_from_xml(path: Path) -> dict[str, Any] | None:
    """The parts of a FHIR XML ValueSet the expansion reads; ``None`` if it does not parse
    (PHD 1.0.0 ``DeviceTypes11073MDC.valueset.xml`` is not well-formed, see SOURCES.md)."""
    ns = "{http://hl7.org/fhir}"
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return None
    url = root.find(ns + "url")
    if url is None:
        return None
    includes = []
    for include in root.iter(ns + "include"):
        entry: dict[str, Any] = {}
        system = include.find(ns + "system")
        if system is not None:
            entry["system"] = system.get("value")
        if include.find(ns + "filter") is not None:
            entry["filter"] = [{}]
        if include.find(ns + "valueSet") is not None:
            entry["valueSet"] = ["..."]
        concepts = [c.find(ns + "code") for c in include.findall(ns + "concept")]
        if concepts:
            entry["concept"] = [{"code": c.get("value")} for c in concepts if c is not None]
        includes.append(entry)
    return {"url": url.get("value"), "compose": {"include": includes}}


# --------------------------------------------------------------------------- matching helpers


class _ExtensionOnly:
    """A primitive present only as ``_element`` (extensions, no value): counts, has no value."""

    def __init__(self, node: Any) -> None:
        self.node = node


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def matches_pattern(value: Any, pattern: Any) -> bool:
    """FHIR pattern semantics: every element of the pattern is in the value (arrays: each
    pattern item is matched by some value item)."""
    if isinstance(pattern, list):
        return isinstance(value, list) and all(
            any(matches_pattern(v, p) for v in value) for p in pattern
        )
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(
            key in value and matches_pattern(value[key], p) for key, p in pattern.items()
        )
    return bool(value == pattern and type(value) is type(pattern)) or (
        isinstance(value, int | float) and not isinstance(value, bool) and value == pattern
    )


def _expected(element: dict[str, Any] | None) -> tuple[str, Any] | None:
    if element is None:
        return None
    for key, value in element.items():
        if key.startswith("fixed"):
            return "fixed", value
        if key.startswith("pattern"):
            return "pattern", value
    return None


def _satisfies(value: Any, expected: tuple[str, Any]) -> bool:
    kind, wanted = expected
    if kind == "fixed":
        return matches_pattern(value, wanted) and matches_pattern(wanted, value)
    return matches_pattern(value, wanted)


def _reach(node: Any, path: str) -> list[Any]:
    """Values at a dotted path (``$this`` / ``value`` on a primitive: the node itself)."""
    nodes = [node]
    if path == "$this":
        return nodes
    for step in path.split("."):
        found: list[Any] = []
        for item in nodes:
            if isinstance(item, dict):
                found.extend(_listed(item.get(step)))
            elif step == "value" and not isinstance(item, list):
                found.append(item)  # a primitive's value
        nodes = found
    return nodes


def _walk_pattern(pattern: Any, path: str) -> Any:
    for step in path.split("."):
        if isinstance(pattern, list):
            pattern = pattern[0] if pattern else None
        if not isinstance(pattern, dict):
            return None
        pattern = pattern.get(step)
    return pattern


class _Unknown(Exception):
    """Slice membership cannot be decided here: the element is not checked."""


def _type_suffix(code: str) -> str:
    return code[0].upper() + code[1:]


# --------------------------------------------------------------------------- the validator


class AnsValidator:
    """Checks resources and feed bundles against the differentials of one conformance folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.definitions: dict[str, Definition] = {}
        self.expansions: dict[str, set[tuple[str | None, str]] | str | None] = {}
        self.examples: dict[str, dict[str, Any]] = {}
        self.unchecked: set[str] = set()
        ans = folder / ANS_FOLDER
        for path in sorted(ans.glob("StructureDefinition-*.json")):
            sd = json.loads(path.read_text(encoding="utf-8"))
            elements = [*BASE_FACTS.get(sd["url"], []), *sd["differential"]["element"]]
            self.definitions[sd["url"]] = Definition(sd["url"], sd["type"], elements)
        self.definitions[PHD_DEVICE] = _load_xml_definition(folder / PHD_FOLDER / "PhdDevice.xml")
        for path in sorted(ans.glob("ValueSet-*.json")):
            vs = json.loads(path.read_text(encoding="utf-8"))
            self.expansions[vs["url"]] = _expansion_from_value_set(vs)
        for path in sorted((folder / PHD_FOLDER).glob("*.valueset.xml")):
            xml_vs = _value_set_from_xml(path)
            if xml_vs is not None:
                self.expansions[xml_vs["url"]] = _expansion_from_value_set(xml_vs)
        for url, codes in STAND_IN_VALUE_SETS.items():
            self.expansions.setdefault(url, codes)
        for path in sorted(ans.glob("*-example-*.json")):
            self.examples[path.name] = json.loads(path.read_text(encoding="utf-8"))
        if FEED_BUNDLE not in self.definitions:
            raise FileNotFoundError(f"{ans} holds no MesBundleFluxAlimentation definition")

    # ---- entry points

    def validate(
        self, resource: dict[str, Any], *, bundle: dict[str, Any] | None = None
    ) -> list[str]:
        """Issues of a resource against every profile it claims that is in the folder.

        ``bundle``: the bundle holding it, to resolve ``Type/id`` and ``urn:uuid`` references.
        """
        claimed = [url.split("|")[0] for url in resource.get("meta", {}).get("profile", [])]
        known = [url for url in claimed if url in self.definitions]
        if not known:
            return [f"{resource.get('resourceType')}: claims no profile this validator knows"]
        issues: list[str] = []
        for url in known:
            issues.extend(self.validate_against(resource, url, bundle=bundle))
        return issues

    def validate_against(
        self, node: dict[str, Any], url: str, *, bundle: dict[str, Any] | None = None
    ) -> list[str]:
        definition = self.definitions[url]
        issues: list[str] = []
        if definition.type != "Extension" and node.get("resourceType") != definition.type:
            return [f"{url}: a {definition.type} is expected, not {node.get('resourceType')}"]
        for element in definition.elements:
            try:
                self._check_element(node, definition, element, bundle, issues)
            except _Unknown as exc:
                self.unchecked.add(f"{definition.url}#{exc}")
        if definition.type == "Observation" and url in BASE_FACTS:
            issues.extend(_vital_sign_invariants(node))
        return [f"{url.rsplit('/', 1)[-1]}: {issue}" for issue in issues]

    def validate_feed_bundle(
        self,
        bundle: dict[str, Any],
        *,
        mes_api_rules: bool = True,
        also_allowed: Collection[str] = (),
    ) -> list[str]:
        """A MesBundleFluxAlimentation (and each entry against its profiles), then, by default,
        the MES API rules. ``also_allowed``: Observation profiles accepted in the
        ``mes-observation`` slice besides the 3.1.1 list (the glucose deviation)."""
        definition = self.definitions[FEED_BUNDLE]
        issues: list[str] = []
        if bundle.get("resourceType") != "Bundle":
            return ["not a Bundle"]
        slice_profiles: dict[str, list[str]] = {}
        for element in definition.elements:
            if element["id"].endswith(".resource") and "type" in element:
                profiles = [p for t in element["type"] for p in t.get("profile", [])]
                slice_profiles[element["id"].rsplit(".", 1)[0]] = profiles
        for element in definition.elements:
            if element["id"].endswith(".resource"):
                continue  # below, with the entry's own profile
            try:
                self._check_element(bundle, definition, element, bundle, issues)
            except _Unknown as exc:
                self.unchecked.add(f"{definition.url}#{exc}")
        for index, entry in enumerate(bundle.get("entry", [])):
            resource = entry.get("resource") or {}
            where = f"Bundle.entry[{index}]"
            owner = next(
                (
                    slice_id
                    for slice_id in slice_profiles
                    if self._member(definition, slice_id, entry) is True
                ),
                None,
            )
            claimed = set(resource.get("meta", {}).get("profile", []))
            if owner is not None:
                allowed = set(slice_profiles[owner])
                if owner.endswith(":mes-observation"):
                    allowed |= set(also_allowed)
                if not claimed & allowed:
                    issues.append(
                        f"{where}: the resource claims none of the profiles of slice "
                        f"{owner.split(':')[-1]}"
                    )
                slice_type = definition.by_id[owner + ".resource"]["type"][0]["code"]
                if resource.get("resourceType") != slice_type:
                    issues.append(f"{where}: slice {owner.split(':')[-1]} takes a {slice_type}")
            issues.extend(f"{where}: {i}" for i in self.validate(resource, bundle=bundle))
        if mes_api_rules:
            issues.extend(mes_api_issues(bundle))
        return [f"MesBundleFluxAlimentation: {issue}" for issue in issues]

    # ---- elements

    def _check_element(
        self,
        root: dict[str, Any],
        definition: Definition,
        element: dict[str, Any],
        bundle: dict[str, Any] | None,
        issues: list[str],
    ) -> None:
        element_id = element["id"]
        parts = element_id.split(".")
        if len(parts) == 1:
            return
        constrained = (
            element.get("min", 0) > 0
            or "max" in element
            or "type" in element
            or element.get("binding", {}).get("strength") == "required"
            or _expected(element) is not None
        )
        if not constrained:
            return
        parents = self._instances(root, definition, parts[:-1])
        last = parts[-1]
        prefix = ".".join(parts[:-1])
        for parent in parents:
            if not isinstance(parent, dict):
                continue
            children = self._select(parent, definition, prefix, last)
            where = element_id
            minimum = element.get("min", 0)
            if len(children) < minimum:
                issues.append(f"{where}: minimum cardinality {minimum}, found {len(children)}")
            maximum = element.get("max", "*")
            if maximum != "*" and len(children) > int(maximum):
                issues.append(f"{where}: maximum cardinality {maximum}, found {len(children)}")
            expected = _expected(element)
            if expected is not None:
                for child in children:
                    if not isinstance(child, _ExtensionOnly) and not _satisfies(child, expected):
                        issues.append(f"{where}: does not match the {expected[0]} value")
            if "type" in element:
                self._check_types(parent, element, last, children, bundle, issues)
            binding = element.get("binding")
            if binding and binding.get("strength") == "required":
                for child in children:
                    self._check_binding(child, binding["valueSet"], where, issues)

    def _instances(
        self, root: dict[str, Any], definition: Definition, parts: list[str]
    ) -> list[Any]:
        nodes: list[Any] = [root]
        for depth in range(1, len(parts)):
            prefix = ".".join(parts[:depth])
            nodes = [
                child
                for node in nodes
                if isinstance(node, dict)
                for child in self._select(node, definition, prefix, parts[depth])
            ]
        return nodes

    def _select(
        self, node: dict[str, Any], definition: Definition, prefix: str, part: str
    ) -> list[Any]:
        name, _, slice_name = part.partition(":")
        if name.endswith("[x]"):
            stem = name[:-3]
            if slice_name:
                if not (slice_name.startswith(stem) and slice_name[len(stem) :][:1].isupper()):
                    raise _Unknown(f"{prefix}.{part}")
                return _listed(node.get(slice_name))
            return [
                item
                for key, value in node.items()
                if key.startswith(stem) and key[len(stem) :][:1].isupper()
                for item in _listed(value)
            ]
        values = _listed(node.get(name))
        if not values and "_" + name in node:
            values = [_ExtensionOnly(item) for item in _listed(node["_" + name])]
        if not slice_name:
            return values
        slice_id = f"{prefix}.{part}"
        return [value for value in values if self._member(definition, slice_id, value)]

    def _member(self, definition: Definition, slice_id: str, item: Any) -> bool:
        """Whether ``item`` belongs to slice ``slice_id``; ``_Unknown`` when undecidable."""
        sliced_id = slice_id.rsplit(":", 1)[0]
        slice_element = definition.by_id.get(slice_id, {})
        slicing = definition.by_id.get(sliced_id, {}).get("slicing")
        name = sliced_id.rsplit(".", 1)[-1]
        if slicing is None and name in ("extension", "modifierExtension"):
            slicing = {"discriminator": [{"type": "value", "path": "url"}]}  # FHIR's own
        if slicing is None:
            raise _Unknown(slice_id)
        for discriminator in slicing["discriminator"]:
            kind, path = discriminator["type"], discriminator["path"]
            if kind == "profile" and path == "resource":
                profiles = [
                    p
                    for t in definition.by_id.get(slice_id + ".resource", {}).get("type", [])
                    for p in t.get("profile", [])
                ]
                claimed = (item.get("resource") or {}).get("meta", {}).get("profile", [])
                if not set(profiles) & set(claimed):
                    return False
                continue
            if kind not in ("value", "pattern"):
                raise _Unknown(slice_id)
            expected = self._discriminator_value(definition, slice_id, slice_element, path)
            if expected is None:
                raise _Unknown(slice_id)
            if not any(_satisfies(value, expected) for value in _reach(item, path)):
                return False
        return True

    def _discriminator_value(
        self,
        definition: Definition,
        slice_id: str,
        slice_element: dict[str, Any],
        path: str,
    ) -> tuple[str, Any] | None:
        if path == "$this":
            return _expected(slice_element)
        direct = _expected(definition.by_id.get(f"{slice_id}.{path}"))
        if direct is not None:
            return direct
        own = _expected(slice_element)
        if own is not None:
            value = _walk_pattern(own[1], path) if path != "value" else own[1]
            if value is not None:
                return own[0], value
        if path == "url":  # an extension slice: its profile's canonical is its url
            for kind in slice_element.get("type", []):
                for profile in kind.get("profile", []):
                    return "fixed", profile
        return None

    # ---- types, references, bindings

    def _check_types(
        self,
        parent: dict[str, Any],
        element: dict[str, Any],
        part: str,
        children: list[Any],
        bundle: dict[str, Any] | None,
        issues: list[str],
    ) -> None:
        where = element["id"]
        name, _, slice_name = part.partition(":")
        types = element["type"]
        if name.endswith("[x]") and not slice_name:
            allowed = {name[:-3] + _type_suffix(t["code"]) for t in types}
            for key in parent:
                is_choice = key.startswith(name[:-3]) and key[len(name) - 3 :][:1].isupper()
                if is_choice and key not in allowed:
                    issues.append(f"{where}: {key} is not allowed ({', '.join(sorted(allowed))})")
        for kind in types:
            if kind["code"] == "Extension":
                for profile in kind.get("profile", []):
                    if profile not in self.definitions:
                        self.unchecked.add(f"extension profile {profile}")
                        continue
                    for child in children:
                        if isinstance(child, dict):
                            issues.extend(
                                f"{where}: {issue}"
                                for issue in self.validate_against(child, profile)
                            )
            if kind["code"] == "Reference" and "targetProfile" in kind:
                for child in children:
                    if isinstance(child, dict):
                        problem = self._reference_problem(child, kind["targetProfile"], bundle)
                        if problem:
                            issues.append(f"{where}: {problem}")

    def _reference_problem(
        self, reference: dict[str, Any], targets: list[str], bundle: dict[str, Any] | None
    ) -> str | None:
        types = {_TARGET_TYPES.get(t, t.rsplit("/", 1)[-1]) for t in targets}
        text = reference.get("reference")
        declared = reference.get("type")
        if declared is not None and declared not in types:
            return f"Reference.type {declared} is not one of {sorted(types)}"
        if text is None:
            return None  # identifier-only (MES subject): nothing to resolve
        target = _resolve(text, bundle)
        if target is not None:
            if target.get("resourceType") not in types:
                return f"reference points at a {target.get('resourceType')}"
            wanted = {t for t in targets if t in self.definitions}
            claimed = set(target.get("meta", {}).get("profile", []))
            if wanted and not wanted & claimed:
                return f"the referenced {target['resourceType']} claims none of {sorted(wanted)}"
            return None
        if text.startswith("urn:uuid:"):
            return f"{text} is not in the bundle"
        kind = text.split("/")[-2] if "/" in text else None
        if kind not in types:
            return f"reference {text} is not to one of {sorted(types)}"
        return None

    def _check_binding(self, value: Any, url: str, where: str, issues: list[str]) -> None:
        expansion = self.expansions.get(url.split("|")[0])
        if expansion is None:
            self.unchecked.add(f"required binding {url}")
            return
        if isinstance(value, _ExtensionOnly):
            return
        pairs: list[tuple[Any, Any]]
        if isinstance(value, str):
            pairs = [(None, value)]
        elif isinstance(value, dict) and "coding" in value:
            pairs = [(c.get("system"), c.get("code")) for c in value["coding"]]
        elif isinstance(value, dict) and "code" in value:
            pairs = [(value.get("system"), value.get("code"))]
        else:
            pairs = []
        if isinstance(expansion, str):
            systems = set(expansion.split("|"))
            ok = any(system in systems for system, _ in pairs)
        else:
            ok = any(
                (system, code) in expansion or (None, code) in expansion for system, code in pairs
            )
        if not ok:
            issues.append(f"{where}: code not in the required value set {url}")


def _resolve(text: str, bundle: dict[str, Any] | None) -> dict[str, Any] | None:
    if bundle is None:
        return None
    for entry in bundle.get("entry", []):
        resource = entry.get("resource") or {}
        if entry.get("fullUrl") == text:
            return resource
        if "id" in resource and text == f"{resource.get('resourceType')}/{resource['id']}":
            return resource
    return None


def _vital_sign_invariants(resource: dict[str, Any]) -> list[str]:
    """R4 vitalsigns vs-1, vs-2, vs-3 (and obs-6: not both a value and a dataAbsentReason)."""
    issues = []
    has_value = any(key.startswith("value") and key[5:6].isupper() for key in resource)
    effective = resource.get("effectiveDateTime")
    if isinstance(effective, str) and not _DATE_AT_LEAST_DAY.match(effective):
        issues.append("vs-1: effectiveDateTime must be at least a day")
    grouped = resource.get("component") or resource.get("hasMember")
    if not grouped and not has_value and "dataAbsentReason" not in resource:
        issues.append("vs-2: a value, a dataAbsentReason or components are required")
    if has_value and "dataAbsentReason" in resource:
        issues.append("obs-6: both a value and a dataAbsentReason")
    for index, component in enumerate(resource.get("component", [])):
        component_value = any(k.startswith("value") and k[5:6].isupper() for k in component)
        if not component_value and "dataAbsentReason" not in component:
            issues.append(f"vs-3: component[{index}] has neither a value nor a dataAbsentReason")
    return issues


# --------------------------------------------------------------------------- MES API rules

MES_API_RULES = """fhir-mapping.md §4.3: exactly one Observation entry (POST Observation, an
absolute fullUrl, no conditional create) and at most one Device entry (POST Device, ifNoneExist
identifier=urn:oid:<oid>|<value> naming one of its identifiers, fullUrl urn:uuid:<Device.id>);
meta.profile on both (a Mes canonical / PhdDevice); meta.source, when present, urn:oid:<oid>;
subject.identifier with an urn:oid system and a value; Observation.device = Device/<Device.id>
when the bundle has a Device (and a Device when it names one); a value (valueQuantity, or
components all with values), never a dataAbsentReason; no BMI; the glucose business rules."""


def mes_api_issues(bundle: dict[str, Any]) -> list[str]:
    """The Mon espace santé feed rules ``MES_API_RULES`` (not part of any profile)."""
    issues: list[str] = []
    entries = bundle.get("entry", [])
    observations = [
        e for e in entries if (e.get("resource") or {}).get("resourceType") == "Observation"
    ]
    devices = [e for e in entries if (e.get("resource") or {}).get("resourceType") == "Device"]
    if bundle.get("type") != "transaction":
        issues.append("MES: the bundle must be a transaction")
    if len(observations) != 1:
        issues.append(f"MES: exactly one Observation per bundle, found {len(observations)}")
    if len(devices) > 1:
        issues.append(f"MES: at most one Device per bundle, found {len(devices)}")
    if len(observations) + len(devices) != len(entries):
        issues.append("MES: only Observation and Device entries are accepted")
    device = devices[0]["resource"] if len(devices) == 1 else None
    for entry in devices:
        issues.extend(_mes_device_issues(entry))
    for entry in observations:
        issues.extend(_mes_observation_issues(entry, device))
    return issues


def _mes_device_issues(entry: dict[str, Any]) -> list[str]:
    issues = []
    resource = entry["resource"]
    request = entry.get("request") or {}
    if request.get("method") != "POST" or request.get("url") != "Device":
        issues.append("MES: the Device entry must be POST Device")
    if_none_exist = request.get("ifNoneExist")
    if not isinstance(if_none_exist, str) or not _IF_NONE_EXIST.fullmatch(if_none_exist):
        issues.append("MES: the Device entry needs ifNoneExist identifier=urn:oid:<oid>|<value>")
    else:
        system, _, value = if_none_exist.removeprefix("identifier=").partition("|")
        if not any(
            i.get("system") == system and i.get("value") == value
            for i in resource.get("identifier", [])
        ):
            issues.append("MES: ifNoneExist names none of the Device's identifiers")
    if PHD_DEVICE not in resource.get("meta", {}).get("profile", []):
        issues.append("MES: the Device must claim PhdDevice in meta.profile")
    if "id" not in resource:
        issues.append("MES: the Device needs an id (the Observation links to it by id)")
    elif entry.get("fullUrl") != f"urn:uuid:{resource['id']}":
        issues.append("MES: the Device fullUrl must be urn:uuid:<Device.id>")
    return issues


def _mes_observation_issues(entry: dict[str, Any], device: dict[str, Any] | None) -> list[str]:
    issues = []
    resource = entry["resource"]
    request = entry.get("request") or {}
    if request.get("method") != "POST" or request.get("url") != "Observation":
        issues.append("MES: the Observation entry must be POST Observation")
    if set(request) - {"method", "url"}:
        issues.append("MES: no conditional create on the Observation")
    full_url = entry.get("fullUrl")
    if not isinstance(full_url, str) or not (
        _URN_UUID.fullmatch(full_url) or full_url.startswith(("http://", "https://"))
    ):
        issues.append("MES: the Observation entry needs an absolute fullUrl")
    meta = resource.get("meta", {})
    profiles = meta.get("profile", [])
    if not any(p.startswith(MES_SD) for p in profiles):
        issues.append("MES: the Observation must claim a Mes profile in meta.profile")
    source = meta.get("source")
    if source is not None and not _URN_OID.fullmatch(source):
        issues.append("MES: meta.source must be urn:oid:<solution OID>")
    subject = resource.get("subject", {}).get("identifier", {})
    system = subject.get("system")
    if not (isinstance(system, str) and _URN_OID.fullmatch(system) and subject.get("value")):
        issues.append("MES: subject.identifier (urn:oid pairing authority + idPe) is required")
    reference = resource.get("device", {}).get("reference")
    if device is not None and reference != f"Device/{device.get('id')}":
        issues.append("MES: Observation.device must be Device/<the bundled Device.id>")
    if device is None and reference is not None:
        issues.append("MES: the Observation names a device the bundle does not carry")
    components = resource.get("component", [])
    has_value = "valueQuantity" in resource or (
        components and all("valueQuantity" in c for c in components)
    )
    if not has_value or "dataAbsentReason" in resource:
        issues.append("MES: an Observation without a value is refused")
    codes = {c.get("code") for c in resource.get("code", {}).get("coding", [])}
    if BMI in profiles or "39156-5" in codes:
        issues.append("MES: BMI Observations are refused")
    issues.extend(_glucose_rules(resource, codes))
    return issues


_GLUCOSE_RULES = {  # code -> (unit, moment of measurement, number of days): MESAPI §2.2.6
    "2345-7": ("mg/dL", "required", "forbidden"),
    "4548-4": ("%", "forbidden", "forbidden"),
    "MED-969": ("mg/dL", "forbidden", "required"),
    "MED-972": ("%", "forbidden", "required"),
}


def _glucose_rules(resource: dict[str, Any], codes: set[str | None]) -> list[str]:
    if GLUCOSE not in resource.get("meta", {}).get("profile", []):
        return []
    issues = []
    urls = [e.get("url") for e in resource.get("extension", [])]
    for code, (unit, moment, days) in _GLUCOSE_RULES.items():
        if code not in codes:
            continue
        if resource.get("valueQuantity", {}).get("code") != unit:
            issues.append(f"MES: glucose {code} must be in {unit}")
        for extension, rule in (("moment-of-measurement", moment), ("number-of-days", days)):
            present = MES_SD + "mesures-" + extension in urls
            if present != (rule == "required"):
                issues.append(f"MES: glucose {code}: the {extension} extension is {rule}")
    return issues


# --------------------------------------------------------------------------- test helpers


def mutated(resource: dict[str, Any], change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    """A deep copy of ``resource`` changed by ``change`` (which may return nothing)."""
    copied = copy.deepcopy(resource)
    change(copied)
    return copied


def observations_in(bundles: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        e["resource"]
        for b in bundles
        for e in b["entry"]
        if e["resource"]["resourceType"] == "Observation"
    ]
