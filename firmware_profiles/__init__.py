"""Per-model quirks as validated data; the same files drive the emulated peripherals."""

from firmware_profiles.schema import (
    CgmFacts,
    ClockPolicy,
    Corrections,
    DeviceFacts,
    EmulatedReading,
    Emulation,
    FirmwareProfile,
    Match,
    PlxFacts,
    ProfileError,
    Security,
    TimeService,
    UdsUser,
    load_profile,
    load_profiles,
    match_profile,
)

__all__ = [
    "CgmFacts",
    "ClockPolicy",
    "Corrections",
    "DeviceFacts",
    "EmulatedReading",
    "Emulation",
    "FirmwareProfile",
    "Match",
    "PlxFacts",
    "ProfileError",
    "Security",
    "TimeService",
    "UdsUser",
    "load_profile",
    "load_profiles",
    "match_profile",
]
