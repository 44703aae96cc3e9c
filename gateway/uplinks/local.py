"""The ``local`` uplink: envelopes go into the embedded record (``RecordStore``, one SQLite file).

Outcomes per envelope:

* every entry created or already there -> DELIVERED. Conditional create on the identifier means a
  retried or replayed envelope finds its resources and changes nothing, so "already there" is a
  success, not an error;
* a bundle the store cannot process -> REJECTED with the store's reason (entry index and type
  only); the other envelopes of the batch are unaffected;
* an SQLite error (disk full, quota reached, I/O error, busy), or a data key changed under this
  process -> RETRY for the whole batch: the batch is one SQLite transaction, so nothing of it was
  committed.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from gateway.uplinks.base import Envelope, Outcome, OutcomeStatus
from gateway.uplinks.record_store import RecordStore, RecordStoreError, TransactionRejected

__all__ = ["LocalUplink"]

log = logging.getLogger(__name__)


class LocalUplink:
    """Delivers transaction Bundles into a ``RecordStore`` at ``path``."""

    def __init__(
        self, name: str, path: Path, *, max_pages: int | None = None, key_dir: Path | None = None
    ) -> None:
        self.name = name
        self.path = path
        self._store = RecordStore(path, max_pages=max_pages, key_dir=key_dir)
        self._started = False

    @property
    def store(self) -> RecordStore:
        """The record itself, for search and export."""
        return self._store

    async def start(self) -> None:
        if not self._started:
            await self._store.open()
            self._started = True
            log.info("local uplink %s: record store open", self.name)

    async def send(self, batch: Sequence[Envelope]) -> list[Outcome]:
        if not self._started:
            raise RuntimeError(f"local uplink {self.name} is not started")
        if not batch:
            return []
        try:
            results = await self._store.apply_transactions([envelope.body for envelope in batch])
        except (sqlite3.Error, RecordStoreError) as exc:
            # aiosqlite re-raises sqlite3's own exceptions; SQLite messages carry no data values.
            log.warning("local uplink %s: record store error, batch will be retried", self.name)
            reason = f"record store unavailable: {exc}"
            return [
                Outcome(envelope_id=e.id, status=OutcomeStatus.RETRY, reason=reason) for e in batch
            ]

        outcomes: list[Outcome] = []
        for envelope, result in zip(batch, results, strict=True):
            if isinstance(result, TransactionRejected):
                outcomes.append(
                    Outcome(
                        envelope_id=envelope.id,
                        status=OutcomeStatus.REJECTED,
                        reason=result.reason,
                    )
                )
            else:
                outcomes.append(Outcome(envelope_id=envelope.id, status=OutcomeStatus.DELIVERED))
        return outcomes

    async def close(self) -> None:
        if self._started:
            self._started = False
            await self._store.close()
