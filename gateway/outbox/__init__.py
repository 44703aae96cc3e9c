"""The durable store between ingest and delivery."""

from gateway.outbox.store import (
    EnvelopeState,
    IngestResult,
    Item,
    Leased,
    NewEnvelope,
    Outbox,
    OutboxError,
    Status,
    Unattributed,
)

__all__ = [
    "EnvelopeState",
    "IngestResult",
    "Item",
    "Leased",
    "NewEnvelope",
    "Outbox",
    "OutboxError",
    "Status",
    "Unattributed",
]
