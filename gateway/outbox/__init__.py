"""The durable store between ingest and delivery."""

from gateway.outbox.store import (
    EnvelopeState,
    IngestResult,
    Leased,
    NewEnvelope,
    Outbox,
    OutboxError,
    Status,
)

__all__ = [
    "EnvelopeState",
    "IngestResult",
    "Leased",
    "NewEnvelope",
    "Outbox",
    "OutboxError",
    "Status",
]
