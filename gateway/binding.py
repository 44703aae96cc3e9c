"""Which patient a reading belongs to. Never guessed: no exact binding means unattributed.

A binding names a device (EUI-64 System ID or Bluetooth address) and optionally a user index. A
binding without a user index only matches readings that carry none; a reading from user 2 of a
multi-user scale never falls back to "the scale's patient", and the unknown user (0xFF) matches
nothing. Unattributed readings are kept, and never sent anywhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from drivers.models import DeviceIdentity, PatientRef, normalize_device


@dataclass(frozen=True, slots=True)
class Binding:
    device: str  # EUI-64 or address, any separator
    patient: PatientRef
    user_index: int | None = None


class Bindings:
    def __init__(self, bindings: Iterable[Binding]) -> None:
        self._table: dict[tuple[str, int | None], PatientRef] = {}
        for b in bindings:
            key = (normalize_device(b.device), b.user_index)
            if key in self._table and self._table[key] != b.patient:
                raise ValueError(f"device {b.device} user {b.user_index} is bound twice")
            self._table[key] = b.patient

    def resolve(self, device: DeviceIdentity, user_index: int | None) -> PatientRef | None:
        if user_index == 0xFF:
            return None
        for ident in (device.system_id, device.address):
            if ident:
                patient = self._table.get((normalize_device(ident), user_index))
                if patient is not None:
                    return patient
        return None

    def __len__(self) -> int:
        return len(self._table)
