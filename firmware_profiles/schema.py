"""Schema of a firmware profile (YAML), validated strictly: an unknown key is an error.

A profile says how one model/firmware really behaves (its quirks) and what it looks like on the
air, so the same file both steers the driver and builds the emulated device.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PROFILE_DIR = Path(__file__).parent


class ProfileError(ValueError):
    """A firmware profile file is invalid; the message names the file and the field."""


class ClockPolicy(StrEnum):
    """How to read the device's Date Time fields (they carry no offset on the wire)."""

    LOCAL = "local"  # wall clock in the gateway's zone (what the SIG specs intend)
    UTC = "utc"  # firmware writes UTC (a known quirk of some models)
    UNTRUSTED = "untrusted"  # clock is unusable (resets, never set): use gateway receipt time


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Match(_Strict):
    """How a connected device is recognised (DIS strings are compared case-insensitively)."""

    manufacturer: str | None = None
    model: str | None = None  # glob allowed, e.g. "UC-352*"
    name: str | None = None  # advertised local name glob

    @model_validator(mode="after")
    def _not_empty(self) -> Match:
        if not (self.manufacturer or self.model or self.name):
            raise ValueError("match needs at least one of manufacturer, model, name")
        return self


class Features(_Strict):
    timestamp: bool = True
    multiple_users: bool = False
    bmi: bool = False
    weight_resolution: int = Field(default=0, ge=0, le=15)
    height_resolution: int = Field(default=0, ge=0, le=7)


BpFeature = Literal[
    "body_movement_detection",
    "cuff_fit_detection",
    "irregular_pulse_detection",
    "pulse_rate_range_detection",
    "measurement_position_detection",
    "multiple_bonds",
]


class CgmFacts(_Strict):
    """What an emulated CGM sensor supports and how it runs (CGM Feature, session)."""

    e2e_crc: bool = False  # every CGM value carries an E2E-CRC (CGM Feature bit 12)
    trend: bool = False  # records carry the trend (mg/dL/min)
    quality: bool = False  # records carry the quality (%)
    interval: int = Field(default=5, ge=1, le=255)  # minutes between records (time offsets)
    session_running: bool = True  # a session is running when the gateway first connects


class PlxFacts(_Strict):
    """Which PLX measurements and optional fields an emulated oximeter offers (PLX Features)."""

    spot_check: bool = True  # PLX Spot-check Measurement (indicated)
    continuous: bool = False  # PLX Continuous Measurement (notified)
    timestamp: bool = True  # spot-checks carry a timestamp
    pulse_amplitude_index: bool = False
    measurement_status: bool = False
    device_sensor_status: bool = False


class UdsUser(_Strict):
    """A user registered on a multi-user device (User Data Service) and the code that unlocks
    their data; the emulator knows them as the device would after registration."""

    index: int = Field(ge=0, le=254)
    consent_code: int = Field(ge=0, le=9999)


class DeviceFacts(_Strict):
    """What the device presents over GATT (Device Information, Battery, features)."""

    name: str
    manufacturer: str
    model: str
    serial: str | None = None
    firmware: str | None = None
    hardware: str | None = None
    software: str | None = None
    system_id: str | None = None  # EUI-64, "00-1B-2C-FF-FE-3D-4E-5F" or 16 hex digits
    battery: int | None = Field(default=None, ge=0, le=100)
    features: Features = Features()  # Weight Scale Feature
    bp_features: list[BpFeature] = []  # Blood Pressure Feature bits that are set
    temperature_type: int | None = Field(default=None, ge=0, le=255)  # static 0x2A1D, if any
    cgm: CgmFacts = CgmFacts()
    # User Data Service: registered users. A device with users releases a user's measurements
    # only after the gateway gave that user's consent code (UCP Consent).
    users: list[UdsUser] = []
    plx: PlxFacts = PlxFacts()

    @field_validator("system_id")
    @classmethod
    def _eui64(cls, value: str | None) -> str | None:
        if value is None:
            return None
        digits = value.replace("-", "").replace(":", "").upper()
        if len(digits) != 16 or any(c not in "0123456789ABCDEF" for c in digits):
            raise ValueError("system_id must be an EUI-64 (16 hex digits)")
        return digits


