"""The data key across every store of a data directory: the outbox and the local records.

Both files are sealed under the one data key (docs/encryption.md), and SQLite cannot commit two
WAL files atomically, so a rotation is made safe store by store: the previous key stays beside
the new one (``data.key.old``) until every store is sealed under the new key, and a store found
under the previous key re-seals itself when opened. Every store ever opened with the key is
listed in ``<data_dir>/sealed-stores`` (``crypto.register_store``), wherever it lives; the
previous key is forgotten only by this module, once each of them was brought under the new one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway import crypto
from gateway.config import Config, LocalDestination
from gateway.errors import GatewayError
from gateway.outbox import Outbox
from gateway.uplinks.record_store import RecordStore

OUTBOX = "outbox.sqlite"
RECORD = "record.sqlite"


class RotationError(GatewayError):
    """The key cannot be rotated as asked (where it comes from, what is missing)."""


def record_paths(data_dir: Path, config: Config | None = None) -> list[Path]:
    """Every local record sealed with this data directory's key: those registered in
    ``sealed-stores``, the configured ``local`` destinations' files and the default one (the
    last two only if they exist: a record never opened holds nothing)."""
    try:
        found = crypto.registered_stores(data_dir, "record")
    except OSError as exc:
        raise RotationError(f"cannot read {data_dir / crypto.STORES_FILE}: {exc}") from exc
    candidates = [data_dir / RECORD]
    if config is not None:
        candidates += [
            d.path or data_dir / RECORD
            for d in config.destinations
            if isinstance(d, LocalDestination)
        ]
    found += [path for path in candidates if path.exists()]
    unique = {path.resolve(): path for path in found}
    return list(unique.values())


def _all_there(records: Sequence[Path]) -> None:
    missing = [str(r) for r in records if not r.exists()]
    if missing:
        raise RotationError(
            "these records were sealed with the data key but are not there: "
            + ", ".join(missing)
            + " (an unmounted disk?). Make them reachable and run the command again; a record"
            f" gone for good: remove its line from {crypto.STORES_FILE} in the data directory"
        )


async def finish_rotation(data_dir: Path, records: Sequence[Path]) -> None:
    """Bring every store under the current key (each re-seals itself at open if an interrupted
    rotation left it under the previous one), then forget the previous key file."""
    if not (data_dir / f"{crypto.KEY_FILE}.old").exists():
        return
    _all_there(records)
    outbox = data_dir / OUTBOX
    if outbox.exists():
        async with Outbox(outbox, create_key=False):
            pass
    for record in records:
        async with RecordStore(record, key_dir=data_dir, create_key=False):
            pass
    crypto.remove_leftovers(data_dir / crypto.KEY_FILE)


@dataclass(frozen=True, slots=True)
class Rotated:
    values: int  # outbox values re-sealed
    resources: int  # record resources re-sealed
    where: str  # what the operator must do or know next


async def rotate(data_dir: Path, records: Sequence[Path]) -> Rotated:
    """Re-seal the outbox and every record under a new key. With the key file, the new key is
    made and swapped in; with a key from the environment or a credential, the new one comes
    from ``$EDGE_DATA_KEY_NEW`` and the operator swaps it. The gateway must be stopped."""
    path = data_dir / OUTBOX
    if not path.exists():
        raise RotationError(f"no outbox at {path}")
    _all_there(records)
    await finish_rotation(data_dir, records)
    source = crypto.find_key(data_dir)
    given = os.environ.get(crypto.NEW_ENV_VAR)
    if source.file is None and not given:
        raise RotationError(
            f"the data key comes from {source.where}: edge cannot replace it there."
            " Make a new one (head -c 32 /dev/urandom | base64), run"
            f" {crypto.NEW_ENV_VAR}=<new key> edge keys rotate, then give the gateway the"
            " new key instead of the old one"
        )
    # a store a crash left under the new key (given in the environment) opens too
    extra = (
        []
        if source.file is not None or given is None
        else [crypto.parse_key(given.encode(), f"${crypto.NEW_ENV_VAR}")]
    )
    stores = [RecordStore(r, key_dir=data_dir, create_key=False, extra_keys=extra) for r in records]
    async with Outbox(path, create_key=False, extra_keys=extra) as outbox:
        for store in stores:
            await store.open()
        try:
            if source.file is None:
                assert given is not None
                new_key = crypto.parse_key(given.encode(), f"${crypto.NEW_ENV_VAR}")
                values = await outbox.rotate_key(new_key)
                where = f"now replace the key in {source.where} with {crypto.NEW_ENV_VAR}'s"
            else:
                key_file = source.file
                new_file = key_file.with_name(key_file.name + ".new")
                old_file = key_file.with_name(key_file.name + ".old")
                new_key = crypto.new_key()
                crypto.write_key_file(new_file, new_key)

                def swap() -> None:  # inside the outbox's transaction, right before its commit
                    crypto.write_key_file(old_file, crypto.read_key_file(key_file))
                    os.replace(new_file, key_file)
                    crypto.sync_dir(key_file.parent)

                values = await outbox.rotate_key(new_key, before_commit=swap)
                where = f"new key in {key_file}"
            # a crash from here on leaves records under the old key: they finish when opened
            resources = 0
            for store in stores:
                resources += await store.rotate_key(new_key)
        finally:
            for store in stores:
                await store.close()
    if source.file is not None:
        crypto.remove_leftovers(source.file)  # every store is under the new key
    return Rotated(values, resources, where)
