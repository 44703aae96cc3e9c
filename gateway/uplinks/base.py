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
    # handed to an uplink before (a crash or a lost answer may have let it through): an uplink
    # whose destination cannot deduplicate looks before sending again
    maybe_sent: bool = False


@dataclass(frozen=True, slots=True)
class EntryOutcome:
    """What a record server did with one resource of an envelope's bundle, kept in the outbox.

    ``result`` is ``created``, ``exists`` (found by its identifier or by the conditional
    create) or ``rejected``; ``location`` is the server's ``Type/id`` (no patient data).
    """

    resource: str
    result: str
    location: str = ""
    detail: str = ""  # OperationOutcome codes of a rejected entry, never free text


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    envelope_id: int
    status: OutcomeStatus
    reason: str = ""  # never contains health values or patient identifiers
    retry_after: float | None = None
    entries: tuple[EntryOutcome, ...] = ()  # per resource, when the destination says


class UplinkError(Exception):
    """An uplink could not be set up (bad TLS files, unreachable path...)."""


class Uplink(Protocol):
    """A destination. ``send`` never raises for a per-envelope problem: it returns outcomes."""

    name: str

    async def start(self) -> None: ...

    async def send(self, batch: Sequence[Envelope]) -> list[Outcome]: ...

    async def close(self) -> None: ...
