"""Opening SQLite the one way edge stores data: WAL + ``synchronous=FULL``, read back and enforced.

WAL with NORMAL stays consistent but loses acknowledged commits on power loss; the outbox and the
local record acknowledge readings to devices and uplinks, so both refuse to run without FULL.
"""

from __future__ import annotations

import os
from pathlib import Path

import aiosqlite

SYNCHRONOUS_FULL = 2


async def open_durable(
    path: Path, *, error: type[Exception], busy_timeout: float = 5.0
) -> aiosqlite.Connection:
    """Connect in autocommit mode (transactions are explicit) with the durable settings, or raise
    ``error`` saying which setting did not take."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        owner_only(path)
        db = await aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout)
    except (OSError, aiosqlite.Error) as exc:
        raise error(f"cannot open {path}: {exc}") from exc
    try:
        await db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        mode = await _scalar(db, "PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        sync = await _scalar(db, "PRAGMA synchronous")
        await db.execute("PRAGMA foreign_keys=ON")
        if str(mode).lower() != "wal" or sync != SYNCHRONOUS_FULL:
            raise error(
                f"{path} refuses to run without WAL + synchronous=FULL "
                f"(got journal_mode={mode}, synchronous={sync})"
            )
    except aiosqlite.Error as exc:  # e.g. another process holds the file in journal mode
        await db.close()
        raise error(f"cannot make {path} durable: {exc}") from exc
    except BaseException:
        await db.close()
        raise
    return db


def owner_only(path: Path) -> None:
    """Health data: the file (and the -wal/-shm files SQLite creates with its mode) readable by
    this user only, whatever the umask. A file another user owns is left alone (read-only use)."""
    if not path.exists():
        path.touch(mode=0o600)
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = file.stat()
            if mode.st_mode & 0o077 and mode.st_uid == os.getuid():
                file.chmod(0o600)
        except FileNotFoundError:
            continue
        except OSError:
            pass


async def _scalar(db: aiosqlite.Connection, sql: str) -> object:
    row = await (await db.execute(sql)).fetchone()
    return None if row is None else row[0]