_WEIGHT_FIELDS = ("weight", "height", "bmi", "unsuccessful")
_BP_FIELDS = ("systolic", "diastolic", "mean_arterial", "pulse", "status")
_TEMPERATURE_FIELDS = ("temperature", "site")
_GLUCOSE_FIELDS = (
    "glucose",
    "sequence",
    "time_offset",
    "sample_type",
    "sample_location",
    "annunciation",
    "meal",
    "tester",
    "health",
)
_CGM_FIELDS = ("glucose", "time_offset", "trend", "quality", "cgm_status")
_PLX_FIELDS = (
    "spo2",
    "pulse",
    "pulse_amplitude_index",
    "plx_mode",
    "plx_status",
    "sensor_status",
)
_BODY_COMPOSITION_FIELDS = (
    "body_fat",
    "weight",
    "height",
    "unsuccessful",
    "basal_metabolism",
    "muscle_percentage",
    "muscle_mass",
    "fat_free_mass",
    "soft_lean_mass",
    "body_water_mass",
    "impedance",
)
_FIELDS_BY_KIND = {
    "weight-scale": _WEIGHT_FIELDS,
    "blood-pressure": _BP_FIELDS,
    "thermometer": _TEMPERATURE_FIELDS,
    "glucose-meter": _GLUCOSE_FIELDS,
    "cgm": _CGM_FIELDS,
    "pulse-oximeter": _PLX_FIELDS,
    "body-composition": _BODY_COMPOSITION_FIELDS,
}
_ALL_FIELDS = tuple(sorted({name for names in _FIELDS_BY_KIND.values() for name in names}))


