"""Renders docs/devices.md from the firmware profiles: ``python -m firmware_profiles.catalog``."""

from __future__ import annotations

import sys
from pathlib import Path

from firmware_profiles.schema import FirmwareProfile, load_profiles

DOC = Path(__file__).resolve().parents[1] / "docs" / "devices.md"


def _clock(profile: FirmwareProfile) -> str:
    """Clock policy, plus what the gateway does with the device's Current Time Service."""
    time = profile.time
    if not time.current_time:
        return profile.clock.value
    if not time.writable:
        return f"{profile.clock.value}, CTS read"
    before = ", set before records" if time.set_before_records else ""
    return f"{profile.clock.value}, CTS read and set{before}"


def render(profiles: dict[str, FirmwareProfile]) -> str:
    lines = [
        "# Supported devices",
        "",
        "Generated from `firmware_profiles/*.yaml` by `python -m firmware_profiles.catalog`;",
        "do not edit by hand (a test fails when this page is stale).",
        "",
        "Any device offering a standard Bluetooth SIG profile below works without a firmware",
        "profile; a profile only records how a model departs from the standard.",
        "",
        "| Service | Status |",
        "|---|---|",
        "| Weight Scale 0x181D (Weight Measurement, Weight Scale Feature) | supported |",
        "| Blood Pressure 0x1810 (Measurement, Feature; cuff pressure not stored) | supported |",
        "| Health Thermometer 0x1809 (Measurement, Temperature Type; intermediate not stored) |"
        " supported |",
        "| Glucose 0x1808 (Measurement + Context joined by sequence number, RACP download of new"
        " records only, lost records fetched again, control solution never stored; bonding:"
        " LE Secure Connections, Just Works or passkey) | supported |",
        "| Body Composition 0x181B (Measurement incl. multiple-packet records merged, Feature;"
        " values without a confirmed MDC code kept locally, not sent) | supported |",
        "| Pulse Oximeter 0x1822 (Spot-check, Continuous downsampled to one a minute, Features)"
        " | supported |",
        "| Continuous Glucose Monitoring 0x181F (Measurement with E2E-CRC, Feature, Status,"
        " Session Start/Run Time, Specific Ops Control Point, RACP by time offset; bonding)"
        " | supported |",
        "| Current Time 0x1805 (read every session: device vs gateway clock, PHD coincident time"
        " stamp; written when the profile allows and the clock is off by more than 30 s)"
        " | supported |",
        "| User Data 0x181C (User Control Point Consent with the bound user's consent code;"
        " one user a connection) | supported |",
        "| Device Information 0x180A, Battery 0x180F | read on every connection |",
        "",
        "## Models",
        "",
        "| Profile | Model | Clock | Pairing | Users | Matched on |",
        "|---|---|---|---|---|---|",
    ]
    for p in profiles.values():
        match = ", ".join(f"{k} `{v}`" for k, v in p.match.model_dump().items() if v is not None)
        pairing = p.security.pairing
        users = f"{len(p.device.users)} (UDS consent)" if p.device.users else "-"
        lines.append(f"| `{p.id}` | {p.title} | {_clock(p)} | {pairing} | {users} | {match} |")
    for p in profiles.values():
        lines += ["", f"### `{p.id}`", "", p.title, ""]
        if p.quirks:
            lines += ["Quirks:", ""] + [f"- {q}" for q in p.quirks] + [""]
        else:
            lines += ["No quirks: the reference implementation of the standard.", ""]
        lines += ["Sources:", ""] + [f"- {s}" for s in p.sources]
        if p.emulation:
            lines += [
                "",
                f"Emulated with `edge emulate {p.id} --hci tcp-server:127.0.0.1:9000`"
                f" ({len(p.emulation.stored)} stored, {len(p.emulation.live)} live readings).",
            ]
    return "\n".join(lines) + "\n"


def main() -> None:
    text = render(load_profiles())
    if "--check" in sys.argv:
        sys.exit(0 if DOC.exists() and DOC.read_text(encoding="utf-8") == text else 1)
    DOC.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
