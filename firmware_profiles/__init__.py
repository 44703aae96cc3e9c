"""Per-model quirks as validated data; the same files drive the emulated peripherals."""

from firmware_profiles.schema import (
    ClockPolicy,
    Corrections,
    DeviceFacts,
    EmulatedReading,
    Emulation,
    FirmwareProfile,
    Match,
    ProfileError,
    Security,
    load_profile,
    load_profiles,
    match_profile,
)

__all__ = [
    "ClockPolicy",
    "Corrections",
    "DeviceFacts",
    "EmulatedReading",
    "Emulation",
    "FirmwareProfile",
    "Match",
    "ProfileError",
    "Security",
    "load_profile",
    "load_profiles",
    "match_profile",
]