class EmulatedReading(_Strict):
    """One stored or live measurement of the profile's kind, or a raw payload as captured."""

    raw: str | None = None  # hex; sent verbatim (captured payloads, malformed data)
    time: str | None = None  # ISO wall-clock text, as the device's clock shows it
    user: int | None = Field(default=None, ge=0, le=255)
    # weight scale
    weight: Decimal | None = None  # in the reading's units
    units: Literal["si", "imperial"] = "si"
    height: Decimal | None = None  # m (si) or in (imperial)
    bmi: Decimal | None = None
    unsuccessful: bool = False
    # blood pressure (NaN allowed: real monitors send MAP = NaN)
    systolic: Decimal | None = Field(default=None, allow_inf_nan=True)
    diastolic: Decimal | None = Field(default=None, allow_inf_nan=True)
    mean_arterial: Decimal | None = Field(default=None, allow_inf_nan=True)
    pulse: Decimal | None = Field(default=None, allow_inf_nan=True)
    pressure_units: Literal["mmhg", "kpa"] = "mmhg"
    status: int | None = Field(default=None, ge=0, le=0xFFFF)  # Measurement Status bits
    # thermometer
    temperature: Decimal | None = Field(default=None, allow_inf_nan=True)
    temperature_units: Literal["celsius", "fahrenheit"] = "celsius"
    site: int | None = Field(default=None, ge=0, le=255)  # Temperature Type code in the value
    # glucose meter (GLS): one stored record, measurement + optional context
    glucose: Decimal | None = Field(default=None, allow_inf_nan=True)
    glucose_units: Literal["mg/dL", "mmol/L"] = "mg/dL"
    sequence: int | None = Field(default=None, ge=0, le=0xFFFF)  # default: position in memory
    time_offset: int | None = Field(default=None, ge=-0x8000, le=0x7FFF)  # minutes
    sample_type: int | None = Field(default=None, ge=0, le=15)  # default 1 capillary whole blood
    sample_location: int | None = Field(default=None, ge=0, le=15)  # default 1 finger
    annunciation: int | None = Field(default=None, ge=0, le=0xFFFF)  # Sensor Status bits
    meal: int | None = Field(default=None, ge=0, le=255)  # context: 1 preprandial ... 5 bedtime
    tester: int | None = Field(default=None, ge=0, le=15)  # context: 1 self, 2 HCP, 3 lab
    health: int | None = Field(default=None, ge=0, le=15)  # context: 1 minor ... 5 none
    # continuous glucose monitor (CGMS): one record; glucose in mg/dL, time_offset in minutes
    trend: Decimal | None = None  # (mg/dL)/min, when the sensor reports it
    quality: Decimal | None = None  # %, when the sensor reports it
    cgm_status: int | None = Field(default=None, ge=0, le=0xFFFFFF)  # Sensor Status Annunciation
    # pulse oximeter (PLXS): spo2 in %, pulse (above) in beats/min
    spo2: Decimal | None = Field(default=None, allow_inf_nan=True)
    pulse_amplitude_index: Decimal | None = None  # %
    plx_mode: Literal["spot-check", "continuous"] = "spot-check"
    plx_status: int | None = Field(default=None, ge=0, le=0xFFFF)  # Measurement Status bits
    sensor_status: int | None = Field(default=None, ge=0, le=0xFFFFFF)  # Device and Sensor Status
    # body composition (BCS): body_fat in %, masses in the reading's units (kg or lb)
    body_fat: Decimal | None = None
    basal_metabolism: int | None = Field(default=None, ge=0, le=0xFFFE)  # kJ
    muscle_percentage: Decimal | None = None  # %
    muscle_mass: Decimal | None = None
    fat_free_mass: Decimal | None = None
    soft_lean_mass: Decimal | None = None
    body_water_mass: Decimal | None = None
    impedance: Decimal | None = None  # ohm

    @model_validator(mode="after")
    def _shape(self) -> EmulatedReading:
        if self.raw is not None:
            bytes.fromhex(self.raw)
            if self.has_any(tuple(f for f in _ALL_FIELDS if f != "plx_mode")):
                raise ValueError("a raw reading carries nothing else")
        return self

    def has_any(self, names: tuple[str, ...]) -> bool:
        return any(getattr(self, n) not in (None, False) for n in names)

    def check_kind(self, kind: str) -> None:
        """Raise ValueError when the reading does not fit the device kind."""
        if self.raw is not None:
            return
        own = _FIELDS_BY_KIND[kind]
        foreign = tuple(name for name in _ALL_FIELDS if name not in own and name != "plx_mode")
        if self.has_any(foreign) or (self.plx_mode != "spot-check" and kind != "pulse-oximeter"):
            raise ValueError(f"a {kind} reading has fields of another device kind")
        if kind == "weight-scale" and self.weight is None and not self.unsuccessful:
            raise ValueError("a weight reading needs weight, unsuccessful: true, or raw")
        if kind == "weight-scale" and (self.height is None) != (self.bmi is None):
            raise ValueError("height and bmi go together (one flag covers both)")
        if kind == "blood-pressure" and None in (self.systolic, self.diastolic, self.mean_arterial):
            raise ValueError("a blood-pressure reading needs systolic, diastolic, mean_arterial")
        if kind == "thermometer" and self.temperature is None:
            raise ValueError("a thermometer reading needs temperature")
        if kind in ("glucose-meter", "cgm") and self.glucose is None:
            raise ValueError(f"a {kind} record needs glucose")
        if kind == "pulse-oximeter" and (self.spo2 is None or self.pulse is None):
            raise ValueError("a pulse-oximeter reading needs spo2 and pulse")
        if kind == "body-composition" and self.body_fat is None and not self.unsuccessful:
            raise ValueError("a body-composition reading needs body_fat or unsuccessful: true")

    @property
    def has_context(self) -> bool:
        """Whether a glucose record carries a Glucose Measurement Context."""
        return self.has_any(("meal", "tester", "health"))


class Corrections(_Strict):
    """Fixes the driver applies to this model's readings (each one is recorded on the reading)."""

    zero_is_unmeasured: list[str] = []  # quantity names for which the device sends 0 for "none"


class TimeService(_Strict):
    """The device's Current Time Service and what the gateway may do with it (clock policy)."""

    current_time: bool = False  # serves Current Time (read): the gateway measures the drift
    writable: bool = False  # accepts a Current Time write: the gateway corrects the clock
    set_before_records: bool = False  # quirk: refuses record access until the clock was set

    @model_validator(mode="after")
    def _consistent(self) -> TimeService:
        if self.writable and not self.current_time:
            raise ValueError("writable needs current_time")
        if self.set_before_records and not self.writable:
            raise ValueError("set_before_records needs a writable clock")
        return self


