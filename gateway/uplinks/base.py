"""The one interface every uplink implements, and the values crossing it.

The outbox leases ``Envelope``s and hands a batch to ``Uplink.send``; the uplink answers with one
``Outcome`` per envelope. Only ``delivered`` marks a row done: it means the destination itself
confirmed (the record committed it, or the broker answered a PUBACK with a success reason code).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class OutcomeStatus(StrEnum):
    DELIVERED = "delivered"  # destination confirmed; done
    RETRY = "retry"  # transient; try again after backoff (or ``retry_after`` seconds)
    REJECTED = "rejected"  # permanent; quarantine with ``reason``, never blocks the others


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """One reading addressed to one destination."""

    id: int
    destination: str
    idem_key: str  # stable idempotency key: the PHD Observation identifier of the reading
    body: bytes  # JSON FHIR transaction Bundle for this reading
    attempts: int = 0
    kind: str = "weight"  # measurement family, used for topic names


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    envelope_id: int
    status: OutcomeStatus
    reason: str = ""  # never contains health values or patient identifiers
    retry_after: float | None = None


class UplinkError(Exception):
    """An uplink could not be set up (bad TLS files, unreachable path...)."""


class Uplink(Protocol):
    """A destination. ``send`` never raises for a per-envelope problem: it returns outcomes."""

    name: str

    async def start(self) -> None: ...

    async def send(self, batch: Sequence[Envelope]) -> list[Outcome]: ...

    async def close(self) -> None: ...