class Security(_Strict):
    """What the device demands before releasing data (GLS and CGMS require a bonded link)."""

    pairing: Literal["none", "just-works", "passkey"] = "none"
    passkey: int | None = Field(default=None, ge=0, le=999_999)  # the one the emulator displays

    @model_validator(mode="after")
    def _passkey_goes_with_passkey_pairing(self) -> Security:
        if (self.pairing == "passkey") != (self.passkey is not None):
            raise ValueError("passkey is given exactly when pairing is passkey")
        return self


class Emulation(_Strict):
    address: str
    stored: list[EmulatedReading] = []  # sent as a burst right after the subscription
    live: list[EmulatedReading] = []  # then one by one, every live_interval seconds
    live_interval: float = Field(default=0.5, gt=0)
    idle_disconnect: float = Field(default=1.0, gt=0)  # seconds of quiet before hanging up
    # Record-access devices (GLS): sequence numbers whose first notification is lost on the air,
    # as notifications can be; the gateway must notice the gap and fetch them again.
    lose_once: list[int] = []
    # Record-access devices with an E2E-CRC (CGMS): records (by time offset) whose first
    # transmission carries a wrong CRC; the gateway must reject it, not guess, and fetch it again.
    corrupt_once: list[int] = []
    # Body composition: largest measurement value the device sends in one indication (ATT MTU
    # minus 3); a record that does not fit is split into a multiple-packet pair.
    max_packet: int = Field(default=20, ge=8, le=512)
    # Devices with Current Time: how far the emulated clock is ahead of true time (negative:
    # behind), in seconds, until the gateway sets it.
    clock_offset: float = 0.0


class FirmwareProfile(_Strict):
    id: str
    title: str
    kind: Literal[
        "weight-scale",
        "blood-pressure",
        "thermometer",
        "glucose-meter",
        "cgm",
        "pulse-oximeter",
        "body-composition",
    ]
    match: Match
    clock: ClockPolicy = ClockPolicy.LOCAL
    time: TimeService = TimeService()
    security: Security = Security()
    quirks: list[str] = []  # human-readable notes, one per deviation from the standard
    corrections: Corrections = Corrections()
    sources: list[str] = []  # where the facts come from
    device: DeviceFacts
    emulation: Emulation | None = None

    @model_validator(mode="after")
    def _readings_fit_the_kind(self) -> FirmwareProfile:
        if self.emulation is not None:
            for where in ("stored", "live"):
                for index, reading in enumerate(getattr(self.emulation, where)):
                    try:
                        reading.check_kind(self.kind)
                    except ValueError as exc:
                        raise ValueError(f"emulation.{where}.{index}: {exc}") from None
        return self

    def matches(self, *, manufacturer: str | None, model: str | None, name: str | None) -> bool:
        m = self.match
        if m.manufacturer and (manufacturer or "").casefold() != m.manufacturer.casefold():
            return False
        if m.model and not fnmatch.fnmatch((model or "").casefold(), m.model.casefold()):
            return False
        return not (m.name and not fnmatch.fnmatch((name or "").casefold(), m.name.casefold()))


def load_profile(path: Path) -> FirmwareProfile:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return FirmwareProfile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ProfileError(f"{path.name}: {where}: {first['msg']}") from exc
    except (OSError, yaml.YAMLError) as exc:
        raise ProfileError(f"{path.name}: {exc}") from exc


def load_profiles(directory: Path = PROFILE_DIR) -> dict[str, FirmwareProfile]:
    profiles: dict[str, FirmwareProfile] = {}
    for path in sorted(directory.glob("*.yaml")):
        profile = load_profile(path)
        if profile.id in profiles:
            raise ProfileError(f"{path.name}: duplicate profile id {profile.id!r}")
        if profile.id != path.stem:
            raise ProfileError(f"{path.name}: id {profile.id!r} must equal the file name")
        profiles[profile.id] = profile
    return profiles


def match_profile(
    profiles: Iterable[FirmwareProfile],
    *,
    manufacturer: str | None,
    model: str | None,
    name: str | None,
) -> FirmwareProfile | None:
    """First profile whose matcher fits; the generic profile (no quirks) is never auto-matched
    unless its own matcher fits, so an unknown model is driven by the plain standard."""
    for profile in profiles:
        if profile.matches(manufacturer=manufacturer, model=model, name=name):
            return profile
    return None
